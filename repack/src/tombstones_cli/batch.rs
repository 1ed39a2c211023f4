//! Adding tombstones: one, or many from a JSON Lines file.

use std::io::BufRead;

use des_format::Timestamp;
use des_storage::tombstones::{
    DeleteReason, MAX_BUNDLE, Tombstone, TombstoneLog, TombstoneSet, parse_date,
};
use serde::{Deserialize, Serialize};

use crate::error::{RepackError, Result};

/// One line of a batch file. `reason`, `deleted_by` and `ticket_id` default
/// to the command line's; either `created_at` or `date` is required.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchLine {
    pub uid: String,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub date: Option<String>,
    #[serde(default)]
    pub reason: Option<DeleteReason>,
    #[serde(default)]
    pub deleted_by: Option<String>,
    #[serde(default)]
    pub ticket_id: Option<String>,
}

/// Defaults for fields a line leaves out.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub reason: Option<DeleteReason>,
    pub deleted_by: Option<String>,
    pub ticket_id: Option<String>,
}

impl BatchLine {
    pub fn into_tombstone(self, d: &Defaults) -> Result<Tombstone> {
        let reason = self
            .reason
            .or(d.reason)
            .ok_or_else(|| RepackError::Invalid("no reason (give one or --reason)".into()))?;
        let deleted_by = self
            .deleted_by
            .or_else(|| d.deleted_by.clone())
            .ok_or_else(|| {
                RepackError::Invalid("no deleted_by (give one or --deleted-by)".into())
            })?;
        let mut t = match (self.created_at, self.date) {
            (Some(c), date) => {
                let ts = Timestamp::parse_rfc3339(&c)
                    .map_err(|e| RepackError::Invalid(e.to_string()))?;
                if date.is_some_and(|d| d != ts.date_dir()) {
                    return Err(RepackError::Invalid(format!(
                        "date does not match created_at {c}"
                    )));
                }
                Tombstone::new(self.uid, ts, reason, deleted_by)
            }
            (None, Some(date)) => {
                Tombstone::for_date(self.uid, parse_date(&date)?, reason, deleted_by)?
            }
            (None, None) => {
                return Err(RepackError::Invalid(
                    "give created_at (RFC 3339) or date (YYYYMMDD)".into(),
                ));
            }
        };
        t.ticket_id = self.ticket_id.or_else(|| d.ticket_id.clone());
        t.validate()?;
        Ok(t)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AddOutcome {
    Added,
    /// The pair was already deleted; nothing written.
    AlreadyDeleted,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct AddResult {
    /// 1-based line of the batch file (0 for a single add).
    pub line: u64,
    pub uid: Option<String>,
    pub date: Option<String>,
    pub outcome: AddOutcome,
    /// The log key written.
    pub key: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AddReport {
    pub added: u64,
    pub already_deleted: u64,
    pub failed: u64,
    pub results: Vec<AddResult>,
}

impl AddReport {
    /// Counts `r` (its outcome), without keeping it.
    pub fn count(&mut self, r: &AddResult) {
        match r.outcome {
            AddOutcome::Added => self.added += 1,
            AddOutcome::AlreadyDeleted => self.already_deleted += 1,
            AddOutcome::Failed => self.failed += 1,
        }
    }
}

/// Logs one tombstone unless its pair is already deleted (or `force`).
pub async fn add_one(log: &TombstoneLog, t: &Tombstone, force: bool) -> Result<AddResult> {
    let deleted = if force {
        TombstoneSet::new()
    } else {
        TombstoneSet::load(log).await?
    };
    Ok(add_checked(log, &deleted, t, 0).await)
}

async fn add_checked(
    log: &TombstoneLog,
    deleted: &TombstoneSet,
    t: &Tombstone,
    line: u64,
) -> AddResult {
    let mut r = AddResult {
        line,
        uid: Some(t.uid.clone()),
        date: Some(t.date_dir()),
        outcome: AddOutcome::AlreadyDeleted,
        key: None,
        error: None,
    };
    if deleted.contains(&t.uid, t.date) {
        return r;
    }
    match log.append(t).await {
        Ok(key) => {
            r.outcome = AddOutcome::Added;
            r.key = Some(key);
        }
        Err(e) => {
            r.outcome = AddOutcome::Failed;
            r.error = Some(e.to_string());
        }
    }
    r
}

fn outcome(
    line: u64,
    t: &Tombstone,
    outcome: AddOutcome,
    key: Option<String>,
    error: Option<String>,
) -> AddResult {
    AddResult {
        line,
        uid: Some(t.uid.clone()),
        date: Some(t.date_dir()),
        outcome,
        key,
        error,
    }
}

/// Lines read, parsed and logged at a time (one bundle's worth): what
/// [`add_batch_each`] holds in memory, whatever the file's size.
pub const CHUNK_LINES: usize = MAX_BUNDLE;

/// Adds every line of a JSON Lines file, logged as bundles of up to
/// [`MAX_BUNDLE`] tombstones (one object each). Lines that fail to parse
/// are reported and do not stop the rest; a bundle that fails to write
/// fails its lines only; pairs already deleted are skipped, so re-running
/// a file is harmless. Every line's result is in the report (see
/// [`add_batch_each`] to stream them instead).
pub async fn add_batch(
    log: &TombstoneLog,
    input: impl BufRead,
    defaults: &Defaults,
    force: bool,
) -> Result<AddReport> {
    let mut results = Vec::new();
    let mut report = add_batch_each(log, input, defaults, force, |r| {
        results.push(r.clone());
        Ok(())
    })
    .await?;
    report.results = results;
    Ok(report)
}

/// [`add_batch`], handing each line's result to `each` (in line order) as
/// its chunk of [`CHUNK_LINES`] lines is logged, so memory follows the
/// chunk, not the file; the report returned has the counts only. A pair
/// named twice within a chunk is logged once; further apart, twice
/// (harmless: the repacker finds the second already applied).
pub async fn add_batch_each(
    log: &TombstoneLog,
    input: impl BufRead,
    defaults: &Defaults,
    force: bool,
    mut each: impl FnMut(&AddResult) -> std::io::Result<()>,
) -> Result<AddReport> {
    let deleted = if force {
        TombstoneSet::new()
    } else {
        TombstoneSet::load(log).await?
    };
    let mut report = AddReport::default();
    let mut lines = input.lines().enumerate();
    loop {
        let mut results = Vec::new();
        let mut parsed = Vec::new();
        let mut read = 0;
        for (i, line) in lines.by_ref() {
            let n = i as u64 + 1;
            let line = line.map_err(|e| RepackError::Invalid(format!("reading line {n}: {e}")))?;
            if line.trim().is_empty() {
                continue;
            }
            let t = serde_json::from_str::<BatchLine>(&line)
                .map_err(|e| RepackError::Invalid(e.to_string()))
                .and_then(|l| l.into_tombstone(defaults));
            match t {
                Ok(t) => parsed.push((n, t)),
                Err(e) => results.push(AddResult {
                    line: n,
                    uid: None,
                    date: None,
                    outcome: AddOutcome::Failed,
                    key: None,
                    error: Some(e.to_string()),
                }),
            }
            read += 1;
            if read == CHUNK_LINES {
                break;
            }
        }
        if read == 0 {
            return Ok(report);
        }
        log_chunk(log, &deleted, parsed, &mut results).await;
        results.sort_by_key(|r| r.line);
        for r in &results {
            report.count(r);
            each(r).map_err(|e| RepackError::Invalid(format!("writing results: {e}")))?;
        }
    }
}

/// Logs one chunk's parsed lines not deleted yet as one bundle (per store);
/// pushes every line's result.
async fn log_chunk(
    log: &TombstoneLog,
    deleted: &TombstoneSet,
    parsed: Vec<(u64, Tombstone)>,
    results: &mut Vec<AddResult>,
) {
    // A pair named twice is logged once.
    let mut seen = TombstoneSet::new();
    let mut fresh = Vec::with_capacity(parsed.len());
    for (n, t) in parsed {
        if seen.insert(&t.uid, t.date) && !deleted.contains(&t.uid, t.date) {
            fresh.push((n, t));
        } else {
            results.push(outcome(n, &t, AddOutcome::AlreadyDeleted, None, None));
        }
    }
    if fresh.is_empty() {
        return;
    }
    let ts: Vec<Tombstone> = fresh.iter().map(|(_, t)| t.clone()).collect();
    match log.append_bundle(&ts).await {
        Ok(keys) => {
            for ((n, t), key) in fresh.iter().zip(keys) {
                results.push(outcome(*n, t, AddOutcome::Added, Some(key), None));
            }
        }
        Err(e) => {
            for (n, t) in &fresh {
                results.push(outcome(
                    *n,
                    t,
                    AddOutcome::Failed,
                    None,
                    Some(e.to_string()),
                ));
            }
        }
    }
}
