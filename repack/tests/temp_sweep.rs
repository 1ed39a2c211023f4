//! `des-repack --sweep-temp-after`: temp files that crashed writers left in
//! a local store are removed at the start of a run, fresh ones are not.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::*;

/// A temp file beside a shard, last modified `age` ago.
fn leftover(dir: &Path, name: &str, age: Duration) -> PathBuf {
    let p = dir.join(format!("{}{name}", des_storage::local::TEMP_PREFIX));
    let f = std::fs::File::create(&p).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
    p
}

#[test]
fn a_run_sweeps_temp_files_older_than_the_threshold() {
    let s = Local::build(vec![FileSpec::new("a", "2024-05-17T10:00:00Z", 5_000)]);
    let shard = s.shard_of.values().next().unwrap();
    let day = s.dir.path().join(shard).parent().unwrap().to_path_buf();
    let dead = leftover(&day, "0A.des-1", Duration::from_secs(2 * 3600));
    let fresh = leftover(&day, "0B.des-2", Duration::ZERO);
    let root = s.root_str();

    let dry = run("des-repack", &["--store", &root, "--dry-run"]);
    assert_eq!(dry.status.code(), Some(0), "{}", describe(&dry));
    assert!(dead.exists(), "a dry run changes nothing");

    // Default threshold, 1h.
    let out = run("des-repack", &["--store", &root, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(!dead.exists() && fresh.exists(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("removed 1 temp files"),
        "{}",
        describe(&out)
    );

    let out = run(
        "des-repack",
        &["--store", &root, "--json", "--sweep-temp-after", "0s"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(!fresh.exists(), "{}", describe(&out));
}
