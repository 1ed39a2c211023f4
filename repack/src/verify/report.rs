//! What a verification found, per shard and for a whole run. Everything
//! serializes, since `--json` output and later tools consume it as is.

use std::collections::BTreeSet;

use des_storage::{DesStore, Layout};
use serde::Serialize;

use super::sample::Sample;
use crate::tombstones_cli::TombstoneState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// An object where shards live that is not a shard key of this store.
    Stray,
    /// The object is not a readable shard: trailer, footer or index is bad.
    Shard,
    /// The trailer (or format) contradicts the key or the store settings.
    Placement,
    /// An entry whose uid and date route to a different shard.
    Misrouted,
    /// An entry's payload fails its length, CRC32C, decoding or digest.
    Entry,
    /// An entry's external payload object does not exist.
    MissingExternal,
    /// A big file's chunk table (`_big/<hex>.chunks`) is damaged or does
    /// not describe the entry's object (SPEC §6.5).
    ChunkTable,
}

/// Evidence of corruption; any finding makes the run exit 1.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    /// The shard (or stray object) key.
    pub key: String,
    pub uid: Option<String>,
    pub kind: FindingKind,
    pub reason: String,
}

/// A deleted file whose bytes a shard's current generation still holds
/// (its entry makes them readable), past the deletion deadline or under a
/// legal hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptDeletion {
    /// The shard key.
    pub key: String,
    pub uid: String,
    /// The file's UTC day, `YYYYMMDD`, as `des-tombstones show --date` takes it.
    pub date: String,
    /// Of the file's oldest tombstone: `pending` (the repacker has not
    /// removed the bytes) or `applied` (it did, and they came back).
    pub tombstone_state: TombstoneState,
    /// When that tombstone was logged (RFC 3339); `null` for an applied
    /// tombstone merged into a segment, which the verifier knows by hash
    /// only (`des-tombstones show` has the record).
    pub logged_at: Option<String>,
    /// Its age when the log was read (`null` with `logged_at`).
    pub tombstone_age_seconds: Option<u64>,
    /// The legal hold keeping the bytes (only for held files).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
}

/// Something that could not be checked (I/O failure, payload out of reach).
/// Not evidence of corruption, but the run was incomplete.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Problem {
    pub key: String,
    pub uid: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardFormat {
    V3,
    Legacy,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ShardReport {
    pub key: String,
    /// `None` when the object could not be parsed (or vanished).
    pub format: Option<ShardFormat>,
    pub generation: Option<u64>,
    /// Listed, then gone before it could be read (e.g. replaced and removed).
    pub vanished: bool,
    pub entries: u64,
    pub checked: u64,
    /// Bytes fetched for the index suffix and for the checked payloads.
    pub bytes_read: u64,
    pub findings: Vec<Finding>,
    pub problems: Vec<Problem>,
    /// Tombstones for this shard that no repack has applied yet.
    pub pending_tombstones: u64,
    /// Entries still present whose files are deleted (pending or not).
    pub deleted_entries: u64,
    /// Share of the shard's inline bytes that belong to deleted files.
    pub garbage_ratio: f64,
    /// Deleted files still here longer than the deadline after their
    /// tombstone, and not held: each makes the run exit 1.
    pub overdue_deletions: Vec<KeptDeletion>,
    /// Deleted files kept by a legal hold (not errors).
    pub held_deletions: Vec<KeptDeletion>,
}

/// A shard a repack would have work in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PendingShard {
    pub key: String,
    pub pending_tombstones: u64,
    pub deleted_entries: u64,
    pub garbage_ratio: f64,
    /// Of `deleted_entries`, those past the deadline (findings).
    pub overdue_entries: u64,
    /// Of `deleted_entries`, those a legal hold keeps.
    pub held_entries: u64,
}

impl ShardReport {
    pub fn new(key: &str) -> Self {
        Self {
            key: key.to_string(),
            ..Self::default()
        }
    }

    pub fn is_clean(&self) -> bool {
        self.findings.is_empty() && self.problems.is_empty() && self.overdue_deletions.is_empty()
    }

    pub(crate) fn find(&mut self, uid: Option<&str>, kind: FindingKind, reason: impl Into<String>) {
        self.findings.push(Finding {
            key: self.key.clone(),
            uid: uid.map(str::to_string),
            kind,
            reason: reason.into(),
        });
    }

