//! End-to-end: des-tombstones + des-repack + des-verify on local stores.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;

fn tombstone(s: &Local, uid: &str) {
    let spec = s.spec(uid);
    let out = run(
        "des-tombstones",
        &[
            "--store",
            &s.root_str(),
            "add",
            "--uid",
            uid,
            "--created-at",
            &spec.created_at,
            "--reason",
            "gdpr",
            "--deleted-by",
            "tester",
            "--ticket",
            "DPO-1",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

fn repack(s: &Local, extra: &[&str]) -> std::process::Output {
    let root = s.root_str();
    let mut args = vec!["--store", root.as_str(), "--json", "--big-file-grace", "0s"];
    args.extend_from_slice(extra);
    run("des-repack", &args)
}

/// Runs des-repack on `s` (big-file grace 0, lease TTL 1 s, plus `extra`)
/// made to abort at crash point `point`, and checks it did, there.
fn repack_crashing_at(s: &Local, point: &str, extra: &[&str]) {
    let crashed = bin("des-repack")
        .args(["--store", &s.root_str(), "--big-file-grace", "0s"])
        .args(["--lease-ttl", "1s", "--quiet"])
        .args(extra)
        .env("DES_REPACK_CRASH_AT", point)
        .output()
        .unwrap();
    assert!(!crashed.status.success(), "{point}: {}", describe(&crashed));
    assert!(
        String::from_utf8_lossy(&crashed.stderr).contains(point),
        "{point}: {}",
        describe(&crashed)
    );
}

fn verify_clean(s: &Local) {
    let out = run("des-verify", &[&s.root_str(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[test]
fn deleted_bytes_are_gone_and_everything_else_is_identical() {
    let s = Local::build(standard_specs());
    let deleted = ["file-03", "file-10", "big-a"];
    for uid in deleted {
        assert!(s.raw_contains(&needle(s.spec(uid))), "{uid} present before");
        tombstone(&s, uid);
    }
    // Tombstones alone hide nothing physically.
    assert!(s.raw_contains(&needle(s.spec("file-03"))));

    let out = repack(&s, &["--min-garbage-ratio", "0"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let r = json(&out);
    assert_eq!(r["entries_dropped"], 3, "{r:#}");
    assert_eq!(r["tombstones_pending_before"], 3);
    assert_eq!(r["tombstones_pending"], 0);
    assert!(r["shards_rewritten"].as_u64().unwrap() >= 1);
    assert!(r["bytes_reclaimed"].as_u64().unwrap() > 0);
    assert_eq!(r["big_files"]["deleted"].as_array().unwrap().len(), 1);

    for uid in deleted {
        assert!(!s.raw_contains(&needle(s.spec(uid))), "{uid} bytes remain");
    }
    s.check_files(&deleted);
    verify_clean(&s);

    // Applied, with the generation that no longer holds the file.
    let spec = s.spec("file-03");
    let show = run(
        "des-tombstones",
        &[
            "--store",
            &s.root_str(),
            "--json",
            "show",
            "--uid",
            "file-03",
            "--created-at",
            &spec.created_at,
        ],
    );
    assert_eq!(show.status.code(), Some(0), "{}", describe(&show));
    let shown = json(&show);
    assert_eq!(shown["deleted"], true);
    let shown = &shown["tombstones"];
    assert_eq!(shown[0]["state"], "applied");
    assert_eq!(shown[0]["applied"]["outcome"], "removed");
    assert_eq!(shown[0]["applied"]["generation"], 2);
    assert_eq!(shown[0]["ticket_id"], "DPO-1");

    // Nothing left to do: a second run rewrites nothing.
    let again = json(&repack(&s, &["--min-garbage-ratio", "0"]));
    assert_eq!(again["shards_considered"], 0);
    assert_eq!(again["shards_rewritten"], 0);
}

#[test]
fn dry_run_changes_nothing() {
    let s = Local::build(standard_specs());
    tombstone(&s, "file-05");
    let before = s.snapshot();
    let out = repack(&s, &["--dry-run", "--min-garbage-ratio", "0"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let r = json(&out);
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["shards"][0]["action"], "would_rewrite");
    assert_eq!(r["tombstones_pending"], 1);
    assert_eq!(s.snapshot(), before, "a dry run wrote something");
    // The plan says what the rewrite would leave and reclaim: the deleted
    // file's stored bytes (the index shrinks a little more).
    let plan = &r["shards"][0];
    assert_eq!(
        plan["entries_after"].as_u64(),
        plan["entries_before"].as_u64().map(|n| n - 1)
    );
    let estimate = r["bytes_reclaimed"].as_u64().unwrap();
    assert!(estimate >= s.spec("file-05").size as u64, "{r:#}");
    // The text plan is readable too.
    let text = run("des-repack", &["--store", &s.root_str(), "--dry-run"]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("dry run") && stdout.contains("WouldRewrite"),
        "{stdout}"
    );
    let real = json(&repack(&s, &["--min-garbage-ratio", "0"]));
    let reclaimed = real["bytes_reclaimed"].as_u64().unwrap();
    assert!(
        estimate <= reclaimed && reclaimed < estimate + 1024,
        "{estimate} vs {real:#}"
    );
}

#[test]
fn ratio_defers_until_the_delay_is_reached() {
    let s = Local::build(standard_specs());
    tombstone(&s, "file-00");
    let out = json(&repack(&s, &["--min-garbage-ratio", "0.9"]));
    assert_eq!(out["shards"][0]["action"], "deferred", "{out:#}");
    assert_eq!(out["shards"][0]["reason"], "below_ratio");
    assert_eq!(out["tombstones_pending"], 1);
    assert!(s.raw_contains(&needle(s.spec("file-00"))));

    let out = json(&repack(
        &s,
        &["--min-garbage-ratio", "0.9", "--max-delay", "0s"],
    ));
    assert_eq!(out["shards"][0]["action"], "rewritten", "{out:#}");
    assert_eq!(out["shards"][0]["reason"], "max_delay");
    assert!(!s.raw_contains(&needle(s.spec("file-00"))));
    s.check_files(&["file-00"]);
}

#[test]
fn max_bytes_caps_a_run_and_the_next_run_continues() {
    let s = Local::build(standard_specs());
    let victims = ["file-00", "file-01", "file-02", "file-03"];
    let shards: std::collections::BTreeSet<&String> =
        victims.iter().map(|u| &s.shard_of[*u]).collect();
    assert!(shards.len() >= 2, "victims must span shards");
    for uid in victims {
        tombstone(&s, uid);
    }
    let out = json(&repack(
        &s,
        &["--min-garbage-ratio", "0", "--max-bytes", "1"],
    ));
    assert_eq!(out["shards_rewritten"], 1, "{out:#}");
    assert_eq!(out["shards_deferred"], shards.len() as u64 - 1);
    assert!(
        out["shards"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["reason"] == "max_bytes")
    );
    let out = json(&repack(&s, &["--min-garbage-ratio", "0"]));
    assert_eq!(out["shards_rewritten"], shards.len() as u64 - 1);
    s.check_files(&victims);
    for uid in victims {
        assert!(!s.raw_contains(&needle(s.spec(uid))));
    }
}

#[test]
fn a_forced_shard_is_rewritten_without_tombstones() {
    let s = Local::build(standard_specs());
    let key = s.shard_of["file-07"].clone();
    let arg = key.trim_end_matches(".des");
    let out = repack(&s, &["--shard", arg]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let r = json(&out);
    assert_eq!(r["shards"][0]["key"], key.as_str());
    assert_eq!(r["shards"][0]["action"], "rewritten");
    assert_eq!(r["shards"][0]["generation_after"], 2);
    s.check_files(&[]);
    verify_clean(&s);
    let bad = run("des-repack", &["--store", &s.root_str(), "--shard", "nope"]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
}

fn write_lease(s: &Local, holder: &str, expires_us: i64) {
    let path = s.root().join("_des/repack.lease");
    let body = serde_json::json!({
        "holder": holder,
        "acquired_at": "2024-01-01T00:00:00Z",
        "expires_at": "later",
        "expires_at_us": expires_us,
    });
    std::fs::write(path, body.to_string()).unwrap();
}

#[test]
fn a_second_repacker_exits_3_and_an_expired_lease_is_taken_over() {
    let s = Local::build(standard_specs());
    tombstone(&s, "file-04");
    write_lease(&s, "other-host/1/abc", i64::MAX);
    let out = repack(&s, &["--min-garbage-ratio", "0"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another repacker") && stderr.contains("other-host"),
        "{stderr}"
    );
    assert!(s.raw_contains(&needle(s.spec("file-04"))));

    write_lease(&s, "other-host/1/abc", 0);
    let out = repack(&s, &["--min-garbage-ratio", "0"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(!s.raw_contains(&needle(s.spec("file-04"))));
    assert!(!s.root().join("_des/repack.lease").exists(), "released");
}

#[test]
fn crashes_at_every_step_lose_nothing_and_a_rerun_finishes() {
    for point in ["before_publish", "after_publish", "after_mark"] {
        let s = Local::build(standard_specs());
        let deleted = ["file-06", "big-b"];
        for uid in deleted {
            tombstone(&s, uid);
        }
        repack_crashing_at(&s, point, &["--min-garbage-ratio", "0"]);
        // Every live file survived, whichever generation is in place.
        let published = point != "before_publish";
        let gone: &[&str] = if published { &deleted[..1] } else { &[] };
        s.check_files(gone);
        verify_clean(&s);

        std::thread::sleep(Duration::from_millis(1100));
        let out = repack(&s, &["--min-garbage-ratio", "0"]);
        assert_eq!(out.status.code(), Some(0), "{point}: {}", describe(&out));
        let r = json(&out);
        assert_eq!(r["tombstones_pending"], 0, "{point}: {r:#}");
        s.check_files(&deleted);
        for uid in deleted {
            assert!(
                !s.raw_contains(&needle(s.spec(uid))),
                "{point}: {uid} remains"
            );
        }
        verify_clean(&s);
    }
}

/// Every file in the store's date directories, as (`YYYYMMDD/name`, entry).
fn shard_dir_files(root: &std::path::Path) -> Vec<(String, std::fs::DirEntry)> {
    let mut out = Vec::new();
    for day in std::fs::read_dir(root).unwrap().flatten() {
        let name = day.file_name().to_string_lossy().into_owned();
        if name.len() != 8 || !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        for f in std::fs::read_dir(day.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let file = f.file_name().to_string_lossy().into_owned();
            out.push((format!("{name}/{file}"), f));
        }
    }
    out
}

/// Temp files of shard uploads in progress (LocalStore writes a temp file
/// in the shard's directory and renames it into place).
fn shard_temp_files(root: &std::path::Path) -> std::collections::BTreeSet<String> {
    shard_dir_files(root)
        .into_iter()
        .filter(|(_, f)| {
            f.file_name()
                .to_string_lossy()
                .starts_with(des_storage::local::TEMP_PREFIX)
        })
        .map(|(path, _)| path)
        .collect()
}

/// Marker files (per tombstone, per shard generation or per run, in
/// subdirectories).
fn applied_markers(root: &std::path::Path) -> usize {
    files_under(root, des_storage::tombstones::APPLIED_PREFIX)
}

/// Each shard file's inode: a publish renames a new file into place.
fn shard_versions(root: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    use std::os::unix::fs::MetadataExt;
    shard_dir_files(root)
        .into_iter()
        .filter(|(path, _)| path.ends_with(".des"))
        .filter_map(|(path, f)| Some((path, f.metadata().ok()?.ino())))
        .collect()
}

/// Files under `prefix` of the store at `root`, at any depth (not the
/// temporary files of writes under way).
fn files_under(root: &std::path::Path, prefix: &str) -> usize {
    fn count(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    count(&e.path())
                } else {
                    let name = e.file_name();
                    usize::from(
                        !name
                            .to_string_lossy()
                            .starts_with(des_storage::local::TEMP_PREFIX),
                    )
                }
            })
            .sum()
    }
    count(&root.join(prefix))
}

#[test]
fn sigkill_at_any_moment_never_loses_a_live_file() {
    // 64 shards of about 400 KB, a sixth of the files deleted.
    let specs: Vec<FileSpec> = (0..200)
        .map(|i| {
            let day = 10 + i % 4;
            FileSpec::new(
                &format!("k{i:03}"),
                &format!("2024-06-{day}T08:00:00Z"),
                100_000 + (i * 377) % 50_000,
            )
        })
        .collect();
    let s = Local::build(specs);
    let deleted: Vec<String> = (0..200).step_by(6).map(|i| format!("k{i:03}")).collect();
    let batch: String = deleted
        .iter()
        .map(|u| {
            let spec = s.spec(u);
            format!(
                "{{\"uid\":\"{u}\",\"created_at\":\"{}\",\"reason\":\"gdpr\",\"deleted_by\":\"t\"}}\n",
                spec.created_at
            )
        })
        .collect();
    let file = s.aux("batch.jsonl");
    std::fs::write(&file, batch).unwrap();
    let added = run(
        "des-tombstones",
        &[
            "--store",
            &s.root_str(),
            "add",
            "--from",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(added.status.code(), Some(0), "{}", describe(&added));
    let deleted_refs: Vec<&str> = deleted.iter().map(String::as_str).collect();
    let root = s.root_str();
    // Kill each run at a moment it is observed doing something: alternately
    // while a new shard generation is being written (its temp file exists)
    // and right after it published one (its tombstones marked only in
    // memory, proven by the journal). Each killed run makes some progress,
    // so the kills land at different steps.
    let (mut kills, mut mid_write) = (0, 0);
    let mut finished = false;
    for i in 0..200 {
        let temps = shard_temp_files(s.root());
        let published = shard_versions(s.root());
        let mut child = bin("des-repack")
            .args(["--store", &root, "--min-garbage-ratio", "0", "--quiet"])
            .args(["--lease-ttl", "300ms", "--big-file-grace", "0s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                // Done by itself; it must have succeeded (not, say, found the lease held).
                assert_eq!(status.code(), Some(0), "after {kills} kills");
                finished = true;
                break;
            }
            let writing = shard_temp_files(s.root()).difference(&temps).count() > 0;
            if (i % 2 == 0 && writing) || (i % 2 == 1 && shard_versions(s.root()) != published) {
                // SIGKILL: no cleanup, no lease release.
                child.kill().unwrap();
                let _ = child.wait();
                kills += 1;
                mid_write += usize::from(writing);
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if finished {
            break;
        }
        // Each deleted file is either still there intact or gone; the rest intact.
        check_live(&s, &deleted_refs);
        // Let the dead run's lease expire.
        std::thread::sleep(Duration::from_millis(350));
    }
    eprintln!("killed {kills} runs, {mid_write} while writing a shard");
    assert!(finished, "never finished");
    assert!(kills >= 4, "only {kills} kills");
    assert!(mid_write >= 1, "no kill landed mid-write");
    verify_clean(&s);
    let out = repack(&s, &["--min-garbage-ratio", "0"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(json(&out)["tombstones_pending"], 0);
    s.check_files(&deleted_refs);
    for uid in deleted.iter().step_by(8) {
        assert!(!s.raw_contains(&needle(s.spec(uid))), "{uid} remains");
    }
    verify_clean(&s);
}

/// Files not in `deleted` read back identical; deleted ones are intact or absent.
fn check_live(s: &Local, deleted: &[&str]) {
    let rt = rt();
    rt.block_on(async {
        let objects: std::sync::Arc<dyn des_storage::ObjectStore> =
            std::sync::Arc::new(des_storage::LocalStore::new(s.root()).unwrap());
        let store = des_storage::DesStore::open(objects).await.unwrap();
        for spec in &s.specs {
            match store.get_file(&spec.uid, spec.ts()).await {
                Ok((_, data)) => assert!(data == content(&spec.uid, spec.size), "{}", spec.uid),
                Err(e) if deleted.contains(&spec.uid.as_str()) => {
                    assert_eq!(e.kind(), des_storage::ErrorKind::NotFound, "{e}");
                }
                Err(e) => panic!("live file {} unreadable: {e}", spec.uid),
            }
        }
    });
}

fn tombstones(s: &Local, args: &[&str]) -> std::process::Output {
    let root = s.root_str();
    let mut all = vec!["--store", root.as_str()];
    all.extend_from_slice(args);
    run("des-tombstones", &all)
}

#[test]
fn retention_rules_expire_files_without_tombstones_and_holds_win() {
    let specs = vec![
        FileSpec::new("logs/a", "2020-01-01T00:00:00Z", 5_000),
        FileSpec::new("logs/b", "2020-01-02T23:59:59Z", 5_000),
        FileSpec::new("logs/case42/c", "2020-01-01T00:00:00Z", 5_000),
        FileSpec::new("logs/audit/d", "2020-01-01T00:00:00Z", 5_000),
        FileSpec::new("img/e", "2020-01-01T00:00:00Z", 5_000),
        FileSpec::new(
            "logs/new",
            &des_format::Timestamp::now().to_rfc3339(),
            5_000,
        ),
    ];
    let s = Local::build(specs);
    let show = |uid: &str| {
        let spec = s.spec(uid);
        let args = [
            "--json",
            "show",
            "--uid",
            uid,
            "--created-at",
            &spec.created_at,
        ];
        tombstones(&s, &args)
    };
    let out = tombstones(&s, &["retention", "show"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "no rules yet: {}",
        describe(&out)
    );
    assert_eq!(show("logs/a").status.code(), Some(1), "not deleted");

    let rules = s.aux("rules.toml");
    std::fs::write(
        &rules,
        "ticket_id = \"POLICY-7\"\n\
         [[rule]]\nuid_prefix = \"logs/\"\nmax_age_days = 30\n\
         [[rule]]\nuid_prefix = \"logs/audit/\"\n\
         [[rule]]\nuid_prefix = \"\"\nmax_age_days = 36500\n",
    )
    .unwrap();
    let rules = rules.to_str().unwrap();
    let bad = s.aux("bad.toml");
    std::fs::write(&bad, "[[rule]]\nuid_prefix = \"x\"\nmax_age_days = 0\n").unwrap();
    let out = tombstones(
        &s,
        &[
            "retention",
            "set",
            bad.to_str().unwrap(),
            "--updated-by",
            "ops",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 1"),
        "{}",
        describe(&out)
    );

    let out = tombstones(
        &s,
        &["--json", "retention", "set", rules, "--updated-by", "ops"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(json(&out)["version"], 1);
    let out = tombstones(&s, &["retention", "set", rules, "--updated-by", "ops"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("version 2"),
        "{}",
        describe(&out)
    );
    let shown = json(&tombstones(&s, &["--json", "retention", "show"]));
    assert_eq!(shown["version"], 2, "{shown:#}");
    assert_eq!(shown["updated_by"], "ops");
    assert_eq!(shown["ticket_id"], "POLICY-7");
    assert_eq!(shown["rule"].as_array().unwrap().len(), 3);
    assert!(s.root().join("_des/retention/0000000001.toml").exists());

    let hold = tombstones(
        &s,
        &[
            "hold",
            "add",
            "--name",
            "case42",
            "--uid-prefix",
            "logs/case42/",
            "--created-by",
            "legal",
        ],
    );
    assert_eq!(hold.status.code(), Some(0), "{}", describe(&hold));

    // A dry report, today and on a day before anything expired.
    let before = s.snapshot();
    let check = json(&tombstones(&s, &["--json", "retention", "check"]));
    let logs = &check["rules"][0];
    assert_eq!(logs["uid_prefix"], "logs/", "{check:#}");
    assert_eq!(
        (logs["files_expired"].as_u64(), logs["files_held"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(check["rules"][1]["files_expired"], 0, "exempt: {check:#}");
    assert_eq!(check["files_expired"], 2);
    let early = json(&tombstones(
        &s,
        &["--json", "retention", "check", "--date", "20200201"],
    ));
    assert_eq!(
        early["rules"][0]["expired_through"], "20200101",
        "{early:#}"
    );
    assert_eq!(
        early["files_expired"], 1,
        "only day 20200101 is over 30 days: {early:#}"
    );
    assert_eq!(s.snapshot(), before, "check writes nothing");

    // show explains: rule, version, day of expiry; held and exempt files are not deleted.
    let a = show("logs/a");
    assert_eq!(a.status.code(), Some(0), "{}", describe(&a));
    let a = json(&a);
    assert_eq!(a["deleted"], true, "{a:#}");
    assert_eq!(a["tombstones"].as_array().unwrap().len(), 0);
    let why = &a["retention"];
    assert_eq!(
        (why["uid_prefix"].as_str(), why["max_age_days"].as_u64()),
        (Some("logs/"), Some(30))
    );
    assert_eq!(
        (why["rules_version"].as_u64(), why["expires_on"].as_str()),
        (Some(2), Some("20200201"))
    );
    assert_eq!(json(&show("logs/b"))["retention"]["expires_on"], "20200202");
    let c = show("logs/case42/c");
    assert_eq!(c.status.code(), Some(1), "{}", describe(&c));
    assert_eq!(json(&c)["retention"]["held_by"], "case42");
    let d = json(&show("logs/audit/d"));
    assert_eq!(
        (
            d["deleted"].as_bool(),
            d["retention"]["max_age_days"].as_u64()
        ),
        (Some(false), None)
    );
    let text = tombstones(&s, &["show", "--uid", "logs/a", "--date", "20200101"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("expired on 20200201") && text.contains("\"logs/\" (30 days)"),
        "{text}"
    );

    // des-repack removes expired bytes; no tombstone is ever written.
    let r = json(&repack(&s, &[]));
    assert_eq!(r["entries_expired"], 2, "{r:#}");
    assert_eq!(r["retention_rules_version"], 2);
    s.check_files(&["logs/a", "logs/b"]);
    for uid in ["logs/a", "logs/b"] {
        assert!(!s.raw_contains(&needle(s.spec(uid))), "{uid} bytes remain");
    }
    assert!(
        s.raw_contains(&needle(s.spec("logs/case42/c"))),
        "held bytes stay"
    );
    let listed = json(&tombstones(&s, &["--json", "list"]));
    assert_eq!(listed.as_array().unwrap().len(), 0, "{listed:#}");
    verify_clean(&s);

    let release = tombstones(&s, &["hold", "release", "--name", "case42"]);
    assert_eq!(release.status.code(), Some(0), "{}", describe(&release));
    let r = json(&repack(&s, &[]));
    assert_eq!(r["entries_expired"], 1, "{r:#}");
    s.check_files(&["logs/a", "logs/b", "logs/case42/c"]);
    assert!(!s.raw_contains(&needle(s.spec("logs/case42/c"))));
    verify_clean(&s);
}

#[test]
fn crashes_around_a_whole_shard_delete_lose_nothing() {
    for point in ["before_delete", "after_delete"] {
        // Two old days: 2020-01-01 expires whole, 2020-01-02 keeps a file.
        let mut specs = Vec::new();
        for i in 0..24 {
            let (uid, day) = match i % 3 {
                0 => (format!("old/{i}"), "2020-01-01"),
                1 => (format!("old/{i}"), "2020-01-02"),
                _ => (format!("keep/{i}"), "2020-01-02"),
            };
            specs.push(FileSpec::new(
                &uid,
                &format!("{day}T08:00:00Z"),
                4_000 + i * 100,
            ));
        }
        let s = Local::build(specs);
        let rules = s.aux("rules.toml");
        std::fs::write(
            &rules,
            "[[rule]]\nuid_prefix = \"old/\"\nmax_age_days = 1\n",
        )
        .unwrap();
        let set = tombstones(
            &s,
            &[
                "retention",
                "set",
                rules.to_str().unwrap(),
                "--updated-by",
                "t",
            ],
        );
        assert_eq!(set.status.code(), Some(0), "{}", describe(&set));
        // A GDPR tombstone on a file of a shard about to be deleted whole.
        tombstone(&s, "old/0");
        let expired: Vec<String> = s
            .specs
            .iter()
            .map(|f| f.uid.clone())
            .filter(|u| u.starts_with("old/"))
            .collect();
        let expired: Vec<&str> = expired.iter().map(String::as_str).collect();
        repack_crashing_at(&s, point, &[]);
        // Every live file survived the crash; expired ones are intact or gone.
        let rt = rt();
        rt.block_on(async {
            let objects: std::sync::Arc<dyn des_storage::ObjectStore> =
                std::sync::Arc::new(des_storage::LocalStore::new(s.root()).unwrap());
            let store = des_storage::DesStore::open(objects).await.unwrap();
            for spec in &s.specs {
                match store.get_file(&spec.uid, spec.ts()).await {
                    Ok((_, data)) => assert!(data == content(&spec.uid, spec.size), "{}", spec.uid),
                    Err(e) if spec.uid.starts_with("old/") => {
                        assert_eq!(e.kind(), des_storage::ErrorKind::NotFound, "{e}");
                    }
                    Err(e) => panic!("{point}: live file {} unreadable: {e}", spec.uid),
                }
            }
        });
        std::thread::sleep(Duration::from_millis(1100));
        let out = repack(&s, &[]);
        assert_eq!(out.status.code(), Some(0), "{point}: {}", describe(&out));
        assert_eq!(json(&out)["tombstones_pending"], 0, "{point}");
        s.check_files(&expired);
        let left = std::fs::read_dir(s.root().join("20200101"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".des"))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(
            left, 0,
            "{point}: every shard of the expired day is deleted"
        );
        let shown = json(&tombstones(
            &s,
            &["--json", "show", "--uid", "old/0", "--date", "20200101"],
        ));
        let marker = &shown["tombstones"][0]["applied"];
        assert_eq!(marker["outcome"], "removed", "{point}: {shown:#}");
        assert_eq!(
            marker["generation"],
            serde_json::Value::Null,
            "{point}: the shard was deleted"
        );
        verify_clean(&s);
    }
}

#[test]
fn batch_add_reports_bad_lines_and_is_idempotent() {
    let s = Local::build(standard_specs());
    let root = s.root_str();
    let file = s.aux("batch.jsonl");
    std::fs::write(
        &file,
        "{\"uid\":\"file-01\",\"created_at\":\"2024-05-18T10:01:00Z\"}\n\
         \n\
         {\"uid\":\"file-02\",\"date\":\"20240517\",\"reason\":\"user_request\"}\n\
         {\"uid\":\"file-02\",\"date\":\"20240517\"}\n\
         {\"uid\":\"x\",\"date\":\"20241341\"}\n\
         not json\n",
    )
    .unwrap();
    let args = add_from_args(&root, &file);
    let out = run("des-tombstones", &args);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let r = json(&out);
    assert_eq!(r["added"], 2, "{r:#}");
    assert_eq!(r["already_deleted"], 1);
    assert_eq!(r["failed"], 2);
    let again = json(&run("des-tombstones", &args));
    assert_eq!(again["added"], 0);
    assert_eq!(again["already_deleted"], 3);
    let listed = json(&run(
        "des-tombstones",
        &["--store", &root, "--json", "list", "--state", "pending"],
    ));
    let reasons: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 2);
    assert!(reasons.contains(&"gdpr") && reasons.contains(&"user_request"));
    // One object for the batch (a bundle), not one per line.
    let keys: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys[0], keys[1]);
    assert!(keys[0].ends_with(".jsonl"), "{keys:?}");
    let logged = std::fs::read_dir(s.root().join("_tombstones")).unwrap();
    assert_eq!(
        logged
            .filter(|e| e.as_ref().unwrap().path().is_file())
            .count(),
        1
    );
    // Applied and compacted: the bundle goes, show explains from the segment.
    let repacked = run("des-repack", &["--store", &root, "--max-delay", "0s"]);
    assert_eq!(repacked.status.code(), Some(0), "{}", describe(&repacked));
    let logged = std::fs::read_dir(s.root().join("_tombstones")).unwrap();
    assert_eq!(
        logged
            .filter(|e| e.as_ref().unwrap().path().is_file())
            .count(),
        0
    );
    let shown = json(&run(
        "des-tombstones",
        &[
            "--store", &root, "--json", "show", "--uid", "file-02", "--date", "20240517",
        ],
    ));
    let found = &shown["tombstones"];
    assert_eq!(found.as_array().unwrap().len(), 1, "{shown:#}");
    assert_eq!(found[0]["state"], "applied");
    assert!(found[0]["applied"]["shard_key"].is_string(), "{shown:#}");
    let missing = run(
        "des-tombstones",
        &[
            "--store", &root, "show", "--uid", "file-30", "--date", "20240517",
        ],
    );
    assert_eq!(missing.status.code(), Some(1), "{}", describe(&missing));
}

#[test]
fn metrics_file_counts_runs() {
    let s = Local::build(standard_specs());
    tombstone(&s, "file-08");
    let metrics = s.aux("repack.prom");
    let m = metrics.to_str().unwrap();
    let out = repack(&s, &["--min-garbage-ratio", "0.99", "--metrics-file", m]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(text.contains("des_tombstones_pending 1"), "{text}");
    assert!(
        !text.contains("des_tombstones_oldest_pending_age_seconds 0\n"),
        "{text}"
    );
    let out = repack(&s, &["--min-garbage-ratio", "0", "--metrics-file", m]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains("des_repack_jobs_total{status=\"success\"} 2"),
        "{text}"
    );
    assert!(text.contains("des_tombstones_pending 0"), "{text}");
    assert!(
        text.contains("des_tombstones_oldest_pending_age_seconds 0\n"),
        "{text}"
    );
    let saved: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("des_repack_space_saved_bytes "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(saved > 0, "{text}");
}

#[test]
fn schedule_mode_runs_on_each_tick_and_stops_on_sigterm() {
    let s = Local::build(standard_specs());
    tombstone(&s, "file-09");
    let metrics = s.aux("repack.prom");
    let child = bin("des-repack")
        .args([
            "--store",
            &s.root_str(),
            "--min-garbage-ratio",
            "0",
            "--quiet",
        ])
        .args(["--schedule", "* * * * * *", "--metrics-file"])
        .arg(&metrics)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let ran_twice = loop {
        let text = std::fs::read_to_string(&metrics).unwrap_or_default();
        let runs = text
            .lines()
            .find_map(|l| l.strip_prefix("des_repack_jobs_total{status=\"success\"} "))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if runs >= 2 || std::time::Instant::now() > deadline {
            break runs >= 2;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let out = child.wait_with_output().unwrap();
    assert!(ran_twice, "{}", describe(&out));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(!s.raw_contains(&needle(s.spec("file-09"))));
    s.check_files(&["file-09"]);
}

/// A forced rewrite of a shard with a corrupt entry copies nothing: the
/// entry's CRC is checked as it is carried forward, the shard fails (exit
/// 1) and stays exactly as it was.
#[test]
fn a_corrupt_entry_fails_a_forced_rewrite_and_changes_nothing() {
    let s = Local::build(standard_specs());
    let key = s.shard_of["file-00"].clone();
    let path = s.root().join(&key);
    let mut bytes = std::fs::read(&path).unwrap();
    // The first entry's stored bytes start right after the header.
    bytes[des_format::v3::HEADER_LEN as usize + 100] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let shard = key.trim_end_matches(".des");
    let out = repack(&s, &["--shard", shard]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let r = json(&out);
    assert_eq!(r["shards_failed"], 1, "{r:#}");
    let err = r["shards"][0]["error"].as_str().unwrap_or_default();
    assert!(err.contains("crc"), "{err}");
    assert!(std::fs::read(&path).unwrap() == bytes, "the shard changed");
}

/// Batch pods get their store from `DES_STORE` (docs/DEPLOYMENT.md), and a
/// reason may be spelled as the HTTP API and the records spell it.
#[test]
fn batch_tools_take_the_store_from_des_store() {
    let s = Local::build(standard_specs());
    let spec = s.spec("file-01");
    let out = bin("des-tombstones")
        .env("DES_STORE", s.root_str())
        .args(["add", "--uid", "file-01", "--created-at", &spec.created_at])
        .args(["--reason", "user_request", "--deleted-by", "api", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let out = bin("des-verify")
        .env("DES_STORE", s.root_str())
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(json(&out)["tombstones_pending"], 1);
}

/// Kills the repacker (SIGABRT, no cleanup) at each step of the tombstone
/// compaction that ends a run: every deletion stays visible to a fresh
/// reader, none is pending, each is listed once, and a re-run finishes the
/// compaction without merging anything twice.
#[test]
fn crashes_during_tombstone_compaction_lose_nothing() {
    for point in [
        "compact_written",
        "compact_verified",
        "compact_records_deleted",
    ] {
        let s = Local::build(standard_specs());
        let deleted = ["file-06", "file-07", "big-b"];
        for uid in deleted {
            tombstone(&s, uid);
        }
        repack_crashing_at(&s, point, &["--min-garbage-ratio", "0"]);
        let check = |when: &str| {
            rt().block_on(async {
                let objects: std::sync::Arc<dyn des_storage::ObjectStore> =
                    std::sync::Arc::new(des_storage::LocalStore::new(s.root()).unwrap());
                let store = des_storage::DesStore::open(objects).await.unwrap();
                let log = des_storage::tombstones::TombstoneLog::new(&store);
                let set = des_storage::tombstones::TombstoneSet::load(&log)
                    .await
                    .unwrap();
                for uid in deleted {
                    let spec = s.spec(uid);
                    assert!(set.contains_at(uid, spec.ts()), "{point} {when}: {uid}");
                }
                assert!(log.pending().await.unwrap().is_empty(), "{point} {when}");
            });
            let listed = tombstones(&s, &["--json", "list"]);
            assert_eq!(listed.status.code(), Some(0), "{}", describe(&listed));
            let listed = json(&listed);
            for uid in deleted {
                let n = listed
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|t| t["uid"] == uid)
                    .count();
                assert_eq!(n, 1, "{point} {when}: {listed:#}");
            }
        };
        check("after the crash");
        s.check_files(&deleted);
        verify_clean(&s);

        std::thread::sleep(Duration::from_millis(1100));
        let out = repack(&s, &["--min-garbage-ratio", "0"]);
        assert_eq!(out.status.code(), Some(0), "{point}: {}", describe(&out));
        let r = json(&out);
        assert_eq!(r["tombstones_pending"], 0, "{point}: {r:#}");
        assert_eq!(r["tombstones_compacted"], 0, "{point}: {r:#}");
        check("after a re-run");
        assert_eq!(applied_markers(s.root()), 0, "{point}");
        let segments = std::fs::read_dir(s.root().join("_tombstones/segments"))
            .unwrap()
            .count();
        assert_eq!(segments, 1, "{point}");
        let shown = tombstones(
            &s,
            &[
                "--json",
                "show",
                "--uid",
                "file-06",
                "--created-at",
                &s.spec("file-06").created_at,
            ],
        );
        assert_eq!(shown.status.code(), Some(0), "{}", describe(&shown));
        let shown = json(&shown);
        assert_eq!(
            shown["tombstones"].as_array().unwrap().len(),
            1,
            "{shown:#}"
        );
        assert_eq!(shown["tombstones"][0]["state"], "applied", "{shown:#}");
        verify_clean(&s);
    }
}

/// kill -9 (abort) while merging segments: every deletion stays visible and
/// listed once, nothing looks pending, and the next run finishes the merge.
#[test]
fn crashes_while_merging_segments_lose_nothing() {
    let fanin = des_storage::tombstones::MERGE_FANIN;
    for point in ["merge_written", "merge_verified"] {
        let s = Local::build(standard_specs());
        let deleted: Vec<String> = (0..fanin).map(|i| format!("file-{:02}", i * 2)).collect();
        // One segment per run: the last run's compaction fills tier 0.
        for (i, uid) in deleted.iter().enumerate() {
            tombstone(&s, uid);
            if i + 1 == fanin {
                repack_crashing_at(&s, point, &["--min-garbage-ratio", "0"]);
            } else {
                let out = repack(&s, &["--min-garbage-ratio", "0"]);
                assert_eq!(out.status.code(), Some(0), "{point}: {}", describe(&out));
            }
        }
        let segments = || {
            std::fs::read_dir(s.root().join("_tombstones/segments"))
                .unwrap()
                .count()
        };
        assert_eq!(segments(), fanin + 1, "{point}: inputs and the merged one");
        let check = |when: &str| {
            let listed = json(&tombstones(&s, &["--json", "list"]));
            for uid in &deleted {
                let n = listed
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|t| t["uid"] == uid.as_str() && t["state"] == "applied")
                    .count();
                assert_eq!(n, 1, "{point} {when}: {uid} {listed:#}");
            }
            let pending = json(&tombstones(&s, &["--json", "list", "--state", "pending"]));
            assert_eq!(pending.as_array().unwrap().len(), 0, "{point} {when}");
        };
        check("after the crash");
        let refs: Vec<&str> = deleted.iter().map(String::as_str).collect();
        s.check_files(&refs);
        verify_clean(&s);
        std::thread::sleep(Duration::from_millis(1100));
        let out = repack(&s, &["--min-garbage-ratio", "0"]);
        assert_eq!(out.status.code(), Some(0), "{point}: {}", describe(&out));
        assert!(segments() <= 2, "{point}: {} segments", segments());
        check("after a re-run");
        verify_clean(&s);
    }
}

/// `des-tombstones --json add --from FILE` with a reason and author.
fn add_from_args<'a>(root: &'a str, file: &'a std::path::Path) -> [&'a str; 10] {
    [
        "--store",
        root,
        "--json",
        "add",
        "--from",
        file.to_str().unwrap(),
        "--reason",
        "gdpr",
        "--deleted-by",
        "batch",
    ]
}

/// A batch file longer than one chunk is read, logged and reported chunk by
/// chunk (memory follows the chunk, not the file): one bundle per chunk,
/// every line's result in line order, the counts over the whole file.
#[test]
fn a_batch_longer_than_a_chunk_is_logged_chunk_by_chunk() {
    let s = Local::build(standard_specs());
    let root = s.root_str();
    let chunk = des_repack::tombstones_cli::CHUNK_LINES;
    let total = 2 * chunk + 500;
    let mut body = String::new();
    for i in 0..total {
        let line = match i {
            // The pair of line 1 again, in the same chunk.
            7 => "{\"uid\":\"many-0\",\"date\":\"20240517\"}".to_string(),
            // A bad line in the last chunk.
            _ if i == 2 * chunk + 3 => "not json".to_string(),
            _ => format!("{{\"uid\":\"many-{i}\",\"date\":\"20240517\"}}"),
        };
        body.push_str(&line);
        body.push('\n');
    }
    let file = s.aux("many.jsonl");
    std::fs::write(&file, body).unwrap();
    let args = add_from_args(&root, &file);
    let out = run("des-tombstones", &args);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let r = json(&out);
    assert_eq!(r["added"], total - 2, "{}", r["failed"]);
    assert_eq!(
        (r["already_deleted"].as_u64(), r["failed"].as_u64()),
        (Some(1), Some(1))
    );
    let lines: Vec<u64> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, (1..=total as u64).collect::<Vec<_>>());
    let bundles = std::fs::read_dir(s.root().join("_tombstones"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_file())
        .count();
    assert_eq!(bundles, 3, "one bundle per chunk");
    // Again, in human form: everything is already deleted.
    let human: Vec<&str> = args[..2].iter().chain(&args[3..]).copied().collect();
    let out = run("des-tombstones", &human);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with(&format!(
            "0 added, {} already deleted, 1 failed\n",
            total - 1
        )),
        "{}",
        text.lines().last().unwrap_or_default()
    );
}
