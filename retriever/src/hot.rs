//! The hot payload cache: decoded, verified bytes of small inline entries, so
//! a warm GET of a popular file costs no storage request, no CRC or digest
//! check and no decode.
//!
//! In a v3 store the bytes of (uid, day) never change: the packer refuses
//! different content for a stored uid, and a new shard generation copies
//! entries unchanged; only a tombstone removes a file, and tombstones are
//! checked before this cache. So there a hit is served before the index
//! lookup ([`HotCache::get_file`]). Legacy stores can gain a newer part
//! holding a newer version of a uid, so there a hit must also come from the
//! entry the index lookup found ([`HotCache::join`]).
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
use quick_cache::sync::Cache;
use quick_cache::{Equivalent, Weighter};

use crate::lookup::Hit;
use crate::representation::Representation;

/// What an entry costs beyond the bytes of its payload, uid, shard key and
/// ETag (all counted by [`weight`]): the cache's entry and frequency bookkeeping,
/// the value's `Arc`, and the structs and string headers themselves.
const ENTRY_OVERHEAD: usize = 192;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    /// `YYYYMMDD` of `created_at` in UTC, as tombstones record it.
    date: u32,
}

/// [`Key`] borrowed, so a lookup allocates nothing. Its derived `Hash`
/// matches `Key`'s (`&str` hashes as `String` does).
#[derive(Hash)]
struct KeyRef<'a> {
    uid: &'a str,
    date: u32,
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.date == key.date && self.uid == key.uid
    }
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
    /// The response headers, built once: a hit needs no index entry.
    rep: Arc<Representation>,
}

/// A file served from memory.
#[derive(Debug, Clone)]
pub struct HotHit {
    pub rep: Arc<Representation>,
    pub bytes: Bytes,
}

impl From<&Cached> for HotHit {
    fn from(c: &Cached) -> Self {
        Self {
            rep: Arc::clone(&c.rep),
            bytes: c.bytes.clone(),
        }
    }
}

/// Deletions seen before a payload read began; see [`Slot::fill`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

/// What [`HotCache::join`] found.
pub enum Joined<'a> {
    Cached(HotHit),
    Slot(Slot<'a>),
}

type Guard<'a> = quick_cache::sync::PlaceholderGuard<
    'a,
    Key,
    Arc<Cached>,
    ByBytes,
    quick_cache::DefaultHashBuilder,
    quick_cache::sync::DefaultLifecycle<Key, Arc<Cached>>,
>;

/// The right to read one file and cache its bytes; dropping it unfilled
/// hands it to the next request waiting for the same file.
pub struct Slot<'a> {
    cache: &'a HotCache,
    key: Key,
    guard: Option<Guard<'a>>,
}

impl Slot<'_> {
    /// Caches `bytes`, which must have passed every check of `hit`'s entry,
    /// and hands them to the requests waiting for this file.
    ///
    /// A delete may land between the request's tombstone check and this
    /// fill, and invalidate before the bytes are here. Deletes bump the
    /// counter after their tombstone is visible and before they invalidate,
    /// so either the counter has moved since `since` (and the insert is
    /// undone here) or the delete's invalidation comes after the insert.
    /// (Requests already waiting get the bytes either way: they began before
    /// the delete, as a read in flight does.)
    pub fn fill(self, hit: &Hit, bytes: &Bytes, rep: Arc<Representation>, since: Ticket) {
        let Some(version) = Version::of(hit) else {
            return;
        };
        if !self.cache.admits(hit) {
            return;
        }
        // The decoded bytes may be a view into a larger read buffer (raw
        // entries are a slice of what the network handed over); an exact
        // copy keeps what the weigher counts equal to what is held.
        let value = Arc::new(Cached {
            version,
            bytes: Bytes::copy_from_slice(bytes),
            rep,
        });
        let entries = &self.cache.entries;
        match self.guard {
            Some(guard) => {
                // Refused only if the placeholder was replaced meanwhile.
                if let Err(value) = guard.insert(value) {
                    entries.insert(self.key.clone(), value);
                }
            }
            None => entries.insert(self.key.clone(), value),
        }
        if self.cache.deletions.load(Ordering::SeqCst) != since.0 {
            entries.remove(&self.key);
        }
    }
}

/// quick_cache rather than moka (which the index cache uses): a hit here is
/// the whole of a warm GET's own work, and moka's per-read bookkeeping was
/// 14 % of the retriever's CPU time under load against 3–5 % for this one.
type Entries = Cache<Key, Arc<Cached>, ByBytes>;

#[derive(Clone)]
pub struct HotCache {
    entries: Arc<Entries>,
    max_entry: u64,
    /// Bumped by every invalidation, so an insert racing a delete notices.
    deletions: Arc<AtomicU64>,
}

