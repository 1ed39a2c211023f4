//! des-verify's deletion report, read-rate limit and option checks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Instant;

use common::*;

#[test]
fn pending_tombstones_are_reported_with_their_garbage_ratio() {
    let s = Local::build(standard_specs());
    let root = s.root_str();
    let victim = s.spec("file-12");
    let add = run(
        "des-tombstones",
        &[
            "--store",
            &root,
            "add",
            "--uid",
            "file-12",
            "--created-at",
            &victim.created_at,
            "--reason",
            "user-request",
            "--deleted-by",
            "t",
        ],
    );
    assert_eq!(add.status.code(), Some(0), "{}", describe(&add));

    let out = run("des-verify", &[&root, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "pending deletes are not corruption: {}",
        describe(&out)
    );
    let r = json(&out);
    assert_eq!(r["tombstones_pending"], 1);
    let pending = r["shards_with_pending_tombstones"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{r:#}");
    assert_eq!(pending[0]["key"], s.shard_of["file-12"].as_str());
    assert_eq!(pending[0]["pending_tombstones"], 1);
    assert_eq!(pending[0]["deleted_entries"], 1);
    let ratio = pending[0]["garbage_ratio"].as_f64().unwrap();
    let shard = &s.shard_of["file-12"];
    let inline: usize = s
        .specs
        .iter()
        .filter(|f| !f.external && &s.shard_of[&f.uid] == shard)
        .map(|f| f.size)
        .sum();
    let expected = victim.size as f64 / inline as f64;
    assert!((ratio - expected).abs() < 1e-9, "{ratio} vs {expected}");

    let text = run("des-verify", &[&root]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("PENDING") && stdout.contains("1 tombstones"),
        "{stdout}"
    );

    // After a repack nothing is pending and the shard holds no deleted file.
    let repack = run(
        "des-repack",
        &["--store", &root, "--min-garbage-ratio", "0", "--quiet"],
    );
    assert_eq!(repack.status.code(), Some(0), "{}", describe(&repack));
    let r = json(&run("des-verify", &[&root, "--json"]));
    assert_eq!(r["tombstones_pending"], 0);
    assert_eq!(
        r["shards_with_pending_tombstones"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(r["clean"], true);
}

#[test]
fn rate_limits_the_read_speed() {
    let s = Local::build(standard_specs());
    let root = s.root_str();
    let fast = json(&run("des-verify", &[&root, "--json"]));
    let bytes = fast["bytes_read"].as_u64().unwrap();
    assert!(bytes > 1_000_000, "{bytes}");
    // At 1 MB/s the ~1.3 MB read must take about a second; unlimited, far less.
    let started = Instant::now();
    let out = run("des-verify", &[&root, "--json", "--rate", "1M"]);
    let took = started.elapsed().as_secs_f64();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let expected = bytes as f64 / f64::from(1 << 20);
    assert!(
        took >= expected * 0.8,
        "took {took:.2}s for {bytes} bytes at 1 MiB/s"
    );
    let bad = run("des-verify", &[&root, "--rate", "0"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn zones_and_a_path_are_exclusive_and_a_bad_zones_file_is_an_error() {
    let s = Local::build(vec![FileSpec::new("a", "2024-05-17T10:00:00Z", 100)]);
    let root = s.root_str();
    let zones = s.aux("zones.yaml");
    std::fs::write(&zones, "not: [a zones file").unwrap();
    let both = run("des-verify", &[&root, "--zones", zones.to_str().unwrap()]);
    assert_eq!(both.status.code(), Some(2), "{}", describe(&both));
    let bad = run("des-verify", &["--zones", zones.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("zones"));
    let none = run("des-verify", &[]);
    assert_eq!(none.status.code(), Some(2));
}
