#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Segment merging: the count stays bounded, nothing is lost or pending
//! again, and a crash at either step is finished by the next compaction.

use des_format::Timestamp;

use super::tests::{compact_crashing_at, store};
use super::*;
use crate::MemoryStore;
use crate::object::{ObjectStore, ObjectStoreExt};

/// One compaction's worth: `n` tombstones logged, applied and compacted
/// into one segment; the compaction crashes at `crash`, if given.
async fn one_segment(log: &TombstoneLog, run: usize, n: usize, crash: Option<CompactStep>) {
    let at = Timestamp::parse_rfc3339("2024-05-17T10:00:00Z").unwrap();
    let ts: Vec<Tombstone> = (0..n)
        .map(|i| Tombstone::new(format!("r{run}-{i}"), at, DeleteReason::Gdpr, "t"))
        .collect();
    log.append_bundle(&ts).await.unwrap();
    let marked: Vec<_> = log
        .pending()
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.name.name, AppliedOutcome::Removed))
        .collect();
    log.mark_applied_batch(0, "20240517/0.des", Some(run as u64 + 2), &marked)
        .await
        .unwrap();
    match crash {
        Some(step) => assert!(compact_crashing_at(log, step).await, "{step:?}"),
        None => {
            log.compact().await.unwrap();
        }
    }
}

async fn segment_count(mem: &MemoryStore) -> usize {
    mem.list_all(SEGMENT_PREFIX).await.unwrap().len()
}

fn all_seen(set: &TombstoneSet, runs: usize, n: usize) -> bool {
    (0..runs).all(|r| (0..n).all(|i| set.contains(&format!("r{r}-{i}"), 20240517)))
}

#[tokio::test]
async fn a_full_tier_is_merged_into_one_segment() {
    let (store, mem) = store().await;
    let log = TombstoneLog::new(&store);
    let mut reader = TombstoneSet::load(&log).await.unwrap();
    for run in 0..MERGE_FANIN - 1 {
        one_segment(&log, run, 20, None).await;
    }
    assert_eq!(segment_count(&mem).await, MERGE_FANIN - 1);
    reader.refresh(&log).await.unwrap();
    assert_eq!(reader.segments(), MERGE_FANIN - 1);
    one_segment(&log, MERGE_FANIN - 1, 20, None).await;
    assert_eq!(segment_count(&mem).await, 1, "merged at the eighth");
    assert_eq!(log.segment_records().await.unwrap().len(), 20 * MERGE_FANIN);
    // A reader that saw the inputs keeps everything and follows the count.
    reader.refresh(&log).await.unwrap();
    assert_eq!(reader.segments(), 1);
    assert!(all_seen(&reader, MERGE_FANIN, 20));
    assert!(all_seen(
        &TombstoneSet::load(&log).await.unwrap(),
        MERGE_FANIN,
        20
    ));
    assert!(log.pending().await.unwrap().is_empty());
}

/// Many runs: the count stays below a tier's worth per tier.
#[tokio::test]
async fn the_segment_count_stays_bounded() {
    let (store, mem) = store().await;
    let log = TombstoneLog::new(&store);
    for run in 0..60 {
        one_segment(&log, run, 30, None).await;
        assert!(segment_count(&mem).await < MERGE_FANIN * 2, "run {run}");
    }
    assert_eq!(log.segment_records().await.unwrap().len(), 60 * 30);
    assert!(all_seen(&TombstoneSet::load(&log).await.unwrap(), 60, 30));
}

#[tokio::test]
async fn a_crash_while_merging_loses_nothing_and_is_finished_next_time() {
    for crash_at in [CompactStep::MergeWritten, CompactStep::MergeVerified] {
        let (store, mem) = store().await;
        let log = TombstoneLog::new(&store);
        for run in 0..MERGE_FANIN - 1 {
            one_segment(&log, run, 10, None).await;
        }
        one_segment(&log, MERGE_FANIN - 1, 10, Some(crash_at)).await;
        assert_eq!(segment_count(&mem).await, MERGE_FANIN + 1, "{crash_at:?}");
        let seen = TombstoneSet::load(&log).await.unwrap();
        assert!(all_seen(&seen, MERGE_FANIN, 10), "{crash_at:?}");
        assert!(log.pending().await.unwrap().is_empty());
        let report = log.compact().await.unwrap();
        assert_eq!(report.records_merged, 0, "{crash_at:?}");
        assert!(segment_count(&mem).await <= 2, "{crash_at:?}");
        assert!(all_seen(
            &TombstoneSet::load(&log).await.unwrap(),
            MERGE_FANIN,
            10
        ));
    }
}

/// Segments named before names carried their record count are asked their
/// header, and merge with newer ones.
#[tokio::test]
async fn segments_with_old_names_merge_with_new_ones() {
    let (store, mem) = store().await;
    let log = TombstoneLog::new(&store);
    for run in 0..MERGE_FANIN / 2 {
        one_segment(&log, run, 20, None).await;
    }
    for meta in mem.list_all(SEGMENT_PREFIX).await.unwrap() {
        let (_, body) = mem
            .get_range(&meta.key, crate::ByteRange::All)
            .await
            .unwrap();
        let stem = meta.key.strip_suffix(".seg").unwrap();
        let old = format!("{}.seg", stem.rsplit_once('-').unwrap().0);
        assert_ne!(old, meta.key);
        mem.put(&old, body, crate::PutOptions::default())
            .await
            .unwrap();
        mem.delete(&meta.key).await.unwrap();
    }
    for run in MERGE_FANIN / 2..MERGE_FANIN {
        one_segment(&log, run, 20, None).await;
    }
    assert_eq!(segment_count(&mem).await, 1, "merged at the eighth");
    let set = TombstoneSet::load(&log).await.unwrap();
    assert!(all_seen(&set, MERGE_FANIN, 20));
}
