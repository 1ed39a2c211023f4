#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use des_format::{Timestamp, routing};

use super::key::encode_name;
use super::*;
use crate::error::ErrorKind;
use crate::object::{ObjectStore, ObjectStoreExt, PutOptions};
use crate::store::{CreateOptions, DesStore, Placement};
use crate::{MemoryStore, Result};

const N_BITS: u8 = 4;

fn ts(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

/// Runs a compaction that crashes (a panicking hook) at `step`; returns
/// whether it did (`false`: it finished before reaching `step`).
pub(super) async fn compact_crashing_at(log: &TombstoneLog, step: CompactStep) -> bool {
    let hook = |at| assert_ne!(at, step, "crash");
    let run = log.compact_with(&hook);
    futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run))
        .await
        .is_err()
}

/// A store on memory (`n_bits` 4) and the memory behind it.
pub(super) async fn store() -> (DesStore, MemoryStore) {
    let mem = MemoryStore::new();
    let (store, _) = DesStore::open_or_create(
        Arc::new(mem.clone()),
        CreateOptions {
            n_bits: Some(N_BITS),
            digest: None,
        },
    )
    .await
    .unwrap();
    (store, mem)
}

fn tomb(uid: &str, created: &str) -> Tombstone {
    Tombstone::new(uid, ts(created), DeleteReason::Gdpr, "tester").with_ticket("T-1")
}

/// Writes a tombstone as a writer whose clock says `logged_at` would,
/// without going through the log (which tests would otherwise share).
async fn append_as_of(mem: &MemoryStore, t: &Tombstone, logged_at: Timestamp) {
    let key = format!("{LOG_PREFIX}{}", encode_name(logged_at, t.date, &t.uid));
    mem.put(
        &key,
        Bytes::from(t.to_json().unwrap()),
        PutOptions::default(),
    )
    .await
    .unwrap();
}

#[test]
fn record_json_shape_and_validation() {
    let t = tomb("u1", "2024-05-17T10:00:00Z");
    let json: serde_json::Value = serde_json::from_slice(&t.to_json().unwrap()).unwrap();
    assert_eq!(json["date"], "20240517");
    assert_eq!(json["reason"], "gdpr");
    assert_eq!(json["created_at"], "2024-05-17T10:00:00Z");
    assert_eq!(json["ticket_id"], "T-1");
    let back: Tombstone = serde_json::from_value(json).unwrap();
    assert_eq!(back, t);

    let no_created = Tombstone::for_date("u1", 20240517, DeleteReason::UserRequest, "x").unwrap();
    let json = String::from_utf8(no_created.to_json().unwrap()).unwrap();
    assert!(
        !json.contains("created_at") && !json.contains("ticket_id"),
        "{json}"
    );

    assert!(Tombstone::for_date("u1", 20240230, DeleteReason::Gdpr, "x").is_err());
    assert!(Tombstone::for_date("", 20240517, DeleteReason::Gdpr, "x").is_err());
    assert!(Tombstone::for_date("u", 20240517, DeleteReason::Gdpr, " ").is_err());
    let mut wrong_day = tomb("u1", "2024-05-17T10:00:00Z");
    wrong_day.date = 20240518;
    assert!(wrong_day.validate().is_err());
    let tampered = r#"{"uid":"u","date":"20240517","deleted_at":"2024-06-01T00:00:00Z",
        "deleted_by":"x","reason":"gdpr","extra":1}"#;
    assert!(serde_json::from_str::<Tombstone>(tampered).is_err());
}

#[test]
fn reasons_parse() {
    for r in DeleteReason::ALL {
        assert_eq!(r.as_str().parse::<DeleteReason>().unwrap(), r);
    }
    assert_eq!(
        "Retention-Expired".parse::<DeleteReason>().unwrap(),
        DeleteReason::RetentionExpired
    );
    let e = "oops".parse::<DeleteReason>().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert_eq!(
        serde_json::to_string(&DeleteReason::UserRequest).unwrap(),
        "\"user_request\""
    );
}

