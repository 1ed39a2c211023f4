//! `des-upgrade` on stores written by the Python DES (`testdata/legacy-des`):
//! in place, to another location, keeping the legacy objects, a dry run;
//! every codec and both legacy versions with a big file and several parts
//! per shard; `kill -9` at observed points and a re-run; a half-upgraded
//! store read with the auto layout; and the refusals that protect data.
// Helpers outside #[test] fns unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;

use des_format::digest::sha256_hex;
use des_format::legacy::LegacyPayload;
use des_format::shard::{AnyIndex, Source};
use des_format::v3::{NewEntry, ShardIdent, ShardWriter};
use des_format::{Codec, DigestAlgorithm, Timestamp};
use des_storage::tombstones::{DeleteReason, Tombstone, TombstoneLog};
use des_storage::{CreateOptions, DesStore, ErrorKind, LocalStore, ObjectStore};
use serde_json::Value;

const N_BITS: u8 = 4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/legacy-des")
}

/// A file and the content it must read back with.
#[derive(Debug, Clone)]
struct Expected {
    uid: String,
    created_at: String,
    size: u64,
    sha256: String,
}

fn store_files() -> Vec<Expected> {
    let v: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("store/expected.json")).unwrap())
            .unwrap();
    assert_eq!(v["n_bits"], N_BITS);
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| Expected {
            uid: f["uid"].as_str().unwrap().into(),
            created_at: f["created_at"].as_str().unwrap().into(),
            size: f["size"].as_u64().unwrap(),
            sha256: f["sha256"].as_str().unwrap().into(),
        })
        .collect()
}

