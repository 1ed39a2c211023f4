//! What an upgrade run did, per (date, shard) and in total; serialized for `--json`.

use std::fmt;

use indicatif::HumanBytes;
use serde::Serialize;

use super::plan::Group;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupStatus {
    /// Entries were copied into the v3 shard, which was verified.
    Converted,
    /// The v3 shard already held every entry (an interrupted run, or
    /// nothing new); it was verified.
    AlreadyConverted,
    /// Dry run: what would happen is in the counts.
    WouldConvert,
    /// The parts vanished before they were read (another run took them).
    Gone,
    /// Left as it is; see `error`.
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    /// The v3 shard key of the (date, shard).
    pub shard: String,
    /// The legacy parts read (ascending).
    pub parts: Vec<String>,
    pub status: GroupStatus,
    /// Distinct uids in the parts (the newest part's copy of each).
    pub files: u64,
    /// Copied into the v3 shard now (dry run: would be).
    pub added: u64,
    /// Already in the v3 shard with the same content.
    pub already_in_v3: u64,
    /// Older copies of a uid in a lower-numbered part: no reader serves them.
    pub shadowed: u64,
    /// Files whose (uid, day) has a tombstone: not converted.
    pub deleted: u64,
    pub big_files_uploaded: u64,
    /// Generation of the v3 shard published now.
    pub generation: Option<u64>,
    /// Entries read back from the v3 shard and checked.
    pub verified: u64,
    pub parts_deleted: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub error: Option<String>,
}

impl GroupStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Converted => "converted",
            Self::AlreadyConverted => "already converted",
            Self::WouldConvert => "would convert",
            Self::Gone => "gone",
            Self::Failed => "failed",
        }
    }
}

impl GroupReport {
    pub fn new(group: &Group) -> Self {
        Self {
            shard: group.v3_key(),
            parts: group.parts.clone(),
            status: GroupStatus::Failed,
            files: 0,
            added: 0,
            already_in_v3: 0,
            shadowed: 0,
            deleted: 0,
            big_files_uploaded: 0,
            generation: None,
            verified: 0,
            parts_deleted: 0,
            bytes_read: 0,
            bytes_written: 0,
            error: None,
        }
    }
}

/// What happened to `_des/legacy.json` (see `des_storage::store::LEGACY_MARKER_KEY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkerState {
    /// Not an in-place upgrade, or a dry run.
    NotUsed,
    /// Present at the end: legacy parts remain (kept, failed or new).
    Present,
    /// Removed: no legacy part is left.
    Removed,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub groups: u64,
    pub converted: u64,
    pub already_converted: u64,
    pub failed: u64,
    pub files: u64,
    pub added: u64,
    pub already_in_v3: u64,
    pub shadowed: u64,
    pub deleted: u64,
    pub big_files_uploaded: u64,
    pub verified: u64,
    pub parts_deleted: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpgradeReport {
    pub from: String,
    pub to: String,
    pub in_place: bool,
    pub n_bits: u8,
    pub digest: String,
    pub dry_run: bool,
    /// Legacy objects are never deleted (`--keep-legacy`, or `--to`
    /// without `--delete-legacy`).
    pub keep_legacy: bool,
    /// `_des/store.json` was created by this run.
    pub store_created: bool,
    pub totals: Totals,
    pub groups: Vec<GroupReport>,
    /// Flat `.des` objects that are not shard keys under this n_bits: no
    /// reader finds them; neither converted nor deleted.
    pub strays: Vec<String>,
    /// The Python DES's `.meta` sidecars and their deletions.
    pub sidecars: super::sidecar::SidecarReport,
    /// `_bigFiles/` objects deleted because no remaining part needs them.
    pub legacy_big_files_deleted: u64,
    /// Why `_bigFiles/` was not cleaned up, when it was not.
    pub legacy_big_files_note: Option<String>,
    pub marker: MarkerState,
    pub seconds: f64,
}

impl UpgradeReport {
    pub fn failed(&self) -> bool {
        self.totals.failed > 0
    }

    pub(super) fn total(&mut self) {
        let mut t = Totals {
            groups: self.groups.len() as u64,
            ..Totals::default()
        };
        for g in &self.groups {
            match g.status {
                GroupStatus::Converted => t.converted += 1,
                GroupStatus::AlreadyConverted => t.already_converted += 1,
                GroupStatus::Failed => t.failed += 1,
                GroupStatus::WouldConvert | GroupStatus::Gone => {}
            }
            t.files += g.files;
            t.added += g.added;
            t.already_in_v3 += g.already_in_v3;
            t.shadowed += g.shadowed;
            t.deleted += g.deleted;
            t.big_files_uploaded += g.big_files_uploaded;
            t.verified += g.verified;
            t.parts_deleted += g.parts_deleted;
            t.bytes_read += g.bytes_read;
            t.bytes_written += g.bytes_written;
        }
        self.totals = t;
    }
}

impl fmt::Display for UpgradeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.totals;
        let what = if self.dry_run { "dry run of " } else { "" };
        let place = if self.in_place {
            "in place".to_string()
        } else {
            format!("to {}", self.to)
        };
        writeln!(
            f,
            "{what}upgrade of {} {place} (n_bits {}, {}){}",
            self.from,
            self.n_bits,
            self.digest,
            if self.store_created {
                ", store.json created"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "  groups: {} ({} converted, {} already converted, {} failed)",
            t.groups, t.converted, t.already_converted, t.failed
        )?;
        writeln!(
            f,
            "  files: {} ({} {}, {} already in v3, {} deleted by tombstones; {} shadowed copies)",
            t.files,
            t.added,
            if self.dry_run { "to add" } else { "added" },
            t.already_in_v3,
            t.deleted,
            t.shadowed
        )?;
        if !self.dry_run {
            writeln!(
                f,
                "  verified {} entries; {} big files uploaded; {} legacy parts and {} legacy big \
                 files deleted; read {}, wrote {}",
                t.verified,
                t.big_files_uploaded,
                t.parts_deleted,
                self.legacy_big_files_deleted,
                HumanBytes(t.bytes_read),
                HumanBytes(t.bytes_written)
            )?;
        }
        if let Some(note) = &self.legacy_big_files_note {
            writeln!(f, "  _bigFiles/ left as it is: {note}")?;
        }
        for s in &self.strays {
            writeln!(f, "  STRAY (not a shard key, left as it is): {s}")?;
        }
        let sc = &self.sidecars;
        if sc.found > 0 {
            writeln!(
                f,
                "  .meta sidecars: {} ({} tombstones, {} logged now; {} sidecars deleted)",
                sc.found, sc.tombstones, sc.tombstones_logged, sc.deleted
            )?;
        }
        for s in &sc.skipped {
            writeln!(
                f,
                "  META (not understood, left as it is): {}: {}",
                s.key, s.error
            )?;
        }
        for g in self
            .groups
            .iter()
            .filter(|g| g.status == GroupStatus::Failed)
        {
            writeln!(
                f,
                "  FAILED {}: {}",
                g.shard,
                g.error.as_deref().unwrap_or("?")
            )?;
        }
        Ok(())
    }
}
