//! End-to-end tests of the `des-verify` binary on v3 stores built in temp
//! directories and on the Python-DES fixtures.

// Helpers outside `#[test]` functions are test code too: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use des_format::codec::{self, Compression};
use des_format::routing;
use des_format::v3::{NewEntry, ShardIdent, ShardWriter};
use des_format::{Codec, Timestamp};
use des_storage::tombstones::{DeleteReason, LOG_PREFIX, Tombstone, format_time};
use des_storage::{CreateOptions, DesStore, LocalStore};
use serde_json::Value;

const N_BITS: u8 = 4;

/// Where each file of a built store ended up.
struct Built {
    dir: tempfile::TempDir,
    /// uid -> shard key
    shard_of: BTreeMap<String, String>,
    /// uid -> `_big/…` key, for external entries
    external: BTreeMap<String, String>,
}

impl Built {
    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn path(&self, key: &str) -> PathBuf {
        self.root().join(key)
    }
    fn shards(&self) -> usize {
        self.shard_of
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    }
}

fn raw_payload(uid: &str) -> Vec<u8> {
    format!("raw payload of {uid}; ").repeat(20).into_bytes()
}

/// 24 files over two days: every third stored raw (so a test can find and
/// flip its bytes), the rest zstd, and `big-0`/`big-1` as external objects.
fn build_store() -> Built {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let objects = Arc::new(LocalStore::new(dir.path()).unwrap());
    let (store, created) = rt
        .block_on(DesStore::open_or_create(
            objects,
            CreateOptions {
                n_bits: Some(N_BITS),
                digest: None,
            },
        ))
        .unwrap();
    assert!(created);
    let alg = store.digest();

    let mut groups: BTreeMap<String, (routing::ShardLocation, Timestamp, Vec<String>)> =
        BTreeMap::new();
    let mut uids: Vec<String> = (0..22).map(|i| format!("file-{i}")).collect();
    uids.extend(["big-0".to_string(), "big-1".to_string()]);
    for (i, uid) in uids.iter().enumerate() {
        let day = if i % 2 == 0 {
            "2025-03-01"
        } else {
            "2025-03-02"
        };
        let ts = Timestamp::parse_rfc3339(&format!("{day}T10:{:02}:00Z", i)).unwrap();
        let loc = store.locate(uid, ts).unwrap();
        let key = DesStore::shard_key(&loc);
        groups
            .entry(key)
            .or_insert_with(|| (loc, ts, Vec::new()))
            .2
            .push(uid.clone());
    }

    let mut built = Built {
        dir,
        shard_of: BTreeMap::new(),
        external: BTreeMap::new(),
    };
    for (key, (loc, ts, members)) in groups {
        let ident = ShardIdent {
            date: ts.date_number(),
            shard_index: u16::try_from(loc.shard_index).unwrap(),
            n_bits: N_BITS,
            generation: 1,
            digest_alg: alg,
            written_at: Timestamp::now(),
        };
        let mut w = ShardWriter::new(Vec::new(), ident).unwrap();
        for (j, uid) in members.iter().enumerate() {
            let external = uid.starts_with("big-");
            let data = if external {
                format!("big file {uid} ").repeat(5000).into_bytes()
            } else if uid.trim_start_matches("file-").parse::<u32>().unwrap() % 3 == 0 {
                raw_payload(uid)
            } else {
                format!("compressible {uid} {j} ").repeat(50).into_bytes()
            };
            let policy = if data.starts_with(b"raw") {
                Compression::None
            } else {
                Compression::Zstd { level: 3 }
            };
            let (codec, stored) = codec::encode(policy, uid, None, &data).unwrap();
            let entry = NewEntry {
                uid: uid.clone(),
                created_at: ts,
                content_type: Some("text/plain".into()),
                meta: Some(format!(r#"{{"n":{j}}}"#)),
                codec,
                orig_len: data.len() as u64,
                digest: alg.digest(&data),
            };
            if external {
                assert_eq!(codec, Codec::Zstd);
                let big_key = des_format::v3::external_key(&entry.digest);
                let path = built.path(&big_key);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &stored).unwrap();
                w.add_external(entry, stored.len() as u64, crc32c::crc32c(&stored))
                    .unwrap();
                built.external.insert(uid.clone(), big_key);
            } else {
                w.add_inline(entry, &stored).unwrap();
            }
            built.shard_of.insert(uid.clone(), key.clone());
        }
        let (bytes, _) = w.finish().unwrap();
        let path = built.path(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    assert!(built.shards() >= 4, "too few shards for a meaningful test");
    built
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_des-verify"))
        .args(args)
        .output()
        .unwrap()
}

fn run_path(path: &Path, extra: &[&str]) -> Output {
    let mut args = vec![path.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

fn findings(report: &Value) -> &Vec<Value> {
    report["findings"].as_array().unwrap()
}

#[test]
fn clean_store_verifies_with_expected_counts() {
    let s = build_store();
    let out = run_path(s.root(), &["--json", "--jobs", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let r = json(&out);
    assert_eq!(r["shards"], s.shards() as u64);
    assert_eq!(r["entries_total"], 24);
    assert_eq!(r["entries_checked"], 24);
    assert_eq!(r["corrupt_shards"], 0);
    assert_eq!(r["corrupt_entries"], 0);
    assert_eq!(r["clean"], true);
    assert_eq!(r["layout"], "v3");
    assert_eq!(r["n_bits"], u64::from(N_BITS));
    assert!(r["bytes_read"].as_u64().unwrap() > 0);
    assert!(findings(&r).is_empty());

    let text = run_path(s.root(), &["--quiet"]);
    assert_eq!(text.status.code(), Some(0));
    assert!(
        stdout(&text).contains("entries checked: 24 of 24"),
        "{}",
        stdout(&text)
    );
    assert!(stdout(&text).contains("clean"));

    let url = format!("file://{}", s.root().display());
    assert_eq!(run(&[&url]).status.code(), Some(0));
}

#[test]
fn flipped_payload_byte_names_shard_and_uid() {
    let s = build_store();
    let uid = "file-3";
    let key = &s.shard_of[uid];
    let path = s.path(key);
    let at = find(&std::fs::read(&path).unwrap(), &raw_payload(uid)[..20]) + 7;
    flip(&path, at);

    let out = run_path(s.root(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("CORRUPT {key} uid={uid}:")),
        "{text}"
    );
    assert!(text.contains("corrupt entries: 1"), "{text}");

    let r = json(&run_path(s.root(), &["--json"]));
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["key"], key.as_str());
    assert_eq!(f[0]["uid"], uid);
    assert_eq!(f[0]["kind"], "entry");
    assert_eq!(r["corrupt_shards"], 1);
}

#[test]
fn flipped_index_byte_names_the_shard() {
    let s = build_store();
    let key = &s.shard_of["file-4"];
    let path = s.path(key);
    let bytes = std::fs::read(&path).unwrap();
    let trailer = &bytes[bytes.len() - 64..];
    let index_offset = u64::from_le_bytes(trailer[..8].try_into().unwrap()) as usize;
    flip(&path, index_offset + 3);

    let out = run_path(s.root(), &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["key"], key.as_str());
    assert_eq!(f[0]["kind"], "shard");
    assert!(
        f[0]["reason"]
            .as_str()
            .unwrap()
            .contains("checksum mismatch"),
        "{f:?}"
    );
    // The other shards were still checked.
    assert_eq!(r["shards"], s.shards() as u64);
}

#[test]
fn missing_external_object_is_corruption() {
    let s = build_store();
    std::fs::remove_file(s.path(&s.external["big-0"])).unwrap();
    let out = run_path(s.root(), &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["uid"], "big-0");
    assert_eq!(f[0]["key"], s.shard_of["big-0"].as_str());
    assert_eq!(f[0]["kind"], "missing_external");
}

#[test]
fn corrupt_external_object_is_found_by_streaming() {
    let s = build_store();
    let path = s.path(&s.external["big-1"]);
    let len = std::fs::metadata(&path).unwrap().len() as usize;
    flip(&path, len / 2);
    let out = run_path(s.root(), &["--quiet"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains(&format!("CORRUPT {} uid=big-1:", s.shard_of["big-1"])),
        "{}",
        stdout(&out)
    );
}

#[test]
fn sample_checks_fewer_entries_reproducibly() {
    let s = build_store();
    let sampled = |seed: &str| {
        json(&run_path(
            s.root(),
            &["--json", "--sample", "40", "--seed", seed],
        ))
    };
    let a = sampled("11");
    let checked = a["entries_checked"].as_u64().unwrap();
    assert!(checked > 0 && checked < 24, "{checked}");
    assert_eq!(a["entries_total"], 24);
    assert_eq!(a["sample"]["seed"], 11);
    assert_eq!(sampled("11")["entries_checked"], checked);
    // Structure is checked for every shard whatever the sample.
    assert_eq!(a["shards"], s.shards() as u64);
}

#[test]
fn single_shard_file_is_verified_alone() {
    let s = build_store();
    let good = &s.shard_of["file-1"];
    let bad = s.shard_of.values().find(|k| *k != good).unwrap().clone();
    let bytes = std::fs::read(s.path(&bad)).unwrap();
    flip(&s.path(&bad), bytes.len() - 10);

    let out = run_path(&s.path(good), &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let r = json(&out);
    assert_eq!(r["shards"], 1);
    assert_eq!(r["only_key"], good.as_str());
    let in_good = s.shard_of.values().filter(|k| *k == good).count() as u64;
    assert_eq!(r["entries_checked"], in_good);

    let out = run_path(&s.path(&bad), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains(&format!("CORRUPT {bad}:")),
        "{}",
        stdout(&out)
    );
}

#[test]
fn shard_under_the_wrong_key_is_a_placement_finding() {
    let s = build_store();
    let key = s.shard_of["file-0"].clone();
    let (date, file) = key.split_once('/').unwrap();
    let other_day = if date == "20250301" {
        "20250302"
    } else {
        "20250301"
    };
    let moved = format!("{other_day}/{file}");
    if s.path(&moved).exists() {
        std::fs::remove_file(s.path(&moved)).unwrap();
    }
    std::fs::rename(s.path(&key), s.path(&moved)).unwrap();
    let r = json(&run_path(s.root(), &["--json"]));
    let f = findings(&r);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["key"], moved.as_str());
    assert_eq!(f[0]["kind"], "placement");
}

#[test]
fn stray_objects_in_the_shard_layout_are_findings() {
    let s = build_store();
    std::fs::write(s.path("20250301/notes.txt"), b"hello").unwrap();
    std::fs::write(s.path("20250301/ff.des"), b"not a shard").unwrap();
    std::fs::write(s.path("README"), b"not under the shard layout").unwrap();
    let out = run_path(s.root(), &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    let keys: Vec<&str> = findings(&r)
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["20250301/ff.des", "20250301/notes.txt"]);
    assert!(findings(&r).iter().all(|f| f["kind"] == "stray"));
    assert_eq!(r["stray_objects"], 2);
    assert_eq!(r["corrupt_shards"], 0);
}

#[test]
fn missing_paths_and_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let out = run_path(&missing, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    assert!(!missing.exists(), "verifying must not create the store");
    // A directory that is not a store.
    assert_eq!(run_path(dir.path(), &[]).status.code(), Some(2));
    assert_eq!(run(&[]).status.code(), Some(2));
    assert_eq!(
        run_path(dir.path(), &["--layout", "legacy"]).status.code(),
        Some(2)
    );
    assert_eq!(
        run_path(dir.path(), &["--sample", "0"]).status.code(),
        Some(2)
    );
    assert_eq!(
        run_path(dir.path(), &["--jobs", "0"]).status.code(),
        Some(2)
    );
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(stdout(&help).contains("Exit status:"));
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/legacy-des")
}

#[test]
fn legacy_shard_files_verify_clean() {
    let expected: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("format/expected.json")).unwrap())
            .unwrap();
    let shards = expected["shards"].as_array().unwrap();
    assert!(shards.len() >= 4);
    for shard in shards {
        let file = shard["file"].as_str().unwrap();
        let out = run_path(&fixtures().join("format").join(file), &["--json"]);
        assert_eq!(out.status.code(), Some(0), "{file}: {}", stdout(&out));
        let r = json(&out);
        let n = shard["entries"].as_array().unwrap().len() as u64;
        assert_eq!(r["entries_checked"], n, "{file}");
        assert_eq!(r["layout"], "legacy");
    }
}

#[test]
fn legacy_store_verifies_clean() {
    let expected: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("store/expected.json")).unwrap())
            .unwrap();
    let files = expected["files"].as_array().unwrap().len() as u64;
    let root = fixtures().join("store/shards");
    let out = run_path(&root, &["--layout", "legacy", "--n-bits", "4", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let r = json(&out);
    assert_eq!(r["entries_checked"], files);
    assert_eq!(r["stray_objects"], 0);
    // Legacy entries are checked against the shard their name routes to, so
    // the wrong n_bits shows up as misrouted entries (or unparseable names).
    let wrong = run_path(&root, &["--layout", "legacy", "--n-bits", "8", "--json"]);
    assert_eq!(wrong.status.code(), Some(1));
}

#[test]
fn lone_v3_shard_is_checked_against_itself() {
    let s = build_store();
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = |uid: &str, name: &str| {
        let dst = elsewhere.path().join(name);
        std::fs::copy(s.path(&s.shard_of[uid]), &dst).unwrap();
        dst
    };
    // Entries route to the shard its trailer names, whatever the file is called.
    let inline_only = s
        .shard_of
        .iter()
        .find(|(_, k)| s.external.keys().all(|big| &s.shard_of[big] != *k));
    let (uid, _) = inline_only.unwrap();
    let out = run_path(&copy(uid, "copy.des"), &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(json(&out)["n_bits"], Value::Null);

    // Big files are only reachable from a v3 store root: unchecked, not corrupt.
    let out = run_path(&copy("big-0", "big.des"), &["--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let r = json(&out);
    assert!(findings(&r).is_empty());
    let problems = r["problems"].as_array().unwrap();
    assert!(problems.iter().any(|p| p["uid"] == "big-0"), "{problems:?}");
}

/// Logs a tombstone for `uid` (of the day of shard `key`) as if written
/// `days` ago: the log name carries the time, and no tool backdates it.
fn log_old_tombstone(s: &Built, uid: &str, key: &str, days: i64) {
    let date: u32 = key.split('/').next().unwrap().parse().unwrap();
    let at = Timestamp::from_micros(Timestamp::now().micros() - days * 86_400_000_000);
    let t = Tombstone::for_date(uid, date, DeleteReason::Gdpr, "dpo").unwrap();
    let name = format!("{}-{date:08}-u{uid}.json", format_time(at));
    let path = s.root().join(LOG_PREFIX).join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, t.to_json().unwrap()).unwrap();
}

#[test]
fn one_shard_of_a_store_is_judged_for_deleted_files_too() {
    let s = build_store();
    let key = s.shard_of["file-1"].clone();
    log_old_tombstone(&s, "file-1", &key, 10);

    let out = run_path(&s.path(&key), &["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let r = json(&out);
    let overdue = r["overdue_deletions"].as_array().unwrap();
    assert_eq!(overdue.len(), 1, "{r:#}");
    assert_eq!(overdue[0]["key"], key.as_str());
    assert_eq!(overdue[0]["uid"], "file-1");
    assert!(findings(&r).is_empty(), "not corruption: {r:#}");

    let other = s.shard_of.values().find(|k| **k != key).unwrap();
    assert_eq!(run_path(&s.path(other), &[]).status.code(), Some(0));
    assert_eq!(
        run_path(&s.path(&key), &["--max-delay", "11d"])
            .status
            .code(),
        Some(0)
    );

    // A copy outside its store has no tombstones to be judged by.
    let lone = tempfile::tempdir().unwrap();
    let copy = lone.path().join("copy.des");
    std::fs::copy(s.path(&key), &copy).unwrap();
    let out = run_path(&copy, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(json(&out)["max_delay_seconds"], Value::Null);
}

#[test]
fn max_delay_takes_a_duration_and_is_documented() {
    let s = build_store();
    for bad in ["1w", "", "-1h", "soon"] {
        let out = run_path(s.root(), &["--max-delay", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
    let out = run_path(s.root(), &["--json", "--max-delay", "90m"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(json(&out)["max_delay_seconds"], 5_400);
    let help = stdout(&run(&["--help"]));
    assert!(help.contains("--max-delay <DURATION>"), "{help}");
    assert!(
        help.contains("deleted files still in a shard more than --max-delay"),
        "{help}"
    );
}