/// The Python-DES fixture store, flat, as its packer laid it out.
fn copy_store(dst: &Path) {
    for e in std::fs::read_dir(fixtures().join("store/shards")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

fn upgrade_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_des-upgrade"));
    cmd.args(args).env_remove("DES_UPGRADE_PAUSE_AT");
    cmd
}

fn upgrade(args: &[&str]) -> Output {
    upgrade_cmd(args).output().unwrap()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn ok(out: &Output) -> Value {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout {} stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    json(out)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn local(dir: &Path) -> Arc<dyn ObjectStore> {
    Arc::new(LocalStore::new(dir).unwrap())
}

/// Flat `.des` objects: the legacy parts left.
fn legacy_parts(dir: &Path) -> Vec<String> {
    flat_names(dir, ".des")
}

/// Names of the files directly in `dir` ending in `ext`, sorted.
fn flat_names(dir: &Path, ext: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(ext))
        .collect();
    out.sort();
    out
}

/// Every byte of every file in `dir`, to prove a run changed nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Reads every file through `store`, byte-exact.
async fn read_all(store: &DesStore, files: &[Expected]) {
    for f in files {
        let ts = Timestamp::parse_rfc3339(&f.created_at).unwrap();
        let (_, data) = store
            .get_file(&f.uid, ts)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", f.uid));
        assert_eq!(data.len() as u64, f.size, "{}", f.uid);
        assert_eq!(sha256_hex(&data), f.sha256, "{}", f.uid);
    }
}

/// Every uid of every v3 shard, with how often it occurs.
async fn v3_uids(store: &DesStore) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for meta in store.list_shards().await.unwrap() {
        let loaded = store.load_index(&meta.key).await.unwrap().unwrap();
        assert!(loaded.index.trailer().is_some(), "{}", meta.key);
        for e in loaded.index.located() {
            *out.entry(e.uid).or_default() += 1;
        }
    }
    out
}

/// Every file is in exactly one v3 shard, and nothing else is.
async fn check_v3_exactly(dir: &Path, files: &[Expected]) {
    let store = DesStore::open(local(dir)).await.unwrap();
    read_all(&store, files).await;
    let uids = v3_uids(&store).await;
    assert_eq!(uids.len(), files.len(), "{uids:?}");
    assert!(uids.values().all(|n| *n == 1), "{uids:?}");
}

fn des_verify_clean(dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_des-verify"))
        .args([s(dir), "--json", "--quiet"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r = json(&out);
    assert_eq!(r["layout"], "v3");
}

#[tokio::test]
async fn in_place_converts_the_python_store() {
    let dir = tempfile::tempdir().unwrap();
    copy_store(dir.path());
    let files = store_files();
    let parts = legacy_parts(dir.path()).len() as u64;
    let r = ok(&upgrade(&[
        "--from",
        s(dir.path()),
        "--n-bits",
        "4",
        "--json",
    ]));
    assert_eq!(r["in_place"], true);
    assert_eq!(r["store_created"], true);
    assert_eq!(r["digest"], "blake3");
    assert_eq!(r["totals"]["groups"], parts);
    assert_eq!(r["totals"]["converted"], parts);
    assert_eq!(r["totals"]["failed"], 0);
    assert_eq!(r["totals"]["added"], files.len() as u64);
    assert_eq!(r["totals"]["verified"], files.len() as u64);
    assert_eq!(r["totals"]["parts_deleted"], parts);
    assert_eq!(r["marker"], "removed");
    assert!(legacy_parts(dir.path()).is_empty());
    assert!(!dir.path().join("_des/legacy.json").exists());
    check_v3_exactly(dir.path(), &files).await;
    des_verify_clean(dir.path());

    // Entries came over as stored bytes and carry the part's day.
    let store = DesStore::open(local(dir.path())).await.unwrap();
    let f = &files[0];
    let ts = Timestamp::parse_rfc3339(&f.created_at).unwrap();
    let (_, located) = store.find(&f.uid, ts).await.unwrap();
    assert_eq!(
        located.created_at.map(|c| c.date_number()),
        Some(ts.date_number())
    );

    // A second run has nothing to do, and says so.
    let again = ok(&upgrade(&[
        "--from",
        s(dir.path()),
        "--n-bits",
        "4",
        "--json",
    ]));
    assert_eq!(again["totals"]["groups"], 0);
    assert_eq!(again["store_created"], false);
    check_v3_exactly(dir.path(), &files).await;
}

#[tokio::test]
async fn to_another_location_leaves_the_source_alone() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    copy_store(src.path());
    let before = snapshot(src.path());
    let files = store_files();
    let target = dst.path().join("v3");
    let r = ok(&upgrade(&[
        "--from",
        s(src.path()),
        "--to",
        s(&target),
        "--n-bits",
        "4",
        "--fips",
        "--json",
    ]));
    assert_eq!(r["in_place"], false);
    assert_eq!(r["keep_legacy"], true);
    assert_eq!(r["digest"], "sha256");
    assert_eq!(r["marker"], "not_used");
    assert_eq!(r["totals"]["parts_deleted"], 0);
    assert_eq!(snapshot(src.path()), before, "the source was changed");
    check_v3_exactly(&target, &files).await;
    assert!(!target.join("_des/legacy.json").exists());
    des_verify_clean(&target);

    // --delete-legacy: the source parts go once their files are verified.
    let r = ok(&upgrade(&[
        "--from",
        s(src.path()),
        "--to",
        s(&target),
        "--n-bits",
        "4",
        "--delete-legacy",
        "--json",
    ]));
    assert_eq!(r["totals"]["already_converted"], r["totals"]["groups"]);
    assert!(legacy_parts(src.path()).is_empty());
    check_v3_exactly(&target, &files).await;
}

#[tokio::test]
async fn keep_legacy_and_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    copy_store(dir.path());
    let files = store_files();
    let before = snapshot(dir.path());
    let dry = ok(&upgrade(&[
        "--from",
        s(dir.path()),
        "--n-bits",
        "4",
        "--dry-run",
        "--json",
    ]));
    assert_eq!(dry["totals"]["added"], files.len() as u64);
    assert_eq!(dry["groups"][0]["status"], "would_convert");
    assert_eq!(dry["in_place"], true);
    assert_eq!(snapshot(dir.path()), before, "a dry run wrote something");
    // The same directory spelt otherwise is still in place; a new one is not.
    let spelt = format!("{}/.", s(dir.path()));
    let dry = ok(&upgrade(&[
        "--from",
        s(dir.path()),
        "--to",
        &spelt,
        "--n-bits",
        "4",
        "--dry-run",
        "--json",
    ]));
    assert_eq!(dry["in_place"], true);
    let elsewhere = dir.path().join("not-yet");
    let dry = ok(&upgrade(&[
        "--from",
        s(dir.path()),
        "--to",
        s(&elsewhere),
        "--n-bits",
        "4",
        "--fips",
        "--dry-run",
        "--json",
    ]));
    assert_eq!(
        (&dry["in_place"], &dry["digest"]),
        (&Value::from(false), &Value::from("sha256"))
    );
    assert!(!elsewhere.exists());
    assert_eq!(snapshot(dir.path()), before, "a dry run wrote something");

    let parts = legacy_parts(dir.path());
    let r = ok(&upgrade(&[
        "--from",
        s(dir.path()),
        "--n-bits",
        "4",
        "--keep-legacy",
        "--json",
    ]));
    assert_eq!(r["totals"]["parts_deleted"], 0);
    assert_eq!(r["marker"], "present");
    assert_eq!(legacy_parts(dir.path()), parts);
    assert!(dir.path().join("_des/legacy.json").exists());
    check_v3_exactly(dir.path(), &files).await;
    // Both layouts hold every file: auto finds them (v3 first).
    let auto = DesStore::open_auto(local(dir.path()), None).await.unwrap();
    assert!(auto.consults_legacy().await);
    read_all(&auto, &files).await;
}

/// A legacy entry as read from a fixture shard, to be laid out again.
#[derive(Debug, Clone)]
struct LegacyFile {
    uid: String,
    codec: Codec,
    stored: Vec<u8>,
    orig_len: u64,
    meta: Option<String>,
    /// SHA-256 hex of a big file under `_bigFiles/`.
    big: Option<String>,
}

/// The entries of a format fixture, with their stored bytes as the Python
/// DES wrote them.
async fn fixture_entries(file: &str) -> Vec<LegacyFile> {
    let dir = fixtures().join("format");
    let store = DesStore::legacy(local(&dir), N_BITS).unwrap();
    let loaded = store.load_index(file).await.unwrap().unwrap();
    let AnyIndex::Legacy(ix) = &loaded.index else {
        panic!("{file} is not legacy")
    };
    let bytes = std::fs::read(dir.join(file)).unwrap();
    ix.entries()
        .iter()
        .map(|e| {
            let (stored, big) = match &e.payload {
                LegacyPayload::Inline { offset, len } => {
                    let (a, b) = (*offset as usize, (*offset + *len) as usize);
                    (bytes[a..b].to_vec(), None)
                }
                LegacyPayload::BigFile { sha256_hex } => (Vec::new(), Some(sha256_hex.clone())),
            };
            LegacyFile {
                uid: e.uid.clone(),
                codec: e.codec,
                stored,
                orig_len: e.orig_len,
                meta: e.meta.clone(),
                big,
            }
        })
        .collect()
}

/// A legacy part (SPEC §8) of `version` holding `files`, as the Python DES
/// lays one out.
fn legacy_part(version: u8, files: &[&LegacyFile]) -> Vec<u8> {
    let mut out = b"DES2".to_vec();
    out.extend([version, 0, 0, 0]);
    let mut index = (files.len() as u32).to_le_bytes().to_vec();
    let meta = |index: &mut Vec<u8>, f: &LegacyFile| {
        let m = f.meta.as_deref().unwrap_or("");
        index.extend((m.len() as u32).to_le_bytes());
        index.extend(m.as_bytes());
    };
    for f in files {
        index.extend((f.uid.len() as u16).to_le_bytes());
        index.extend(f.uid.as_bytes());
        if let Some(sha) = &f.big {
            assert_eq!(version, 2, "v1 has no big files");
            index.push(1);
            index.extend((sha.len() as u16).to_le_bytes());
            index.extend(sha.as_bytes());
            index.extend(f.orig_len.to_le_bytes());
            meta(&mut index, f);
            continue;
        }
        if version == 2 {
            index.push(0);
        }
        let offset = out.len() as u64;
        out.extend(&f.stored);
        index.extend(offset.to_le_bytes());
        index.extend((f.stored.len() as u64).to_le_bytes());
        index.push(f.codec.code());
        index.extend((f.stored.len() as u64).to_le_bytes());
        index.extend(f.orig_len.to_le_bytes());
        if version == 2 {
            meta(&mut index, f);
        }
    }
    out.extend(&index);
    out.extend(b"DESI");
    out.extend((index.len() as u64).to_le_bytes());
    out
}

fn format_expected() -> BTreeMap<String, (u64, String)> {
    let v: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("format/expected.json")).unwrap())
            .unwrap();
    let mut out = BTreeMap::new();
    for shard in v["shards"].as_array().unwrap() {
        for e in shard["entries"].as_array().unwrap() {
            out.insert(
                e["uid"].as_str().unwrap().to_string(),
                (
                    e["size"].as_u64().unwrap(),
                    e["sha256"].as_str().unwrap().to_string(),
                ),
            );
        }
    }
    out
}

