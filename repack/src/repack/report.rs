//! What a repack run did, per shard and in total; serialized for `--json`.

use std::fmt;

use indicatif::HumanBytes;
use serde::Serialize;

use super::bigfiles::GcOutcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A new generation without the deleted entries was published.
    Rewritten,
    /// Dry run: would have been rewritten.
    WouldRewrite,
    /// Below the garbage ratio and not overdue, or over the byte budget.
    Deferred,
    /// The shard holds none of the deleted files; tombstones marked applied.
    NothingToRemove,
    /// Nothing live or held was left in it: the shard object was deleted
    /// (one request, no new generation).
    Deleted,
    /// Dry run: would have been deleted.
    WouldDelete,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardOutcome {
    pub key: String,
    pub action: Action,
    /// Why this action: `forced`, `garbage_ratio`, `max_delay`,
    /// `retention_expired`, `below_ratio`, `max_bytes`, `no_shard`, …
    pub reason: String,
    pub pending_tombstones: u64,
    pub oldest_pending_age_seconds: f64,
    pub generation_before: Option<u64>,
    pub generation_after: Option<u64>,
    pub entries_before: u64,
    pub entries_after: u64,
    pub entries_dropped: u64,
    /// Of those, dropped because a retention rule expired them (no tombstone).
    pub entries_expired: u64,
    /// Dropped inline bytes / inline bytes (by entry count if nothing is inline).
    pub garbage_ratio: f64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub bytes_read: u64,
    pub tombstones_marked: u64,
    pub seconds: f64,
    pub error: Option<String>,
}

impl ShardOutcome {
    pub fn new(key: &str, action: Action, reason: &str) -> Self {
        Self {
            key: key.to_string(),
            action,
            reason: reason.to_string(),
            pending_tombstones: 0,
            oldest_pending_age_seconds: 0.0,
            generation_before: None,
            generation_after: None,
            entries_before: 0,
            entries_after: 0,
            entries_dropped: 0,
            entries_expired: 0,
            garbage_ratio: 0.0,
            bytes_before: 0,
            bytes_after: 0,
            bytes_read: 0,
            tombstones_marked: 0,
            seconds: 0.0,
            error: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RepackReport {
    pub store: String,
    pub dry_run: bool,
    pub started_at: String,
    pub duration_seconds: f64,
    pub tombstones_total: u64,
    pub tombstones_pending_before: u64,
    /// Pending, not held, after this run.
    pub tombstones_pending: u64,
    /// Pending but covered by a legal hold: bytes kept on purpose.
    pub tombstones_held: u64,
    pub oldest_pending_age_seconds: f64,
    /// The version of the retention rules applied, if the store has rules
    /// that expire files.
    pub retention_rules_version: Option<u64>,
    pub shards_considered: u64,
    pub shards_rewritten: u64,
    /// Shards deleted whole (or, dry, to delete): nothing live was left.
    pub shards_deleted: u64,
    pub shards_deferred: u64,
    pub shards_failed: u64,
    pub entries_dropped: u64,
    /// Of those, expired by a retention rule.
    pub entries_expired: u64,
    pub tombstones_marked: u64,
    /// Applied tombstones merged into a segment at the end of the run.
    pub tombstones_compacted: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Shard bytes before minus after, over rewritten and deleted shards.
    pub bytes_reclaimed: u64,
    /// Old data region read per second of run time.
    pub read_mb_per_second: f64,
    pub big_files: GcOutcome,
    pub shards: Vec<ShardOutcome>,
}

impl RepackReport {
    pub fn add(&mut self, s: ShardOutcome) {
        self.shards_considered += 1;
        match s.action {
            Action::Rewritten | Action::WouldRewrite => self.shards_rewritten += 1,
            Action::Deleted | Action::WouldDelete => self.shards_deleted += 1,
            Action::Deferred => self.shards_deferred += 1,
            Action::Failed => self.shards_failed += 1,
            Action::NothingToRemove => {}
        }
        self.entries_dropped += s.entries_dropped;
        self.entries_expired += s.entries_expired;
        self.tombstones_marked += s.tombstones_marked;
        self.bytes_read += s.bytes_read;
        // A dry run reports what the rewrite would reclaim.
        if matches!(
            s.action,
            Action::Rewritten | Action::WouldRewrite | Action::Deleted | Action::WouldDelete
        ) {
            self.bytes_written += s.bytes_after;
            self.bytes_reclaimed += s.bytes_before.saturating_sub(s.bytes_after);
        }
        self.shards.push(s);
    }

    /// Bytes freed in total: shard space plus deleted big files.
    pub fn space_saved(&self) -> u64 {
        self.bytes_reclaimed + self.big_files.bytes_deleted
    }

    /// 0 success, 1 some shards failed.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.shards_failed > 0)
    }
}

impl fmt::Display for RepackReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dry = if self.dry_run { " (dry run)" } else { "" };
        writeln!(f, "store:              {}{dry}", self.store)?;
        writeln!(
            f,
            "tombstones:         {} total, {} pending before, {} pending now, {} held",
            self.tombstones_total,
            self.tombstones_pending_before,
            self.tombstones_pending,
            self.tombstones_held
        )?;
        for s in &self.shards {
            let err = s
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            writeln!(
                f,
                "  {:<18} {:?} ({}), {} dropped, garbage {:.1}%{err}",
                s.key,
                s.action,
                s.reason,
                s.entries_dropped,
                s.garbage_ratio * 100.0
            )?;
        }
        let (rewritten, deleted) = if self.dry_run {
            ("to rewrite", "to delete")
        } else {
            ("rewritten", "deleted")
        };
        writeln!(
            f,
            "shards:             {} {rewritten}, {} {deleted}, {} deferred, {} failed",
            self.shards_rewritten, self.shards_deleted, self.shards_deferred, self.shards_failed
        )?;
        writeln!(
            f,
            "entries dropped:    {} ({} expired by retention rules{})",
            self.entries_dropped,
            self.entries_expired,
            self.retention_rules_version
                .map(|v| format!(", version {v}"))
                .unwrap_or_default()
        )?;
        writeln!(
            f,
            "space reclaimed:    {} shards + {} big files ({} objects)",
            HumanBytes(self.bytes_reclaimed),
            HumanBytes(self.big_files.bytes_deleted),
            self.big_files.deleted.len()
        )?;
        write!(
            f,
            "read:               {} in {:.2}s ({:.1} MB/s)",
            HumanBytes(self.bytes_read),
            self.duration_seconds,
            self.read_mb_per_second
        )
    }
}
