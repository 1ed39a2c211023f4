//! What verification reports about deletions: per shard, how many
//! tombstones are still pending and how much of it is deleted-but-present
//! bytes (the garbage a repack would reclaim); and, per entry, deleted files
//! a shard still serves long after their tombstone (a broken deletion
//! deadline: a finding) or because a legal hold keeps them (reported only).

use std::collections::HashMap;
use std::time::Duration;

use des_format::Timestamp;
use des_format::shard::AnyIndex;
use des_storage::tombstones::{LoggedName, TombstoneLog, TombstoneSet};
use des_storage::{DesStore, Result};

use super::report::KeptDeletion;
use crate::holds::HoldSet;
use crate::repack::state::shard_key_of;
use crate::tombstones_cli::TombstoneState;

/// The oldest tombstone of one `(uid, date)`; 16 bytes beside the uid, so
/// millions of tombstones stay cheap. The oldest sets the deadline: a later
/// tombstone of the same file does not give its bytes more time.
#[derive(Debug, Clone, Copy)]
struct Tomb {
    date: u32,
    /// Marked applied (`_tombstones_applied/…`, or in a segment): bytes found in a shard
    /// then came back after the repacker removed them.
    applied: bool,
    /// `None` for one merged into a segment, known by hash only.
    logged_at: Option<Timestamp>,
}

/// Deletion state of a store, loaded once per run.
#[derive(Debug)]
pub struct Deleted {
    /// Tombstones still logged as small objects, applied or not, by uid
    /// (usually one date each).
    by_uid: HashMap<String, Vec<Tomb>>,
    /// Applied tombstones merged into segments: 8 bytes each (a hash per
    /// pair), so memory stays small however many deletions were applied.
    merged: TombstoneSet,
    /// Pending tombstones per shard key.
    pub pending_by_shard: HashMap<String, u64>,
    pub pending_total: u64,
    /// When the log was listed. Ages are measured from here rather than
    /// when each shard is reached (a big store takes hours), so a file is
    /// never judged overdue for time the run itself took.
    pub listed_at: Timestamp,
    /// The store's legal holds; `None` when they could not be read, and
    /// then no deleted file is judged (a held file must not be reported as
    /// overdue, nor an overdue one missed silently: see `holds_error`).
    pub holds: Option<HoldSet>,
    pub holds_error: Option<String>,
}

impl Deleted {
    /// No tombstones, no holds, listed `at`.
    pub fn empty(at: Timestamp) -> Self {
        Self {
            by_uid: HashMap::new(),
            merged: TombstoneSet::new(),
            pending_by_shard: HashMap::new(),
            pending_total: 0,
            listed_at: at,
            holds: Some(HoldSet::default()),
            holds_error: None,
        }
    }

    /// Reads the whole log (names only, plus the records of uids too long
    /// for their names) and the store's legal holds. `Err` when the log
    /// cannot be read; unreadable holds are recorded in `holds_error`.
    pub async fn load(store: &DesStore) -> Result<Self> {
        let log = TombstoneLog::new(store);
        let mut out = Self::empty(Timestamp::now());
        let (pending, applied) = log.names_by_state().await?;
        let unnamed_pending = out.add_named(store, pending, false);
        let unnamed_applied = out.add_named(store, applied, true);
        for (unnamed, applied) in [(unnamed_pending, false), (unnamed_applied, true)] {
            for t in log.read_all(unnamed).await? {
                let logged_at = t.at.name.logged_at;
                out.add(store, t.tombstone.uid, t.tombstone.date, logged_at, applied);
            }
        }
        // Applied tombstones compacted into segments: lookup sections only.
        for seg in log.segment_lookups().await? {
            out.merged.insert_segment(&seg);
        }
        match HoldSet::load(store).await {
            Ok(holds) => out.holds = Some(holds),
            Err(e) => {
                out.holds = None;
                out.holds_error = Some(e.to_string());
            }
        }
        Ok(out)
    }

    /// Adds the tombstones whose names carry their uid; returns the others.
    fn add_named(
        &mut self,
        store: &DesStore,
        names: Vec<LoggedName>,
        applied: bool,
    ) -> Vec<LoggedName> {
        let mut unnamed = Vec::new();
        for n in names {
            match n.name.uid {
                Some(uid) => self.add(store, uid, n.name.date, n.name.logged_at, applied),
                None => unnamed.push(n),
            }
        }
        unnamed
    }

