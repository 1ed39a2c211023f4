//! Shared by the end-to-end tests: the `des-pack` binary, a corpus of real
//! and synthetic files, and the JSON report.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

pub const CREATED: &str = "2024-05-17T10:00:00Z";

pub fn des_pack(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_des-pack"))
        .args(args)
        .output()
        .unwrap()
}

/// `--dir SRC --created-at CREATED --out OUT`, the start of most runs.
pub fn dir_args<'a>(src: &'a Path, out: &'a str) -> Vec<&'a str> {
    let src = src.to_str().unwrap();
    vec!["--dir", src, "--created-at", CREATED, "--out", out]
}

/// `des-pack` on the directory `src` into `out`, plus `extra` options.
pub fn pack_dir(src: &Path, out: &str, extra: &[&str]) -> Output {
    des_pack(&[&dir_args(src, out)[..], extra].concat())
}

/// Real files (this repository's sources and fixtures) plus seeded synthetic
/// ones, including incompressible and larger-than-threshold files.
pub fn corpus(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = BTreeMap::new();
    for sub in [
        "format-spec/src",
        "storage/src",
        "testdata/legacy-des/format",
    ] {
        for e in walkdir::WalkDir::new(repo.join(sub)).sort_by_file_name() {
            let e = e.unwrap();
            if e.file_type().is_file() {
                let rel = format!(
                    "{sub}/{}",
                    e.path().strip_prefix(repo.join(sub)).unwrap().display()
                );
                files.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    let mut x = 42u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    files.insert("synthetic/empty.bin".into(), Vec::new());
    files.insert("synthetic/noise.bin".into(), noise(20_000));
    files.insert("synthetic/big-noise.bin".into(), noise(300_000));
    files.insert(
        "synthetic/big-text.txt".into(),
        b"lorem ipsum dolor ".repeat(20_000),
    );
    files.insert(
        "synthetic/photo.jpg".into(),
        [b"\xFF\xD8\xFF".as_slice(), &noise(5000)].concat(),
    );
    for (rel, data) in &files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    files
}

pub fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Asserts an exit code, showing what the run printed when it differs.
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deterministic incompressible bytes.
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}