#[tokio::test]
async fn append_then_list_incrementally() {
    let (store, _) = store().await;
    let log = TombstoneLog::new(&store);
    let a = tomb("a", "2024-05-17T10:00:00Z");
    let key = log.append(&a).await.unwrap();
    assert!(key.starts_with(LOG_PREFIX), "{key}");

    let (first, cursor) = log.list_since(&LogCursor::default()).await.unwrap();
    assert_eq!(first, vec![a.clone()]);
    let (again, cursor) = log.list_since(&cursor).await.unwrap();
    assert!(
        again.is_empty(),
        "already seen names are not reported twice"
    );

    let b = tomb("b/with slash", "2024-05-18T10:00:00Z");
    log.append(&b).await.unwrap();
    let (second, _) = log.list_since(&cursor).await.unwrap();
    assert_eq!(second, vec![b.clone()]);
    let all: Vec<Tombstone> = log
        .list_all()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.tombstone)
        .collect();
    assert_eq!(all, vec![a, b]);
}

#[tokio::test]
async fn late_writers_within_the_overlap_are_picked_up() {
    let (store, mem) = store().await;
    let log = TombstoneLog::new(&store).with_overlap(Duration::from_secs(600));
    log.append(&tomb("now", "2024-05-17T10:00:00Z"))
        .await
        .unwrap();
    let (_, cursor) = log.list_since(&LogCursor::default()).await.unwrap();

    // A writer whose clock is 5 minutes behind appends after our poll: its
    // name sorts before everything we have seen.
    let late = tomb("late", "2024-05-17T11:00:00Z");
    let behind = Timestamp::from_micros(Timestamp::now().micros() - 300_000_000);
    append_as_of(&mem, &late, behind).await;
    // One 2 hours behind is outside the overlap: only a full re-list sees it.
    let very_late = tomb("very-late", "2024-05-17T12:00:00Z");
    let far_behind = Timestamp::from_micros(Timestamp::now().micros() - 7_200_000_000);
    append_as_of(&mem, &very_late, far_behind).await;

    let (got, cursor) = log.list_since(&cursor).await.unwrap();
    assert_eq!(got, vec![late]);
    let (got, _) = log.list_since(&cursor).await.unwrap();
    assert!(got.is_empty());

    let mut set = TombstoneSet::new();
    set.refresh(&log).await.unwrap();
    assert!(
        set.contains("very-late", 20240517),
        "first refresh lists all"
    );
}

#[tokio::test]
async fn a_writer_clock_far_ahead_does_not_hide_later_writes() {
    let (store, mem) = store().await;
    let log = TombstoneLog::new(&store).with_overlap(Duration::from_secs(60));
    let ahead = Timestamp::from_micros(Timestamp::now().micros() + 86_400_000_000);
    append_as_of(&mem, &tomb("ahead", "2024-05-17T10:00:00Z"), ahead).await;
    let mut set = TombstoneSet::new();
    assert_eq!(set.refresh(&log).await.unwrap(), 1);
    log.append(&tomb("normal", "2024-05-17T10:00:00Z"))
        .await
        .unwrap();
    assert_eq!(set.refresh(&log).await.unwrap(), 1);
    assert!(set.contains("normal", 20240517));
    assert_eq!(set.refresh(&log).await.unwrap(), 0);
}

#[tokio::test]
async fn set_matches_any_time_on_the_day() {
    let (store, _) = store().await;
    let log = TombstoneLog::new(&store);
    let long_uid = "very/long/".repeat(60);
    for t in [
        tomb("u1", "2024-05-17T10:00:00Z"),
        tomb(&long_uid, "2024-05-17T10:00:00Z"),
    ] {
        log.append(&t).await.unwrap();
    }
    let set = TombstoneSet::load(&log).await.unwrap();
    assert_eq!(set.len(), 2);
    assert!(set.contains_at("u1", ts("2024-05-17T00:00:00Z")));
    assert!(set.contains_at("u1", ts("2024-05-17T23:59:59.999999Z")));
    assert!(!set.contains_at("u1", ts("2024-05-18T00:00:00Z")));
    assert!(!set.contains_at("u2", ts("2024-05-17T10:00:00Z")));
    assert!(set.contains(&long_uid, 20240517), "hashed names are read");
}

