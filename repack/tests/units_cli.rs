//! Every size and duration option of every DES binary takes the same
//! spellings (des_storage::units), refuses the same nonsense, and `--help`
//! states the grammar once. The binaries of other packages are found next
//! to this test's own (`cargo test --workspace` builds them all).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use des_storage::units::GRAMMAR;

#[derive(Clone, Copy)]
enum Kind {
    Size,
    Duration,
}

/// (binary, option, kind). For the retriever's `…-secs` options a bare
/// number is seconds, as before; any duration is accepted too.
const OPTIONS: &[(&str, &str, Kind)] = &[
    ("des-pack", "--big-file-threshold", Kind::Size),
    ("des-pack", "--plan-memory", Kind::Size),
    ("des-pack", "--abort-stale-uploads-after", Kind::Duration),
    ("des-migrate", "--big-file-threshold", Kind::Size),
    ("des-migrate", "--plan-memory", Kind::Size),
    ("des-migrate", "--abort-stale-uploads-after", Kind::Duration),
    ("des-migrate", "--connect-timeout", Kind::Duration),
    ("des-repack", "--max-bytes", Kind::Size),
    ("des-repack", "--max-delay", Kind::Duration),
    ("des-repack", "--big-file-grace", Kind::Duration),
    ("des-repack", "--lease-ttl", Kind::Duration),
    ("des-repack", "--sweep-temp-after", Kind::Duration),
    ("des-verify", "--rate", Kind::Size),
    ("des-verify", "--max-delay", Kind::Duration),
    ("des-retriever", "--cache-bytes", Kind::Size),
    ("des-retriever", "--payload-cache-bytes", Kind::Size),
    (
        "des-retriever",
        "--payload-cache-max-entry-bytes",
        Kind::Size,
    ),
    ("des-retriever", "--suffix-bytes", Kind::Size),
    ("des-retriever", "--max-payload-bytes-in-flight", Kind::Size),
    ("des-retriever", "--cache-ttl-secs", Kind::Duration),
    ("des-retriever", "--negative-ttl-secs", Kind::Duration),
    ("des-retriever", "--shutdown-timeout-secs", Kind::Duration),
    (
        "des-retriever",
        "--tombstone-poll-interval-secs",
        Kind::Duration,
    ),
    ("des-retriever", "--keys-poll-interval-secs", Kind::Duration),
    (
        "des-retriever",
        "--client-request-timeout-secs",
        Kind::Duration,
    ),
    ("des-retriever", "--keep-alive-secs", Kind::Duration),
    ("des-retriever", "--cache-max-age-secs", Kind::Duration),
];

/// Every binary takes the shared store options (des_storage::cli), whose
/// durations are in the same grammar.
const BINARIES: &[&str] = &[
    "des-pack",
    "des-migrate",
    "des-repack",
    "des-tombstones",
    "des-verify",
    "des-upgrade",
    "des-retriever",
];
const CONNECTION_DURATIONS: &[&str] = &[
    "--attempt-timeout",
    "--retry-deadline",
    "--breaker-cool-down",
];

/// OPTIONS and every binary's connection durations.
fn options() -> Vec<(&'static str, &'static str, Kind)> {
    let shared = BINARIES.iter().flat_map(|b| {
        CONNECTION_DURATIONS
            .iter()
            .map(|o| (*b, *o, Kind::Duration))
    });
    OPTIONS.iter().copied().chain(shared).collect()
}

const SIZES: &[&str] = &["1048576", "512K", "64MiB", "10G", "2TB", "64kb"];
const DURATIONS: &[&str] = &["90", "250ms", "90s", "15m", "24h", "7d"];
const NONSENSE: &[&str] = &["10 parsecs", "1w", "1.5G", "-1"];

fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(|d| d.parent()).unwrap().join(name);
    assert!(
        path.exists(),
        "{} missing: build the workspace's binaries (cargo test --workspace)",
        path.display()
    );
    path
}

/// Runs `bin option value` with nothing else configured: the run stops
/// (no store, no input) after the command line is parsed. Returns stderr.
fn run(bin: &str, option: &str, value: &str) -> String {
    let out = Command::new(binary(bin))
        .arg(format!("{option}={value}"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{bin} {option}={value} ran");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn every_size_and_duration_option_takes_the_same_spellings() {
    for (bin, option, kind) in options() {
        let good = match kind {
            Kind::Size => SIZES,
            Kind::Duration => DURATIONS,
        };
        for value in good {
            let err = run(bin, option, value);
            assert!(
                !err.contains("invalid value") && !err.contains(value),
                "{bin} {option}={value} was refused: {err}"
            );
        }
        for value in NONSENSE {
            let err = run(bin, option, value);
            assert!(
                err.contains(option) && err.contains(value),
                "{bin} {option}={value} was not refused by name: {err}"
            );
        }
    }
}

#[test]
fn help_states_the_grammar_once() {
    let options = options();
    for &bin in BINARIES {
        let out = Command::new(binary(bin)).arg("--help").output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{bin} --help");
        let help = String::from_utf8_lossy(&out.stdout);
        assert_eq!(help.matches(GRAMMAR).count(), 1, "{bin}:\n{help}");
        for &(_, option, _) in options.iter().filter(|o| o.0 == bin) {
            assert!(help.contains(option), "{bin} --help lacks {option}");
        }
    }
}
