//! Watermark mode: the window `(archived_until, now - lag_days]` is read
//! through a cursor into a manifest on disk, packed in one packer run (each
//! shard written once per cycle, however many rows), and `archived_until`
//! advanced once, after the whole window is durable. The business table is
//! never written.
//!
//! A crash before the advance replays the window next cycle; the packer
//! finds its files already stored and adds nothing. If rows fail, the
//! watermark stops just before the earliest failed row (rows are in
//! created_at order), so that row and everything after it are tried again
//! next cycle instead of being passed over for good.

use std::collections::BTreeSet;

use des_format::Timestamp;

use crate::db::Watermark;
use crate::error::MigrateError;
use crate::manifest::{Line, ManifestWriter, read_lines};
use crate::modes::{Run, candidate, dry_check, lag_seconds, row_failure};
use crate::pause;
use crate::report::MigrationReport;

/// Rows between two progress lines while the window is read.
const PROGRESS_EVERY: u64 = 100_000;

pub(crate) fn run(run: &mut Run<'_>) -> Result<(), MigrateError> {
    let h = run.handle;
    let table = run.cfg.watermark_table.clone();
    let wm = match h.block_on(run.db.watermark(&table, !run.cfg.dry_run, run.cfg.lag_days))? {
        Some(w) => w,
        None => {
            run.report.warnings.push(format!(
                "watermark table {} does not exist; a real run creates it (lag_days {})",
                table.name, run.cfg.lag_days
            ));
            Watermark {
                archived_until: None,
                lag_days: i32::try_from(run.cfg.lag_days).unwrap_or(i32::MAX),
            }
        }
    };
    let lo = wm.archived_until;
    let upto = h.block_on(run.db.days_ago(wm.lag_days))?;
    let shown = |t: Option<Timestamp>| t.map(Timestamp::to_rfc3339);
    run.report.watermark_before = shown(lo);
    run.report.watermark_after = shown(lo);
    run.report.window_end = Some(upto.to_rfc3339());
    if lo.is_some_and(|l| l >= upto) {
        run.progress(format_args!(
            "watermark is ahead of now - lag: nothing to do"
        ));
        return finish(run, lo, upto);
    }
    run.progress(format_args!(
        "window ({}, {}]: reading rows",
        run.report
            .watermark_before
            .as_deref()
            .unwrap_or("-infinity"),
        upto.to_rfc3339()
    ));
    let path = run.work.join("window.jsonl");
    let lines = read_window(run, lo, upto, &path)?;
    run.report.rows_selected = lines;
    if run.cfg.dry_run {
        return finish(run, lo, upto);
    }
    if lines == 0 {
        h.block_on(run.db.advance_watermark(&table, lo, upto))?;
        run.report.watermark_after = Some(upto.to_rfc3339());
        return finish(run, Some(upto), upto);
    }
    run.progress(format_args!("packing {lines} rows"));
    let packed = run.pack(&path, lines)?;
    pause::after_pack(run.packs);

    // Where the watermark can go: the failures (reported by line) are
    // looked up in the manifest, which is in created_at order.
    let first_failed = packed.failed.keys().next().copied();
    let mut first_failed_at = None;
    read_lines(&path, |no, line| {
        if let Some(reason) = packed.failed.get(&no) {
            if Some(no) == first_failed {
                first_failed_at = Some(line.created_at());
            }
            run.report.fail(row_failure(&line, reason.clone()));
        }
        Ok(())
    })?;
    // Failures the packer counted but did not name.
    let unnamed = packed
        .report
        .files_failed
        .saturating_sub(packed.failed.len() as u64);
    run.report.rows_failed += unnamed;
    let new_wm = if !packed.complete {
        None
    } else {
        match first_failed_at {
            // Timestamps are microseconds: everything strictly before the
            // failed row, and nothing at its instant, is covered.
            Some(t) => Some(Timestamp::from_micros(t.micros().saturating_sub(1))),
            None => Some(upto),
        }
    }
    .filter(|w| lo.is_none_or(|l| *w > l));
    let Some(new_wm) = new_wm else {
        run.report.warnings.push(
            "watermark not advanced: the earliest rows of the window failed (or the packer's \
             report was incomplete); they are retried next cycle"
                .into(),
        );
        return finish(run, lo, upto);
    };
    h.block_on(run.db.advance_watermark(&table, lo, new_wm))?;
    run.report.watermark_after = Some(new_wm.to_rfc3339());
    run.progress(format_args!(
        "watermark advanced to {}",
        new_wm.to_rfc3339()
    ));
    settle(run, &path, new_wm, &packed.tombstoned)?;
    finish(run, Some(new_wm), upto)
}

/// Streams the window into the manifest (dry run: checks each row instead
/// and writes nothing).
fn read_window(
    run: &mut Run<'_>,
    lo: Option<Timestamp>,
    upto: Timestamp,
    path: &std::path::Path,
) -> Result<u64, MigrateError> {
    let mut writer = ManifestWriter::create(path)?;
    let base = run.cfg.source_base.clone();
    let dry_run = run.cfg.dry_run;
    let progress = run.cfg.progress;
    let started = run.started;
    // The cursor borrows the database, and with it `run`: dry-run verdicts
    // go to a report of their own, merged afterwards.
    let mut checked = MigrationReport::default();
    let mut count = 0u64;
    let total = run
        .handle
        .block_on(run.db.stream_window(lo, upto, run.cfg.batch_size, |row| {
            let line = Line::from_row(&row, &base);
            count += 1;
            if progress && count.is_multiple_of(PROGRESS_EVERY) {
                eprintln!(
                    "des-migrate: [{:.0}s] {count} rows read",
                    started.elapsed().as_secs_f64()
                );
            }
            if dry_run {
                dry_check(&mut checked, &line);
                Ok(())
            } else {
                writer.push(&line)
            }
        }))?;
    writer.finish()?;
    run.report.rows_archived += checked.rows_archived;
    run.report.rows_failed += checked.rows_failed;
    run.report.failures.extend(checked.failures);
    run.report.failures.truncate(crate::report::MAX_LISTED);
    Ok(total)
}

/// After the advance: counts the settled rows and deletes their verified
/// sources, a batch at a time, while reading the manifest (memory bounded
/// by the batch size).
fn settle(
    run: &mut Run<'_>,
    path: &std::path::Path,
    new_wm: Timestamp,
    tombstoned: &BTreeSet<u64>,
) -> Result<(), MigrateError> {
    let delete = run.cfg.delete_source_files;
    let chunk = run.cfg.batch_size;
    let mut pending = Vec::new();
    read_lines(path, |no, line| {
        if line.created_at() > new_wm {
            return Ok(());
        }
        run.report.rows_archived += 1;
        if tombstoned.contains(&no) {
            run.report.rows_tombstoned += 1;
        } else if delete {
            pending.extend(candidate(&line));
            if pending.len() >= chunk {
                run.delete_sources(std::mem::take(&mut pending))?;
            }
        }
        Ok(())
    })?;
    run.delete_sources(pending)
}

/// Pending rows and lag after the cycle.
fn finish(run: &mut Run<'_>, wm: Option<Timestamp>, upto: Timestamp) -> Result<(), MigrateError> {
    let (pending, oldest) = run
        .handle
        .block_on(run.db.pending(None, Some((wm, upto))))?;
    run.report.pending_rows = pending;
    run.report.lag_seconds = lag_seconds(upto, oldest);
    Ok(())
}