#[tokio::test]
async fn appends_never_overwrite() {
    let (store, mem) = store().await;
    let log = TombstoneLog::new(&store);
    let at = ts("2024-06-01T08:00:00Z");
    let t = tomb("u1", "2024-05-17T10:00:00Z");
    let key = log.append_at(&t, at).await.unwrap();
    // Same uid and date in the same microsecond, other content: a new name.
    let other = tomb("u1", "2024-05-17T11:00:00Z");
    let other_key = log.append_at(&other, at).await.unwrap();
    assert_ne!(key, other_key);
    let body = mem.get_range(&key, crate::ByteRange::All).await.unwrap().1;
    assert_eq!(body, Bytes::from(t.to_json().unwrap()));
    // The same record again (a retried append): the same name, no duplicate.
    assert_eq!(log.append_at(&t, at).await.unwrap(), key);
    assert_eq!(log.list_all().await.unwrap().len(), 2);
}

#[tokio::test]
async fn applied_markers_split_pending_from_done() {
    let (store, _) = store().await;
    let log = TombstoneLog::new(&store);
    log.append(&tomb("a", "2024-05-17T10:00:00Z"))
        .await
        .unwrap();
    log.append(&tomb("b", "2024-05-17T10:00:00Z"))
        .await
        .unwrap();
    let pending = log.pending().await.unwrap();
    assert_eq!(pending.len(), 2);
    let a = pending
        .iter()
        .find(|n| n.name.uid.as_deref() == Some("a"))
        .unwrap();
    assert_eq!(log.applied_marker(a).await.unwrap(), None);
    let marker = AppliedMarker::new("20240517/1.des", Some(3), AppliedOutcome::Removed);
    log.mark_applied(a, &marker).await.unwrap();
    log.mark_applied(a, &marker).await.unwrap();
    let (pending, applied) = log.names_by_state().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].name.uid.as_deref(), Some("b"));
    assert_eq!(applied.len(), 1);
    assert_eq!(log.applied_marker(a).await.unwrap(), Some(marker));
}

/// Two zones split by shard index.
#[derive(Debug)]
struct Split {
    low: Arc<dyn ObjectStore>,
    high: Arc<dyn ObjectStore>,
}

impl Placement for Split {
    fn for_shard(&self, i: u32) -> Result<Arc<dyn ObjectStore>> {
        Ok(Arc::clone(if i < 8 { &self.low } else { &self.high }))
    }
    fn stores(&self) -> Vec<Arc<dyn ObjectStore>> {
        vec![Arc::clone(&self.low), Arc::clone(&self.high)]
    }
    fn describe(&self) -> String {
        "split".into()
    }
}

#[tokio::test]
async fn with_zones_each_tombstone_lives_with_its_shard() {
    let (low, high) = (MemoryStore::new(), MemoryStore::new());
    let placement = Split {
        low: Arc::new(low.clone()),
        high: Arc::new(high.clone()),
    };
    let (store, _) = DesStore::open_or_create_placed(
        Arc::new(placement),
        CreateOptions {
            n_bits: Some(N_BITS),
            digest: None,
        },
    )
    .await
    .unwrap();
    let log = TombstoneLog::new(&store);
    // Numeric uids route by value: 3 -> shard 3 (low), 12 -> shard 12 (high).
    assert_eq!(routing::shard_index("12", N_BITS).unwrap(), 12);
    log.append(&tomb("3", "2024-05-17T10:00:00Z"))
        .await
        .unwrap();
    log.append(&tomb("12", "2024-05-17T10:00:00Z"))
        .await
        .unwrap();
    assert_eq!(low.list_all(LOG_PREFIX).await.unwrap().len(), 1);
    assert_eq!(high.list_all(LOG_PREFIX).await.unwrap().len(), 1);
    let set = TombstoneSet::load(&log).await.unwrap();
    assert!(set.contains("3", 20240517) && set.contains("12", 20240517));
    let names = log.list_all_names().await.unwrap();
    let stores: Vec<usize> = names.iter().map(|n| n.store).collect();
    assert_eq!(stores, vec![0, 1]);
}

#[tokio::test]
async fn foreign_objects_under_the_prefix_are_ignored() {
    let (store, mem) = store().await;
    mem.put(
        &format!("{LOG_PREFIX}README.txt"),
        Bytes::from_static(b"hi"),
        PutOptions::default(),
    )
    .await
    .unwrap();
    let log = TombstoneLog::new(&store);
    assert!(log.list_all().await.unwrap().is_empty());
}

