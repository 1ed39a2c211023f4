//! The hot payload cache: decoded, verified bytes of small inline entries, so
//! a warm GET of a popular file costs no storage request, no CRC or digest
//! check and no decode.
//!
//! Entries are keyed by what a tombstone names, (uid, UTC day). A delete,
//! accepted here or picked up from the log, then drops its entry with one
//! `invalidate`: no scan of the cache, and no invalidation closures (moka
//! would check pending closures on every read and scan in the background).
//! Which shard version and entry the bytes came from is kept beside them and
//! must match the index entry the request was located with, so a replaced
//! shard or a newer legacy part is a miss whose bytes replace the old ones;
//! there is never more than one copy of a file's bytes in the cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use des_format::Timestamp;
use moka::future::Cache;

use crate::lookup::Hit;

/// What an entry costs beyond the bytes of its payload, uid, shard key and
/// ETag (all counted by [`weight`]): moka's entry and frequency bookkeeping,
/// the value's `Arc`, and the structs and string headers themselves.
const ENTRY_OVERHEAD: usize = 192;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    /// `YYYYMMDD` of `created_at` in UTC, as tombstones record it.
    date: u32,
}

/// Where cached bytes were read: shard object version and entry position.
#[derive(Debug)]
struct Version {
    shard: String,
    etag: Option<String>,
    range: std::ops::Range<u64>,
}

impl Version {
    fn of(hit: &Hit) -> Option<Self> {
        Some(Self {
            shard: hit.loaded.key.clone(),
            etag: hit.loaded.object.etag.clone(),
            range: hit.located.shard_range()?,
        })
    }

    fn matches(&self, hit: &Hit) -> bool {
        self.shard == hit.loaded.key
            && self.etag == hit.loaded.object.etag
            && hit.located.shard_range().as_ref() == Some(&self.range)
    }
}

#[derive(Debug)]
struct Cached {
    version: Version,
    bytes: Bytes,
}

/// Deletions seen before a payload read began; see [`HotCache::insert`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

#[derive(Debug, Clone)]
pub struct HotCache {
    entries: Cache<Key, Arc<Cached>>,
    max_entry: u64,
    /// Bumped by every invalidation, so an insert racing a delete notices.
    deletions: Arc<AtomicU64>,
}

fn weight(key: &Key, value: &Arc<Cached>) -> u32 {
    let v = &value.version;
    let bytes = value.bytes.len()
        + key.uid.len()
        + v.shard.len()
        + v.etag.as_ref().map_or(0, String::len)
        + ENTRY_OVERHEAD;
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

impl HotCache {
    /// `None` for a capacity of 0: no cache, and nothing on the request path.
    pub fn new(capacity: u64, max_entry: u64) -> Option<Self> {
        (capacity > 0).then(|| Self {
            entries: Cache::builder()
                .max_capacity(capacity)
                .weigher(weight)
                .build(),
            max_entry,
            deletions: Arc::default(),
        })
    }

    /// Whether `hit`'s payload belongs here: in the shard (big files are
    /// streamed from their own object) and small once decoded. Known from
    /// the index alone, so large files never cost a cache lookup.
    pub fn admits(&self, hit: &Hit) -> bool {
        hit.located.shard_range().is_some() && hit.located.orig_len <= self.max_entry
    }

    fn key(uid: &str, created_at: Timestamp) -> Key {
        Key {
            uid: uid.to_string(),
            date: created_at.date_number(),
        }
    }

    /// The bytes of `hit`, if cached from the very entry the index points at.
    pub async fn get(&self, created_at: Timestamp, hit: &Hit) -> Option<Bytes> {
        let cached = self
            .entries
            .get(&Self::key(&hit.located.uid, created_at))
            .await?;
        cached.version.matches(hit).then(|| cached.bytes.clone())
    }

    /// Take this before the request's tombstone check and pass it to
    /// [`insert`](Self::insert).
    pub fn ticket(&self) -> Ticket {
        Ticket(self.deletions.load(Ordering::SeqCst))
    }

    /// Caches `bytes`, which must have passed every check of `hit`'s entry.
    ///
    /// A delete may land between the request's tombstone check and this
    /// insert, and invalidate before the bytes are here. Deletes bump the
    /// counter after their tombstone is visible and before they invalidate,
    /// so either the counter has moved since `since` (and the insert is
    /// undone here) or the delete's invalidation comes after the insert.
    pub async fn insert(&self, created_at: Timestamp, hit: &Hit, bytes: &Bytes, since: Ticket) {
        let Some(version) = Version::of(hit) else {
            return;
        };
        if !self.admits(hit) {
            return;
        }
        let key = Self::key(&hit.located.uid, created_at);
        // The decoded bytes may be a view into a larger read buffer (raw
        // entries are a slice of what the network handed over); an exact
        // copy keeps what the weigher counts equal to what is held.
        let value = Arc::new(Cached {
            version,
            bytes: Bytes::copy_from_slice(bytes),
        });
        self.entries.insert(key.clone(), value).await;
        if self.deletions.load(Ordering::SeqCst) != since.0 {
            self.entries.invalidate(&key).await;
        }
    }

    /// Drops the bytes of `(uid, date)`, date as `YYYYMMDD`; call once its
    /// tombstone is visible to the request path.
    pub async fn invalidate(&self, uid: &str, date: u32) {
        self.deletions.fetch_add(1, Ordering::SeqCst);
        let key = Key {
            uid: uid.to_string(),
            date,
        };
        self.entries.invalidate(&key).await;
    }

    /// Whether anything is cached for `(uid, the UTC day of created_at)`.
    pub fn contains(&self, uid: &str, created_at: Timestamp) -> bool {
        self.entries.contains_key(&Self::key(uid, created_at))
    }

    /// Bytes held, as the weigher counts them.
    pub async fn weighted_size(&self) -> u64 {
        // moka updates the size in housekeeping it runs lazily; catch up first.
        self.entries.run_pending_tasks().await;
        self.entries.weighted_size()
    }

    pub async fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks().await;
        self.entries.entry_count()
    }
}
