//! Merging segments, so their number (what a reader's start-up reads)
//! follows the deletions they hold, not the runs that compacted them.
//!
//! Tiers by record count: tier 0 holds segments under [`TIER_BASE`]
//! records, tier `t` under `TIER_BASE · FANIN^t`. When a tier holds
//! [`MERGE_FANIN`] segments, its oldest `MERGE_FANIN` are merged into one
//! (in the same tier or a higher one), until no tier is full. A store
//! holds at most `MERGE_FANIN - 1` segments per mergeable tier, plus the
//! top tier's (65,536 records or more), which are never merged (the result
//! could pass [`MAX_SEGMENT_RECORDS`]).
//!
//! Crash safety: the merged segment is written create-only, read back and
//! checked to hold every input record before any input is deleted. A crash
//! in between leaves the records twice, which readers dedupe (hash sets,
//! names); the same inputs merge to the same bytes and name, so the next
//! run finds the merged segment written and finishes deleting the inputs.

use std::collections::{BTreeMap, HashSet};

use super::log::TombstoneLog;
use super::segment::{
    CompactReport, CompactStep, MAX_SEGMENT_RECORDS, SegmentRecord, count_in_name, decode_segment,
    header_count, list_segments, verify_segment, write_segment,
};
use crate::error::Result;
use crate::object::{ByteRange, ObjectStore, ObjectStoreExt, delete_all};

/// Segments merged at once, and the growth from one tier to the next.
pub const MERGE_FANIN: usize = 8;
/// Records below which a segment is in tier 0.
pub const TIER_BASE: usize = 1024;

/// The tier of a segment of `count` records, `None` for the top tier.
fn tier(count: usize) -> Option<u32> {
    let mut bound = TIER_BASE;
    let mut t = 0;
    while bound * MERGE_FANIN <= MAX_SEGMENT_RECORDS {
        if count < bound {
            return Some(t);
        }
        bound *= MERGE_FANIN;
        t += 1;
    }
    None
}

/// The record count of a segment: from its name, else from its header
/// (one small ranged read).
async fn segment_count(objects: &dyn ObjectStore, key: &str) -> Result<usize> {
    if let Some(n) = count_in_name(key) {
        return Ok(n);
    }
    let head = ByteRange::Bounded { start: 0, end: 16 };
    let (_, b) = objects.get_range(key, head).await?;
    header_count(key, &b)
}

impl TombstoneLog {
    /// Merges full tiers of store `store`'s segments until none is full.
    pub(crate) async fn merge_segments(
        &self,
        objects: &dyn ObjectStore,
        hook: &(dyn Fn(CompactStep) + Sync),
        report: &mut CompactReport,
    ) -> Result<()> {
        loop {
            let mut tiers: BTreeMap<u32, Vec<String>> = BTreeMap::new();
            for key in list_segments(objects).await? {
                if let Some(t) = tier(segment_count(objects, &key).await?) {
                    tiers.entry(t).or_default().push(key);
                }
            }
            // Lowest full tier first, oldest segments (name order) first.
            let Some(group) = tiers.into_values().find(|keys| keys.len() >= MERGE_FANIN) else {
                return Ok(());
            };
            self.merge_group(objects, &group[..MERGE_FANIN], hook)
                .await?;
            report.segments_merged += MERGE_FANIN as u64;
        }
    }

    async fn merge_group(
        &self,
        objects: &dyn ObjectStore,
        inputs: &[String],
        hook: &(dyn Fn(CompactStep) + Sync),
    ) -> Result<()> {
        let mut names = HashSet::new();
        let mut records: Vec<SegmentRecord> = Vec::new();
        for key in inputs {
            let (_, body) = objects.get_range(key, ByteRange::All).await?;
            let (_, read) = decode_segment(key, &body)?;
            records.extend(read.into_iter().filter(|r| names.insert(r.name.clone())));
        }
        let merged = write_segment(objects, &records, self.store().n_bits()).await?;
        hook(CompactStep::MergeWritten);
        verify_segment(objects, &merged, &records).await?;
        hook(CompactStep::MergeVerified);
        delete_all(objects, inputs.iter().filter(|k| **k != merged).cloned()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_name_carries_its_count_and_old_names_do_not() {
        let new = "_tombstones/segments/20261206T063751622314Z-7a964e08-1000.seg";
        assert_eq!(count_in_name(new), Some(1000));
        let old = "_tombstones/segments/20261206T063751622314Z-7a964e08.seg";
        assert_eq!(count_in_name(old), None);
        assert_eq!(count_in_name("_tombstones/segments/x-y-z.seg"), None);
    }

    #[test]
    fn tiers_grow_by_the_fan_in_and_stop_below_the_cap() {
        assert_eq!(tier(0), Some(0));
        assert_eq!(tier(1023), Some(0));
        assert_eq!(tier(1024), Some(1));
        assert_eq!(tier(8191), Some(1));
        assert_eq!(tier(65_535), Some(2));
        assert_eq!(tier(65_536), None);
        // A full top tier merged stays within one segment's cap.
        const { assert!(MERGE_FANIN * 65_535 <= MAX_SEGMENT_RECORDS) };
    }
}
