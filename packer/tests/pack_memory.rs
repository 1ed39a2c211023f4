#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Memory is bounded by configuration, not by file or shard size.

use std::io::Write;
use std::process::Command;

/// Runs `cmd` to its end; its exit status and peak resident set, as the
/// kernel accounted it when the child was reaped (the `ru_maxrss` that
/// `wait4` reports, read with `getrusage(RUSAGE_CHILDREN)`: the largest of
/// this process's reaped children, and this test binary runs no other).
/// Nothing is sampled, so no peak can fall between two samples.
fn run_and_measure_peak_rss(cmd: &mut Command) -> (std::process::ExitStatus, u64) {
    let status = cmd.status().unwrap();
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    // Linux reports kilobytes.
    let peak_kb = u64::try_from(usage.max_rss()).unwrap();
    (status, peak_kb * 1024)
}

fn write_pattern(path: &std::path::Path, len: usize, seed: u8) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let block: Vec<u8> = (0..1 << 20)
        .map(|i: usize| (i.wrapping_mul(31) as u8) ^ seed)
        .collect();
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len());
        f.write_all(&block[..n]).unwrap();
        left -= n;
    }
}

#[test]
fn peak_rss_stays_bounded_for_big_files_and_big_shards() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    // One 384 MiB external file, plus 24 inline files of 9 MiB that all route to
    // shard 0 (multiples of 16 with n_bits 4): a single ~216 MiB shard.
    write_pattern(&src.path().join("1"), 384 << 20, 1);
    for i in 1..=24u32 {
        write_pattern(&src.path().join((i * 16).to_string()), 9 << 20, i as u8);
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_des-pack"));
    cmd.args([
        "--dir",
        src.path().to_str().unwrap(),
        "--created-at",
        "2024-05-17T10:00:00Z",
    ])
    .args([
        "--out",
        out.path().to_str().unwrap(),
        "--n-bits",
        "4",
        "--compression",
        "none",
        "-q",
    ]);
    let (status, peak) = run_and_measure_peak_rss(&mut cmd);
    assert!(status.success());
    let shard = std::fs::metadata(out.path().join("20240517/0.des"))
        .unwrap()
        .len();
    assert!(shard > 200 << 20, "shard is only {shard} bytes");
    assert!(peak < 200 << 20, "peak RSS {} MiB", peak >> 20);
    eprintln!(
        "peak RSS {} MiB for a {} MiB shard and a 384 MiB file",
        peak >> 20,
        shard >> 20
    );
}