    /// Records one tombstone. A pending one counts for its shard; an
    /// unroutable uid cannot be in any shard, so there is nothing to count.
    pub(super) fn add(
        &mut self,
        store: &DesStore,
        uid: String,
        date: u32,
        logged_at: Timestamp,
        applied: bool,
    ) {
        if !applied && let Ok(key) = shard_key_of(store, &uid, date) {
            *self.pending_by_shard.entry(key).or_default() += 1;
            self.pending_total += 1;
        }
        let tomb = Tomb {
            date,
            applied,
            logged_at: Some(logged_at),
        };
        let dates = self.by_uid.entry(uid).or_default();
        match dates.iter_mut().find(|t| t.date == date) {
            // Equally old: "applied" is the one to report, since present
            // bytes then mean they came back.
            Some(old) if (tomb.logged_at, !tomb.applied) < (old.logged_at, !old.applied) => {
                *old = tomb;
            }
            Some(_) => {}
            None => dates.push(tomb),
        }
    }

    fn tomb(&self, uid: &str, date: u32) -> Option<Tomb> {
        let logged = self
            .by_uid
            .get(uid)
            .and_then(|d| d.iter().find(|t| t.date == date))
            .copied();
        logged.or_else(|| {
            self.merged.contains(uid, date).then_some(Tomb {
                date,
                applied: true,
                logged_at: None,
            })
        })
    }

    /// What the loaded index of shard `key` holds of deleted files. Only the
    /// index is needed (an entry is what makes bytes readable), so every
    /// entry is judged whatever `--sample` picks for payload checks.
    pub fn assess(&self, key: &str, index: &AnyIndex, max_delay: Duration) -> ShardDeletions {
        let mut out = ShardDeletions::default();
        let AnyIndex::V3(ix) = index else {
            return out;
        };
        let date = ix.trailer().date;
        let max_delay = i64::try_from(max_delay.as_micros()).unwrap_or(i64::MAX);
        let (mut inline, mut gone, mut count) = (0u64, 0u64, 0u64);
        for e in ix.view().iter() {
            count += 1;
            let tomb = self.tomb(e.uid, date);
            if !e.is_external() {
                inline += e.stored_len();
                if tomb.is_some() {
                    gone += e.stored_len();
                }
            }
            let Some(tomb) = tomb else { continue };
            out.deleted_entries += 1;
            let Some(holds) = &self.holds else { continue };
            let age = tomb
                .logged_at
                .map(|t| self.listed_at.micros().saturating_sub(t.micros()).max(0));
            let hold = holds.holding(e.uid, date).map(|h| h.name.clone());
            // A merged tombstone was applied: its bytes came back, whatever its age.
            if hold.is_none() && age.is_some_and(|a| a <= max_delay) {
                // Within its deadline: the repacker still has time.
                continue;
            }
            let kept = KeptDeletion {
                key: key.to_string(),
                uid: e.uid.to_string(),
                date: format!("{date:08}"),
                tombstone_state: if tomb.applied {
                    TombstoneState::Applied
                } else {
                    TombstoneState::Pending
                },
                logged_at: tomb.logged_at.map(Timestamp::to_rfc3339),
                tombstone_age_seconds: age.map(|a| u64::try_from(a / 1_000_000).unwrap_or(0)),
                hold,
            };
            if kept.hold.is_some() {
                out.held.push(kept);
            } else {
                out.overdue.push(kept);
            }
        }
        out.garbage_ratio = if inline > 0 {
            gone as f64 / inline as f64
        } else if count > 0 {
            out.deleted_entries as f64 / count as f64
        } else {
            0.0
        };
        out
    }
}

/// What one shard holds of deleted files.
#[derive(Debug, Default)]
pub struct ShardDeletions {
    /// Entries of deleted files (pending or applied tombstone, held or not).
    pub deleted_entries: u64,
    /// Share of the shard's inline bytes that belong to deleted files.
    pub garbage_ratio: f64,
    /// Deleted longer than the deadline ago, and not held: findings.
    pub overdue: Vec<KeptDeletion>,
    /// Kept by a legal hold, whatever their age.
    pub held: Vec<KeptDeletion>,
}
