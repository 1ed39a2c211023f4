//! Prometheus text-format metrics for `--metrics-file`, for node-exporter's
//! textfile collector or a pushgateway. Counters carry over between runs:
//! a one-shot run (CronJob) reads the previous file and adds to it, so
//! `des_repack_jobs_total` keeps counting across runs. The file is replaced
//! atomically (temp file + rename), as the textfile collector requires.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use des_storage::metrics_file::{previous_samples, write_atomically};

use crate::repack::RepackReport;

/// How a run ended, the `status` label of `des_repack_jobs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Success,
    /// Some shards failed, or the run could not proceed.
    Failed,
    /// Another repacker held the lease; nothing was done.
    LeaseHeld,
}

impl JobStatus {
    pub fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failed => "failed",
            Self::LeaseHeld => "lease_held",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepackMetrics {
    pub jobs: BTreeMap<String, u64>,
    pub space_saved_bytes: u64,
    pub shards_rewritten: u64,
    pub entries_dropped: u64,
    pub last_duration_seconds: f64,
    pub last_success_timestamp_seconds: f64,
    pub tombstones_pending: u64,
    pub tombstones_held: u64,
    pub oldest_pending_age_seconds: f64,
}

const COUNTERS: [(&str, &str); 4] = [
    ("des_repack_jobs_total", "Repack runs by outcome."),
    (
        "des_repack_space_saved_bytes",
        "Bytes freed by repacking (shards and big files).",
    ),
    ("des_repack_shards_rewritten_total", "Shards rewritten."),
    (
        "des_repack_entries_dropped_total",
        "Deleted files physically removed.",
    ),
];

impl RepackMetrics {
    /// The counters of a previous file at `path` (missing or unreadable:
    /// start from zero; gauges are always replaced).
    pub fn load(path: &Path) -> Self {
        let mut m = Self::default();
        for (name, v) in previous_samples(path) {
            let n = v.max(0.0) as u64;
            if let Some(status) = name
                .strip_prefix("des_repack_jobs_total{status=\"")
                .and_then(|s| s.strip_suffix("\"}"))
            {
                m.jobs.insert(status.to_string(), n);
            }
            match name.as_str() {
                "des_repack_space_saved_bytes" => m.space_saved_bytes = n,
                "des_repack_shards_rewritten_total" => m.shards_rewritten = n,
                "des_repack_entries_dropped_total" => m.entries_dropped = n,
                "des_repack_last_success_timestamp_seconds" => {
                    m.last_success_timestamp_seconds = v;
                }
                _ => {}
            }
        }
        m
    }

