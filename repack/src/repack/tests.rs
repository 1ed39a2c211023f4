#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use des_format::v3::{NewEntry, ShardIdent, ShardWriter};
use des_format::{Codec, Compression, Timestamp};
use des_storage::store::Placement;
use des_storage::tombstones::{DeleteReason, LOG_PREFIX, Tombstone, TombstoneLog};
use des_storage::{
    ByteRange, CreateOptions, DesStore, GetOptions, GetResult, ListPage, MemoryStore, ObjectMeta,
    ObjectStore, ObjectStoreExt, ObjectWriter, PutOptions, PutResult,
};

use super::*;

mod holds;

const N_BITS: u8 = 4;

struct File {
    uid: &'static str,
    at: &'static str,
    data: Vec<u8>,
    big: bool,
}

fn file(uid: &'static str, data: Vec<u8>) -> File {
    File {
        uid,
        at: "2024-05-17T10:00:00Z",
        data,
        big: false,
    }
}

fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn open(placement: Arc<dyn Placement>) -> DesStore {
    let opts = CreateOptions {
        n_bits: Some(N_BITS),
        digest: None,
    };
    DesStore::open_or_create_placed(placement, opts)
        .await
        .unwrap()
        .0
}

async fn single(objects: Arc<dyn ObjectStore>) -> DesStore {
    open(Arc::new(des_storage::store::Single(objects))).await
}

/// Writes each file's shard (generation 1, codec none).
async fn write(store: &DesStore, files: &[File]) {
    let mut groups: BTreeMap<String, Vec<&File>> = BTreeMap::new();
    for f in files {
        let loc = store.locate(f.uid, ts(f.at)).unwrap();
        groups.entry(DesStore::shard_key(&loc)).or_default().push(f);
    }
    for (key, members) in groups {
        let first = members[0];
        let loc = store.locate(first.uid, ts(first.at)).unwrap();
        let objects = store.objects_for_shard(loc.shard_index).unwrap();
        let ident = ShardIdent {
            date: ts(first.at).date_number(),
            shard_index: u16::try_from(loc.shard_index).unwrap(),
            n_bits: N_BITS,
            generation: 1,
            digest_alg: store.digest(),
            written_at: Timestamp::now(),
        };
        let mut w = ShardWriter::new(Vec::new(), ident).unwrap();
        for f in members {
            let digest = store.digest().digest(&f.data);
            let e = NewEntry {
                uid: f.uid.into(),
                created_at: ts(f.at),
                content_type: None,
                meta: None,
                codec: Codec::None,
                orig_len: f.data.len() as u64,
                digest,
            };
            if f.big {
                let big = des_format::v3::external_key(&digest);
                objects
                    .put(&big, Bytes::from(f.data.clone()), PutOptions::default())
                    .await
                    .unwrap();
                w.add_external(e, f.data.len() as u64, crc32c::crc32c(&f.data))
                    .unwrap();
            } else {
                w.add_inline(e, &f.data).unwrap();
            }
        }
        let (bytes, _) = w.finish().unwrap();
        objects
            .put(&key, Bytes::from(bytes), PutOptions::default())
            .await
            .unwrap();
    }
}

