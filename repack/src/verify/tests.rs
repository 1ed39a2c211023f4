//! Library-level checks on an in-memory store: the cases the CLI tests do
//! not reach (misrouting, oversized inline entries, format mismatches).

use std::sync::Arc;
use std::time::Duration;

use des_format::codec::{self, Compression};
use des_format::v3::{NewEntry, ShardIdent, ShardWriter};
use des_format::{DigestAlgorithm, Timestamp};
use des_storage::store::Placement;
use des_storage::{CreateOptions, DesStore, MemoryStore, ObjectStore, PutOptions};

use super::*;

async fn put(store: &DesStore, key: &str, data: Vec<u8>) {
    store
        .objects()
        .put(key, data.into(), PutOptions::default())
        .await
        .unwrap();
}

async fn store() -> DesStore {
    let objects = Arc::new(MemoryStore::new());
    DesStore::open_or_create(
        objects,
        CreateOptions {
            n_bits: Some(8),
            digest: None,
        },
    )
    .await
    .unwrap()
    .0
}

fn ts(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

/// A shard for (date of `at`, `shard`) holding `files`, each stored with `policy`.
fn shard(
    at: Timestamp,
    shard: u16,
    files: &[(&str, Timestamp, Vec<u8>)],
    policy: Compression,
) -> Vec<u8> {
    let ident = ShardIdent {
        date: at.date_number(),
        shard_index: shard,
        n_bits: 8,
        generation: 3,
        digest_alg: DigestAlgorithm::Blake3,
        written_at: at,
    };
    let mut w = ShardWriter::new(Vec::new(), ident).unwrap();
    for (uid, created_at, data) in files {
        let (codec, stored) = codec::encode(policy, uid, None, data).unwrap();
        let e = NewEntry {
            uid: (*uid).to_string(),
            created_at: *created_at,
            content_type: None,
            meta: None,
            codec,
            orig_len: data.len() as u64,
            digest: DigestAlgorithm::Blake3.digest(data),
        };
        w.add_inline(e, &stored).unwrap();
    }
    w.finish().unwrap().0
}

fn key_of(store: &DesStore, uid: &str, at: Timestamp) -> (String, u16) {
    let loc = store.locate(uid, at).unwrap();
    (
        DesStore::shard_key(&loc),
        u16::try_from(loc.shard_index).unwrap(),
    )
}

#[tokio::test]
async fn misrouted_entry_is_named() {
    let s = store().await;
    let at = ts("2024-05-17T10:00:00Z");
    let (key, idx) = key_of(&s, "12345", at);
    // "12346" routes to the next shard: a reader would never look for it here.
    let files = [("12345", at, b"a".to_vec()), ("12346", at, b"b".to_vec())];
    put(&s, &key, shard(at, idx, &files, Compression::None)).await;
    let r = verify_store(&s, &VerifyOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    assert_eq!(r.findings[0].kind, FindingKind::Misrouted);
    assert_eq!(r.findings[0].uid.as_deref(), Some("12346"));
    assert_eq!(r.corrupt_entries, 1);
    assert_eq!(r.exit_code(), 1);
}

#[tokio::test]
async fn entry_from_another_day_is_misrouted() {
    let s = store().await;
    let at = ts("2024-05-17T10:00:00Z");
    let (key, idx) = key_of(&s, "12345", at);
    let files = [("12345", ts("2024-05-18T00:00:01Z"), b"a".to_vec())];
    put(&s, &key, shard(at, idx, &files, Compression::None)).await;
    let r = verify_store(&s, &VerifyOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    assert!(
        r.findings[0].reason.contains("20240518/"),
        "{}",
        r.findings[0].reason
    );
}

#[tokio::test]
async fn oversized_inline_entries_are_streamed_and_checked() {
    let s = store().await;
    let at = ts("2024-05-17T10:00:00Z");
    let (key, idx) = key_of(&s, "huge", at);
    let data = vec![7u8; usize::try_from(MAX_BUFFERED).unwrap() + 1];
    let mut bytes = shard(
        at,
        idx,
        &[("huge", at, data)],
        Compression::Zstd { level: 1 },
    );
    put(&s, &key, bytes.clone()).await;
    let opts = VerifyOptions::default();
    let r = verify_store(&s, &opts, |_| {}).await.unwrap();
    assert!(r.clean, "{:?} {:?}", r.findings, r.problems);
    assert_eq!(r.entries_checked, 1);

    // The zstd frame starts right after the 8-byte header; break its body.
    bytes[20] ^= 0xFF;
    put(&s, &key, bytes).await;
    let r = verify_store(&s, &opts, |_| {}).await.unwrap();
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    assert_eq!(r.findings[0].kind, FindingKind::Entry);
    assert_eq!(r.findings[0].uid.as_deref(), Some("huge"));
}

#[tokio::test]
async fn legacy_object_under_a_v3_key_is_a_placement_finding() {
    let s = store().await;
    let legacy = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/legacy-des/format/20240517_NONE_0000.des"
    ))
    .unwrap();
    put(&s, "20240517/00.des", legacy).await;
    let r = verify_store(&s, &VerifyOptions::default(), |_| {})
        .await
        .unwrap();
    assert!(
        r.findings.iter().any(|f| f.kind == FindingKind::Placement),
        "{:?}",
        r.findings
    );
    assert_eq!(r.entries_checked, 20);
}

#[tokio::test]
async fn empty_shard_and_progress_events() {
    let s = store().await;
    let at = ts("2024-05-17T10:00:00Z");
    put(&s, "20240517/00.des", shard(at, 0, &[], Compression::None)).await;
    let seen = std::sync::Mutex::new(Vec::new());
    let r = verify_store(&s, &VerifyOptions::default(), |p| {
        seen.lock().unwrap().push(match p {
            Progress::Planned { shards } => format!("planned {shards}"),
            Progress::ShardDone(sr) => format!("done {} {}", sr.key, sr.entries),
            Progress::ShardFailed { key, .. } => format!("failed {key}"),
        });
    })
    .await
    .unwrap();
    assert!(r.clean);
    assert_eq!(r.shards, 1);
    assert_eq!(
        *seen.lock().unwrap(),
        ["planned 1", "done 20240517/00.des 0"]
    );
}

#[tokio::test]
async fn verify_store_can_run_on_a_spawned_task() {
    let s = store().await;
    let handle =
        tokio::spawn(async move { verify_store(&s, &VerifyOptions::default(), |_| {}).await });
    assert!(handle.await.unwrap().unwrap().clean);
}

/// Shards 0..128 in the first store, the rest in the second.
#[derive(Debug)]
struct Halves(Arc<dyn ObjectStore>, Arc<dyn ObjectStore>);

impl Placement for Halves {
    fn for_shard(&self, index: u32) -> des_storage::Result<Arc<dyn ObjectStore>> {
        Ok(Arc::clone(if index < 128 { &self.0 } else { &self.1 }))
    }
    fn stores(&self) -> Vec<Arc<dyn ObjectStore>> {
        vec![Arc::clone(&self.0), Arc::clone(&self.1)]
    }
    fn describe(&self) -> String {
        "halves".into()
    }
}

#[tokio::test]
async fn zones_hold_their_own_shards_and_big_files() {
    let (low, high): (Arc<dyn ObjectStore>, Arc<dyn ObjectStore>) =
        (Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new()));
    let placement = Arc::new(Halves(Arc::clone(&low), Arc::clone(&high)));
    let opts = CreateOptions {
        n_bits: Some(8),
        digest: None,
    };
    let s = DesStore::open_or_create_placed(placement, opts)
        .await
        .unwrap()
        .0;
    let at = ts("2024-05-17T10:00:00Z");

    let (low_key, low_idx) = key_of(&s, "12345", at);
    let low_shard = shard(
        at,
        low_idx,
        &[("12345", at, b"low".to_vec())],
        Compression::None,
    );
    low.put(&low_key, low_shard.clone().into(), PutOptions::default())
        .await
        .unwrap();
    // The same shard in the wrong zone: no reader would look there.
    high.put(&low_key, low_shard.into(), PutOptions::default())
        .await
        .unwrap();

    // A big file beside the shard referencing it, in the high zone.
    let (high_key, high_idx) = key_of(&s, "200", at);
    let data = b"big ".repeat(1000);
    let ident = ShardIdent {
        date: at.date_number(),
        shard_index: high_idx,
        n_bits: 8,
        generation: 1,
        digest_alg: DigestAlgorithm::Blake3,
        written_at: at,
    };
    let mut w = ShardWriter::new(Vec::new(), ident).unwrap();
    let digest = DigestAlgorithm::Blake3.digest(&data);
    let e = NewEntry {
        uid: "200".into(),
        created_at: at,
        content_type: None,
        meta: None,
        codec: des_format::Codec::None,
        orig_len: data.len() as u64,
        digest,
    };
    w.add_external(e, data.len() as u64, crc32c::crc32c(&data))
        .unwrap();
    high.put(
        &high_key,
        w.finish().unwrap().0.into(),
        PutOptions::default(),
    )
    .await
    .unwrap();
    let big = des_format::v3::external_key(&digest);
    high.put(&big, data.into(), PutOptions::default())
        .await
        .unwrap();

    let r = verify_store(&s, &VerifyOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(r.shards, 2);
    assert_eq!(r.entries_checked, 2);
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    assert_eq!(r.findings[0].kind, FindingKind::Stray);
    assert_eq!(r.findings[0].key, low_key);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
}

#[tokio::test]
async fn unreadable_holds_leave_deleted_files_unjudged() {
    use des_storage::tombstones::{DeleteReason, Tombstone, TombstoneLog};
    let s = store().await;
    let at = ts("2024-05-17T10:00:00Z");
    let (key, idx) = key_of(&s, "12345", at);
    let files = [("12345", at, b"a".to_vec())];
    put(&s, &key, shard(at, idx, &files, Compression::None)).await;
    let t = Tombstone::new("12345", at, DeleteReason::Gdpr, "dpo");
    TombstoneLog::new(&s).append(&t).await.unwrap();
    let opts = VerifyOptions {
        max_delay: Duration::ZERO,
        ..VerifyOptions::default()
    };
    let r = verify_store(&s, &opts, |_| {}).await.unwrap();
    assert_eq!(r.overdue_deletions.len(), 1, "{r}");
    assert_eq!(r.overdue_deletions[0].uid, "12345");
    assert_eq!(r.exit_code(), 1);
    assert!(!r.clean);
    assert_eq!((r.corrupt_entries, r.corrupt_shards), (0, 0));

    // Without the holds a held file would look overdue: none is judged, and
    // the run is incomplete rather than wrong.
    put(&s, "_legal_holds/broken.json", b"{".to_vec()).await;
    let r = verify_store(&s, &opts, |_| {}).await.unwrap();
    assert!(r.overdue_deletions.is_empty(), "{r}");
    assert_eq!(r.max_delay_seconds, None);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(r.problems[0].message.contains("legal holds"), "{r}");
    assert_eq!(r.exit_code(), 2);
    // What does not need the holds is still reported.
    assert_eq!(r.tombstones_pending, 1);
    assert_eq!(r.shards_with_pending_tombstones.len(), 1);
}

#[tokio::test]
async fn the_oldest_tombstone_of_a_file_sets_its_deadline() {
    let s = store().await;
    let at = ts("2024-05-17T10:00:00Z");
    let day = at.date_number();
    let (key, idx) = key_of(&s, "12345", at);
    put(
        &s,
        &key,
        shard(at, idx, &[("12345", at, b"a".to_vec())], Compression::None),
    )
    .await;
    let now = Timestamp::now();
    let hours_ago = |h: i64| Timestamp::from_micros(now.micros() - h * 3_600_000_000);
    let mut d = Deleted::empty(now);
    // Logged anew an hour ago; first deleted (and applied) two days ago.
    d.add(&s, "12345".into(), day, hours_ago(1), false);
    d.add(&s, "12345".into(), day, hours_ago(48), true);
    d.add(&s, "12345".into(), day, hours_ago(2), false);
    let opts = VerifyOptions {
        deleted: Some(Arc::new(d)),
        ..VerifyOptions::default()
    };
    let r = verify_store(&s, &opts, |_| {}).await.unwrap();
    assert_eq!(r.overdue_deletions.len(), 1, "{r}");
    let kept = &r.overdue_deletions[0];
    assert_eq!(
        kept.tombstone_state,
        crate::tombstones_cli::TombstoneState::Applied
    );
    assert_eq!(kept.tombstone_age_seconds, Some(48 * 3600));
    assert_eq!(kept.date, "20240517");
    // Pending ones count for the shard; the applied one does not.
    assert_eq!(r.tombstones_pending, 2);

    let later = VerifyOptions {
        max_delay: Duration::from_secs(49 * 3600),
        ..opts
    };
    let r = verify_store(&s, &later, |_| {}).await.unwrap();
    assert!(r.clean, "{r}");
}
