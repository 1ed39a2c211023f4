//! `des-pack --metrics-file` / `--pushgateway`: what a run did, in the
//! Prometheus text format (node-exporter's textfile collector, or a
//! Pushgateway for a CronJob). Counters carry on from the previous file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use des_storage::metrics_file::previous_samples;

use crate::report::{FailureKind, PackReport};

/// How a run ended: the `status` label of `des_pack_runs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Exit 0.
    Success,
    /// Exit 1: some files failed, the others were packed.
    Partial,
    /// Exit 2: the run could not proceed.
    Failed,
}

impl RunStatus {
    pub const fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Partial => "partial",
            Self::Failed => "failed",
        }
    }
}

const COUNTERS: [(&str, &str); 4] = [
    ("des_pack_files_packed_total", "Files packed into shards."),
    (
        "des_pack_files_already_present_total",
        "Files found already stored with the same content.",
    ),
    (
        "des_pack_bytes_in_total",
        "Original bytes of the files packed.",
    ),
    (
        "des_pack_bytes_stored_total",
        "Bytes those files take in the store (after compression).",
    ),
];
const FAILED: &str = "des_pack_files_failed_total";
const RUNS: &str = "des_pack_runs_total";
const LAST_SUCCESS: &str = "des_pack_last_success_timestamp_seconds";

/// The metrics after one more run (`report` is `None` when it did not get
/// that far), counters carried on from the file at `previous`.
pub fn render_run(
    previous: Option<&Path>,
    report: Option<&PackReport>,
    status: RunStatus,
    seconds: f64,
    now_unix: f64,
) -> String {
    let mut totals: BTreeMap<String, f64> = previous
        .map(previous_samples)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut add = |name: String, v: u64| *totals.entry(name).or_default() += v as f64;
    if let Some(r) = report {
        let values = [
            r.files_packed,
            r.files_already_present,
            r.bytes_in,
            r.bytes_stored,
        ];
        for ((name, _), v) in COUNTERS.iter().zip(values) {
            add((*name).to_string(), v);
        }
        for (kind, n) in &r.files_failed_by_kind {
            add(format!("{FAILED}{{reason=\"{}\"}}", kind.label()), *n);
        }
    }
    add(format!("{RUNS}{{status=\"{}\"}}", status.label()), 1);
    let last_success = match status {
        RunStatus::Success => now_unix,
        _ => totals.get(LAST_SUCCESS).copied().unwrap_or(0.0),
    };
    render(&totals, seconds, last_success)
}

fn render(totals: &BTreeMap<String, f64>, seconds: f64, last_success: f64) -> String {
    let get = |k: &str| totals.get(k).copied().unwrap_or(0.0);
    let mut s = String::new();
    for (name, help) in COUNTERS {
        let _ = writeln!(
            s,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            get(name)
        );
    }
    let _ = writeln!(
        s,
        "# HELP {FAILED} Files not packed, by reason (the kind in the JSON report).\n\
         # TYPE {FAILED} counter"
    );
    // Every reason from 0, so a rate over a new one has a start.
    for kind in FailureKind::ALL
        .iter()
        .filter(|k| **k != FailureKind::Deleted)
    {
        let series = format!("{FAILED}{{reason=\"{}\"}}", kind.label());
        let _ = writeln!(s, "{series} {}", get(&series));
    }
    let _ = writeln!(
        s,
        "# HELP {RUNS} des-pack runs by outcome.\n# TYPE {RUNS} counter"
    );
    for status in [RunStatus::Success, RunStatus::Partial, RunStatus::Failed] {
        let series = format!("{RUNS}{{status=\"{}\"}}", status.label());
        let _ = writeln!(s, "{series} {}", get(&series));
    }
    let gauges = [
        (
            "des_pack_last_run_duration_seconds",
            "Duration of the last run.",
            seconds,
        ),
        (
            LAST_SUCCESS,
            "Unix time of the last run that packed every file.",
            last_success,
        ),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn counters_carry_on_and_failures_count_by_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pack.prom");
        let mut r = PackReport {
            files_packed: 3,
            bytes_in: 300,
            bytes_stored: 100,
            ..PackReport::default()
        };
        r.files_failed_by_kind.insert(FailureKind::SourceMissing, 2);
        let run = |report, status, secs, now| {
            let text = render_run(Some(&path), report, status, secs, now);
            std::fs::write(&path, text).unwrap();
        };
        run(Some(&r), RunStatus::Partial, 1.5, 1000.0);
        run(Some(&r), RunStatus::Success, 2.5, 2000.0);
        run(None, RunStatus::Failed, 0.1, 3000.0);
        let text = std::fs::read_to_string(&path).unwrap();
        for line in [
            "des_pack_files_packed_total 6",
            "des_pack_bytes_in_total 600",
            "des_pack_bytes_stored_total 200",
            "des_pack_files_failed_total{reason=\"source_missing\"} 4",
            "des_pack_files_failed_total{reason=\"store\"} 0",
            "des_pack_runs_total{status=\"success\"} 1",
            "des_pack_runs_total{status=\"partial\"} 1",
            "des_pack_runs_total{status=\"failed\"} 1",
            "des_pack_last_run_duration_seconds 0.1",
            "des_pack_last_success_timestamp_seconds 2000",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