/// An old store (one record and one marker per tombstone) read, compacted,
/// and read again: nothing lost, nothing pending twice; a re-run merges
/// nothing twice.
#[tokio::test]
async fn old_store_is_compacted_without_losing_anything() {
    let (store, mem) = store().await;
    let log = TombstoneLog::new(&store);
    for i in 0..20 {
        let t = tomb(&format!("u{i}"), "2024-05-17T10:00:00Z");
        log.append(&t).await.unwrap();
    }
    let before = TombstoneSet::load(&log).await.unwrap();
    let (pending, _) = log.names_by_state().await.unwrap();
    // Mark the first 15 applied the old way.
    for at in &pending[..15] {
        let marker = AppliedMarker::new("20240517/1.des", Some(3), AppliedOutcome::Removed);
        log.mark_applied(at, &marker).await.unwrap();
    }
    let report = log.compact().await.unwrap();
    assert_eq!((report.segments_written, report.records_merged), (1, 15));
    let (pending, applied) = log.names_by_state().await.unwrap();
    assert_eq!((pending.len(), applied.len()), (5, 0));
    assert_eq!(mem.list_all(APPLIED_PREFIX).await.unwrap().len(), 0);
    let after = TombstoneSet::load(&log).await.unwrap();
    for i in 0..20 {
        assert!(after.contains(&format!("u{i}"), 20240517), "u{i}");
    }
    assert!(!after.contains("u99", 20240517));
    assert_eq!(after.segments(), 1);
    // The old reader picks the segment up and keeps its exact entries.
    let mut polled = before.clone();
    polled.refresh(&log).await.unwrap();
    assert_eq!(polled.segments(), 1);
    assert!((0..20).all(|i| polled.contains(&format!("u{i}"), 20240517)));
    // Details are in the segment.
    let records = log.segment_records_of("u3", 20240517).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].applied.generation, Some(3));
    assert_eq!(log.compact().await.unwrap(), CompactReport::default());
}

/// A crash after the segment is written (records and markers still there):
/// the next compaction deletes them instead of merging them again.
#[tokio::test]
async fn leftovers_of_a_crash_are_deleted_not_merged_twice() {
    for crash_at in [
        CompactStep::SegmentWritten,
        CompactStep::SegmentVerified,
        CompactStep::RecordsDeleted,
    ] {
        let (store, mem) = store().await;
        let log = TombstoneLog::new(&store);
        for i in 0..10 {
            log.append(&tomb(&format!("u{i}"), "2024-05-17T10:00:00Z"))
                .await
                .unwrap();
        }
        let (pending, _) = log.names_by_state().await.unwrap();
        for at in &pending {
            let marker = AppliedMarker::new("20240517/1.des", Some(3), AppliedOutcome::Removed);
            log.mark_applied(at, &marker).await.unwrap();
        }
        assert!(compact_crashing_at(&log, crash_at).await, "{crash_at:?}");
        let seen = TombstoneSet::load(&log).await.unwrap();
        assert!((0..10).all(|i| seen.contains(&format!("u{i}"), 20240517)));
        assert!(log.pending().await.unwrap().is_empty(), "{crash_at:?}");
        let report = log.compact().await.unwrap();
        assert_eq!(report.segments_written, 0, "{crash_at:?}");
        assert_eq!(mem.list_all(SEGMENT_PREFIX).await.unwrap().len(), 1);
        assert_eq!(log.segment_records().await.unwrap().len(), 10);
        assert!(log.list_all_names().await.unwrap().is_empty());
        assert!(mem.list_all(APPLIED_PREFIX).await.unwrap().is_empty());
    }
}

#[test]
fn segment_round_trips_and_detects_corruption() {
    let records: Vec<SegmentRecord> = (0..50)
        .map(|i| SegmentRecord {
            name: format!("20240601T080000{i:06}Z-20240517-uu{i}.json"),
            store: 0,
            tombstone: tomb(&format!("u{i}"), "2024-05-17T10:00:00Z"),
            applied: AppliedMarker::new("20240517/1.des", None, AppliedOutcome::Absent),
        })
        .collect();
    let body = encode_segment(&records, N_BITS).unwrap();
    let (lookup, back) = decode_segment("k", &body).unwrap();
    assert_eq!(back, records);
    assert!(
        lookup
            .windows(2)
            .all(|w| (w[0].date, w[0].hash) <= (w[1].date, w[1].hash))
    );
    let lookup_only = decode_lookup("k", &body[..16 + 50 * 16 + 4]).unwrap();
    assert_eq!(lookup_only, lookup);
    let mut bad = body.to_vec();
    let last = bad.len() - 10;
    bad[last] ^= 1;
    assert!(decode_segment("k", &bad).is_err());
    assert_eq!(pair_hash("u1", 20240517), pair_hash("u1", 20240517));
    assert_ne!(pair_hash("u1", 20240517), pair_hash("u1", 20240518));
}