    /// Adds one run. `report` is `None` when the run did not get that far.
    pub fn record(&mut self, status: JobStatus, report: Option<&RepackReport>, seconds: f64) {
        *self.jobs.entry(status.label().to_string()).or_default() += 1;
        self.last_duration_seconds = seconds;
        if status == JobStatus::Success {
            self.last_success_timestamp_seconds = now_seconds();
        }
        if let Some(r) = report.filter(|r| !r.dry_run) {
            self.space_saved_bytes += r.space_saved();
            self.shards_rewritten += r.shards_rewritten;
            self.entries_dropped += r.entries_dropped;
        }
        if let Some(r) = report {
            self.tombstones_pending = r.tombstones_pending;
            self.tombstones_held = r.tombstones_held;
            self.oldest_pending_age_seconds = r.oldest_pending_age_seconds;
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let [
            (jobs, jobs_help),
            (saved, saved_help),
            (shards, shards_help),
            (dropped, dropped_help),
        ] = COUNTERS;
        let _ = writeln!(s, "# HELP {jobs} {jobs_help}\n# TYPE {jobs} counter");
        for status in [JobStatus::Success, JobStatus::Failed, JobStatus::LeaseHeld] {
            let n = self.jobs.get(status.label()).copied().unwrap_or(0);
            let _ = writeln!(s, "{jobs}{{status=\"{}\"}} {n}", status.label());
        }
        for (name, help, v) in [
            (saved, saved_help, self.space_saved_bytes),
            (shards, shards_help, self.shards_rewritten),
            (dropped, dropped_help, self.entries_dropped),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let gauges: [(&str, &str, f64); 5] = [
            (
                "des_tombstones_pending",
                "Tombstones whose bytes are not yet removed (legal holds excluded).",
                self.tombstones_pending as f64,
            ),
            (
                "des_tombstones_held",
                "Pending tombstones kept by a legal hold.",
                self.tombstones_held as f64,
            ),
            (
                "des_tombstones_oldest_pending_age_seconds",
                "Age of the oldest pending tombstone (0 when none).",
                self.oldest_pending_age_seconds,
            ),
            (
                "des_repack_last_duration_seconds",
                "Duration of the last run.",
                self.last_duration_seconds,
            ),
            (
                "des_repack_last_success_timestamp_seconds",
                "Unix time of the last successful run.",
                self.last_success_timestamp_seconds,
            ),
        ];
        render_gauges(&mut s, &gauges);
        s
    }

    /// Writes the file atomically.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        write_atomically(path, &self.render())
    }
}

fn render_gauges(out: &mut String, gauges: &[(&str, &str, f64)]) {
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
}

/// Metrics of one `des-verify` run, written atomically. Gauges of the last
/// run: the alert fires on `des_verify_corrupt_entries_total > 0` and on a
/// stale `des_verify_last_run_timestamp_seconds`.
pub fn write_verify_metrics(
    path: &Path,
    report: &crate::verify::VerifyReport,
) -> std::io::Result<()> {
    write_atomically(path, &render_verify_metrics(report))
}

/// `des-verify`'s metrics as text: what `--metrics-file` gets and what is pushed.
pub fn render_verify_metrics(report: &crate::verify::VerifyReport) -> String {
    let gauges = [
        (
            "des_verify_corrupt_entries_total",
            "Corrupt entries found by the last verify run.",
            report.corrupt_entries as f64,
        ),
        (
            "des_verify_corrupt_shards",
            "Shards with corruption found by the last verify run.",
            report.corrupt_shards as f64,
        ),
        (
            "des_verify_entries_checked",
            "Entries whose payload the last verify run checked.",
            report.entries_checked as f64,
        ),
        (
            "des_verify_last_run_timestamp_seconds",
            "Unix time the last verify run finished.",
            now_seconds(),
        ),
    ];
    let mut text = String::new();
    render_gauges(&mut text, &gauges);
    text
}

fn now_seconds() -> f64 {
    des_format::Timestamp::now().micros() as f64 / 1e6
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn counters_accumulate_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repack.prom");
        let report = RepackReport {
            bytes_reclaimed: 1000,
            shards_rewritten: 2,
            entries_dropped: 3,
            tombstones_pending: 4,
            oldest_pending_age_seconds: 5.5,
            ..RepackReport::default()
        };
        let mut m = RepackMetrics::load(&path);
        m.record(JobStatus::Success, Some(&report), 1.0);
        m.write(&path).unwrap();
        let mut again = RepackMetrics::load(&path);
        again.record(JobStatus::LeaseHeld, None, 0.1);
        again.record(JobStatus::Success, Some(&report), 1.0);
        again.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("des_repack_jobs_total{status=\"success\"} 2"),
            "{text}"
        );
        assert!(text.contains("des_repack_jobs_total{status=\"lease_held\"} 1"));
        assert!(text.contains("des_repack_jobs_total{status=\"failed\"} 0"));
        assert!(text.contains("des_repack_space_saved_bytes 2000"));
        assert!(text.contains("des_tombstones_pending 4"));
        assert!(text.contains("des_tombstones_oldest_pending_age_seconds 5.5"));
        assert!(text.contains("# TYPE des_repack_space_saved_bytes counter"));
    }
}
