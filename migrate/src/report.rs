//! The run's report: printed as text or JSON (`--json`), fed to the metrics.

use std::fmt;

use serde::Serialize;

use crate::config::Mode;
use crate::error::{EXIT_OK, EXIT_PARTIAL};

/// Rows listed by name in the report; the counts are always complete.
pub const MAX_LISTED: usize = 10_000;

/// A row that was not archived (or whose source was kept), and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RowFailure {
    pub uid: String,
    pub created_at: String,
    pub file_location: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MigrationReport {
    pub mode: Option<Mode>,
    pub dry_run: bool,
    pub table: String,
    pub store: String,
    /// Rows read from the database this run.
    pub rows_selected: u64,
    /// Rows now settled: marked archived (per record) or at or below the
    /// advanced watermark. Includes tombstoned rows.
    pub rows_archived: u64,
    /// Rows whose files were packed by this run.
    pub files_packed: u64,
    /// Rows whose files were already in the store, identical (a re-run
    /// after a crash, or a row listed twice).
    pub files_already_present: u64,
    /// Rows whose (uid, day) has a tombstone in the store: deleted from DES
    /// on purpose; settled, never packed again, sources never deleted.
    pub rows_tombstoned: u64,
    /// Rows that failed (not marked, or at/after where the watermark stopped).
    pub rows_failed: u64,
    /// Bytes read from sources and packed this run, and their stored size.
    pub bytes_in: u64,
    pub bytes_stored: u64,
    /// Packer runs (per record: one per batch; watermark: one per window).
    pub batches: u64,
    pub sources_deleted: u64,
    /// Sources kept because verification or deletion failed.
    pub sources_kept: u64,
    /// Watermark mode: the window `(watermark_before, window_end]` and where
    /// the watermark is now (RFC 3339; `null` = nothing archived yet).
    pub watermark_before: Option<String>,
    pub watermark_after: Option<String>,
    pub window_end: Option<String>,
    /// Per record: rows older than the cut-off still unarchived after the
    /// run; watermark: rows of the window above the watermark.
    pub pending_rows: u64,
    /// How far archiving is behind: the age of the oldest pending row past
    /// the cut-off (0 when none is pending).
    pub lag_seconds: f64,
    pub elapsed_seconds: f64,
    /// The error that stopped the run, if one did.
    pub error: Option<String>,
    pub warnings: Vec<String>,
    /// At most [`MAX_LISTED`]; `rows_failed` has the count.
    pub failures: Vec<RowFailure>,
    /// At most [`MAX_LISTED`]; `sources_kept` has the count.
    pub sources_not_deleted: Vec<RowFailure>,
}

impl MigrationReport {
    pub fn fail(&mut self, f: RowFailure) {
        self.rows_failed += 1;
        if self.failures.len() < MAX_LISTED {
            self.failures.push(f);
        }
    }

    pub fn keep_source(&mut self, f: RowFailure) {
        self.sources_kept += 1;
        if self.sources_not_deleted.len() < MAX_LISTED {
            self.sources_not_deleted.push(f);
        }
    }

    /// Exit code of a run that finished: 0, or 1 when some rows failed or
    /// a source that should have been deleted was kept.
    pub fn exit_code(&self) -> u8 {
        if self.rows_failed > 0 || self.sources_kept > 0 {
            EXIT_PARTIAL
        } else {
            EXIT_OK
        }
    }
}

impl fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.dry_run {
            "would archive"
        } else {
            "archived"
        };
        writeln!(
            f,
            "des-migrate: {} rows selected from {}, {what} {} ({} packed, {} already stored, {} tombstoned), {} failed",
            self.rows_selected,
            self.table,
            self.rows_archived,
            self.files_packed,
            self.files_already_present,
            self.rows_tombstoned,
            self.rows_failed,
        )?;
        writeln!(
            f,
            "  {} MB in, {} MB stored, {} packer runs, {:.1} s",
            self.bytes_in / 1_000_000,
            self.bytes_stored / 1_000_000,
            self.batches,
            self.elapsed_seconds
        )?;
        if let Some(end) = &self.window_end {
            writeln!(
                f,
                "  watermark {} -> {} (window end {end})",
                self.watermark_before.as_deref().unwrap_or("-infinity"),
                self.watermark_after.as_deref().unwrap_or("-infinity"),
            )?;
        }
        if self.sources_deleted > 0 || self.sources_kept > 0 {
            writeln!(
                f,
                "  sources deleted: {}, kept: {}",
                self.sources_deleted, self.sources_kept
            )?;
        }
        writeln!(
            f,
            "  pending: {} rows, lag {:.0} s",
            self.pending_rows, self.lag_seconds
        )?;
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        for x in &self.failures {
            writeln!(
                f,
                "  failed: {} {} ({}): {}",
                x.uid,
                x.created_at,
                x.file_location.as_deref().unwrap_or("no location"),
                x.reason
            )?;
        }
        if self.rows_failed > self.failures.len() as u64 {
            writeln!(
                f,
                "  ... and {} more failed rows",
                self.rows_failed - self.failures.len() as u64
            )?;
        }
        for x in &self.sources_not_deleted {
            writeln!(
                f,
                "  source kept: {} {} ({}): {}",
                x.uid,
                x.created_at,
                x.file_location.as_deref().unwrap_or("no location"),
                x.reason
            )?;
        }
        if let Some(e) = &self.error {
            writeln!(f, "  error: {e}")?;
        }
        Ok(())
    }
}