/// 1,000,000 applied deletions from segments: at most 16 heap bytes each.
#[tokio::test]
async fn reader_memory_per_applied_deletion_is_bounded() {
    let (store, mem) = store().await;
    let n = 1_000_000usize;
    let per_segment = 100_000usize;
    let start = std::time::Instant::now();
    for s in 0..n / per_segment {
        // Lookup sections only matter to readers; details are minimal.
        let mut entries: Vec<(u32, u64)> = (0..per_segment)
            .map(|i| {
                let k = s * per_segment + i;
                let date = 20240101 + u32::try_from(k % 28).unwrap();
                (date, pair_hash(&format!("user-{k}"), date))
            })
            .collect();
        entries.sort_unstable();
        let mut out = Vec::new();
        out.extend_from_slice(b"DESTSEG1");
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&u32::try_from(per_segment).unwrap().to_le_bytes());
        for (d, h) in &entries {
            out.extend_from_slice(&d.to_le_bytes());
            out.extend_from_slice(&h.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        let key = format!("{SEGMENT_PREFIX}20240601T0800000000{s:02}Z-00000000.seg");
        mem.put(&key, Bytes::from(out), PutOptions::default())
            .await
            .unwrap();
    }
    let built = start.elapsed();
    let start = std::time::Instant::now();
    let set = TombstoneSet::load(&TombstoneLog::new(&store))
        .await
        .unwrap();
    let loaded = start.elapsed();
    assert_eq!(set.len(), n);
    assert_eq!(set.segments(), n / per_segment);
    assert!(set.contains("user-12345", 20240101 + 12345 % 28));
    assert!(!set.contains("user-12345", 20240101 + 12346 % 28));
    let per = set.heap_bytes() as f64 / n as f64;
    eprintln!("built {built:?}, loaded {loaded:?}, {per:.2} heap bytes per deletion");
    assert!(per <= 16.0, "{per} bytes per deletion");
}

/// Markers per shard generation: one object for many tombstones, read by
/// `names_by_state` and `applied_marker`, merged on a second write, and
/// deleted by compaction once its names are in a segment.
#[tokio::test]
async fn batch_markers_mark_many_and_are_compacted() {
    let (store, mem) = store().await;
    let log = TombstoneLog::new(&store);
    for i in 0..3 {
        log.append(&tomb(&format!("u{i}"), "2024-05-17T10:00:00Z"))
            .await
            .unwrap();
    }
    let (pending, _) = log.names_by_state().await.unwrap();
    let name = |i: usize| pending[i].name.name.clone();
    let store_of = pending[0].store;
    log.mark_applied_batch(
        store_of,
        "20240517/1.des",
        Some(4),
        &[(name(0), AppliedOutcome::Removed)],
    )
    .await
    .unwrap();
    log.mark_applied_batch(
        store_of,
        "20240517/1.des",
        Some(4),
        &[(name(1), AppliedOutcome::Absent)],
    )
    .await
    .unwrap();
    let keys = mem.list_all(APPLIED_PREFIX).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].key, "_tombstones_applied/20240517/1.des/4.json");
    let (still, applied) = log.names_by_state().await.unwrap();
    assert_eq!((still.len(), applied.len()), (1, 2));
    let m = log.applied_marker(&pending[1]).await.unwrap().unwrap();
    assert_eq!((m.generation, m.outcome), (Some(4), AppliedOutcome::Absent));
    let report = log.compact().await.unwrap();
    assert_eq!(report.records_merged, 2);
    assert!(mem.list_all(APPLIED_PREFIX).await.unwrap().is_empty());
    assert_eq!(log.pending().await.unwrap().len(), 1);
    let set = TombstoneSet::load(&log).await.unwrap();
    assert!((0..3).all(|i| set.contains(&format!("u{i}"), 20240517)));
    let records = log.segment_records_of("u0", 20240517).await.unwrap();
    assert_eq!(records[0].applied.outcome, AppliedOutcome::Removed);
}
