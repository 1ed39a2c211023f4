#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! 100,000 rows migrated with memory bounded by the batch size (and the
//! packer's configured budgets), not by the table.
//!
//! Peak RSS is the kernel's own account (`ru_maxrss`, read with
//! `getrusage(RUSAGE_CHILDREN)` once the child is reaped, as
//! packer/tests/pack_memory.rs does). RUSAGE_CHILDREN is the largest of
//! every child reaped so far, and these tests also run initdb, pg_ctl and
//! psql; so each measured command is run by a fresh copy of this test
//! binary (`measure_child`), whose only child it is.
//!
//! `bench_100k_rows_against_des_pack` (ignored; run in release) adds the
//! numbers for docs/BENCHMARKS.md: both modes and des-pack over the same files.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::*;

const MEASURE_CMD: &str = "DES_MEASURE_CMD";
const MEASURE_OUT: &str = "DES_MEASURE_OUT";

/// Helper, not a test: runs the JSON argv in `DES_MEASURE_CMD` as this
/// process's only child, writes its stdout to `DES_MEASURE_OUT`, and prints
/// its exit code, wall time and peak RSS.
#[test]
#[ignore = "helper run by the tests below in a process of its own"]
fn measure_child() {
    let Ok(argv) = std::env::var(MEASURE_CMD) else {
        return;
    };
    let argv: Vec<String> = serde_json::from_str(&argv).unwrap();
    let started = Instant::now();
    let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
    let secs = started.elapsed().as_secs_f64();
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    // Linux reports kilobytes.
    let peak = u64::try_from(usage.max_rss()).unwrap() * 1024;
    std::fs::write(std::env::var(MEASURE_OUT).unwrap(), &out.stdout).unwrap();
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    println!(
        "MEASURED code={} secs={secs} peak={peak}",
        out.status.code().unwrap_or(-1)
    );
}

struct Measured {
    code: i32,
    secs: f64,
    peak: u64,
    stdout: String,
}

