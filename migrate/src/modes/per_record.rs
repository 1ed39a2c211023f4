//! Per-record mode: unarchived rows older than the cut-off, a batch at a
//! time; each batch is packed, then its stored rows are marked archived
//! with one UPDATE. Marking after packing is what makes a crash safe: a row
//! is never marked before its file is durable, and a batch packed but not
//! marked is packed again next run, where the packer finds every file
//! already stored (same uid, same content) and adds nothing.

use crate::db::Row;
use crate::error::MigrateError;
use crate::manifest::{Line, ManifestWriter};
use crate::modes::{Run, candidate, dry_check, lag_seconds, row_failure};
use crate::pause;

pub(crate) fn run(run: &mut Run<'_>) -> Result<(), MigrateError> {
    let h = run.handle;
    h.block_on(run.db.check_archived_column())?;
    let age = i32::try_from(run.cfg.archive_age_days)
        .map_err(|_| MigrateError::Usage("--archive-age-days is too large".into()))?;
    // Fixed once: rows that come of age during the run wait for the next,
    // so a run over a busy table still ends.
    let cutoff = h.block_on(run.db.days_ago(age))?;
    run.progress(format_args!(
        "per-record: rows of {} older than {}",
        run.cfg.names.table.name,
        cutoff.to_rfc3339()
    ));
    let mut after = None;
    let mut batch_no = 0u64;
    loop {
        let rows = h.block_on(run.db.unarchived_batch(
            cutoff,
            after.as_ref(),
            run.cfg.batch_size,
        ))?;
        let Some(last) = rows.last() else { break };
        after = Some((last.created_at, last.uid.clone()));
        batch_no += 1;
        run.report.rows_selected += rows.len() as u64;
        let lines: Vec<Line> = rows
            .iter()
            .map(|r| Line::from_row(r, &run.cfg.source_base))
            .collect();
        if run.cfg.dry_run {
            lines.iter().for_each(|l| dry_check(run.report, l));
            continue;
        }
        batch(run, batch_no, &rows, &lines)?;
    }
    let (pending, oldest) = h.block_on(run.db.pending(Some(cutoff), None))?;
    run.report.pending_rows = pending;
    run.report.lag_seconds = lag_seconds(cutoff, oldest);
    Ok(())
}

fn batch(
    run: &mut Run<'_>,
    batch_no: u64,
    rows: &[Row],
    lines: &[Line],
) -> Result<(), MigrateError> {
    let path = run.work.join("batch.jsonl");
    let mut w = ManifestWriter::create(&path)?;
    for l in lines {
        w.push(l)?;
    }
    let n = w.finish()?;
    let packed = run.pack(&path, n)?;
    pause::after_pack(run.packs);
    let mut settled: Vec<&Row> = Vec::with_capacity(rows.len());
    let mut to_delete = Vec::new();
    let mut failed = 0u64;
    for (i, (row, line)) in rows.iter().zip(lines).enumerate() {
        let no = i as u64 + 1;
        if packed.settled(no) {
            settled.push(row);
            if packed.tombstoned.contains(&no) {
                run.report.rows_tombstoned += 1;
            } else if run.cfg.delete_source_files {
                to_delete.extend(candidate(line));
            }
        } else {
            failed += 1;
            let reason = packed.failed.get(&no).cloned().unwrap_or_else(|| {
                "not confirmed stored (the packer's report is incomplete); not marked".into()
            });
            run.report.fail(row_failure(line, reason));
        }
    }
    let marked = run.handle.block_on(run.db.mark_archived(&settled))?;
    run.report.rows_archived += settled.len() as u64;
    if marked < settled.len() as u64 {
        // Someone else marked them meanwhile (or changed their key): the
        // files are stored either way.
        run.report.warnings.push(format!(
            "batch {batch_no}: {} of {} rows were no longer unarchived when marked",
            settled.len() as u64 - marked,
            settled.len()
        ));
    }
    // Only now, with the rows marked: a source deleted before would make a
    // crash here unrecoverable (the re-run could not read it again).
    run.delete_sources(to_delete)?;
    run.progress(format_args!(
        "batch {batch_no}: {} rows, {} archived, {failed} failed ({} rows so far)",
        rows.len(),
        settled.len(),
        run.report.rows_selected
    ));
    Ok(())
}