fn ts(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

async fn delete(store: &DesStore, f: &File) {
    let t = Tombstone::new(f.uid, ts(f.at), DeleteReason::Gdpr, "test");
    TombstoneLog::new(store).append(&t).await.unwrap();
}

fn opts() -> RepackOptions {
    RepackOptions {
        min_garbage_ratio: 0.0,
        big_file_grace: Duration::ZERO,
        lease: LeaseConfig {
            settle: Duration::ZERO,
            ..LeaseConfig::default()
        },
        ..RepackOptions::default()
    }
}

async fn raw_has(objects: &dyn ObjectStore, needle: &[u8]) -> bool {
    for m in objects.list_all("").await.unwrap() {
        let body = objects.get_range(&m.key, ByteRange::All).await.unwrap().1;
        if body.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
    }
    false
}

async fn read(store: &DesStore, f: &File) -> Option<Vec<u8>> {
    store.get_file(f.uid, ts(f.at)).await.ok().map(|(_, d)| d)
}

/// Two zones split by shard index.
#[derive(Debug)]
struct Split {
    low: Arc<dyn ObjectStore>,
    high: Arc<dyn ObjectStore>,
}

impl Placement for Split {
    fn for_shard(&self, i: u32) -> des_storage::Result<Arc<dyn ObjectStore>> {
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
async fn each_zone_is_repacked_in_place() {
    let (low, high) = (MemoryStore::new(), MemoryStore::new());
    let store = open(Arc::new(Split {
        low: Arc::new(low.clone()),
        high: Arc::new(high.clone()),
    }))
    .await;
    // Numeric uids route by value: 3 and 5 are low, 12 and 14 high.
    let files = vec![
        file("3", noise(3, 5000)),
        file("5", noise(5, 5000)),
        file("12", noise(12, 5000)),
        file("14", noise(14, 5000)),
    ];
    write(&store, &files).await;
    delete(&store, &files[0]).await;
    delete(&store, &files[2]).await;
    assert_eq!(low.list_all(LOG_PREFIX).await.unwrap().len(), 1);

    let r = repack(&store, &opts(), |_| {}).await.unwrap();
    assert_eq!(r.shards_rewritten, 2, "{r:#?}");
    assert_eq!(r.tombstones_pending, 0);
    assert!(!raw_has(&low, &files[0].data[100..300]).await);
    assert!(!raw_has(&high, &files[2].data[100..300]).await);
    assert_eq!(read(&store, &files[1]).await.unwrap(), files[1].data);
    assert_eq!(read(&store, &files[3]).await.unwrap(), files[3].data);
    for z in [&low, &high] {
        assert!(
            z.head(crate::lease::LEASE_KEY).await.is_err(),
            "lease released"
        );
        // Applied and compacted: each zone's segment holds its own.
        let segments = z
            .list_all(des_storage::tombstones::SEGMENT_PREFIX)
            .await
            .unwrap();
        assert_eq!(segments.len(), 1, "each zone records its own");
        assert!(
            z.list_all(des_storage::tombstones::APPLIED_PREFIX)
                .await
                .unwrap()
                .is_empty()
        );
    }
}

/// Publishes another generation of `key` (one more file) the first time a
/// writer for it is opened: a packer racing the repacker.
#[derive(Debug)]
struct RacingPacker {
    inner: MemoryStore,
    key: String,
    extra: Vec<u8>,
    fired: AtomicBool,
}

#[async_trait]
impl ObjectStore for RacingPacker {
    fn describe(&self) -> String {
        "racing".into()
    }
    async fn get(&self, key: &str, opts: GetOptions) -> des_storage::Result<GetResult> {
        self.inner.get(key, opts).await
    }
    async fn head(&self, key: &str) -> des_storage::Result<ObjectMeta> {
        self.inner.head(key).await
    }
    async fn put(
        &self,
        key: &str,
        data: Bytes,
        opts: PutOptions,
    ) -> des_storage::Result<PutResult> {
        self.inner.put(key, data, opts).await
    }
    async fn put_writer(
        &self,
        key: &str,
        opts: PutOptions,
    ) -> des_storage::Result<Box<dyn ObjectWriter>> {
        if key == self.key && !self.fired.swap(true, Ordering::SeqCst) {
            // The old entries plus one new file, as a packer would publish.
            publish_with_extra(&self.inner, key, "33", &self.extra).await;
        }
        self.inner.put_writer(key, opts).await
    }
    async fn delete(&self, key: &str) -> des_storage::Result<()> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str, after: Option<&str>) -> des_storage::Result<ListPage> {
        self.inner.list(prefix, after).await
    }
}

#[tokio::test]
async fn a_shard_replaced_mid_rewrite_is_rebuilt_not_overwritten() {
    let mem = MemoryStore::new();
    // Numeric uids route by value: 1, 17 and 33 share shard 1.
    let files = vec![file("1", noise(1, 4000)), file("17", noise(2, 4000))];
    let plain = single(Arc::new(mem.clone())).await;
    write(&plain, &files).await;
    let key = DesStore::shard_key(&plain.locate("1", ts(files[0].at)).unwrap());
    delete(&plain, &files[0]).await;
    let racing = Arc::new(RacingPacker {
        inner: mem.clone(),
        key: key.clone(),
        extra: noise(9, 3000),
        fired: AtomicBool::new(false),
    });
    let store = single(racing).await;
    let r = repack(&store, &opts(), |_| {}).await.unwrap();
    assert_eq!(r.shards_rewritten, 1, "{r:#?}");
    assert_eq!(
        r.shards[0].generation_after,
        Some(3),
        "rebuilt on the packer's generation"
    );
    let loaded = plain.load_index(&key).await.unwrap().unwrap();
    assert!(loaded.find("33").is_some(), "the packer's file survived");
    assert!(loaded.find("1").is_none(), "the deleted file is gone");
    assert_eq!(read(&plain, &files[1]).await.unwrap(), files[1].data);
}

#[tokio::test]
async fn a_big_file_shared_by_another_shard_is_kept_until_unreferenced() {
    let mem = MemoryStore::new();
    let store = single(Arc::new(mem.clone())).await;
    let shared = noise(7, 50_000);
    let mut x = file("x", shared.clone());
    x.big = true;
    let mut y = file("y", shared.clone());
    y.big = true;
    y.at = "2024-05-18T10:00:00Z";
    write(&store, &[x, y]).await;
    let (x, y) = (
        File {
            data: shared.clone(),
            big: true,
            ..file("x", Vec::new())
        },
        File {
            data: shared.clone(),
            big: true,
            at: "2024-05-18T10:00:00Z",
            ..file("y", Vec::new())
        },
    );
    let big_key = des_format::v3::external_key(&store.digest().digest(&shared));

    // Within the grace period nothing is collected.
    delete(&store, &x).await;
    let mut o = opts();
    o.big_file_grace = Duration::from_secs(3600);
    let r = repack(&store, &o, |_| {}).await.unwrap();
    assert_eq!(r.big_files.waiting, 1, "{r:#?}");
    assert!(mem.head(&big_key).await.is_ok());

    // Past it, still referenced by y's shard: kept.
    let r = repack(&store, &opts(), |_| {}).await.unwrap();
    assert_eq!(r.big_files.still_referenced, 1, "{r:#?}");
    assert!(r.big_files.deleted.is_empty());
    assert_eq!(read(&store, &y).await.unwrap(), shared);

    delete(&store, &y).await;
    let r = repack(&store, &opts(), |_| {}).await.unwrap();
    assert_eq!(r.big_files.deleted, vec![big_key.clone()], "{r:#?}");
    assert_eq!(r.big_files.bytes_deleted, shared.len() as u64);
    assert!(mem.head(&big_key).await.is_err());
    assert!(!raw_has(&mem, &shared[1000..1200]).await);
}

#[tokio::test]
async fn recompress_reencodes_live_entries() {
    let mem = MemoryStore::new();
    let store = single(Arc::new(mem.clone())).await;
    let text = |n: u8| format!("compressible line {n}\n").repeat(500).into_bytes();
    let files = vec![file("a", text(1)), file("b", text(2))];
    write(&store, &files).await;
    let key = DesStore::shard_key(&store.locate("a", ts(files[0].at)).unwrap());
    let before = mem.head(&key).await.unwrap().size;
    let mut o = opts();
    o.force_shards = vec![key.clone()];
    o.recompress = Some(Compression::Zstd { level: 3 });
    let r = repack(&store, &o, |_| {}).await.unwrap();
    assert_eq!(r.shards_rewritten, 1, "{r:#?}");
    let after = mem.head(&key).await.unwrap().size;
    assert!(after * 5 < before, "{before} -> {after}");
    for f in &files {
        assert_eq!(read(&store, f).await.unwrap(), f.data);
    }
    let loaded = store.load_index(&key).await.unwrap().unwrap();
    assert!(
        loaded
            .index
            .located()
            .iter()
            .all(|l| l.codec == Codec::Zstd)
    );
}

#[tokio::test]
async fn a_tombstone_for_a_file_never_stored_is_just_marked() {
    let mem = MemoryStore::new();
    let store = single(Arc::new(mem.clone())).await;
    let files = vec![file("a", noise(1, 1000))];
    write(&store, &files).await;
    delete(&store, &file("nowhere", Vec::new())).await;
    let r = repack(&store, &opts(), |_| {}).await.unwrap();
    assert_eq!(r.shards_rewritten, 0);
    assert_eq!(r.tombstones_marked, 1);
    assert_eq!(r.tombstones_pending, 0);
    assert_eq!(r.shards[0].action, Action::NothingToRemove);
}

/// Puts the shard's previous bytes back right after the repacker's publish
/// completes, as a writer that ignores conditions (Garage's last writer
/// wins) would.
#[derive(Debug)]
struct Restorer {
    inner: MemoryStore,
    key: String,
}

struct RestoringWriter {
    inner: Box<dyn ObjectWriter>,
    store: MemoryStore,
    key: String,
    old: Bytes,
}

#[async_trait]
impl ObjectWriter for RestoringWriter {
    async fn write(&mut self, chunk: Bytes) -> des_storage::Result<()> {
        self.inner.write(chunk).await
    }
    async fn finish(self: Box<Self>) -> des_storage::Result<PutResult> {
        let put = self.inner.finish().await?;
        self.store
            .put(&self.key, self.old, PutOptions::default())
            .await?;
        Ok(put)
    }
    async fn abort(self: Box<Self>) -> des_storage::Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for Restorer {
    fn describe(&self) -> String {
        "restorer".into()
    }
    fn capabilities(&self) -> des_storage::Capabilities {
        // A store that enforced conditions would have refused the old bytes.
        des_storage::Capabilities {
            conditional_put: false,
        }
    }
    async fn get(&self, key: &str, opts: GetOptions) -> des_storage::Result<GetResult> {
        self.inner.get(key, opts).await
    }
    async fn head(&self, key: &str) -> des_storage::Result<ObjectMeta> {
        self.inner.head(key).await
    }
    async fn put(
        &self,
        key: &str,
        data: Bytes,
        opts: PutOptions,
    ) -> des_storage::Result<PutResult> {
        self.inner.put(key, data, opts).await
    }
    async fn put_writer(
        &self,
        key: &str,
        opts: PutOptions,
    ) -> des_storage::Result<Box<dyn ObjectWriter>> {
        let inner = self.inner.put_writer(key, opts).await?;
        if key != self.key {
            return Ok(inner);
        }
        let (_, old) = self.inner.get_range(key, ByteRange::All).await?;
        Ok(Box::new(RestoringWriter {
            inner,
            store: self.inner.clone(),
            key: key.to_string(),
            old,
        }))
    }
    async fn delete(&self, key: &str) -> des_storage::Result<()> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str, after: Option<&str>) -> des_storage::Result<ListPage> {
        self.inner.list(prefix, after).await
    }
}

/// On a store that ignores conditions, publishing re-reads the shard
/// (des-storage's `ShardPublish`): a writer that puts an older generation
/// back makes every attempt a conflict, the shard fails and no tombstone is
/// marked applied.
#[tokio::test]
async fn an_old_generation_restored_after_publishing_fails_the_shard() {
    let mem = MemoryStore::new();
    let files = vec![file("1", noise(1, 4000)), file("17", noise(2, 4000))];
    let plain = single(Arc::new(mem.clone())).await;
    write(&plain, &files).await;
    let key = DesStore::shard_key(&plain.locate("1", ts(files[0].at)).unwrap());
    delete(&plain, &files[0]).await;
    let store = single(Arc::new(Restorer {
        inner: mem.clone(),
        key: key.clone(),
    }))
    .await;
    let r = repack(&store, &opts(), |_| {}).await.unwrap();
    assert_eq!(r.shards_failed, 1, "{r:#?}");
    let err = r.shards[0].error.clone().unwrap_or_default();
    assert!(err.contains("kept changing"), "{err}");
    assert!(
        mem.list_all(des_storage::tombstones::APPLIED_PREFIX)
            .await
            .unwrap()
            .is_empty(),
        "a tombstone was marked applied"
    );
    assert_eq!(r.tombstones_pending, 1, "{r:#?}");
}

/// A big file whose packer uploaded it and then died before publishing is
/// referenced by nothing: once the packer's ref expires, clean-up collects
/// it. A big file whose shard was published keeps its object when the
/// packer's ref expires.
#[tokio::test]
async fn an_orphan_big_file_is_collected_once_its_ref_expires() {
    use des_storage::protocol::BigRef;
    let mem = MemoryStore::new();
    let store = single(Arc::new(mem.clone())).await;
    let mut kept = file("k", noise(3, 50_000));
    kept.big = true;
    write(&store, std::slice::from_ref(&kept)).await;
    let kept_key = des_format::v3::external_key(&store.digest().digest(&kept.data));
    let orphan = noise(4, 50_000);
    let orphan_key = des_format::v3::external_key(&store.digest().digest(&orphan));
    mem.put(&orphan_key, Bytes::from(orphan), PutOptions::default())
        .await
        .unwrap();
    for (key, uid) in [(&kept_key, "k"), (&orphan_key, "o")] {
        let hex = key.strip_prefix("_big/").unwrap();
        // Expired at once: the packer is long gone.
        BigRef::take(&mem, hex, "dead-packer", (uid, 20240517), Duration::ZERO)
            .await
            .unwrap();
    }
    let r = repack(&store, &opts(), |_| {}).await.unwrap();
    assert_eq!(r.big_files.refs_expired, 2, "{r:#?}");
    assert_eq!(r.big_files.deleted, vec![orphan_key.clone()], "{r:#?}");
    assert!(mem.head(&orphan_key).await.is_err());
    assert_eq!(read(&store, &kept).await.unwrap(), kept.data);
}

/// A shard of `n` small files with numeric uids `≡ shard (mod 16)`, which
/// route to `shard` at n_bits 4, written with `layout`.
async fn numeric_shard(store: &DesStore, shard: u16, n: u64, layout: des_format::v3::IndexLayout) {
    let at = ts("2024-05-17T10:00:00Z");
    let ident = ShardIdent {
        date: at.date_number(),
        shard_index: shard,
        n_bits: N_BITS,
        generation: 1,
        digest_alg: store.digest(),
        written_at: at,
    };
    let mut w = ShardWriter::with_layout(Vec::new(), ident, layout).unwrap();
    for i in 0..n {
        let data = noise(i + 1, 40);
        let e = NewEntry {
            uid: ((1000 + i) * 16 + u64::from(shard)).to_string(),
            created_at: at,
            content_type: None,
            meta: None,
            codec: Codec::None,
            orig_len: data.len() as u64,
            digest: store.digest().digest(&data),
        };
        w.add_inline(e, &data).unwrap();
    }
    let loc = store
        .locate(&(16 + u64::from(shard)).to_string(), at)
        .unwrap();
    let objects = store.objects_for_shard(loc.shard_index).unwrap();
    let bytes = Bytes::from(w.finish().unwrap().0);
    let key = DesStore::shard_key(&loc);
    objects
        .put(&key, bytes, PutOptions::default())
        .await
        .unwrap();
}

async fn layout_of(store: &DesStore, key: &str) -> des_format::v3::IndexLayout {
    match store.shard_tail(key).await.unwrap().unwrap() {
        des_format::shard::Tail::V3(t) => t.layout,
        des_format::shard::Tail::Legacy { .. } => panic!("legacy"),
    }
}

#[tokio::test]
async fn reindex_rewrites_large_flat_shards_only() {
    use des_format::v3::IndexLayout::{Flat, Paged};
    let mem = MemoryStore::new();
    let store = single(Arc::new(mem.clone())).await;
    // 2,000 entries: an index of ~170 KB, more than the 48 KiB suffix read.
    numeric_shard(&store, 0, 2_000, Flat).await;
    numeric_shard(&store, 1, 10, Flat).await;
    numeric_shard(&store, 2, 2_000, Paged).await;
    let keys: Vec<String> = (0..3)
        .map(|s| format!("20240517/{}.des", des_format::routing::shard_hex(s, N_BITS)))
        .collect();
    let before = store.load_index(&keys[0]).await.unwrap().unwrap();

    let mut o = opts();
    o.reindex = true;
    o.dry_run = true;
    let r = repack(&store, &o, |_| {}).await.unwrap();
    assert_eq!(r.shards.len(), 1, "{r:#?}");
    assert_eq!(
        layout_of(&store, &keys[0]).await,
        Flat,
        "a dry run changes nothing"
    );

    o.dry_run = false;
    let r = repack(&store, &o, |_| {}).await.unwrap();
    assert_eq!(r.shards_rewritten, 1, "{r:#?}");
    assert_eq!(
        (r.shards[0].key.as_str(), r.shards[0].reason.as_str()),
        (keys[0].as_str(), "reindex")
    );
    assert_eq!(layout_of(&store, &keys[0]).await, Paged);
    assert_eq!(
        layout_of(&store, &keys[1]).await,
        Flat,
        "small: its index comes with the suffix"
    );
    let after = store.load_index(&keys[0]).await.unwrap().unwrap();
    assert_eq!(after.index.trailer().unwrap().generation, 2);
    let strip = |ix: &des_storage::LoadedIndex| -> Vec<_> {
        ix.index
            .located()
            .into_iter()
            .map(|l| (l.uid, l.check, l.orig_len))
            .collect()
    };
    assert_eq!(strip(&after), strip(&before));
    for i in [0u64, 999, 1_999] {
        let uid = ((1000 + i) * 16).to_string();
        let (_, data) = store
            .get_file(&uid, ts("2024-05-17T10:00:00Z"))
            .await
            .unwrap();
        assert_eq!(data, noise(i + 1, 40));
    }
    // Nothing left to convert.
    let r = repack(&store, &o, |_| {}).await.unwrap();
    assert_eq!(r.shards_rewritten, 0, "{r:#?}");
}

// ---- retention rules ---------------------------------------------------------

/// Numeric uids starting with `prefix` that route to `shard` (n_bits 4).
fn mates(shard: u64, prefix: &str, n: usize) -> Vec<String> {
    (0..100_000u64)
        .map(|i| format!("{prefix}{i:04}"))
        .filter(|u| u.parse::<u64>().is_ok_and(|v| v % 16 == shard))
        .take(n)
        .collect()
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Counts deletes and shard writes per key, and (once armed) publishes a
/// packer's generation of `race_key` with one more file right before the
/// second read of it: between the repacker's assessment and its re-check.
#[derive(Debug)]
struct Counting {
    inner: MemoryStore,
    deletes: std::sync::Mutex<Vec<String>>,
    writers: std::sync::Mutex<Vec<String>>,
    shard_gets: std::sync::atomic::AtomicU64,
    /// Prefixes listed.
    lists: std::sync::Mutex<Vec<String>>,
    race_key: Option<String>,
    raced: AtomicBool,
}

impl Counting {
    fn new(inner: MemoryStore, race_key: Option<String>) -> Self {
        Self {
            inner,
            deletes: Default::default(),
            writers: Default::default(),
            shard_gets: Default::default(),
            lists: Default::default(),
            race_key,
            raced: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl ObjectStore for Counting {
    des_storage::forward_methods!(inner => describe, capabilities, head, put);

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> des_storage::Result<des_storage::ListPage> {
        self.lists.lock().unwrap().push(prefix.to_string());
        self.inner.list(prefix, start_after).await
    }

    async fn get(&self, key: &str, opts: GetOptions) -> des_storage::Result<GetResult> {
        if key.ends_with(".des") && !key.starts_with('_') {
            let n = self.shard_gets.fetch_add(1, Ordering::SeqCst);
            if self.race_key.as_deref() == Some(key)
                && n == 1
                && !self.raced.swap(true, Ordering::SeqCst)
            {
                // uid 20001 routes to shard 1.
                publish_with_extra(&self.inner, key, "20001", &noise(99, 2000)).await;
            }
        }
        self.inner.get(key, opts).await
    }
    async fn put_writer(
        &self,
        key: &str,
        opts: PutOptions,
    ) -> des_storage::Result<Box<dyn ObjectWriter>> {
        self.writers.lock().unwrap().push(key.to_string());
        self.inner.put_writer(key, opts).await
    }
    async fn delete(&self, key: &str) -> des_storage::Result<()> {
        self.deletes.lock().unwrap().push(key.to_string());
        self.inner.delete(key).await
    }
}

/// A packer's next generation of `key`: its files plus `uid` holding `extra`.
async fn publish_with_extra(mem: &MemoryStore, key: &str, uid: &str, extra: &[u8]) {
    let store = single(Arc::new(mem.clone())).await;
    let loaded = store.load_index(key).await.unwrap().unwrap();
    let des_format::AnyIndex::V3(ix) = &loaded.index else {
        panic!()
    };
    let t = *ix.trailer();
    let mut w = ShardWriter::new(
        Vec::new(),
        ShardIdent {
            date: t.date,
            shard_index: t.shard_index,
            n_bits: t.n_bits,
            generation: t.generation + 1,
            digest_alg: t.digest_alg,
            written_at: Timestamp::now(),
        },
    )
    .unwrap();
    for l in loaded.index.located() {
        let data = store.read_file(&loaded, &l).await.unwrap();
        let e = NewEntry {
            uid: l.uid.clone(),
            created_at: l.created_at.unwrap(),
            content_type: None,
            meta: None,
            codec: Codec::None,
            orig_len: data.len() as u64,
            digest: store.digest().digest(&data),
        };
        w.add_inline(e, &data).unwrap();
    }
    let e = NewEntry {
        uid: uid.into(),
        created_at: ts("2024-05-17T12:00:00Z"),
        content_type: None,
        meta: None,
        codec: Codec::None,
        orig_len: extra.len() as u64,
        digest: store.digest().digest(extra),
    };
    w.add_inline(e, extra).unwrap();
    let (bytes, _) = w.finish().unwrap();
    mem.put(key, Bytes::from(bytes), PutOptions::default())
        .await
        .unwrap();
}

/// Stores the retention rules `toml`.
async fn set_rules_toml(store: &DesStore, toml: &str) {
    let rules = des_storage::retention::RetentionRules::from_toml(toml).unwrap();
    des_storage::retention::set(store, &rules, "test")
        .await
        .unwrap();
}

/// "1…" uids live 30 days, "13…" are exempt, others have no rule.
async fn set_rules(store: &DesStore) {
    set_rules_toml(
        store,
        "[[rule]]\nuid_prefix = \"1\"\nmax_age_days = 30\n\
         [[rule]]\nuid_prefix = \"13\"\n",
    )
    .await;
}

fn shard_key(store: &DesStore, uid: &str) -> String {
    DesStore::shard_key(&store.locate(uid, ts("2024-05-17T10:00:00Z")).unwrap())
}

#[tokio::test]
async fn expired_files_go_held_and_exempt_ones_stay() {
    let mem = MemoryStore::new();
    let counting = Arc::new(Counting::new(mem.clone(), None));
    let store = single(counting.clone()).await;
    // Shard 9: half expired (1…), one held, one exempt (13…), one without a rule (2…).
    let expired = mates(9, "1", 3);
    let held = mates(9, "17", 1);
    let exempt = mates(9, "13", 1);
    let norule = mates(9, "2", 1);
    // Shard 3: every file expired. Shard 5: every file expired but one held.
    let all_gone = mates(3, "1", 2);
    let mostly = mates(5, "1", 2);
    let keep5 = mates(5, "17", 1);
    let mut files = Vec::new();
    for (i, uid) in [
        &expired, &held, &exempt, &norule, &all_gone, &mostly, &keep5,
    ]
    .into_iter()
    .flatten()
    .enumerate()
    {
        files.push(file(leak(uid.clone()), noise(2 * i as u64 + 1, 3000)));
    }
    write(&store, &files).await;
    set_rules(&store).await;
    crate::holds::place(&store, &crate::holds::Hold::new("case", "17", "legal"))
        .await
        .unwrap();
    let f = |uid: &str| files.iter().find(|f| f.uid == uid).unwrap();

    let mut dry = opts();
    dry.dry_run = true;
    let r = repack(&store, &dry, |_| {}).await.unwrap();
    let deleted_key = shard_key(&store, &all_gone[0]);
    let plan: Vec<_> = r
        .shards
        .iter()
        .map(|s| (s.key.as_str(), s.action))
        .collect();
    assert!(
        plan.contains(&(deleted_key.as_str(), Action::WouldDelete)),
        "{r:#?}"
    );
    assert!(
        counting.deletes.lock().unwrap().is_empty(),
        "a dry run deletes nothing"
    );

    let r = repack(&store, &opts(), |_| {}).await.unwrap();
    assert_eq!(r.shards_failed, 0, "{r:#?}");
    assert_eq!(r.retention_rules_version, Some(1));
    assert_eq!(r.shards_deleted, 1, "{r:#?}");
    assert_eq!(r.shards_rewritten, 2, "{r:#?}");
    assert_eq!(r.entries_expired, 3 + 2 + 2, "{r:#?}");
    assert_eq!(r.entries_dropped, r.entries_expired, "no tombstones here");
    let deleted = r.shards.iter().find(|s| s.key == deleted_key).unwrap();
    assert_eq!(
        (deleted.action, deleted.reason.as_str()),
        (Action::Deleted, "retention_expired")
    );
    // The whole shard went with one request and was never rewritten.
    let deletes = counting.deletes.lock().unwrap().clone();
    assert_eq!(
        deletes.iter().filter(|k| **k == deleted_key).count(),
        1,
        "{deletes:?}"
    );
    assert!(!counting.writers.lock().unwrap().contains(&deleted_key));
    assert!(mem.head(&deleted_key).await.is_err());
    for uid in expired.iter().chain(&all_gone).chain(&mostly) {
        assert!(read(&store, f(uid)).await.is_none(), "{uid} expired");
        assert!(
            !raw_has(&mem, &f(uid).data[100..300]).await,
            "{uid} bytes remain"
        );
    }
    for uid in held.iter().chain(&exempt).chain(&norule).chain(&keep5) {
        assert_eq!(
            read(&store, f(uid)).await.unwrap(),
            f(uid).data,
            "{uid} kept"
        );
    }

    // Nothing new: the next run loads no shard.
    let before = counting.shard_gets.load(Ordering::SeqCst);
    let r = repack(&store, &opts(), |_| {}).await.unwrap();
    assert_eq!(r.shards_considered, 0, "{r:#?}");
    assert_eq!(counting.shard_gets.load(Ordering::SeqCst), before);

    // Releasing the hold frees its files for the next run.
    assert!(crate::holds::release(&store, "case").await.unwrap());
    let r = repack(&store, &opts(), |_| {}).await.unwrap();
    assert_eq!(r.entries_expired, 2, "{r:#?}");
    for uid in held.iter().chain(&keep5) {
        assert!(
            read(&store, f(uid)).await.is_none(),
            "{uid} expired once released"
        );
    }
    let keep5_key = shard_key(&store, &keep5[0]);
    assert!(mem.head(&keep5_key).await.is_err(), "nothing left: deleted");
    for uid in exempt.iter().chain(&norule) {
        assert_eq!(
            read(&store, f(uid)).await.unwrap(),
            f(uid).data,
            "{uid} kept"
        );
    }
}

#[tokio::test]
async fn a_shard_packed_into_an_expired_date_is_picked_up() {
    let mem = MemoryStore::new();
    let store = single(Arc::new(mem.clone())).await;
    let a = mates(4, "1", 1);
    let b = mates(6, "2", 1);
    let files = vec![
        file(leak(a[0].clone()), noise(1, 2000)),
        file(leak(b[0].clone()), noise(3, 2000)),
    ];
    write(&store, &files).await;
    set_rules(&store).await;
    let r = repack(&store, &opts(), |_| {}).await.unwrap();
    assert_eq!((r.shards_deleted, r.shards_considered), (1, 2), "{r:#?}");
    let r = repack(&store, &opts(), |_| {}).await.unwrap();
    assert_eq!(r.shards_considered, 0, "{r:#?}");
    // A late packer (a backfill) writes an expired file into an old date.
    let late = mates(8, "1", 1);
    write(&store, &[file(leak(late[0].clone()), noise(5, 2000))]).await;
    let r = repack(&store, &opts(), |_| {}).await.unwrap();
    assert_eq!(r.shards_considered, 1, "{r:#?}");
    assert_eq!(r.shards[0].action, Action::Deleted, "{r:#?}");
    // New rules: every shard of an expired date is looked at again.
    set_rules_toml(
        &store,
        "[[rule]]\nuid_prefix = \"2\"\nmax_age_days = 36500\n",
    )
    .await;
    let r = repack(&store, &opts(), |_| {}).await.unwrap();
    assert_eq!(r.shards_considered, 0, "no date is 100 years old: {r:#?}");
    set_rules_toml(&store, "[[rule]]\nuid_prefix = \"2\"\nmax_age_days = 1\n").await;
    let r = repack(&store, &opts(), |_| {}).await.unwrap();
    assert_eq!(r.retention_rules_version, Some(3));
    assert_eq!((r.shards_deleted, r.entries_expired), (1, 1), "{r:#?}");
    assert!(read(&store, &files[1]).await.is_none());
}

#[tokio::test]
async fn a_shard_changed_before_its_delete_is_assessed_again() {
    let mem = MemoryStore::new();
    let plain = single(Arc::new(mem.clone())).await;
    let gone = mates(1, "1", 2);
    let files: Vec<File> = gone
        .iter()
        .enumerate()
        .map(|(i, u)| file(leak(u.clone()), noise(2 * i as u64 + 1, 2000)))
        .collect();
    write(&plain, &files).await;
    set_rules(&plain).await;
    let key = shard_key(&plain, &gone[0]);
    assert_eq!(
        shard_key(&plain, "20001"),
        key,
        "the packer's file joins the shard"
    );
    let counting = Arc::new(Counting::new(mem.clone(), Some(key.clone())));
    let store = single(counting.clone()).await;
    let r = repack(&store, &opts(), |_| {}).await.unwrap();
    assert!(counting.raced.load(Ordering::SeqCst), "the race fired");
    assert_eq!(r.shards_failed, 0, "{r:#?}");
    assert_eq!(r.shards[0].action, Action::Rewritten, "{r:#?}");
    assert!(counting.deletes.lock().unwrap().iter().all(|k| *k != key));
    let loaded = plain.load_index(&key).await.unwrap().unwrap();
    assert!(loaded.find("20001").is_some(), "the packer's file survived");
    for f in &files {
        assert!(loaded.find(f.uid).is_none(), "{} expired", f.uid);
    }
}

/// Deletions applied on a date the rules have since expired entirely are
/// not re-checked by listing that date's directory on every run: the
/// listings a run makes do not grow with the days deletions were made on.
#[tokio::test]
async fn expired_dates_are_not_listed_for_recheck() {
    let mem = MemoryStore::new();
    let counting = Arc::new(Counting::new(mem.clone(), None));
    let store = single(counting.clone()).await;
    let uids = mates(9, "1", 3);
    let files: Vec<File> = uids
        .iter()
        .enumerate()
        .map(|(i, u)| file(leak(u.clone()), noise(i as u64 + 1, 2000)))
        .collect();
    write(&store, &files).await;
    delete(&store, &files[0]).await;
    repack(&store, &opts(), |_| {}).await.unwrap();
    let dir = "20240517/";
    let listed_dir = || counting.lists.lock().unwrap().iter().any(|p| p == dir);
    // Without rules the date is re-checked (its shard could change).
    counting.lists.lock().unwrap().clear();
    repack(&store, &opts(), |_| {}).await.unwrap();
    assert!(listed_dir(), "{:?}", counting.lists.lock().unwrap());
    // Every uid expires after 30 days: 2024-05-17 is long gone.
    set_rules_toml(&store, "[[rule]]\nuid_prefix = \"\"\nmax_age_days = 30\n").await;
    repack(&store, &opts(), |_| {}).await.unwrap();
    counting.lists.lock().unwrap().clear();
    repack(&store, &opts(), |_| {}).await.unwrap();
    assert!(!listed_dir(), "{:?}", counting.lists.lock().unwrap());
}
