#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! des-migrate end to end against a real PostgreSQL (a throwaway cluster
//! per test, tests/common) and a local store.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::Stdio;

use common::*;
use nix::sys::signal::Signal;

/// `n` rows of distinct files, a minute apart, the last one a minute before
/// `days` days ago.
fn seed(dir: &std::path::Path, prefix: &str, n: usize, days: i64) -> Vec<(Seed, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let secs = (i as i64 - n as i64) * 60;
            seed_file(dir, &format!("{prefix}{i}"), &ago(days, secs), 100 + i)
        })
        .collect()
}

fn assert_stored_once(store: &std::path::Path, rows: &[(Seed, Vec<u8>)]) {
    let entries = store_entries(store);
    for (s, data) in rows {
        let day = s.created_at.get(..10).unwrap().replace('-', "");
        assert_eq!(
            entries.get(&(s.uid.clone(), day)),
            Some(&1),
            "{} must be stored exactly once",
            s.uid
        );
        assert_eq!(&get_file(store, &s.uid, &s.created_at), data, "{}", s.uid);
    }
}

fn total_entries(store: &std::path::Path) -> usize {
    store_entries(store).values().sum()
}

#[test]
fn per_record_archives_old_rows_and_reports_missing_files() {
    let pg = PgCluster::start();
    pg.create_files_table();
    let src = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let metrics_dir = tempfile::tempdir().unwrap();
    let metrics = metrics_dir.path().join("migrate.prom");
    let old = seed(src.path(), "old-", 23, 40);
    let recent = seed(src.path(), "new-", 4, 2);
    // Two old rows whose files are not there, one with no location at all.
    let mut missing = seed(src.path(), "gone-", 2, 35);
    for (s, _) in &missing {
        std::fs::remove_file(s.location.as_ref().unwrap()).unwrap();
    }
    let no_location = Seed {
        location: None,
        ..seed_file(src.path(), "nolocation", &ago(33, 0), 10).0
    };
    let rows: Vec<Seed> = old
        .iter()
        .chain(&recent)
        .chain(&missing)
        .map(|(s, _)| s.clone())
        .chain([no_location])
        .collect();
    pg.insert_rows(&rows);

    // A dry run sees the same rows and the same problems, and writes nothing.
    let (code, report, stderr) = run(migrate_cmd(&pg, store.path()).args([
        "--batch-size",
        "7",
        "--archive-age-days",
        "30",
        "--json",
        "--dry-run",
    ]));
    assert_eq!(code, 1, "{stderr}\n{report}");
    assert_eq!(report["rows_selected"], 26);
    assert_eq!(report["rows_archived"], 23);
    assert_eq!(report["rows_failed"], 3);
    assert_eq!(report["pending_rows"], 26);
    assert_eq!(pg.psql("SELECT count(*) FROM files WHERE archived"), "0");
    assert_eq!(std::fs::read_dir(store.path()).unwrap().count(), 0);

    let (code, report, stderr) = run(migrate_cmd(&pg, store.path())
        .args(["--batch-size", "7", "--archive-age-days", "30", "--json"])
        .args(["--metrics-file", metrics.to_str().unwrap()]));
    assert_eq!(code, 1, "{stderr}\n{report}");
    assert_eq!(report["rows_selected"], 26);
    assert_eq!(report["rows_archived"], 23);
    assert_eq!(report["files_packed"], 23);
    assert_eq!(report["rows_failed"], 3);
    assert_eq!(report["batches"], 4);
    assert_eq!(report["pending_rows"], 3);
    assert!(
        report["lag_seconds"].as_f64().unwrap() > 4.0 * 86_400.0,
        "{report}"
    );
    let failed: HashMap<String, String> = report["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["uid"].as_str().unwrap().to_string(),
                f["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(failed.len(), 3);
    assert!(failed["gone-0"].contains("No such file"), "{failed:?}");
    assert!(failed["nolocation"].contains("source"), "{failed:?}");
    let flags = pg.archived_flags();
    for (s, _) in &old {
        assert!(flags[&s.uid], "{} archived", s.uid);
    }
    for (s, _) in recent.iter().chain(&missing) {
        assert!(!flags[&s.uid], "{} must not be archived", s.uid);
    }
    assert!(!flags["nolocation"]);
    assert_stored_once(store.path(), &old);
    assert_eq!(total_entries(store.path()), old.len());
    // The content type from its column is stored with the file.
    let rt = rt();
    let s = open_store(&rt, store.path());
    let ts = des_format::Timestamp::parse_rfc3339(&old[0].0.created_at).unwrap();
    let (located, _) = rt.block_on(s.get_file(&old[0].0.uid, ts)).unwrap();
    assert_eq!(
        located.content_type.as_deref(),
        Some("application/octet-stream")
    );

    // The files appear; the next run archives just those rows.
    for (s, data) in &missing {
        std::fs::write(s.location.as_ref().unwrap(), data).unwrap();
    }
    let (code, report, stderr) = run(migrate_cmd(&pg, store.path())
        .args(["--archive-age-days", "30", "--json"])
        .args(["--metrics-file", metrics.to_str().unwrap()]));
    assert_eq!(code, 1, "nolocation still fails: {stderr}\n{report}");
    assert_eq!(report["rows_selected"], 3);
    assert_eq!(report["rows_archived"], 2);
    missing.extend(old);
    assert_stored_once(store.path(), &missing);
    assert_eq!(total_entries(store.path()), missing.len());
    let prom = std::fs::read_to_string(&metrics).unwrap();
    for want in [
        "des_migration_files_total 25",
        "des_migration_cycles_total{status=\"partial\"} 2",
        "des_migration_cycles_total{status=\"success\"} 0",
        "des_migration_pending_files 1",
    ] {
        assert!(prom.contains(want), "{want} in\n{prom}");
    }
}

#[test]
fn per_record_deletes_only_verified_sources() {
    let pg = PgCluster::start();
    pg.create_files_table();
    let src = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let rows = seed(src.path(), "f", 12, 10);
    // "clash" is already in the store for its day with other content: the
    // packer refuses to overwrite it, so its row fails and its source stays.
    let (clash, _) = seed_file(src.path(), "clash", &ago(10, 30), 50);
    let manifest = src.path().join("pre.jsonl");
    let other = src.path().join("other.bin");
    std::fs::write(&other, b"different content").unwrap();
    std::fs::write(
        &manifest,
        format!(
            "{{\"uid\":\"clash\",\"created_at\":\"{}\",\"source\":\"{}\"}}\n",
            clash.created_at,
            other.display()
        ),
    )
    .unwrap();
    pack_manifest(&manifest, store.path());
    pg.insert_rows(
        &rows
            .iter()
            .map(|(s, _)| s.clone())
            .chain([clash.clone()])
            .collect::<Vec<_>>(),
    );
    let (code, report, stderr) = run(migrate_cmd(&pg, store.path())
        .args(["--archive-age-days", "1", "--batch-size", "5", "--json"])
        .arg("--delete-source-files"));
    assert_eq!(code, 1, "{stderr}\n{report}");
    assert_eq!(report["rows_archived"], 12);
    assert_eq!(report["sources_deleted"], 12);
    assert_eq!(report["sources_kept"], 0);
    assert_eq!(report["rows_failed"], 1);
    assert!(
        report["failures"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("different content"),
        "{report}"
    );
    for (s, data) in &rows {
        assert!(!std::path::Path::new(s.location.as_ref().unwrap()).exists());
        assert_eq!(&get_file(store.path(), &s.uid, &s.created_at), data);
    }
    assert!(std::path::Path::new(clash.location.as_ref().unwrap()).exists());
    assert!(!pg.archived_flags()["clash"]);
}

/// Packs a manifest with the packer library, as des-pack would.
fn pack_manifest(manifest: &std::path::Path, store: &std::path::Path) {
    let rt = rt();
    let opts = des_packer::PackOptions {
        store: des_storage::cli::StoreArgs::at(store.to_str().unwrap()),
        n_bits: Some(4),
        ..des_packer::PackOptions::default()
    };
    let report = des_packer::pack(
        &des_packer::Input::Manifest(manifest.to_path_buf()),
        &opts,
        rt.handle(),
        false,
    )
    .unwrap();
    assert_eq!(report.files_failed, 0, "{report:?}");
}

#[test]
fn a_changed_source_is_not_deleted() {
    // The library's check, below the CLI: a source that no longer matches
    // the stored copy is kept, with the reason.
    let src = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let (s, _) = seed_file(src.path(), "u1", "2024-05-17T10:00:00Z", 1000);
    let manifest = src.path().join("m.jsonl");
    std::fs::write(
        &manifest,
        format!(
            "{{\"uid\":\"u1\",\"created_at\":\"{}\",\"source\":\"{}\"}}\n",
            s.created_at,
            s.location.as_ref().unwrap()
        ),
    )
    .unwrap();
    pack_manifest(&manifest, store.path());
    std::fs::write(s.location.as_ref().unwrap(), b"edited after packing").unwrap();
    let rt = rt();
    let des = open_store(&rt, store.path());
    let mut cleaner = des_migrate::sources::SourceCleaner::new(
        &des,
        des_packer::SourceRoots::default(),
        rt.handle(),
    );
    let candidate = des_migrate::sources::Candidate {
        uid: "u1".into(),
        created_at: des_format::Timestamp::parse_rfc3339(&s.created_at).unwrap(),
        source: s.location.clone().unwrap(),
    };
    let (deleted, kept) = cleaner.clean(vec![candidate.clone()]);
    assert_eq!(deleted, 0);
    assert!(kept[0].1.contains("bytes"), "{:?}", kept[0].1);
    assert!(std::path::Path::new(s.location.as_ref().unwrap()).exists());
    // Not in the store at all: kept too.
    let absent = des_migrate::sources::Candidate {
        uid: "u2".into(),
        ..candidate
    };
    let (deleted, kept) = cleaner.clean(vec![absent]);
    assert_eq!((deleted, kept.len()), (0, 1), "{kept:?}");
}

#[test]
fn watermark_mode_advances_after_the_window_is_stored() {
    let pg = PgCluster::start();
    pg.create_files_table();
    let src = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let old = seed(src.path(), "w", 15, 3);
    let today = seed(src.path(), "t", 5, 0);
    pg.insert_rows(
        &old.iter()
            .chain(&today)
            .map(|(s, _)| s.clone())
            .collect::<Vec<_>>(),
    );
    let wm = |pg: &PgCluster| pg.psql("SELECT archived_until FROM des_archive_config");

    // Dry run: nothing created, nothing written.
    let (code, report, stderr) =
        run(migrate_cmd(&pg, store.path()).args(["--mode", "watermark", "--dry-run", "--json"]));
    assert_eq!(code, 0, "{stderr}\n{report}");
    assert_eq!(report["rows_selected"], 15);
    assert_eq!(
        pg.psql("SELECT to_regclass('des_archive_config') IS NULL"),
        "t"
    );
    assert!(!store.path().join("_des").exists());

    let (code, report, stderr) = run(migrate_cmd(&pg, store.path()).args([
        "--mode",
        "watermark",
        "--lag-days",
        "1",
        "--batch-size",
        "4",
        "--json",
    ]));
    assert_eq!(code, 0, "{stderr}\n{report}");
    assert_eq!(report["rows_selected"], 15);
    assert_eq!(report["rows_archived"], 15);
    assert_eq!(report["batches"], 1, "one packer run per window");
    assert_eq!(report["watermark_before"], serde_json::Value::Null);
    assert_eq!(report["watermark_after"], report["window_end"]);
    assert_stored_once(store.path(), &old);
    assert_eq!(total_entries(store.path()), 15);
    // The business table is not written in this mode.
    assert_eq!(pg.psql("SELECT count(*) FROM files WHERE archived"), "0");
    let first = wm(&pg);
    assert_eq!(pg.psql("SELECT lag_days FROM des_archive_config"), "1");

    // lag_days in the table is what counts: 0 takes today's rows too. One
    // of them is missing: the watermark stops just before it, and the rows
    // after it are packed but stay in the next window.
    pg.psql("UPDATE des_archive_config SET lag_days = 0");
    let gone = today[2].0.location.clone().unwrap();
    std::fs::remove_file(&gone).unwrap();
    let (code, report, stderr) =
        run(migrate_cmd(&pg, store.path()).args(["--mode", "watermark", "--json"]));
    assert_eq!(code, 1, "{stderr}\n{report}");
    assert_eq!(report["rows_selected"], 5);
    assert_eq!(report["rows_failed"], 1);
    assert_eq!(report["rows_archived"], 2);
    assert_eq!(report["failures"][0]["uid"], "t2");
    let stopped = des_format::Timestamp::parse_rfc3339(&today[2].0.created_at)
        .unwrap()
        .micros()
        - 1;
    assert_eq!(
        report["watermark_after"],
        des_format::Timestamp::from_micros(stopped).to_rfc3339()
    );
    assert_ne!(wm(&pg), first);
    assert_eq!(report["pending_rows"], 3);

    // The file is back: the window from t2 on is replayed; t3 and t4 are
    // found already stored, nothing is doubled.
    std::fs::write(&gone, &today[2].1).unwrap();
    let (code, report, stderr) =
        run(migrate_cmd(&pg, store.path()).args(["--mode", "watermark", "--json"]));
    assert_eq!(code, 0, "{stderr}\n{report}");
    assert_eq!(report["rows_selected"], 3);
    assert_eq!(report["files_packed"], 1);
    assert_eq!(report["files_already_present"], 2);
    assert_eq!(report["pending_rows"], 0);
    let all: Vec<_> = old.iter().chain(&today).cloned().collect();
    assert_stored_once(store.path(), &all);
    assert_eq!(total_entries(store.path()), 20);
}

#[test]
fn watermark_mode_deletes_sources_below_the_watermark_only() {
    let pg = PgCluster::start();
    pg.create_files_table();
    let src = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let rows = seed(src.path(), "d", 6, 2);
    pg.insert_rows(&rows.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>());
    std::fs::remove_file(rows[3].0.location.as_ref().unwrap()).unwrap();
    let (code, report, stderr) = run(migrate_cmd(&pg, store.path()).args([
        "--mode",
        "watermark",
        "--delete-source-files",
        "--json",
    ]));
    assert_eq!(code, 1, "{stderr}\n{report}");
    // d0..d2 are below the watermark: deleted. d4, d5 are stored but above
    // it (retried with d3 next cycle): their sources must stay.
    assert_eq!(report["sources_deleted"], 3);
    for (i, (s, _)) in rows.iter().enumerate() {
        let exists = std::path::Path::new(s.location.as_ref().unwrap()).exists();
        assert_eq!(exists, i > 3, "{}", s.uid);
    }
}

#[test]
fn configuration_errors_exit_2_and_a_held_lock_exits_5() {
    let pg = PgCluster::start();
    pg.create_files_table();
    let store = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(migrate_cmd(&pg, store.path()).args(["--table", "nosuch"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("table nosuch does not exist"), "{stderr}");
    let (code, _, stderr) = run(migrate_cmd(&pg, store.path()).args(["--uid-column", "id2"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no column \"id2\""), "{stderr}");
    let (code, _, stderr) = run(migrate_cmd(&pg, store.path()).args(["--archived-column", "uid"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("expected boolean"), "{stderr}");
    let (code, _, stderr) = run(migrate_cmd(&pg, store.path()).args(["--batch-size", "0"]));
    assert_eq!(code, 2, "{stderr}");
    let (code, _, stderr) =
        run(migrate_cmd(&pg, store.path()).args(["--database-url", "host=x sslmode=maybe"]));
    assert_eq!(code, 2, "{stderr}");

    // Another des-migrate (here: a psql session) holds the table's lock.
    let mut holder = pg.psql_session();
    let mut stdin = holder.stdin.take().unwrap();
    writeln!(
        stdin,
        "SELECT pg_advisory_lock(hashtextextended('des-migrate:\"files\"', 0));\n\\echo locked"
    )
    .unwrap();
    stdin.flush().unwrap();
    let mut out = holder.stdout.take().unwrap();
    let mut seen = String::new();
    while !seen.contains("locked") {
        let mut buf = [0u8; 256];
        let n = std::io::Read::read(&mut out, &mut buf).unwrap();
        assert!(n > 0, "psql ended");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let (code, _, stderr) = run(&mut migrate_cmd(&pg, store.path()));
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("advisory lock"), "{stderr}");
    drop(stdin);
    holder.wait().unwrap();
    let (code, _, stderr) = run(&mut migrate_cmd(&pg, store.path()));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn database_unreachable_exits_3_and_touches_nothing() {
    let store = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (gateway, pushed) = pushgateway_stub();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_des-migrate"))
        .args([
            "--database-url",
            &format!("host=127.0.0.1 port={port} user=x sslmode=disable"),
        ])
        .args(["--out", store.path().to_str().unwrap(), "--json"])
        .args(["--pushgateway", &gateway])
        .output()
        .unwrap();
    // The failed cycle is still counted, and pushed.
    let (request, body) = pushed.join().unwrap();
    assert_eq!(request, "PUT /metrics/job/des-migrate HTTP/1.1");
    assert!(
        body.contains("des_migration_cycles_total{status=\"failed\"} 1"),
        "{body}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("cannot connect to the database"),
        "{stderr}"
    );
    assert!(stderr.contains("refused"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["error"].as_str().unwrap().contains("cannot connect"));
    assert_eq!(std::fs::read_dir(store.path()).unwrap().count(), 0);
}

#[test]
fn database_lost_before_marking_marks_nothing_and_a_rerun_finishes() {
    let pg = PgCluster::start();
    pg.create_files_table();
    let src = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let rows = seed(src.path(), "r", 8, 5);
    pg.insert_rows(&rows.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>());
    let mut child = migrate_cmd(&pg, store.path())
        .args(["--archive-age-days", "1", "--json"])
        .env("DES_MIGRATE_PAUSE_AT", "after_pack")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_stopped(pid, &mut child);
    // Packed, not marked: now the database goes away.
    pg.stop_server();
    signal(pid, Signal::SIGCONT);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("marking rows archived"), "{stderr}");
    pg.start_server();
    assert_eq!(pg.psql("SELECT count(*) FROM files WHERE archived"), "0");
    assert_eq!(total_entries(store.path()), 8);
    let (code, report, stderr) =
        run(migrate_cmd(&pg, store.path()).args(["--archive-age-days", "1", "--json"]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["files_already_present"], 8);
    assert_eq!(pg.psql("SELECT count(*) FROM files WHERE archived"), "8");
    assert_stored_once(store.path(), &rows);
}

#[test]
fn kill_9_between_pack_and_mark_then_rerun_packs_each_row_once() {
    let pg = PgCluster::start();
    pg.create_files_table();
    let src = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let rows = seed(src.path(), "k", 20, 5);
    pg.insert_rows(&rows.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>());
    // Killed after the second batch is packed, before it is marked.
    let mut child = migrate_cmd(&pg, store.path())
        .args(["--archive-age-days", "1", "--batch-size", "6"])
        .env("DES_MIGRATE_PAUSE_AT", "after_pack:2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_stopped(child.id(), &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(pg.psql("SELECT count(*) FROM files WHERE archived"), "6");
    assert_eq!(total_entries(store.path()), 12);
    let (code, report, stderr) =
        run(migrate_cmd(&pg, store.path()).args(["--archive-age-days", "1", "--json"]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["rows_selected"], 14);
    assert_eq!(report["files_already_present"], 6);
    assert_eq!(report["files_packed"], 8);
    assert_eq!(pg.psql("SELECT count(*) FROM files WHERE archived"), "20");
    assert_stored_once(store.path(), &rows);
    assert_eq!(total_entries(store.path()), 20);
}

#[test]
fn kill_9_mid_pack_in_watermark_mode_then_rerun_packs_each_row_once() {
    let pg = PgCluster::start();
    pg.create_files_table();
    let src = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let mut rows = seed(src.path(), "m", 10, 3);
    // A file over the big-file threshold: the packer pauses itself (its own
    // test hook) in the middle of packing it.
    rows.push(seed_file(src.path(), "big", &ago(3, 3600), 4096));
    pg.insert_rows(&rows.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>());
    let mut child = migrate_cmd(&pg, store.path())
        .args([
            "--mode",
            "watermark",
            "--big-file-threshold",
            "2K",
            "--jobs",
            "1",
        ])
        .env("DES_PACK_PAUSE_AT", "after_big_file_check")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_stopped(child.id(), &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    // The cycle died before its end: the watermark row exists but has not moved.
    assert_eq!(
        pg.psql("SELECT isfinite(archived_until) FROM des_archive_config"),
        "f"
    );
    let (code, report, stderr) = run(migrate_cmd(&pg, store.path()).args([
        "--mode",
        "watermark",
        "--big-file-threshold",
        "2K",
        "--json",
    ]));
    assert_eq!(code, 0, "{stderr}\n{report}");
    assert_eq!(report["rows_archived"], 11);
    assert_eq!(report["watermark_after"], report["window_end"]);
    assert_stored_once(store.path(), &rows);
    assert_eq!(total_entries(store.path()), 11);
    // A further cycle finds nothing new.
    let (code, report, _) =
        run(migrate_cmd(&pg, store.path()).args(["--mode", "watermark", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(report["rows_selected"], 0);
    assert_eq!(total_entries(store.path()), 11);
}

#[test]
fn timestamps_without_time_zone_and_renamed_columns() {
    let pg = PgCluster::start();
    pg.psql(
        "CREATE SCHEMA app; CREATE TABLE app.\"Docs\" (\"DocId\" bigint NOT NULL, made timestamp NOT NULL, \
         path text, done boolean NOT NULL DEFAULT false, PRIMARY KEY (\"DocId\", made))",
    );
    let src = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let mut values = Vec::new();
    let mut files = Vec::new();
    for i in 0..9u32 {
        let uid = (1000 + i).to_string();
        let at = format!("2024-03-0{}T23:30:00.{:06}Z", i % 3 + 1, i * 7);
        let (s, data) = seed_file(src.path(), &uid, &at, 64);
        // Stored as local time without zone: the same wall clock as UTC.
        values.push(format!(
            "({uid}, {}::timestamp, {})",
            quote(&at.replace('T', " ").replace('Z', "")),
            quote(s.location.as_ref().unwrap())
        ));
        files.push((s, data));
    }
    pg.psql(&format!(
        "INSERT INTO app.\"Docs\" VALUES {}",
        values.join(", ")
    ));
    let (code, report, stderr) = run(
        std::process::Command::new(env!("CARGO_BIN_EXE_des-migrate"))
            .args([
                "--database-url",
                &pg.url(),
                "--out",
                store.path().to_str().unwrap(),
            ])
            .args([
                "--table",
                "app.Docs",
                "--uid-column",
                "DocId",
                "--created-at-column",
                "made",
            ])
            .args(["--location-column", "path", "--archived-column", "done"])
            .args(["--batch-size", "4", "--json", "-q"]),
    );
    assert_eq!(code, 0, "{stderr}\n{report}");
    assert_eq!(report["rows_archived"], 9);
    assert_eq!(pg.psql("SELECT count(*) FROM app.\"Docs\" WHERE done"), "9");
    assert_stored_once(store.path(), &files);
}

#[test]
fn tls_modes() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let pg = PgCluster::start_with(|dir| {
        for f in ["server.crt", "server.key"] {
            std::fs::copy(certs.path().join(f), dir.join(f)).unwrap();
        }
        std::fs::set_permissions(
            dir.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        format!(
            "ssl = on\nssl_cert_file = '{0}/server.crt'\nssl_key_file = '{0}/server.key'\n",
            dir.display()
        )
    });
    pg.create_files_table();
    // From now on plain connections are refused: every success below is over TLS.
    std::fs::write(
        pg.dir().join("data/pg_hba.conf"),
        "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
    )
    .unwrap();
    pg.psql("SELECT pg_reload_conf()");
    let store = tempfile::tempdir().unwrap();
    let ca = certs.path().join("ca.crt");
    let other_ca = certs.path().join("other-ca.crt");
    let attempt = |host: &str, mode: &str, root: Option<&std::path::Path>| {
        let mut url = format!(
            "host={host} hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslmode={mode}",
            pg.port
        );
        if let Some(r) = root {
            url.push_str(&format!(" sslrootcert={}", r.display()));
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_des-migrate"))
            .args([
                "--database-url",
                &url,
                "--out",
                store.path().to_str().unwrap(),
                "-q",
            ])
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ok = |r: (i32, String)| assert_eq!(r.0, 0, "{}", r.1);
    ok(attempt("localhost", "verify-full", Some(&ca)));
    ok(attempt("127.0.0.1", "verify-ca", Some(&ca)));
    ok(attempt("127.0.0.1", "require", None));
    ok(attempt("127.0.0.1", "prefer", None));
    // The certificate names localhost, not 127.0.0.1.
    let (code, stderr) = attempt("127.0.0.1", "verify-full", Some(&ca));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
    // Signed by a CA we do not trust.
    let (code, stderr) = attempt("localhost", "verify-full", Some(&other_ca));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.to_lowercase().contains("issuer"), "{stderr}");
    let (code, stderr) = attempt("localhost", "verify-ca", Some(&other_ca));
    assert_eq!(code, 3, "{stderr}");
    // Without TLS the server refuses us (pg_hba).
    let (code, stderr) = attempt("127.0.0.1", "disable", None);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("pg_hba.conf"), "{stderr}");
}

fn make_certs(dir: &std::path::Path) {
    let sh = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    sh(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    sh(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "server.crt",
        "-extfile",
        "ext.cnf",
    ]);
    sh(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=other-ca",
        "-keyout",
        "other-ca.key",
        "-out",
        "other-ca.crt",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
    ]);
}
