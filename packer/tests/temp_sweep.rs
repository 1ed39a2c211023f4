#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! A packer killed mid-write (on an observed temp file, so the kill surely
//! lands during a shard write) leaves no partial shard: whatever is visible
//! under a final name is whole. It does leave its temp file in a local
//! store; the next run removes it (with `--abort-stale-uploads-after`) and
//! completes.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{CREATED, assert_exit, dir_args, pack_dir, report};
use des_format::Timestamp;
use des_storage::local::TEMP_PREFIX;
use des_storage::{DesStore, LocalStore};

fn temp_files(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        // The packer creates and renames files while we walk.
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
        .map(walkdir::DirEntry::into_path)
        .collect()
}

/// A temp file of a shard (`<YYYYMMDD>/.des-tmp-…`), not of the store
/// settings written at the very start.
fn is_shard_temp(p: &Path) -> bool {
    p.parent()
        .and_then(Path::file_name)
        .is_some_and(|d| d.len() == 8 && d.to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
}

/// Starts `des-pack`, SIGKILLs it once a shard's temp file exists, and
/// returns the temp files left behind.
fn kill_mid_write(args: &[&str], out: &Path) -> Vec<PathBuf> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_des-pack"))
        .args(args)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !temp_files(out).iter().any(|p| is_shard_temp(p)) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the packer finished before a shard write was seen; make the input bigger"
        );
        assert!(Instant::now() < deadline, "no shard write within 60 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.code(), None, "killed by the signal, not finished");
    assert_visible_shards_whole(out);
    temp_files(out)
}

/// Every shard readers can see (the store's own listing) has a valid index.
fn assert_visible_shards_whole(out: &Path) {
    if !out.join("_des/store.json").exists() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt
        .block_on(DesStore::open(Arc::new(LocalStore::new(out).unwrap())))
        .unwrap();
    for meta in rt.block_on(store.list_shards()).unwrap() {
        let key = meta.key;
        rt.block_on(store.load_index(&key))
            .unwrap_or_else(|e| panic!("{key}: {e}"))
            .unwrap();
    }
}

#[test]
fn a_rerun_sweeps_the_temp_files_of_a_killed_packer() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut files = BTreeMap::new();
    let mut x = 11u64;
    // Half-entropy bytes keep zstd -19 busy, so shards take a while to write.
    for i in 0..300 {
        let body: Vec<u8> = (0..(20_000 + (x >> 50) as usize))
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 60) as u8) | b'@'
            })
            .collect();
        let uid = format!("f{i:04}.bin");
        std::fs::write(src.path().join(&uid), &body).unwrap();
        files.insert(uid, body);
    }
    let store = out.path().to_str().unwrap();
    let slow = [
        "-q",
        "--n-bits",
        "4",
        "--compression",
        "zstd",
        "--zstd-level",
        "19",
    ];
    let args = [&dir_args(src.path(), store)[..], &slow].concat();
    let mut left = Vec::new();
    // The write seen may end between the look and the kill; another try
    // then lands in the next one.
    for _ in 0..3 {
        left = kill_mid_write(&args, out.path());
        if !left.is_empty() {
            break;
        }
    }
    assert!(!left.is_empty(), "no kill landed mid-write");

    // The default threshold (24h) leaves a fresh leftover alone: it might be
    // another packer's write in progress. (One shard only: this run is not
    // what is under test.)
    let o = pack_dir(
        src.path(),
        store,
        &[&slow[..], &["--json", "--shard-range", "0-0"]].concat(),
    );
    assert_exit(&o, 0);
    assert_eq!(report(&o)["temp_files_swept"], 0);
    assert!(!temp_files(out.path()).is_empty());

    let o = pack_dir(
        src.path(),
        store,
        &[&slow[..], &["--json", "--abort-stale-uploads-after", "0s"]].concat(),
    );
    assert_exit(&o, 0);
    let swept = report(&o)["temp_files_swept"].as_u64().unwrap();
    assert_eq!(swept, left.len() as u64, "{left:?}");
    assert_eq!(temp_files(out.path()), Vec::<PathBuf>::new());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt
        .block_on(DesStore::open(Arc::new(
            LocalStore::new(out.path()).unwrap(),
        )))
        .unwrap();
    let ts = Timestamp::parse_rfc3339(CREATED).unwrap();
    for (uid, want) in &files {
        let (_, got) = rt
            .block_on(store.get_file(uid, ts))
            .unwrap_or_else(|e| panic!("{uid}: {e}"));
        assert!(got == *want, "{uid}: bytes differ");
    }
}