    pub(crate) fn problem(&mut self, uid: Option<&str>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: self.key.clone(),
            uid: uid.map(str::to_string),
            message: message.into(),
        });
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Where the store is (`file:///…`).
    pub store: String,
    pub layout: &'static str,
    /// `None` for a lone shard file outside any v3 store.
    pub n_bits: Option<u8>,
    /// Set when a single shard was verified rather than the whole store.
    pub only_key: Option<String>,
    pub sample: Option<Sample>,
    pub shards: u64,
    pub shards_vanished: u64,
    pub entries_total: u64,
    pub entries_checked: u64,
    pub bytes_read: u64,
    pub stray_objects: u64,
    /// Shards with at least one finding.
    pub corrupt_shards: u64,
    /// Distinct (shard, uid) pairs with at least one finding.
    pub corrupt_entries: u64,
    pub findings: Vec<Finding>,
    pub problems: Vec<Problem>,
    pub clean: bool,
    /// Tombstones not yet applied by a repack, over the whole store.
    pub tombstones_pending: u64,
    /// Shards holding deleted files or with pending tombstones, by key.
    pub shards_with_pending_tombstones: Vec<PendingShard>,
    /// The deletion deadline applied (`--max-delay`); `None` when deletions
    /// were not judged (not a v3 store, or its tombstones or legal holds
    /// could not be read).
    pub max_delay_seconds: Option<u64>,
    /// Deleted files still in their shard's current generation more than
    /// `max_delay_seconds` after their tombstone was logged, and not held:
    /// any makes the run exit 1.
    pub overdue_deletions: Vec<KeptDeletion>,
    /// Deleted files still in their shard because a legal hold keeps them.
    pub held_deletions: Vec<KeptDeletion>,
}

impl VerifyReport {
    /// `standalone`: the store is only the directory of a lone shard file, so
    /// its n_bits means nothing.
    pub fn new(store: &DesStore, sample: Option<Sample>, standalone: bool) -> Self {
        Self {
            store: store.describe(),
            layout: match store.layout() {
                Layout::V3 => "v3",
                Layout::Legacy => "legacy",
            },
            n_bits: (!standalone || store.layout() == Layout::V3).then(|| store.n_bits()),
            only_key: None,
            sample,
            shards: 0,
            shards_vanished: 0,
            entries_total: 0,
            entries_checked: 0,
            bytes_read: 0,
            stray_objects: 0,
            corrupt_shards: 0,
            corrupt_entries: 0,
            findings: Vec::new(),
            problems: Vec::new(),
            clean: true,
            tombstones_pending: 0,
            shards_with_pending_tombstones: Vec::new(),
            max_delay_seconds: None,
            overdue_deletions: Vec::new(),
            held_deletions: Vec::new(),
        }
    }

    pub fn add_shard(&mut self, shard: ShardReport) {
        if shard.vanished {
            self.shards_vanished += 1;
        } else {
            self.shards += 1;
        }
        self.entries_total += shard.entries;
        self.entries_checked += shard.checked;
        self.bytes_read += shard.bytes_read;
        if shard.pending_tombstones > 0 || shard.deleted_entries > 0 {
            self.shards_with_pending_tombstones.push(PendingShard {
                key: shard.key.clone(),
                pending_tombstones: shard.pending_tombstones,
                deleted_entries: shard.deleted_entries,
                garbage_ratio: shard.garbage_ratio,
                overdue_entries: shard.overdue_deletions.len() as u64,
                held_entries: shard.held_deletions.len() as u64,
            });
        }
        self.findings.extend(shard.findings);
        self.problems.extend(shard.problems);
        self.overdue_deletions.extend(shard.overdue_deletions);
        self.held_deletions.extend(shard.held_deletions);
    }

    pub fn add_finding(&mut self, finding: Finding) {
        self.findings.push(finding);
    }

    pub fn add_problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_string(),
            uid: None,
            message: message.into(),
        });
    }

    /// Sorts the lists (shards finish in any order) and derives the counts
    /// from them, so the two can never disagree. Call once all is added.
    pub fn finish(&mut self) {
        self.findings.sort();
        self.problems.sort();
        self.shards_with_pending_tombstones
            .sort_by(|a, b| a.key.cmp(&b.key));
        for list in [&mut self.overdue_deletions, &mut self.held_deletions] {
            list.sort_by(|a, b| (&a.key, &a.uid).cmp(&(&b.key, &b.uid)));
        }
        let not_stray = || {
            self.findings
                .iter()
                .filter(|f| f.kind != FindingKind::Stray)
        };
        self.stray_objects = self
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::Stray)
            .count() as u64;
        self.corrupt_shards = not_stray().map(|f| &f.key).collect::<BTreeSet<_>>().len() as u64;
        self.corrupt_entries = not_stray()
            .filter_map(|f| f.uid.as_ref().map(|u| (&f.key, u)))
            .collect::<BTreeSet<_>>()
            .len() as u64;
        self.clean = self.findings.is_empty()
            && self.problems.is_empty()
            && self.overdue_deletions.is_empty();
    }

    pub fn has_corruption(&self) -> bool {
        !self.findings.is_empty()
    }

    /// Deleted files readable past their deadline: a deletion promise
    /// (GDPR, retention) broken, as urgent as corruption.
    pub fn has_overdue_deletions(&self) -> bool {
        !self.overdue_deletions.is_empty()
    }

    /// 0 clean, 1 corruption or deleted files kept past their deadline, 2
    /// incomplete. Those findings win over an incomplete run: a confirmed
    /// bad shard, or bytes that should be gone, is the more urgent thing to
    /// act on.
    pub fn exit_code(&self) -> u8 {
        if self.has_corruption() || self.has_overdue_deletions() {
            1
        } else if !self.problems.is_empty() {
            2
        } else {
            0
        }
    }
}
