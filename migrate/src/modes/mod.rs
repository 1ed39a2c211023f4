//! A run: connect, lock, then one of the two modes. What both modes share
//! (packing a manifest, deleting verified sources, dry-run checks, progress)
//! lives in [`Run`].
//!
//! The driver is synchronous and runs outside the runtime's worker threads:
//! the packer blocks on the runtime itself, and database calls are
//! `block_on`s of their own.

pub mod per_record;
pub mod watermark;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use des_format::Timestamp;
use des_packer::{PackOptions, Target};
use des_storage::DesStore;
use tokio::runtime::Handle;

use crate::config::{Config, Mode};
use crate::db::Db;
use crate::error::MigrateError;
use crate::manifest::Line;
use crate::pack::{Packed, pack_manifest};
use crate::report::{MigrationReport, RowFailure};
use crate::sources::{Candidate, SourceCleaner};
use crate::tls::DbTarget;

/// Runs one cycle, filling `report` as it goes (so a run stopped by an
/// error still reports what it did). Blocks on `handle`: call it from a
/// thread that is not one of the runtime's workers.
pub fn run(
    cfg: &Config,
    handle: &Handle,
    report: &mut MigrationReport,
) -> Result<(), MigrateError> {
    let started = Instant::now();
    report.mode = Some(cfg.mode);
    report.dry_run = cfg.dry_run;
    report.table = cfg.names.table.name.clone();
    report.store = cfg.pack.store.describe();
    let result = run_cycle(cfg, handle, report);
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    if let Err(e) = &result {
        report.error = Some(e.to_string());
    }
    result
}

fn run_cycle(
    cfg: &Config,
    handle: &Handle,
    report: &mut MigrationReport,
) -> Result<(), MigrateError> {
    let target = DbTarget::parse(&cfg.database_url)?;
    let db = handle.block_on(Db::connect(&target, cfg.connect_timeout, &cfg.names))?;
    if !cfg.dry_run {
        handle.block_on(db.lock())?;
    }
    let work = match &cfg.work_dir {
        Some(d) => tempfile::Builder::new()
            .prefix("des-migrate-")
            .tempdir_in(d),
        None => tempfile::Builder::new().prefix("des-migrate-").tempdir(),
    }
    .map_err(|e| MigrateError::io("creating the work directory", e))?;
    let store_target = if cfg.dry_run {
        None
    } else {
        Some(Target::open(&cfg.pack.store).map_err(MigrateError::Store)?)
    };
    let mut opts = cfg.pack.clone();
    opts.spill_dir = Some(work.path().to_path_buf());
    let mut run = Run {
        cfg,
        handle,
        db,
        target: store_target,
        store: None,
        opts,
        work: work.path().to_path_buf(),
        report,
        packs: 0,
        started: Instant::now(),
    };
    match cfg.mode {
        Mode::PerRecord => per_record::run(&mut run),
        Mode::Watermark => watermark::run(&mut run),
    }
}

/// A cycle in progress.
pub(crate) struct Run<'a> {
    pub cfg: &'a Config,
    pub handle: &'a Handle,
    pub db: Db,
    /// Where packing goes; `None` in a dry run.
    pub target: Option<Target>,
    /// The store, opened for read-back once something was packed.
    pub store: Option<DesStore>,
    pub opts: PackOptions,
    pub work: PathBuf,
    pub report: &'a mut MigrationReport,
    /// Packer runs so far (the pause hook counts them).
    pub packs: u64,
    pub started: Instant,
}