fn measure(argv: &[String]) -> Measured {
    let out_file = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "measure_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MEASURE_CMD, serde_json::to_string(argv).unwrap())
        .env(MEASURE_OUT, out_file.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // The harness prints "test measure_child ... " first, on the same line.
    let line = text
        .lines()
        .find_map(|l| l.split_once("MEASURED ").map(|(_, m)| m))
        .unwrap_or_else(|| {
            panic!(
                "no measurement:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_string()
    };
    Measured {
        code: field("code").parse().unwrap(),
        secs: field("secs").parse().unwrap(),
        peak: field("peak").parse().unwrap(),
        stdout: std::fs::read_to_string(out_file.path()).unwrap(),
    }
}

/// `rows` rows over ten days, pointing to five tiny files.
fn seed_rows(pg: &PgCluster, src: &Path, rows: u64) {
    for i in 0..5 {
        std::fs::write(
            src.join(format!("f{i}")),
            format!("tiny file {i}\n").repeat(3),
        )
        .unwrap();
    }
    pg.psql(&format!(
        "INSERT INTO files (uid, created_at, file_location, size_bytes) \
         SELECT 'row-' || i, timestamptz '2024-01-01 00:00:00+00' + i * interval '8.64 seconds', \
                {} || (i % 5), 33 FROM generate_series(1, {rows}) AS i",
        quote(&format!("{}/f", src.display()))
    ));
    // What README recommends for per-record mode: without it, every batch's
    // keyset query scans the table (≈ 0.3 s a batch at 1,000,000 rows).
    pg.psql("CREATE INDEX files_due ON files (created_at, uid) WHERE NOT archived");
}

fn migrate_argv(pg: &PgCluster, store: &Path, extra: &[&str]) -> Vec<String> {
    [
        env!("CARGO_BIN_EXE_des-migrate"),
        "--database-url",
        &pg.url(),
        "--out",
        store.to_str().unwrap(),
        "--n-bits",
        "8",
        "--size-column",
        "size_bytes",
        "--archive-age-days",
        "1",
        "--json",
        "-q",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

fn rows_wanted() -> u64 {
    std::env::var("MIGRATE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

#[test]
fn hundred_thousand_rows_per_record_with_bounded_memory() {
    let rows = rows_wanted();
    let pg = PgCluster::start();
    pg.create_files_table();
    let src = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    seed_rows(&pg, src.path(), rows);
    let m = measure(&migrate_argv(&pg, store.path(), &["--batch-size", "10000"]));
    let report: serde_json::Value = serde_json::from_str(m.stdout.trim()).unwrap();
    assert_eq!(m.code, 0, "{report}");
    assert_eq!(report["rows_archived"], rows);
    assert_eq!(
        pg.psql("SELECT count(*) FROM files WHERE archived"),
        rows.to_string()
    );
    eprintln!(
        "per-record: {rows} rows in {:.1} s, peak RSS {} MiB",
        m.secs,
        m.peak >> 20
    );
    // Rows held: one batch (10,000 short rows, a few MB); the packer: its
    // 64 MiB planning budget plus a shard per job. Far from what 100,000
    // rows held at once in every layer would take, and independent of it.
    assert!(m.peak < 200 << 20, "peak RSS {} MiB", m.peak >> 20);
    let entries: usize = store_entries(store.path()).values().sum();
    assert_eq!(entries as u64, rows);
}

/// Release numbers for docs/BENCHMARKS.md. Build des-pack first:
/// `cargo build --release -p des-packer --bin des-pack && cargo test --release
/// -p des-migrate --test memory -- --ignored --nocapture bench_`
#[test]
#[ignore = "benchmark: run in release, see the doc comment"]
fn bench_100k_rows_against_des_pack() {
    let rows = rows_wanted();
    let pg = PgCluster::start();
    pg.create_files_table();
    let src = tempfile::tempdir().unwrap();
    seed_rows(&pg, src.path(), rows);
    let per_record = tempfile::tempdir().unwrap();
    let m = measure(&migrate_argv(
        &pg,
        per_record.path(),
        &["--batch-size", "10000"],
    ));
    assert_eq!(m.code, 0, "{}", m.stdout);
    println!(
        "des-migrate per-record (batch 10000): {rows} rows, {:.1} s, peak RSS {} MiB",
        m.secs,
        m.peak >> 20
    );
    let watermark = tempfile::tempdir().unwrap();
    let m = measure(&migrate_argv(
        &pg,
        watermark.path(),
        &["--mode", "watermark", "--batch-size", "10000"],
    ));
    assert_eq!(m.code, 0, "{}", m.stdout);
    println!(
        "des-migrate watermark: {rows} rows, {:.1} s, peak RSS {} MiB",
        m.secs,
        m.peak >> 20
    );
    // des-pack over the same rows, exported as a manifest.
    let manifest = src.path().join("rows.jsonl");
    let export = pg.psql(
        "SELECT json_build_object('uid', uid, 'created_at', \
         to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
         'source', file_location, 'size_bytes', size_bytes) FROM files ORDER BY created_at, uid",
    );
    std::fs::write(&manifest, export + "\n").unwrap();
    let des_pack = Path::new(env!("CARGO_BIN_EXE_des-migrate")).with_file_name("des-pack");
    if !des_pack.exists() {
        println!(
            "des-pack not built next to des-migrate ({}): skipped",
            des_pack.display()
        );
        return;
    }
    let packed = tempfile::tempdir().unwrap();
    let argv: Vec<String> = [
        des_pack.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--out",
        packed.path().to_str().unwrap(),
        "--n-bits",
        "8",
        "-q",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let m = measure(&argv);
    assert_eq!(m.code, 0, "{}", m.stdout);
    println!(
        "des-pack --manifest: {rows} rows, {:.1} s, peak RSS {} MiB",
        m.secs,
        m.peak >> 20
    );
}