impl std::fmt::Debug for HotCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotCache")
            .field("entries", &self.entries.len())
            .field("weight", &self.entries.weight())
            .field("max_entry", &self.max_entry)
            .finish()
    }
}

#[derive(Debug, Clone, Copy)]
struct ByBytes;

impl Weighter<Key, Arc<Cached>> for ByBytes {
    fn weight(&self, key: &Key, value: &Arc<Cached>) -> u64 {
        let v = &value.version;
        let bytes = value.bytes.len()
            + key.uid.len()
            + v.shard.len()
            + v.etag.as_ref().map_or(0, String::len)
            + ENTRY_OVERHEAD;
        bytes as u64
    }
}

/// The cache is split into independently locked shards, each holding its
/// share of the capacity; a shard must hold several of the largest entries.
fn shards(capacity: u64, max_entry: u64) -> usize {
    let fit = capacity / max_entry.max(1) / 4;
    usize::try_from(fit.clamp(1, 16)).unwrap_or(1)
}

impl HotCache {
    /// `None` for a capacity of 0: no cache, and nothing on the request path.
    pub fn new(capacity: u64, max_entry: u64) -> Option<Self> {
        if capacity == 0 {
            return None;
        }
        let options = quick_cache::OptionsBuilder::new()
            .weight_capacity(capacity)
            // Only sizes the table up front; typical small files are a few KiB.
            .estimated_items_capacity(usize::try_from(capacity / 8192).unwrap_or(1 << 20).max(16))
            .shards(shards(capacity, max_entry))
            .build()
            .ok()?;
        let entries = Cache::with_options(options, ByBytes, Default::default(), Default::default());
        Some(Self {
            entries: Arc::new(entries),
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

    /// The cached file `(uid, the UTC day of created_at)`, whatever shard
    /// version it was read from: only for stores whose files never change
    /// (v3, see the module comment).
    pub fn get_file(&self, uid: &str, created_at: Timestamp) -> Option<HotHit> {
        let date = created_at.date_number();
        let cached = self.entries.get(&KeyRef { uid, date })?;
        Some(HotHit::from(cached.as_ref()))
    }

    /// Take this before the request's tombstone check and pass it to
    /// [`Slot::fill`].
    pub fn ticket(&self) -> Ticket {
        Ticket(self.deletions.load(Ordering::SeqCst))
    }

    /// The bytes of `hit` if cached from the very entry the index points at,
    /// else the right to read them ([`Slot`]). While one request holds the
    /// slot of a file, others that miss it wait here for its bytes instead of
    /// reading the same entry again; if the holder fails or goes away without
    /// filling it, the next waiter gets the slot.
    pub async fn join(&self, created_at: Timestamp, hit: &Hit) -> Joined<'_> {
        let key = Self::key(&hit.located.uid, created_at);
        match self.entries.get_value_or_guard_async(&key).await {
            Ok(cached) if cached.version.matches(hit) => {
                Joined::Cached(HotHit::from(cached.as_ref()))
            }
            // Bytes of another shard version or legacy part: read, and replace them.
            Ok(_) => Joined::Slot(Slot {
                cache: self,
                key,
                guard: None,
            }),
            Err(guard) => Joined::Slot(Slot {
                cache: self,
                key,
                guard: Some(guard),
            }),
        }
    }

    /// Drops the bytes of `(uid, date)`, date as `YYYYMMDD`; call once its
    /// tombstone is visible to the request path.
    pub fn invalidate(&self, uid: &str, date: u32) {
        self.deletions.fetch_add(1, Ordering::SeqCst);
        self.entries.remove(&KeyRef { uid, date });
    }

    /// Drops every cached file `(uid, date)` for which `gone` says so (files
    /// a retention rule expired): a scan of the cache, for the rare moments
    /// the rules, the holds or the day change. Call once the change is
    /// visible to the request path; the counter is bumped first, as by
    /// [`Self::invalidate`], so a fill racing the scan undoes itself.
    pub fn drop_where(&self, gone: impl Fn(&str, u32) -> bool) {
        self.deletions.fetch_add(1, Ordering::SeqCst);
        self.entries.retain(|k, _| !gone(&k.uid, k.date));
    }

    /// Whether anything is cached for `(uid, the UTC day of created_at)`.
    pub fn contains(&self, uid: &str, created_at: Timestamp) -> bool {
        let date = created_at.date_number();
        self.entries.peek(&KeyRef { uid, date }).is_some()
    }

    /// Bytes held, as the weigher counts them.
    pub fn weighted_size(&self) -> u64 {
        self.entries.weight()
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.len() as u64
    }
}