impl Run<'_> {
    pub fn progress(&self, msg: std::fmt::Arguments<'_>) {
        if self.cfg.progress {
            eprintln!(
                "des-migrate: [{:.0}s] {msg}",
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    /// Packs a manifest and adds the packer's counts to the report.
    pub fn pack(&mut self, manifest: &Path, lines: u64) -> Result<Packed, MigrateError> {
        let target = self
            .target
            .as_ref()
            .ok_or_else(|| MigrateError::Usage("packing in a dry run".into()))?;
        let packed = pack_manifest(
            manifest,
            lines,
            &self.opts,
            target,
            self.handle,
            // The packer's bar for a long window; per-record batches have
            // their own progress lines.
            self.cfg.progress && self.cfg.mode == Mode::Watermark,
        )?;
        // Only the first run of a cycle needs to clear what crashed writers
        // left; later ones would list the whole store again for nothing.
        self.opts.abort_stale_uploads_after = std::time::Duration::MAX;
        self.packs += 1;
        let r = &packed.report;
        self.report.batches += 1;
        self.report.files_packed += r.files_packed;
        self.report.files_already_present += r.files_already_present;
        self.report.bytes_in += r.bytes_in;
        self.report.bytes_stored += r.bytes_stored;
        self.report.warnings.extend(r.warnings.iter().cloned());
        if !packed.complete {
            self.report.warnings.push(format!(
                "packer run {}: its report does not account for every row by name \
                 ({} failed, {} named); none of its rows is taken as stored",
                self.packs,
                r.files_failed,
                r.failures.len()
            ));
        }
        Ok(packed)
    }

    /// Verifies and deletes sources of settled rows; a kept source is
    /// reported per row (exit 1).
    pub fn delete_sources(
        &mut self,
        candidates: Vec<(Candidate, Option<String>)>,
    ) -> Result<(), MigrateError> {
        if candidates.is_empty() {
            return Ok(());
        }
        if self.store.is_none() {
            let target = self
                .target
                .as_ref()
                .ok_or_else(|| MigrateError::Usage("deleting sources in a dry run".into()))?;
            let store = self
                .handle
                .block_on(DesStore::open_placed(Arc::clone(&target.placement)))
                .map_err(|e| MigrateError::Store(e.into()))?;
            self.store = Some(store);
        }
        let Some(store) = self.store.as_ref() else {
            return Ok(());
        };
        let mut locations = std::collections::HashMap::new();
        let items = candidates
            .into_iter()
            .map(|(c, loc)| {
                locations.insert((c.uid.clone(), c.created_at), loc);
                c
            })
            .collect();
        let mut cleaner =
            SourceCleaner::new(store, self.cfg.pack.source_roots.clone(), self.handle);
        let (deleted, kept) = cleaner.clean(items);
        self.report.sources_deleted += deleted;
        for (c, reason) in kept {
            let file_location = locations.remove(&(c.uid.clone(), c.created_at)).flatten();
            self.report.keep_source(RowFailure {
                uid: c.uid,
                created_at: c.created_at.to_rfc3339(),
                file_location,
                reason,
            });
        }
        Ok(())
    }
}

/// Dry run: what can be told without packing. A local source must be a
/// regular file; S3 sources are not fetched.
pub(crate) fn dry_check(report: &mut MigrationReport, line: &Line) {
    let problem = match line.source.as_deref() {
        None => Some("no file location".to_string()),
        Some(s) if s.starts_with("s3://") => None,
        Some(s) if s.contains("://") => {
            Some(format!("{s}: only local paths and s3:// are supported"))
        }
        Some(s) => match std::fs::metadata(s) {
            Ok(m) if m.is_file() => None,
            Ok(_) => Some(format!("{s} is not a regular file")),
            Err(e) => Some(format!("{s}: {e}")),
        },
    };
    match problem {
        Some(reason) => report.fail(row_failure(line, reason)),
        None => report.rows_archived += 1,
    }
}

pub(crate) fn row_failure(line: &Line, reason: String) -> RowFailure {
    RowFailure {
        uid: line.uid.clone(),
        created_at: line.created_at.clone(),
        file_location: line.file_location.clone(),
        reason,
    }
}

pub(crate) fn candidate(line: &Line) -> Option<(Candidate, Option<String>)> {
    let source = line.source.clone()?;
    Some((
        Candidate {
            uid: line.uid.clone(),
            created_at: line.created_at(),
            source,
        },
        line.file_location.clone(),
    ))
}

/// Seconds from `oldest` to `until`, 0 if none or not behind.
pub(crate) fn lag_seconds(until: Timestamp, oldest: Option<Timestamp>) -> f64 {
    oldest.map_or(0.0, |o| {
        (until.micros().saturating_sub(o.micros())).max(0) as f64 / 1e6
    })
}
