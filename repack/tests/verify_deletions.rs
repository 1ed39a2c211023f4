//! des-verify's deletion report, read-rate limit and option checks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Instant;

use common::*;
use des_format::Timestamp;
use des_storage::tombstones::{DeleteReason, LOG_PREFIX, Tombstone, format_time};

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

/// Logs a tombstone for `uid` as a writer whose clock read `logged_at`
/// would: `des-tombstones` always logs at its own clock, and the log's name
/// (`_tombstones/<logged time>-<date>-u<uid>.json`) is what carries the time.
fn log_tombstone_at(s: &Local, uid: &str, logged_at: Timestamp) {
    let spec = s.spec(uid);
    let mut t = Tombstone::new(uid, spec.ts(), DeleteReason::Gdpr, "dpo");
    t.deleted_at = logged_at;
    assert!(
        uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
        "{uid:?} would need percent-encoding in the name"
    );
    let name = format!("{}-{}-u{uid}.json", format_time(logged_at), spec.date());
    let path = s.root().join(LOG_PREFIX).join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, t.to_json().unwrap()).unwrap();
}

fn days_ago(days: i64) -> Timestamp {
    Timestamp::from_micros(Timestamp::now().micros() - days * 86_400_000_000)
}

fn overdue(r: &serde_json::Value) -> &Vec<serde_json::Value> {
    r["overdue_deletions"].as_array().unwrap()
}

fn held(r: &serde_json::Value) -> &Vec<serde_json::Value> {
    r["held_deletions"].as_array().unwrap()
}