fn shard_hex(uid: &str) -> String {
    let i = des_format::routing::shard_index(uid, N_BITS).unwrap();
    des_format::routing::shard_hex(i, N_BITS)
}

#[tokio::test]
async fn every_codec_both_versions_big_files_and_several_parts() {
    // The format fixtures' entries (v2 none/zstd/lz4 with metadata and a big
    // file, v1), stored bytes unchanged, laid out in parts of the shard each
    // routes to. The big file's shard gets two parts, a v1 one and a v2 one,
    // both holding one uid: the newer part's copy is the file.
    let dir = tempfile::tempdir().unwrap();
    let mut expected = format_expected();
    let mut v2 = Vec::new();
    for f in [
        "20240517_NONE_0000.des",
        "20240517_ZSTD_0000.des",
        "20240517_LZ4_0000.des",
    ] {
        v2.extend(fixture_entries(f).await);
    }
    let v1 = fixture_entries("20240101_V1_0000.des").await;
    let codecs: BTreeMap<String, Codec> = v2
        .iter()
        .chain(&v1)
        .map(|f| (f.uid.clone(), f.codec))
        .collect();
    assert!(
        [Codec::None, Codec::Zstd, Codec::Lz4]
            .iter()
            .all(|c| codecs.values().any(|x| x == c))
    );
    let big = v2.iter().find(|f| f.big.is_some()).unwrap().clone();
    let big_hex = shard_hex(&big.uid);
    let mut by_shard: BTreeMap<String, Vec<&LegacyFile>> = BTreeMap::new();
    for f in &v2 {
        by_shard.entry(shard_hex(&f.uid)).or_default().push(f);
    }
    // The shadowed copy: same uid, other (older) content, in part 0000.
    let twin = by_shard[&big_hex]
        .iter()
        .find(|f| f.big.is_none())
        .map(|f| (*f).clone())
        .unwrap();
    let old = LegacyFile {
        stored: b"an older version of this file".to_vec(),
        orig_len: 29,
        codec: Codec::None,
        meta: None,
        ..twin.clone()
    };
    for (hex, files) in &by_shard {
        if *hex == big_hex {
            let (older, newer): (Vec<&LegacyFile>, Vec<&LegacyFile>) = files
                .iter()
                .partition(|f| f.big.is_none() && f.uid != twin.uid && f.meta.is_none());
            let mut older = older;
            older.push(&old);
            std::fs::write(
                dir.path().join(format!("20240517_{hex}_0000.des")),
                legacy_part(1, &older),
            )
            .unwrap();
            std::fs::write(
                dir.path().join(format!("20240517_{hex}_0001.des")),
                legacy_part(2, &newer),
            )
            .unwrap();
        } else {
            std::fs::write(
                dir.path().join(format!("20240517_{hex}_0000.des")),
                legacy_part(2, files),
            )
            .unwrap();
        }
    }
    let mut v1_by_shard: BTreeMap<String, Vec<&LegacyFile>> = BTreeMap::new();
    for f in &v1 {
        v1_by_shard.entry(shard_hex(&f.uid)).or_default().push(f);
    }
    for (hex, files) in &v1_by_shard {
        std::fs::write(
            dir.path().join(format!("20240101_{hex}_0000.des")),
            legacy_part(1, files),
        )
        .unwrap();
    }
    let sha = big.big.clone().unwrap();
    std::fs::create_dir_all(dir.path().join("_bigFiles")).unwrap();
    std::fs::copy(
        fixtures().join("format/_bigFiles").join(&sha),
        dir.path().join("_bigFiles").join(&sha),
    )
    .unwrap();
    let day = |uid: &str| {
        if v1.iter().any(|f| f.uid == uid) {
            "2024-01-01T08:00:00Z"
        } else {
            "2024-05-17T12:00:00Z"
        }
    };
    let files: Vec<Expected> = expected
        .iter_mut()
        .map(|(uid, (size, sha256))| Expected {
            uid: uid.clone(),
            created_at: day(uid).into(),
            size: *size,
            sha256: sha256.clone(),
        })
        .collect();
    // The legacy reader serves them all (the newer copy of the twin).
    read_all(
        &DesStore::legacy(local(dir.path()), N_BITS).unwrap(),
        &files,
    )
    .await;

    let r = ok(&upgrade(&[
        "--from",
        s(dir.path()),
        "--n-bits",
        "4",
        "--json",
    ]));
    assert_eq!(r["totals"]["failed"], 0);
    assert_eq!(r["totals"]["shadowed"], 1);
    assert_eq!(r["totals"]["big_files_uploaded"], 1);
    assert_eq!(r["legacy_big_files_deleted"], 1);
    assert!(legacy_parts(dir.path()).is_empty());
    assert!(!dir.path().join("_bigFiles").join(&sha).exists());
    check_v3_exactly(dir.path(), &files).await;
    des_verify_clean(dir.path());

    let store = DesStore::open(local(dir.path())).await.unwrap();
    for f in &files {
        let ts = Timestamp::parse_rfc3339(&f.created_at).unwrap();
        let (_, located) = store.find(&f.uid, ts).await.unwrap();
        // Stored bytes were copied, not re-encoded.
        assert_eq!(located.codec, codecs[&f.uid], "{}", f.uid);
        if f.uid == big.uid {
            let Source::External { key, .. } = &located.source else {
                panic!("the big file is inline")
            };
            let digest = DigestAlgorithm::Blake3
                .digest(&std::fs::read(fixtures().join("format/_bigFiles").join(&sha)).unwrap());
            assert_eq!(*key, des_format::v3::external_key(&digest));
            assert!(dir.path().join(format!("{key}.chunks")).exists());
        }
        if let Some(meta) = v2
            .iter()
            .find(|x| x.uid == f.uid)
            .and_then(|x| x.meta.clone())
            && f.uid != twin.uid
        {
            assert_eq!(located.meta.as_deref(), Some(meta.as_str()), "{}", f.uid);
        }
    }
}

