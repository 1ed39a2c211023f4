#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! End-to-end: the `des-pack` binary on real files, read back through the library.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{CREATED, corpus, des_pack, dir_args, pack_dir, report};
use des_format::Timestamp;
use des_storage::{DesStore, LocalStore};
use serde_json::Value;

fn open(root: &Path) -> DesStore {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(DesStore::open(Arc::new(LocalStore::new(root).unwrap())))
        .unwrap()
}

fn read_back(root: &Path, files: &BTreeMap<String, Vec<u8>>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = open(root);
    let ts = Timestamp::parse_rfc3339(CREATED).unwrap();
    for (uid, want) in files {
        let (_, got) = rt
            .block_on(store.get_file(uid, ts))
            .unwrap_or_else(|e| panic!("{uid}: {e}"));
        assert!(got == *want, "{uid}: bytes differ");
    }
}

fn shard_files(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .filter(|p| p.extension().is_some_and(|x| x == "des"))
        .filter(|p| !p.file_name().unwrap().to_str().unwrap().starts_with('.'))
        .collect()
}

#[test]
fn pack_dir_read_back_and_rerun_is_idempotent() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let files = corpus(src.path());
    let store = out.path().to_str().unwrap();
    let args = dir_args(src.path(), store);
    let first = des_pack(
        &[
            &args[..],
            &["--big-file-threshold", "64K", "--json", "-j", "3"],
        ]
        .concat(),
    );
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let r = report(&first);
    assert_eq!(r["files_packed"].as_u64(), Some(files.len() as u64));
    let big = files.values().filter(|d| d.len() > 64 * 1024).count() as u64;
    assert!(big >= 2);
    assert_eq!(r["big_files"].as_u64(), Some(big));
    assert!(
        r["bytes_stored"].as_u64() < r["bytes_in"].as_u64(),
        "text must compress"
    );
    read_back(out.path(), &files);

    let before: Vec<_> = shard_files(out.path())
        .into_iter()
        .map(|p| {
            (
                p.clone(),
                std::fs::metadata(&p).unwrap().modified().unwrap(),
            )
        })
        .collect();
    let again = des_pack(&[&args[..], &["--big-file-threshold", "64K", "--json"]].concat());
    assert_eq!(again.status.code(), Some(0));
    let r = report(&again);
    assert_eq!(r["files_packed"].as_u64(), Some(0));
    assert_eq!(
        r["files_already_present"].as_u64(),
        Some(files.len() as u64)
    );
    assert_eq!(r["shards_written"].as_u64(), Some(0));
    for (p, m) in before {
        assert_eq!(
            std::fs::metadata(&p).unwrap().modified().unwrap(),
            m,
            "{p:?} rewritten"
        );
    }
}