#[test]
fn a_deleted_file_kept_past_the_deadline_is_a_finding() {
    let s = Local::build(standard_specs());
    let root = s.root_str();
    log_tombstone_at(&s, "file-12", days_ago(30));

    let out = run("des-verify", &[&root, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let r = json(&out);
    assert_eq!(r["clean"], false);
    assert_eq!(r["max_delay_seconds"], 86_400);
    // Not corruption: the store is intact, the deletion promise is not.
    assert_eq!(r["corrupt_entries"], 0);
    assert_eq!(r["findings"].as_array().unwrap().len(), 0, "{r:#}");
    let found = overdue(&r);
    assert_eq!(found.len(), 1, "{r:#}");
    assert_eq!(found[0]["key"], s.shard_of["file-12"].as_str());
    assert_eq!(found[0]["uid"], "file-12");
    assert_eq!(found[0]["date"], s.spec("file-12").date().as_str());
    assert_eq!(found[0]["tombstone_state"], "pending");
    let age = found[0]["tombstone_age_seconds"].as_u64().unwrap();
    assert!((30 * 86_400..31 * 86_400).contains(&age), "{age}");
    assert!(found[0].get("hold").is_none(), "{r:#}");
    assert_eq!(held(&r).len(), 0);
    let pending = r["shards_with_pending_tombstones"].as_array().unwrap();
    assert_eq!(pending[0]["overdue_entries"], 1, "{r:#}");

    let text = run("des-verify", &[&root]);
    assert_eq!(text.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains(&format!(
            "OVERDUE {} uid=file-12 date={}: tombstone pending",
            s.shard_of["file-12"],
            s.spec("file-12").date()
        )) && stdout.contains("(30d ")
            && stdout.contains("result:          DELETED FILES KEPT PAST THEIR DEADLINE"),
        "{stdout}"
    );

    // A deadline the tombstone has not reached yet: reported, not an error.
    let later = run("des-verify", &[&root, "--json", "--max-delay", "31d"]);
    assert_eq!(later.status.code(), Some(0), "{}", describe(&later));
    let r = json(&later);
    assert_eq!(overdue(&r).len(), 0);
    assert_eq!(r["tombstones_pending"], 1);
    assert_eq!(r["clean"], true);

    // The repacker's own deadline removes the bytes, and then all is well.
    let repack = run(
        "des-repack",
        &["--store", &root, "--max-delay", "0s", "--quiet"],
    );
    assert_eq!(repack.status.code(), Some(0), "{}", describe(&repack));
    let after = run("des-verify", &[&root, "--json"]);
    assert_eq!(after.status.code(), Some(0), "{}", describe(&after));
    let r = json(&after);
    assert_eq!(
        (overdue(&r).len(), r["tombstones_pending"].as_u64()),
        (0, Some(0))
    );
    assert_eq!(r["clean"], true);
    s.check_files(&["file-12"]);
}

#[test]
fn deleted_bytes_that_came_back_after_the_repack_are_a_finding() {
    let s = Local::build(standard_specs());
    let root = s.root_str();
    log_tombstone_at(&s, "file-12", days_ago(3));
    let key = s.shard_of["file-12"].clone();
    let before = std::fs::read(s.root().join(&key)).unwrap();
    let repack = run(
        "des-repack",
        &["--store", &root, "--max-delay", "0s", "--quiet"],
    );
    assert_eq!(repack.status.code(), Some(0), "{}", describe(&repack));
    assert_eq!(run("des-verify", &[&root]).status.code(), Some(0));

    // E.g. a backup of the old generation restored over the shard.
    std::fs::write(s.root().join(&key), before).unwrap();
    let out = run("des-verify", &[&root, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let r = json(&out);
    let found = overdue(&r);
    assert_eq!(found.len(), 1, "{r:#}");
    assert_eq!(
        (found[0]["key"].as_str(), found[0]["uid"].as_str()),
        (Some(key.as_str()), Some("file-12"))
    );
    assert_eq!(found[0]["tombstone_state"], "applied");
    // The repack compacted it: the verifier knows it by hash only.
    assert!(found[0]["logged_at"].is_null(), "{r:#}");
    assert_eq!(r["tombstones_pending"], 0);
    let text = String::from_utf8_lossy(&run("des-verify", &[&root]).stdout).into_owned();
    assert!(text.contains("tombstone marked applied"), "{text}");
}

#[test]
fn a_legal_hold_keeps_deleted_bytes_without_a_finding() {
    let s = Local::build(standard_specs());
    let root = s.root_str();
    log_tombstone_at(&s, "file-12", days_ago(30));
    let hold = run(
        "des-tombstones",
        &[
            "--store",
            &root,
            "hold",
            "add",
            "--name",
            "case-42",
            "--uid-prefix",
            "file-1",
            "--created-by",
            "legal",
        ],
    );
    assert_eq!(hold.status.code(), Some(0), "{}", describe(&hold));

    let out = run("des-verify", &[&root, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let r = json(&out);
    assert_eq!(overdue(&r).len(), 0, "{r:#}");
    let kept = held(&r);
    assert_eq!(kept.len(), 1, "{r:#}");
    assert_eq!(kept[0]["key"], s.shard_of["file-12"].as_str());
    assert_eq!(kept[0]["uid"], "file-12");
    assert_eq!(kept[0]["hold"], "case-42");
    assert_eq!(kept[0]["tombstone_state"], "pending");
    assert_eq!(r["clean"], true);
    let text = String::from_utf8_lossy(&run("des-verify", &[&root]).stdout).into_owned();
    assert!(
        text.contains("HELD ") && text.contains(r#"kept by legal hold "case-42""#),
        "{text}"
    );

    // Released: the deadline applies again.
    let release = run(
        "des-tombstones",
        &["--store", &root, "hold", "release", "--name", "case-42"],
    );
    assert_eq!(release.status.code(), Some(0), "{}", describe(&release));
    assert_eq!(run("des-verify", &[&root]).status.code(), Some(1));
}

#[test]
fn a_fresh_tombstone_is_a_finding_only_past_max_delay() {
    // A uid too long to embed in its log name: its record is read.
    let long = format!("long-{}", "x".repeat(250));
    let mut specs = standard_specs();
    specs.push(FileSpec::new(&long, "2024-05-17T12:00:00Z", 5_000));
    let s = Local::build(specs);
    let root = s.root_str();
    for uid in ["file-12", long.as_str()] {
        let add = run(
            "des-tombstones",
            &[
                "--store",
                &root,
                "add",
                "--uid",
                uid,
                "--created-at",
                &s.spec(uid).created_at,
                "--reason",
                "gdpr",
                "--deleted-by",
                "t",
            ],
        );
        assert_eq!(add.status.code(), Some(0), "{}", describe(&add));
    }
    let names: Vec<String> = std::fs::read_dir(s.root().join(LOG_PREFIX))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.contains("-h")), "{names:?}");

    let young = run("des-verify", &[&root, "--json"]);
    assert_eq!(young.status.code(), Some(0), "{}", describe(&young));
    let r = json(&young);
    assert_eq!(overdue(&r).len(), 0);
    assert_eq!(r["tombstones_pending"], 2);

    let now = run("des-verify", &[&root, "--json", "--max-delay", "0s"]);
    assert_eq!(now.status.code(), Some(1), "{}", describe(&now));
    let r = json(&now);
    let mut uids: Vec<&str> = overdue(&r)
        .iter()
        .map(|f| f["uid"].as_str().unwrap())
        .collect();
    uids.sort_unstable();
    let mut want = vec!["file-12", long.as_str()];
    want.sort_unstable();
    assert_eq!(uids, want, "{r:#}");
    assert_eq!(r["max_delay_seconds"], 0);

    let bad = run("des-verify", &[&root, "--max-delay", "1w"]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
}
