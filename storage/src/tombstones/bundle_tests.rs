#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Bundles: many tombstones in one object, read, applied and compacted
//! like records, the object deleted only once every member is merged.

use bytes::Bytes;
use des_format::Timestamp;

use super::tests::{compact_crashing_at, store};
use super::*;
use crate::MemoryStore;
use crate::error::ErrorKind;
use crate::object::{ObjectStore, ObjectStoreExt, PutOptions};

fn tombs(n: usize) -> Vec<Tombstone> {
    let at = Timestamp::parse_rfc3339("2024-05-17T10:00:00Z").unwrap();
    (0..n)
        .map(|i| Tombstone::new(format!("u{i}"), at, DeleteReason::Gdpr, "tester"))
        .collect()
}

async fn log_objects(mem: &MemoryStore) -> Vec<String> {
    mem.list_all(LOG_PREFIX)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .filter(|k| !k.starts_with(SEGMENT_PREFIX))
        .collect()
}

/// Marks `names` applied in one batch marker.
async fn apply(log: &TombstoneLog, names: &[LoggedName], generation: u64) {
    let marked: Vec<_> = names
        .iter()
        .map(|n| (n.name.name.clone(), AppliedOutcome::Removed))
        .collect();
    log.mark_applied_batch(0, "20240517/0.des", Some(generation), &marked)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_batch_is_one_object_read_like_records() {
    let (store, mem) = store().await;
    let log = TombstoneLog::new(&store);
    let mut ts = tombs(2_500);
    ts.push(ts[7].clone());
    let keys = log.append_bundle(&ts).await.unwrap();
    assert_eq!(keys.len(), 2_501);
    assert_eq!(keys[2_500], keys[7], "a pair given twice is logged once");
    let objects = log_objects(&mem).await;
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert!(objects[0].ends_with(".jsonl") && objects[0].contains("-bundle-2500-"));
    let all = log.list_all().await.unwrap();
    assert_eq!(all.len(), 2_500);
    assert!(all.iter().all(|l| l.at.name.bundle.is_some()));
    let set = TombstoneSet::load(&log).await.unwrap();
    assert!((0..2_500).all(|i| set.contains(&format!("u{i}"), 20240517)));
    assert!(!set.contains("u2500", 20240517));
    assert_eq!(log.pending().await.unwrap().len(), 2_500);
    // One member alone reads through its bundle.
    let one = &all[3];
    assert_eq!(log.read(&one.at).await.unwrap(), one.tombstone);
    // A single tombstone is written as a plain record.
    let single = log.append_bundle(&tombs(1)).await.unwrap();
    assert!(single[0].ends_with(".json"), "{single:?}");
}

#[tokio::test]
async fn more_than_max_bundle_makes_several() {
    let (store, mem) = store().await;
    let log = TombstoneLog::new(&store);
    log.append_bundle(&tombs(MAX_BUNDLE + 1)).await.unwrap();
    assert_eq!(log_objects(&mem).await.len(), 2);
    assert_eq!(log.list_all_names().await.unwrap().len(), MAX_BUNDLE + 1);
}

#[tokio::test]
async fn a_damaged_bundle_is_an_error_not_a_shorter_list() {
    let (store, mem) = store().await;
    let log = TombstoneLog::new(&store);
    log.append_bundle(&tombs(10)).await.unwrap();
    let key = log_objects(&mem).await.remove(0);
    let (_, body) = mem.get_range(&key, crate::ByteRange::All).await.unwrap();
    let cut = body.slice(..body.len() - 20);
    mem.put(&key, cut, PutOptions::default()).await.unwrap();
    let err = TombstoneSet::load(&log).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    // Same length, one flipped byte.
    let mut bad = body.to_vec();
    bad[5] ^= 1;
    mem.put(&key, Bytes::from(bad), PutOptions::default())
        .await
        .unwrap();
    let err = log.list_all().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
}

/// Half the members applied: they are merged, the bundle stays (the rest
/// are pending) and the merged half does not look pending again; once the
/// rest is applied the bundle and every marker go.
#[tokio::test]
async fn a_bundle_is_deleted_only_once_every_member_is_merged() {
    let (store, mem) = store().await;
    let log = TombstoneLog::new(&store);
    log.append_bundle(&tombs(100)).await.unwrap();
    let pending = log.pending().await.unwrap();
    apply(&log, &pending[..40], 2).await;
    let report = log.compact().await.unwrap();
    assert_eq!(report.records_merged, 40);
    assert_eq!(log_objects(&mem).await.len(), 1, "the bundle stays");
    assert_eq!(log.pending().await.unwrap().len(), 60);
    // Compacting again merges nothing new and keeps the markers.
    let again = log.compact().await.unwrap();
    assert_eq!((again.segments_written, again.records_merged), (0, 0));
    assert_eq!(log.pending().await.unwrap().len(), 60);
    apply(&log, &pending[40..], 3).await;
    let last = log.compact().await.unwrap();
    assert_eq!(last.records_merged, 60);
    assert!(log_objects(&mem).await.is_empty());
    assert!(mem.list_all(APPLIED_PREFIX).await.unwrap().is_empty());
    assert!(log.pending().await.unwrap().is_empty());
    assert_eq!(log.segment_records().await.unwrap().len(), 100);
    let set = TombstoneSet::load(&log).await.unwrap();
    assert!((0..100).all(|i| set.contains(&format!("u{i}"), 20240517)));
}

/// A crash at each step of compacting a bundle loses nothing and makes
/// nothing pending again; the next compaction finishes without merging twice.
#[tokio::test]
async fn compacting_a_bundle_is_crash_safe() {
    for crash_at in [
        CompactStep::SegmentWritten,
        CompactStep::SegmentVerified,
        CompactStep::RecordsDeleted,
    ] {
        let (store, mem) = store().await;
        let log = TombstoneLog::new(&store);
        log.append_bundle(&tombs(50)).await.unwrap();
        apply(&log, &log.pending().await.unwrap(), 2).await;
        assert!(compact_crashing_at(&log, crash_at).await, "{crash_at:?}");
        let seen = TombstoneSet::load(&log).await.unwrap();
        assert!((0..50).all(|i| seen.contains(&format!("u{i}"), 20240517)));
        assert!(log.pending().await.unwrap().is_empty(), "{crash_at:?}");
        let report = log.compact().await.unwrap();
        assert_eq!(report.segments_written, 0, "{crash_at:?}");
        assert!(log_objects(&mem).await.is_empty(), "{crash_at:?}");
        assert!(mem.list_all(APPLIED_PREFIX).await.unwrap().is_empty());
        assert_eq!(log.segment_records().await.unwrap().len(), 50);
    }
}

/// Counts GETs of bundles.
#[derive(Debug)]
struct BundleGets {
    inner: MemoryStore,
    gets: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl crate::object::ObjectStore for BundleGets {
    crate::forward_methods!(inner => describe, capabilities, head, put, put_writer, delete, list);

    async fn get(
        &self,
        key: &str,
        opts: crate::object::GetOptions,
    ) -> crate::Result<crate::object::GetResult> {
        if key.ends_with(".jsonl") {
            self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.get(key, opts).await
    }
}

/// A reader polling sees a bundle once, reads it once, and keeps seeing
/// its members after they move into a segment.
#[tokio::test]
async fn polling_reads_a_bundle_once() {
    let (_, mem) = store().await;
    let counted = std::sync::Arc::new(BundleGets {
        inner: mem,
        gets: Default::default(),
    });
    let store = crate::DesStore::open(counted.clone()).await.unwrap();
    let log = TombstoneLog::new(&store);
    let mut set = TombstoneSet::load(&log).await.unwrap();
    log.append_bundle(&tombs(30)).await.unwrap();
    assert_eq!(set.refresh(&log).await.unwrap(), 30);
    assert_eq!(set.refresh(&log).await.unwrap(), 0);
    let reads = || counted.gets.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(reads(), 1, "listed twice, read once");
    apply(&log, &log.pending().await.unwrap(), 2).await;
    log.compact().await.unwrap();
    set.refresh(&log).await.unwrap();
    assert_eq!(set.segments(), 1);
    assert!((0..30).all(|i| set.contains(&format!("u{i}"), 20240517)));
}

/// A query by date reads only the segments holding that date.
#[tokio::test]
async fn records_by_date_come_from_segments_holding_it() {
    let (store, _) = store().await;
    let log = TombstoneLog::new(&store);
    let other = Timestamp::parse_rfc3339("2024-05-18T10:00:00Z").unwrap();
    let late: Vec<Tombstone> = (0..7)
        .map(|i| Tombstone::new(format!("v{i}"), other, DeleteReason::Gdpr, "tester"))
        .collect();
    for batch in [tombs(5), late] {
        log.append_bundle(&batch).await.unwrap();
        apply(&log, &log.pending().await.unwrap(), 2).await;
        log.compact().await.unwrap();
    }
    assert_eq!(log.segment_lookups().await.unwrap().len(), 2);
    let may17 = log
        .segment_records_where(|e| e.date == 20240517)
        .await
        .unwrap();
    assert_eq!(may17.len(), 5);
    assert!(may17.iter().all(|r| r.tombstone.date == 20240517));
}
