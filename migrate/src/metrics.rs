//! Prometheus text-format metrics for `--metrics-file` (node-exporter's
//! textfile collector, or a pushgateway). A CronJob run is one process, so
//! counters carry over by reading the previous file and adding to it; the
//! file is replaced atomically (temp file, rename), as the textfile
//! collector requires.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use des_storage::metrics_file::{previous_samples, write_atomically};

use crate::report::MigrationReport;

/// How a cycle (one run) ended: the `status` label of `des_migration_cycles_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CycleStatus {
    /// Exit 0.
    Success,
    /// Exit 1: some rows failed, the rest archived.
    Partial,
    /// Stopped by an error (exit 2 to 5).
    Failed,
}

impl CycleStatus {
    pub fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Partial => "partial",
            Self::Failed => "failed",
        }
    }

    pub fn from_exit_code(code: u8) -> Self {
        match code {
            0 => Self::Success,
            1 => Self::Partial,
            _ => Self::Failed,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MigrationMetrics {
    pub files_total: u64,
    pub bytes_total: u64,
    pub cycles: BTreeMap<String, u64>,
    pub duration_seconds: f64,
    pub pending_files: u64,
    pub lag_seconds: f64,
    pub last_success_timestamp_seconds: f64,
}

const FILES: &str = "des_migration_files_total";
const BYTES: &str = "des_migration_bytes_total";
const CYCLES: &str = "des_migration_cycles_total";
const LAST_SUCCESS: &str = "des_migration_last_success_timestamp_seconds";

impl MigrationMetrics {
    /// Counters of a previous file at `path` (missing or unreadable: start
    /// from zero; gauges are always replaced).
    pub fn load(path: &Path) -> Self {
        let mut m = Self::default();
        for (name, v) in previous_samples(path) {
            let n = v.max(0.0) as u64;
            if let Some(status) = name
                .strip_prefix("des_migration_cycles_total{status=\"")
                .and_then(|s| s.strip_suffix("\"}"))
            {
                m.cycles.insert(status.to_string(), n);
            }
            match name.as_str() {
                FILES => m.files_total = n,
                BYTES => m.bytes_total = n,
                LAST_SUCCESS => m.last_success_timestamp_seconds = v,
                _ => {}
            }
        }
        m
    }

    /// Adds one cycle.
    pub fn record(&mut self, status: CycleStatus, report: &MigrationReport) {
        *self.cycles.entry(status.label().to_string()).or_default() += 1;
        self.duration_seconds = report.elapsed_seconds;
        if !report.dry_run {
            self.files_total += report.rows_archived;
            self.bytes_total += report.bytes_in;
        }
        // Gauges from a run that stopped early would be guesses: keep 0
        // rather than a stale value that looks current.
        self.pending_files = report.pending_rows;
        self.lag_seconds = report.lag_seconds;
        if status == CycleStatus::Success {
            self.last_success_timestamp_seconds =
                des_format::Timestamp::now().micros() as f64 / 1e6;
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let counter = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut s,
            FILES,
            "Rows archived (files stored and rows marked or passed by the watermark).",
            self.files_total,
        );
        counter(&mut s, BYTES, "Source bytes packed.", self.bytes_total);
        let _ = writeln!(
            s,
            "# HELP {CYCLES} Migration runs by outcome.\n# TYPE {CYCLES} counter"
        );
        for status in [
            CycleStatus::Success,
            CycleStatus::Partial,
            CycleStatus::Failed,
        ] {
            let n = self.cycles.get(status.label()).copied().unwrap_or(0);
            let _ = writeln!(s, "{CYCLES}{{status=\"{}\"}} {n}", status.label());
        }
        let gauges: [(&str, &str, f64); 4] = [
            (
                "des_migration_duration_seconds",
                "Duration of the last run.",
                self.duration_seconds,
            ),
            (
                "des_migration_pending_files",
                "Rows due for archiving and not archived after the last run.",
                self.pending_files as f64,
            ),
            (
                "des_migration_lag_seconds",
                "Age of the oldest pending row beyond the archive age / lag (0: caught up).",
                self.lag_seconds,
            ),
            (
                LAST_SUCCESS,
                "Unix time of the last run that archived every due row.",
                self.last_success_timestamp_seconds,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        s
    }

    /// Written atomically, as des-repack's (a collector never reads half a file).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        write_atomically(path, &self.render())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn counters_accumulate_across_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("migrate.prom");
        let report = MigrationReport {
            rows_archived: 10,
            bytes_in: 1000,
            pending_rows: 3,
            lag_seconds: 12.5,
            elapsed_seconds: 2.0,
            ..MigrationReport::default()
        };
        let mut m = MigrationMetrics::load(&path);
        m.record(CycleStatus::Success, &report);
        m.write(&path).unwrap();
        let mut again = MigrationMetrics::load(&path);
        again.record(CycleStatus::Partial, &report);
        again.record(CycleStatus::Failed, &MigrationReport::default());
        again.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for want in [
            "des_migration_files_total 20",
            "des_migration_bytes_total 2000",
            "des_migration_cycles_total{status=\"success\"} 1",
            "des_migration_cycles_total{status=\"partial\"} 1",
            "des_migration_cycles_total{status=\"failed\"} 1",
            "des_migration_pending_files 0",
            "# TYPE des_migration_lag_seconds gauge",
            "# TYPE des_migration_duration_seconds gauge",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
        assert!(m.last_success_timestamp_seconds > 0.0);
        assert_eq!(
            MigrationMetrics::load(&path).last_success_timestamp_seconds,
            m.last_success_timestamp_seconds
        );
    }
}