#[test]
fn appending_makes_a_new_generation_with_old_and_new_entries() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let store = out.path().to_str().unwrap();
    let mut all = BTreeMap::new();
    let mut writes: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..3 {
        let dir = src.path().join(format!("r{round}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..40 {
            // Same uid space each round, disjoint names: shards receive appends.
            let uid = format!("{round}-{i}.txt");
            let body = format!("round {round} file {i} ")
                .repeat(i + 1)
                .into_bytes();
            std::fs::write(dir.join(&uid), &body).unwrap();
            all.insert(uid, body);
        }
        let o = pack_dir(&dir, store, &["--n-bits", "4", "--json"]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        for shard in report(&o)["shards"].as_array().unwrap() {
            *writes
                .entry(shard["key"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    read_back(out.path(), &all);
    let shards = shard_files(out.path());
    assert!(shards.len() <= 16);
    // Each write of a shard is one generation, and later ones kept earlier entries.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = open(out.path());
    assert_eq!(shards.len(), writes.len());
    assert!(
        writes.values().any(|w| *w > 1),
        "no shard was appended to: {writes:?}"
    );
    for (key, n) in &writes {
        let ix = rt.block_on(s.load_index(key)).unwrap().unwrap();
        assert_eq!(ix.index.trailer().unwrap().generation, *n, "{key}");
    }
}

#[test]
fn manifest_failures_are_reported_and_the_rest_is_packed() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("a.txt"), b"alpha").unwrap();
    std::fs::write(src.path().join("b.txt"), b"bravo").unwrap();
    let manifest = src.path().join("m.jsonl");
    let lines = [
        r#"{"uid":"a","created_at":"2024-05-17T10:00:00Z","source":"a.txt","content_type":"text/plain","meta":{"k":1}}"#,
        r#"{"uid":"b","created_at":"2024-05-17T11:00:00+02:00","source":"b.txt"}"#,
        r#"{"uid":"missing","created_at":"2024-05-17T10:00:00Z","source":"nope.txt"}"#,
        r#"{"uid":"badtime","created_at":"yesterday","source":"a.txt"}"#,
        r#"{"uid":"a","created_at":"2024-05-17T12:00:00Z","source":"b.txt"}"#,
        r#"not json"#,
    ];
    std::fs::write(&manifest, lines.join("\n")).unwrap();
    let rep = src.path().join("report.json");
    let o = des_pack(&[
        "--manifest",
        manifest.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
        "--report",
        rep.to_str().unwrap(),
        "-q",
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: Value = serde_json::from_slice(&std::fs::read(rep).unwrap()).unwrap();
    assert_eq!(r["files_packed"].as_u64(), Some(2));
    assert_eq!(r["files_failed"].as_u64(), Some(4), "{r:#}");
    // Each failure says which kind it is, for scripts and metrics.
    let mut kinds: Vec<(String, String)> = r["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let who = f["uid"]
                .as_str()
                .map_or_else(|| format!("line {}", f["line"]), String::from);
            (who, f["kind"].as_str().unwrap().to_string())
        })
        .collect();
    kinds.sort();
    let want = [
        ("a", "duplicate"),
        ("badtime", "record"),
        ("line 6", "record"),
        ("missing", "source_missing"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(u, k)| (u.to_string(), k.to_string()))
        .collect();
    assert_eq!(kinds, want, "{r:#}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = open(out.path());
    let (loc, data) = rt
        .block_on(s.get_file("a", Timestamp::parse_rfc3339(CREATED).unwrap()))
        .unwrap();
    assert_eq!(data, b"alpha");
    assert_eq!(loc.content_type.as_deref(), Some("text/plain"));
    assert_eq!(loc.meta.as_deref(), Some(r#"{"k":1}"#));
    let (_, data) = rt
        .block_on(s.get_file(
            "b",
            Timestamp::parse_rfc3339("2024-05-17T09:00:00Z").unwrap(),
        ))
        .unwrap();
    assert_eq!(data, b"bravo");
}

#[test]
fn wrong_n_bits_and_bad_usage_exit_2() {
    let out = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("x"), b"x").unwrap();
    let store = out.path().to_str().unwrap();
    let d = src.path().to_str().unwrap();
    assert_eq!(
        pack_dir(src.path(), store, &["--n-bits", "6", "-q"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        pack_dir(src.path(), store, &["--n-bits", "7", "-q"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        des_pack(&["--dir", d, "--out", store]).status.code(),
        Some(2)
    );
    assert_eq!(
        des_pack(&["--manifest", "/nonexistent.json", "--out", store])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn shard_ranges_split_the_work_and_skip_the_rest() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    // All-digit uids route by value: uid i lands in shard i mod 16.
    let files: BTreeMap<String, Vec<u8>> = (0..64)
        .map(|i| {
            (
                i.to_string(),
                format!("file {i} ").repeat(i + 1).into_bytes(),
            )
        })
        .collect();
    for (uid, data) in &files {
        std::fs::write(src.path().join(uid), data).unwrap();
    }
    let run = |range: &str| {
        let out = out.path().to_str().unwrap();
        let o = pack_dir(
            src.path(),
            out,
            &["--n-bits", "4", "--shard-range", range, "--json"],
        );
        common::assert_exit(&o, 0);
        report(&o)
    };
    let low = run("0-5");
    assert_eq!(low["files_packed"].as_u64(), Some(24));
    assert_eq!(low["files_outside_shard_range"].as_u64(), Some(40));
    assert_eq!(low["files_failed"].as_u64(), Some(0));
    let mut shards: Vec<String> = shard_files(out.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    shards.sort();
    assert_eq!(
        shards,
        ["0.des", "1.des", "2.des", "3.des", "4.des", "5.des"]
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = open(out.path());
    let ts = Timestamp::parse_rfc3339(CREATED).unwrap();
    let e = rt.block_on(store.get_file("6", ts)).unwrap_err();
    assert_eq!(e.kind(), des_storage::ErrorKind::NotFound);

    let high = run("6-15");
    assert_eq!(high["files_packed"].as_u64(), Some(40));
    assert_eq!(high["files_outside_shard_range"].as_u64(), Some(24));
    assert_eq!(high["shards_written"].as_u64(), Some(10));
    read_back(out.path(), &files);
}

#[test]
fn shard_partitions_from_an_indexed_job_cover_every_file_once() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    // All-digit uids route by value: uid i lands in shard i mod 16.
    for i in 0..64 {
        std::fs::write(src.path().join(i.to_string()), format!("file {i}")).unwrap();
    }
    let run = |part: &str| {
        let out = out.path().to_str().unwrap();
        let o = pack_dir(
            src.path(),
            out,
            &["--n-bits", "4", "--shard-partition", part, "--json"],
        );
        common::assert_exit(&o, 0);
        report(&o)
    };
    let mut packed = 0;
    for part in ["0/4", "1/4", "2/4", "3/4"] {
        let r = run(part);
        // Each of 4 parts owns 4 of the 16 shards, so 16 of the 64 files.
        assert_eq!(r["files_packed"].as_u64(), Some(16), "{part}");
        assert_eq!(r["files_outside_shard_range"].as_u64(), Some(48), "{part}");
        packed += 16;
    }
    assert_eq!(packed, 64);
    assert_eq!(shard_files(out.path()).len(), 16);
    // A count that does not divide the shard space is a usage error.
    let o = pack_dir(
        src.path(),
        out.path().to_str().unwrap(),
        &["--shard-partition", "0/3"],
    );
    common::assert_exit(&o, 2);
}

/// A stored file never changes: packing the same uid for the same day with
/// other bytes fails that file and keeps the stored bytes (the retriever's
/// hot cache serves v3 files without an index lookup on the strength of it).
#[test]
fn a_stored_file_is_never_replaced_by_other_bytes() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("a.txt"), b"first version").unwrap();
    std::fs::write(src.path().join("b.txt"), b"stays").unwrap();
    let out_dir = out.path().to_str().unwrap();
    assert_eq!(
        pack_dir(src.path(), out_dir, &["--json"]).status.code(),
        Some(0)
    );
    std::fs::write(src.path().join("a.txt"), b"second version").unwrap();
    let again = pack_dir(src.path(), out_dir, &["--json"]);
    let r = report(&again);
    assert_eq!(r["files_failed"].as_u64(), Some(1));
    assert_eq!(r["files_already_present"].as_u64(), Some(1));
    let reason = r["failures"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("different content"), "{reason}");
    assert_ne!(again.status.code(), Some(0), "a failed file fails the run");
    let kept = BTreeMap::from([
        ("a.txt".to_string(), b"first version".to_vec()),
        ("b.txt".to_string(), b"stays".to_vec()),
    ]);
    read_back(out.path(), &kept);
}

/// A stored entry whose bytes no longer match their CRC is never carried
/// into a new generation with a fresh CRC: appending to its shard fails
/// (exit 1) and the shard stays exactly as it was.
#[test]
fn a_corrupt_entry_is_not_copied_into_a_new_generation() {
    let (src, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = out.path().to_str().unwrap();
    let first = src.path().join("first");
    std::fs::create_dir_all(&first).unwrap();
    std::fs::write(first.join("a.bin"), common::noise(3, 20_000)).unwrap();
    common::assert_exit(&pack_dir(&first, store, &["--n-bits", "4"]), 0);
    let shard = shard_files(out.path()).pop().unwrap();
    let mut bytes = std::fs::read(&shard).unwrap();
    // Incompressible, so stored raw right after the header.
    bytes[des_format::v3::HEADER_LEN as usize + 10_000] ^= 0x40;
    std::fs::write(&shard, &bytes).unwrap();

    let target = des_format::routing::shard_index("a.bin", 4).unwrap();
    let uid = (0..)
        .map(|i| format!("b-{i}.bin"))
        .find(|u| des_format::routing::shard_index(u, 4).unwrap() == target)
        .unwrap();
    let second = src.path().join("second");
    std::fs::create_dir_all(&second).unwrap();
    std::fs::write(second.join(&uid), b"appended").unwrap();
    let o = pack_dir(&second, store, &["--json"]);
    common::assert_exit(&o, 1);
    let r = report(&o);
    assert_eq!(r["files_packed"], 0, "{r:#}");
    let reason = r["failures"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("CRC") || reason.contains("crc"), "{reason}");
    assert_eq!(r["failures"][0]["kind"], "shard_unusable", "{r:#}");
    assert_eq!(r["files_failed_by_kind"]["shard_unusable"], 1, "{r:#}");
    assert!(std::fs::read(&shard).unwrap() == bytes, "the shard changed");
}