/// Starts des-upgrade in place, one group at a time, pausing at `point`;
/// returns once it has paused there.
fn start_paused(dir: &Path, point: &str) -> Child {
    let mut child = upgrade_cmd(&["--from", s(dir), "--n-bits", "4", "--jobs", "1"])
        .env("DES_UPGRADE_PAUSE_AT", point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if line.contains("paused") {
            return child;
        }
    }
    let status = child.wait().unwrap();
    panic!("des-upgrade ended ({status}) without pausing at {point}");
}

fn kill_9(mut child: Child) {
    // SIGKILL: no clean-up of any kind.
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A second part for the first (date, shard) of the fixture store: a new
/// file, and a newer copy of a file of part 0000. Returns its key.
async fn add_second_part(dir: &Path, files: &mut Vec<Expected>) -> String {
    let first = legacy_parts(dir).into_iter().next().unwrap();
    let (date, rest) = first.split_once('_').unwrap();
    let hex = rest.split('_').next().unwrap();
    let store = DesStore::legacy(local(dir), N_BITS).unwrap();
    let loaded = store.load_index(&first).await.unwrap().unwrap();
    let replaced = loaded.index.located()[0].uid.clone();
    let new_uid = (16 + u32::from_str_radix(hex, 16).unwrap()).to_string();
    assert_eq!(shard_hex(&new_uid), hex);
    let newer = b"the newer copy, in part 0001".to_vec();
    let added = b"a file only part 0001 has".to_vec();
    let entry = |uid: &str, data: &[u8]| LegacyFile {
        uid: uid.into(),
        codec: Codec::None,
        stored: data.to_vec(),
        orig_len: data.len() as u64,
        meta: Some(r#"{"source": "test"}"#.into()),
        big: None,
    };
    let (a, b) = (entry(&replaced, &newer), entry(&new_uid, &added));
    let part = format!("{date}_{hex}_0001.des");
    std::fs::write(dir.join(&part), legacy_part(2, &[&a, &b])).unwrap();
    let f = files.iter_mut().find(|f| f.uid == replaced).unwrap();
    f.size = newer.len() as u64;
    f.sha256 = sha256_hex(&newer);
    files.push(Expected {
        uid: new_uid,
        created_at: format!("{}-{}-{}T06:00:00Z", &date[..4], &date[4..6], &date[6..8]),
        size: added.len() as u64,
        sha256: sha256_hex(&added),
    });
    part
}

#[tokio::test]
async fn kill_9_at_any_point_then_a_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    copy_store(dir.path());
    let mut files = store_files();
    let second = add_second_part(dir.path(), &mut files).await;
    let parts = legacy_parts(dir.path());

    // 1. Killed right after publishing the first v3 shard: nothing legacy
    //    was deleted, and auto serves every file (converted ones from v3).
    kill_9(start_paused(dir.path(), "after_publish"));
    assert_eq!(legacy_parts(dir.path()), parts);
    assert!(dir.path().join("_des/legacy.json").exists());
    let auto = DesStore::open_auto(local(dir.path()), None).await.unwrap();
    read_all(&auto, &files).await;
    let v3 = DesStore::open(local(dir.path())).await.unwrap();
    assert_eq!(v3.list_shards().await.unwrap().len(), 1);

    // 2. Killed after deleting one of the two parts of that shard: the v3
    //    shard holds both parts' files; the newer copy is the one served.
    kill_9(start_paused(dir.path(), "after_delete_part"));
    let left = legacy_parts(dir.path());
    assert_eq!(left.len(), parts.len() - 1);
    assert!(left.contains(&second));
    let auto = DesStore::open_auto(local(dir.path()), None).await.unwrap();
    read_all(&auto, &files).await;

    // 3. A plain re-run finishes: every file once, byte-exact, no legacy.
    let r = ok(&upgrade(&[
        "--from",
        s(dir.path()),
        "--n-bits",
        "4",
        "--json",
    ]));
    assert_eq!(r["totals"]["failed"], 0);
    assert_eq!(r["totals"]["already_converted"], 1);
    assert_eq!(r["marker"], "removed");
    assert!(legacy_parts(dir.path()).is_empty());
    check_v3_exactly(dir.path(), &files).await;
    des_verify_clean(dir.path());
}

#[tokio::test]
async fn a_shard_packed_meanwhile_is_merged_and_tombstones_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    copy_store(dir.path());
    let files = store_files();
    // Before the upgrade: a v3 store with one shard (a packer's), and a
    // tombstone for one legacy file.
    let (store, _) = DesStore::open_or_create(
        local(dir.path()),
        CreateOptions {
            n_bits: Some(N_BITS),
            digest: None,
        },
    )
    .await
    .unwrap();
    let f0 = files[0].clone();
    let ts0 = Timestamp::parse_rfc3339(&f0.created_at).unwrap();
    let loc = store.locate(&f0.uid, ts0).unwrap();
    let packed_uid = (16 + loc.shard_index).to_string();
    let packed = b"packed into v3 before the upgrade".to_vec();
    write_v3_shard(
        dir.path(),
        &loc,
        &[(packed_uid.as_str(), packed.as_slice())],
        ts0,
    );
    // The only file of its (date, shard): that group has nothing left to
    // convert, and no v3 shard.
    let legacy = DesStore::legacy(local(dir.path()), N_BITS).unwrap();
    let mut gone = None;
    for f in files.iter().filter(|f| f.uid != f0.uid) {
        let ts = Timestamp::parse_rfc3339(&f.created_at).unwrap();
        let l = legacy.locate(&f.uid, ts).unwrap();
        let part = format!("{}_{}_0000.des", l.date_dir, l.shard_hex);
        if l.shard_index != loc.shard_index
            && legacy.load_index(&part).await.unwrap().unwrap().index.len() == 1
        {
            gone = Some((f.clone(), DesStore::shard_key(&l)));
            break;
        }
    }
    let (gone, gone_shard) = gone.unwrap();
    let gone_ts = Timestamp::parse_rfc3339(&gone.created_at).unwrap();
    TombstoneLog::new(&store)
        .append(&Tombstone::new(
            &gone.uid,
            gone_ts,
            DeleteReason::UserRequest,
            "test",
        ))
        .await
        .unwrap();

    let r = ok(&upgrade(&[
        "--from",
        s(dir.path()),
        "--n-bits",
        "4",
        "--json",
    ]));
    assert_eq!(r["store_created"], false);
    assert_eq!(r["totals"]["deleted"], 1);
    assert_eq!(r["totals"]["added"], files.len() as u64 - 1);
    let merged = r["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["shard"] == DesStore::shard_key(&loc))
        .unwrap();
    assert_eq!(merged["generation"], 2);
    let emptied = r["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["shard"] == gone_shard.as_str())
        .unwrap();
    assert_eq!(
        (
            &emptied["status"],
            &emptied["deleted"],
            &emptied["parts_deleted"]
        ),
        (
            &Value::from("already_converted"),
            &Value::from(1),
            &Value::from(1)
        )
    );
    assert!(!dir.path().join(&gone_shard).exists());
    assert!(legacy_parts(dir.path()).is_empty());

    let store = DesStore::open(local(dir.path())).await.unwrap();
    let (_, data) = store.get_file(&packed_uid, ts0).await.unwrap();
    assert_eq!(data, packed);
    let err = store.get_file(&gone.uid, gone_ts).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let rest: Vec<Expected> = files.into_iter().filter(|f| f.uid != gone.uid).collect();
    read_all(&store, &rest).await;
    des_verify_clean(dir.path());
}

/// A v3 shard at `loc` holding `files` (raw), as a packer would write it.
fn write_v3_shard(
    root: &Path,
    loc: &des_format::ShardLocation,
    files: &[(&str, &[u8])],
    created_at: Timestamp,
) {
    let ident = ShardIdent {
        date: loc.date_dir.parse().unwrap(),
        shard_index: loc.shard_index as u16,
        n_bits: N_BITS,
        generation: 1,
        digest_alg: DigestAlgorithm::Blake3,
        written_at: Timestamp::now(),
    };
    let mut w = ShardWriter::new(Vec::new(), ident).unwrap();
    for (uid, data) in files {
        let e = NewEntry {
            uid: (*uid).into(),
            created_at,
            content_type: None,
            meta: None,
            codec: Codec::None,
            orig_len: data.len() as u64,
            digest: DigestAlgorithm::Blake3.digest(data),
        };
        w.add_inline(e, data).unwrap();
    }
    let (bytes, _) = w.finish().unwrap();
    let key = DesStore::shard_key(loc);
    let path = root.join(&key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn different_content_in_v3_refuses_the_group() {
    let dir = tempfile::tempdir().unwrap();
    copy_store(dir.path());
    let files = store_files();
    let (store, _) = DesStore::open_or_create(
        local(dir.path()),
        CreateOptions {
            n_bits: Some(N_BITS),
            digest: None,
        },
    )
    .await
    .unwrap();
    let f0 = &files[0];
    let ts0 = Timestamp::parse_rfc3339(&f0.created_at).unwrap();
    let loc = store.locate(&f0.uid, ts0).unwrap();
    write_v3_shard(dir.path(), &loc, &[(f0.uid.as_str(), b"other bytes")], ts0);
    let part = format!("{}_{}_0000.des", loc.date_dir, loc.shard_hex);
    let out = upgrade(&["--from", s(dir.path()), "--n-bits", "4", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    assert_eq!(r["totals"]["failed"], 1);
    assert_eq!(r["marker"], "present");
    // Both versions are kept; everything else was converted.
    assert_eq!(legacy_parts(dir.path()), [part]);
    let legacy = DesStore::legacy(local(dir.path()), N_BITS).unwrap();
    read_all(&legacy, &files[..1]).await;
    let auto = DesStore::open_auto(local(dir.path()), None).await.unwrap();
    read_all(&auto, &files[1..]).await;
}

#[tokio::test]
async fn refusals_change_nothing_or_only_what_is_sound() {
    // Wrong n_bits: most entries route elsewhere, or the part names are not
    // shard keys. Nothing is written.
    let dir = tempfile::tempdir().unwrap();
    copy_store(dir.path());
    let before = snapshot(dir.path());
    for n in ["5", "8"] {
        let out = upgrade(&["--from", s(dir.path()), "--n-bits", n]);
        assert_eq!(out.status.code(), Some(2), "n_bits {n}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("wrong --n-bits"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(snapshot(dir.path()), before);
    }

    // A v3 store already there with other settings: refused before any write.
    let other = tempfile::tempdir().unwrap();
    copy_store(other.path());
    DesStore::open_or_create(
        local(other.path()),
        CreateOptions {
            n_bits: Some(8),
            digest: None,
        },
    )
    .await
    .unwrap();
    let before_other = snapshot(other.path());
    let out = upgrade(&["--from", s(other.path()), "--n-bits", "4"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(snapshot(other.path()), before_other);

    // A `.meta` object that is not a Python DES sidecar might hold
    // deletions: nothing is done unless asked.
    std::fs::write(dir.path().join("20250301_0_0000.meta"), b"?").unwrap();
    let before = snapshot(dir.path());
    let out = upgrade(&["--from", s(dir.path()), "--n-bits", "4"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("20250301_0_0000.meta: not a Python DES shard sidecar"),
        "{err}"
    );
    assert_eq!(snapshot(dir.path()), before);

    // A part whose entries route elsewhere (the Python fixture shard written
    // outside any store, renamed into one): no reader finds them there, so
    // its group is refused, the rest goes on.
    let misrouted = "20240517_0_0000.des";
    std::fs::copy(
        fixtures().join("format/20240517_NONE_0000.des"),
        dir.path().join(misrouted),
    )
    .unwrap();
    // A damaged part: its group fails and keeps its part; the rest converts.
    let parts: Vec<String> = legacy_parts(dir.path())
        .into_iter()
        .filter(|p| p != misrouted)
        .collect();
    let victim = dir.path().join(&parts[1]);
    let mut bytes = std::fs::read(&victim).unwrap();
    let n = bytes.len();
    bytes[n - 12..n - 8].copy_from_slice(b"XXXX");
    std::fs::write(&victim, &bytes).unwrap();
    let out = upgrade(&[
        "--from",
        s(dir.path()),
        "--n-bits",
        "4",
        "--ignore-meta-files",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    assert_eq!(r["totals"]["failed"], 2);
    assert_eq!(r["sidecars"]["skipped"][0]["key"], "20250301_0_0000.meta");
    assert_eq!(r["marker"], "present");
    assert_eq!(
        legacy_parts(dir.path()),
        [misrouted.to_string(), parts[1].clone()]
    );
    assert_eq!(std::fs::read(&victim).unwrap(), bytes);
    assert!(dir.path().join("20250301_0_0000.meta").exists());
    let failed: Vec<&Value> = r["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["status"] == "failed")
        .collect();
    let error_of = |part: &str| {
        failed.iter().find(|g| g["parts"][0] == part).unwrap()["error"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(error_of(&parts[1]).contains(&parts[1]));
    assert!(error_of(misrouted).contains("route to another shard"));
}

/// The part holding `f` in the fixture store (the newest, if several).
fn part_of(dir: &Path, f: &Expected) -> String {
    let date = Timestamp::parse_rfc3339(&f.created_at).unwrap().date_dir();
    let prefix = format!("{date}_{}_", shard_hex(&f.uid));
    legacy_parts(dir)
        .into_iter()
        .rfind(|p| p.starts_with(&prefix))
        .unwrap()
}

/// A `.meta` sidecar beside `part` as the Python DES's `MetadataManager`
/// writes it, with tombstones for `deleted` (uid, created_at, reason).
fn write_sidecar(dir: &Path, part: &str, deleted: &[(&str, &str, &str)]) {
    let tombstones: serde_json::Map<String, Value> = deleted
        .iter()
        .map(|(uid, created_at, reason)| {
            (
                format!("{uid}:{created_at}"),
                serde_json::json!({
                    "uid": uid, "created_at": created_at,
                    "deleted_at": "2025-04-01T08:00:00.125000Z", "deleted_by": "dpo",
                    "reason": reason, "ticket_id": "GDPR-42",
                }),
            )
        })
        .collect();
    let sidecar = serde_json::json!({
        "version": 1, "shard_file": part, "shard_size": 1000,
        "created_at": "2025-03-05T00:00:00Z", "last_updated": "2025-04-01T08:00:00Z",
        "index": {}, "tombstones": tombstones,
        "stats": {"entries": 3, "deleted_files": deleted.len(), "deletion_ratio": 0.3},
    });
    let name = part.replace(".des", ".meta");
    let body = serde_json::to_vec_pretty(&sidecar).unwrap();
    std::fs::write(dir.join(name), body).unwrap();
}

fn sidecars(dir: &Path) -> Vec<String> {
    flat_names(dir, ".meta")
}

#[tokio::test]
async fn python_deletions_in_meta_sidecars_stay_deleted() {
    let dir = tempfile::tempdir().unwrap();
    copy_store(dir.path());
    let files = store_files();
    let (gone, kept): (Vec<Expected>, Vec<Expected>) = files
        .iter()
        .cloned()
        .partition(|f| f.uid == files[0].uid || f.uid == files[1].uid);
    let (a, b) = (&gone[0], &gone[1]);
    let (part_a, part_b) = (part_of(dir.path(), a), part_of(dir.path(), b));
    assert_ne!(
        part_a, part_b,
        "the test wants two sidecars with tombstones"
    );
    write_sidecar(dir.path(), &part_a, &[(&a.uid, &a.created_at, "GDPR")]);
    write_sidecar(dir.path(), &part_b, &[(&b.uid, &b.created_at, "duplicate")]);
    let part_c = part_of(dir.path(), &kept[0]);
    write_sidecar(dir.path(), &part_c, &[]);

    // --keep-legacy: the tombstones are logged, the sidecars stay.
    let args = ["--from", s(dir.path()), "--n-bits", "4", "--json"];
    let r = ok(&upgrade(&[&args[..], &["--keep-legacy"]].concat()));
    assert_eq!(r["sidecars"]["found"], 3);
    assert_eq!(r["sidecars"]["tombstones"], 2);
    assert_eq!(r["sidecars"]["tombstones_logged"], 2);
    assert_eq!(r["sidecars"]["deleted"], 0);
    assert_eq!(r["totals"]["deleted"], 2);
    assert_eq!(sidecars(dir.path()).len(), 3);

    // Then in place to the end: nothing logged twice; the deleted files are
    // in no v3 shard, every other file is; the sidecars go with their parts.
    let r = ok(&upgrade(&args));
    assert_eq!(r["sidecars"]["tombstones_logged"], 0);
    assert_eq!(r["sidecars"]["deleted"], 3);
    assert!(legacy_parts(dir.path()).is_empty());
    assert!(sidecars(dir.path()).is_empty());
    check_v3_exactly(dir.path(), &kept).await;
    des_verify_clean(dir.path());

    let store = DesStore::open(local(dir.path())).await.unwrap();
    let mut logged = TombstoneLog::new(&store).list_all().await.unwrap();
    logged.sort_by(|x, y| x.tombstone.uid.cmp(&y.tombstone.uid));
    let mut want = [(a, DeleteReason::Gdpr), (b, DeleteReason::UserRequest)];
    want.sort_by(|x, y| x.0.uid.cmp(&y.0.uid));
    assert_eq!(logged.len(), 2);
    for (l, (f, reason)) in logged.iter().zip(want) {
        let t = &l.tombstone;
        let created = Timestamp::parse_rfc3339(&f.created_at).unwrap();
        assert_eq!(
            (t.uid.as_str(), t.created_at),
            (f.uid.as_str(), Some(created))
        );
        assert_eq!(t.date, created.date_number());
        assert_eq!(t.reason, reason);
        assert_eq!(t.deleted_by, "dpo");
        assert_eq!(t.ticket_id.as_deref(), Some("GDPR-42"));
        assert_eq!(t.deleted_at.to_rfc3339(), "2025-04-01T08:00:00.125Z");
    }
}
