//! From (uid, created_at) to a verified payload: routing, the shard index
//! cache, the negative cache, the hot payload cache, and one
//! refresh-and-retry when a cached index has gone stale.
//!
//! Request budget (index within the suffix read): a cold GET costs 2 storage
//! requests (suffix read, payload range read), a warm one 1, and one whose
//! payload is in the hot cache 0. HEAD, 304 and 416 answers need only the
//! index, so they cost 1 cold and 0 warm. A paged shard (SPEC §5.10) whose
//! index is larger than the suffix adds one page read unless the page is
//! cached: cold 3, warm 1 or 2. The index cache holds directories (and
//! whole indexes of small or flat shards); pages have their own cache.

use std::sync::Arc;
use std::time::{Duration, Instant};

use des_format::Timestamp;
use des_format::routing::ShardLocation;
use des_format::shard::Located;
use des_format::v3::Page;
use des_storage::{DesStore, ErrorKind as StorageKind, Layout, OpenedShard, Route};
use moka::future::Cache;
use moka::notification::RemovalCause;

use crate::backend::Backends;
use crate::error::ApiError;
use crate::hot::{HotCache, HotHit, Joined, Ticket};
use crate::metrics::Metrics;
use crate::payload::{self, Payload};
use crate::representation::Representation;

/// Long enough to absorb a flood of requests for a file or shard that does
/// not exist, short enough that newly packed files are served soon after.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Legacy part lists: the Python DES may still add parts while a store
/// migrates, and des-upgrade deletes them once converted.
pub const DEFAULT_PARTS_TTL: Duration = Duration::from_secs(60);
const PARTS_CAPACITY: u64 = 100_000;
const NEGATIVE_CAPACITY: u64 = 100_000;

#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Upper bound on the heap held by cached shard indexes and directories.
    pub index_bytes: u64,
    /// Upper bound on the heap held by cached pages of paged indexes.
    pub page_bytes: u64,
    /// Drop cached indexes this long after loading (none: only on eviction or staleness).
    pub index_ttl: Option<Duration>,
    /// How long "no such shard" is remembered, and how old a cached index must
    /// be before a uid missing from it makes us read the shard again.
    pub negative_ttl: Duration,
    pub parts_ttl: Duration,
    /// Upper bound on the hot payload cache (0: no cache).
    pub payload_bytes: u64,
    /// Largest decoded payload the hot cache keeps.
    pub payload_max_entry: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            index_bytes: crate::config::DEFAULT_CACHE_BYTES,
            page_bytes: crate::config::DEFAULT_PAGE_CACHE_BYTES,
            index_ttl: None,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            parts_ttl: DEFAULT_PARTS_TTL,
            payload_bytes: crate::config::DEFAULT_PAYLOAD_CACHE_BYTES,
            payload_max_entry: crate::config::DEFAULT_PAYLOAD_CACHE_MAX_ENTRY_BYTES,
        }
    }
}

/// A file found in a (cached) index.
#[derive(Debug, Clone)]
pub struct Hit {
    pub loaded: Arc<OpenedShard>,
    pub located: Located,
}

/// Why a cache fill did not produce a value. Shared between coalesced waiters.
#[derive(Debug)]
enum FillError {
    Missing,
    Storage(des_storage::Error),
}

/// A cached index and when it was read.
#[derive(Debug, Clone)]
struct Cached {
    loaded: Arc<OpenedShard>,
    at: Instant,
}

#[derive(Debug, Clone)]
pub struct Retriever {
    store: DesStore,
    backends: Backends,
    metrics: Arc<Metrics>,
    negative_ttl: Duration,
    indexes: Cache<String, Cached>,
    index_capacity: u64,
    /// Pages of paged shards, by shard version and page number.
    pages: Cache<PageKey, Arc<Page>>,
    page_capacity: u64,
    /// Shard keys (v3) or part prefixes (legacy) known not to exist.
    missing: Cache<String, ()>,
    /// Legacy only: part keys of a (date, shard), highest part first.
    parts: Cache<String, Arc<Vec<String>>>,
    /// Verified bytes of small popular files; `None` when switched off.
    hot: Option<HotCache>,
}

/// Cache weight: what an index holds on the heap, so `index_bytes` bounds memory.
fn weight(key: &str, ix: &Cached) -> u32 {
    u32::try_from(ix.loaded.heap_size() + key.len()).unwrap_or(u32::MAX)
}

/// A page of one version of a shard, named by generation and ETag: a shard
/// deleted whole and packed again restarts at generation 1, so the
/// generation alone could name an old version's page (which ages out).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PageKey {
    shard: String,
    generation: u64,
    etag: Option<String>,
    size: u64,
    page: usize,
}

fn page_weight(key: &PageKey, page: &Arc<Page>) -> u32 {
    let etag = key.etag.as_ref().map_or(0, String::len);
    let bytes = page.heap_size() + key.shard.len() + etag + std::mem::size_of::<PageKey>();
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

fn cause_name(cause: RemovalCause) -> &'static str {
    match cause {
        RemovalCause::Size => "size",
        RemovalCause::Expired => "expired",
        RemovalCause::Explicit => "explicit",
        RemovalCause::Replaced => "replaced",
    }
}

/// The result of one storage check in [`Retriever::probe`].
#[derive(Debug)]
pub struct Probe {
    /// Metrics label of the store (zone name, `local`, `s3`).
    pub backend: String,
    pub result: Result<(), des_storage::Error>,
}

impl Retriever {
    /// `store` should read through `backends`' stores (metered or not);
    /// `backends` names them for metrics and readiness.
    pub fn new(
        store: DesStore,
        backends: Backends,
        metrics: Arc<Metrics>,
        cfg: &CacheConfig,
    ) -> Self {
        let evictions = metrics.cache_evictions.clone();
        let mut indexes = Cache::builder()
            .max_capacity(cfg.index_bytes)
            .weigher(|k: &String, v: &Cached| weight(k, v))
            .eviction_listener(move |_key, _value, cause| {
                evictions.with_label_values(&[cause_name(cause)]).inc();
            });
        if let Some(ttl) = cfg.index_ttl {
            indexes = indexes.time_to_live(ttl);
        }
        let mut pages = Cache::builder()
            .max_capacity(cfg.page_bytes)
            .weigher(page_weight);
        if let Some(ttl) = cfg.index_ttl {
            pages = pages.time_to_live(ttl);
        }
        Self {
            store,
            backends,
            metrics,
            negative_ttl: cfg.negative_ttl,
            indexes: indexes.build(),
            index_capacity: cfg.index_bytes,
            pages: pages.build(),
            page_capacity: cfg.page_bytes,
            missing: Cache::builder()
                .max_capacity(NEGATIVE_CAPACITY)
                .time_to_live(cfg.negative_ttl)
                .build(),
            parts: Cache::builder()
                .max_capacity(PARTS_CAPACITY)
                .time_to_live(cfg.parts_ttl)
                .build(),
            hot: HotCache::new(cfg.payload_bytes, cfg.payload_max_entry),
        }
    }

    pub fn store(&self) -> &DesStore {
        &self.store
    }

    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Heap bytes of the cached indexes (as the cache weighs them).
    pub async fn cache_bytes(&self) -> u64 {
        // The size is updated by housekeeping moka runs lazily; catch up first.
        self.indexes.run_pending_tasks().await;
        self.indexes.weighted_size()
    }

    /// Heap bytes of the cached index pages.
    pub async fn page_cache_bytes(&self) -> u64 {
        self.pages.run_pending_tasks().await;
        self.pages.weighted_size()
    }

    /// The hot payload cache, unless switched off.
    pub fn hot(&self) -> Option<&HotCache> {
        self.hot.as_ref()
    }

    /// Bytes held by the hot payload cache (as its weigher counts them).
    pub fn payload_cache_bytes(&self) -> u64 {
        self.hot.as_ref().map_or(0, HotCache::weighted_size)
    }

    /// Take this before a request's tombstone check and give it to
    /// [`fetch`](Self::fetch): see [`Slot::fill`](crate::hot::Slot::fill).
    pub fn payload_ticket(&self) -> Option<Ticket> {
        self.hot.as_ref().map(HotCache::ticket)
    }

    /// The metrics label of the store `uid` routes to, if it routes at all.
    pub fn backend_for(&self, uid: &str) -> Option<&str> {
        // The shard index alone: no date directory string per request.
        let shard = des_format::routing::shard_index(uid, self.store.n_bits()).ok()?;
        Some(self.backends.label_for_shard(shard))
    }

    /// Finds `uid` in the shard it routes to. `created_at` only routes (its
    /// date picks the day); legacy entries do not even record it. An auto
    /// store (`DesStore::open_auto`) is searched v3 first, then its legacy
    /// parts, which are listed only after a v3 miss and only while the store
    /// may still have any.
    pub async fn locate(&self, uid: &str, created_at: Timestamp) -> Result<Hit, ApiError> {
        let loc = self
            .store
            .locate(uid, created_at)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let v3 = self.store.layout() == Layout::V3;
        let v3_key = DesStore::shard_key(&loc);
        if v3 && let Some(hit) = self.find_in_v3(&v3_key, uid).await? {
            return Ok(hit);
        }
        if !v3 || self.store.consults_legacy().await {
            // The highest-numbered part holding the uid wins, as in DesStore::find.
            // (Legacy parts are written once; new parts show up via the part list.)
            let mut vanished = false;
            for key in self.legacy_parts(&loc).await?.iter() {
                match self.index(key).await? {
                    Some(cached) => {
                        let found = self.find_cached(&cached.loaded, uid).await;
                        if let Some(located) = found.map_err(|e| ApiError::from(&*e))? {
                            return Ok(Hit {
                                loaded: cached.loaded,
                                located,
                            });
                        }
                    }
                    None => vanished = true,
                }
            }
            // Auto: a listed part that is gone was converted meanwhile (its
            // files are in the v3 shard, which we may remember as absent or
            // without them): forget both and look in the v3 shard again.
            if v3 && vanished {
                self.forget_v3_of(&v3_key, &loc).await;
                if let Some(hit) = self.find_in_v3(&v3_key, uid).await? {
                    return Ok(hit);
                }
            }
        }
        Err(ApiError::not_found(format!(
            "no file {uid:?} on {}",
            loc.date_dir
        )))
    }

    async fn find_in_v3(&self, key: &str, uid: &str) -> Result<Option<Hit>, ApiError> {
        let Some(mut cached) = self.index(key).await? else {
            return Ok(None);
        };
        let mut found = match self.find_cached(&cached.loaded, uid).await {
            Ok(found) => found,
            // The shard was replaced since its directory was cached, or the
            // page is damaged: one fresh directory decides which.
            Err(e) if worth_refreshing(&e) => {
                tracing::warn!(shard = key, uid, error = %e, "cached directory stale or page bad; reloading once");
                self.forget(&cached.loaded).await;
                match self.index(key).await? {
                    Some(fresh) => cached = fresh,
                    None => return Ok(None),
                }
                self.find_cached(&cached.loaded, uid)
                    .await
                    .map_err(|e| ApiError::from(&*e))?
            }
            Err(e) => return Err(ApiError::from(&*e)),
        };
        // Files may have been packed into the shard since we read it; look
        // again, but at most once per negative TTL so 404 floods stay cheap.
        if found.is_none() && cached.at.elapsed() >= self.negative_ttl {
            self.forget(&cached.loaded).await;
            match self.index(key).await? {
                Some(fresh) => cached = fresh,
                None => return Ok(None),
            }
            found = self
                .find_cached(&cached.loaded, uid)
                .await
                .map_err(|e| ApiError::from(&*e))?;
        }
        Ok(found.map(|located| Hit {
            loaded: cached.loaded,
            located,
        }))
    }

    /// `uid` in an opened shard: from its whole index, or from the page its
    /// directory names, read once however many requests wait for it.
    async fn find_cached(
        &self,
        shard: &Arc<OpenedShard>,
        uid: &str,
    ) -> Result<Option<Located>, Arc<des_storage::Error>> {
        let k = match shard.route(uid) {
            Route::Done(found) => return Ok(found),
            Route::Page(k) => k,
        };
        let key = PageKey {
            shard: shard.key.clone(),
            generation: shard.generation(),
            etag: shard.object.etag.clone(),
            size: shard.object.size,
            page: k,
        };
        if let Some(page) = self.pages.get(&key).await {
            self.metrics.page_cache_hits.inc();
            return Ok(page.find(uid));
        }
        let store = self.store.clone();
        let opened = Arc::clone(shard);
        let filled = self
            .pages
            .entry(key)
            .or_try_insert_with(async move { store.read_page(&opened, k).await.map(Arc::new) })
            .await;
        match filled {
            Ok(entry) => {
                if entry.is_fresh() {
                    self.metrics.page_cache_misses.inc();
                    if u64::from(page_weight(entry.key(), entry.value())) > self.page_capacity {
                        self.pages.invalidate(entry.key()).await;
                    }
                } else {
                    self.metrics.page_cache_hits.inc();
                }
                Ok(entry.into_value().find(uid))
            }
            Err(e) => {
                self.metrics.page_cache_misses.inc();
                self.count_corruption(&e);
                Err(e)
            }
        }
    }

    /// The payload of `hit`: from the hot cache if it holds this very entry,
    /// else read (see `read`) and, if small and inline, cached.
    /// Concurrent misses of one cacheable file make one read; the others get
    /// its bytes (counted as hits). `rep` describes `hit` and is handed back
    /// as is unless the index had to be reloaded. `since` is
    /// [`payload_ticket`](Self::payload_ticket), taken before the request's
    /// tombstone check.
    pub async fn fetch(
        &self,
        uid: &str,
        created_at: Timestamp,
        hit: Hit,
        rep: Arc<Representation>,
        since: Option<Ticket>,
    ) -> Result<(Hit, Payload, Arc<Representation>), ApiError> {
        let (hot, since) = match (&self.hot, since) {
            (Some(hot), Some(since)) if hot.admits(&hit) => (hot, since),
            _ => return self.read_described(uid, created_at, hit, rep).await,
        };
        // v3 hits were answered before the index lookup (`hot_hit`); what is
        // left here is legacy hits and requests that wait for a read in flight.
        let slot = match hot.join(created_at, &hit).await {
            Joined::Cached(found) => {
                self.metrics.payload_cache_hits.inc();
                return Ok((hit, Payload::Inline(found.bytes), rep));
            }
            Joined::Slot(slot) => slot,
        };
        self.metrics.payload_cache_misses.inc();
        let (hit, payload, rep) = self.read_described(uid, created_at, hit, rep).await?;
        // Only bytes `read` returned, which passed every check, get here.
        if let Payload::Inline(bytes) = &payload {
            slot.fill(&hit, bytes, Arc::clone(&rep), since);
        }
        Ok((hit, payload, rep))
    }

    /// [`read`](Self::read), and the description of what it read: `rep`
    /// unless the index was reloaded on the way.
    async fn read_described(
        &self,
        uid: &str,
        created_at: Timestamp,
        hit: Hit,
        rep: Arc<Representation>,
    ) -> Result<(Hit, Payload, Arc<Representation>), ApiError> {
        let before = Arc::clone(&hit.loaded);
        let (hit, payload) = self.read(uid, created_at, hit).await?;
        let rep = if Arc::ptr_eq(&before, &hit.loaded) {
            rep
        } else {
            Arc::new(Representation::of(&hit.located))
        };
        Ok((hit, payload, rep))
    }

    /// A v3 file in the hot payload cache, served without even the index
    /// lookup (see `hot`'s module comment for why that is safe there). Call
    /// only after the tombstone check.
    pub fn hot_hit(&self, uid: &str, created_at: Timestamp) -> Option<HotHit> {
        // While an auto store still reads legacy parts, a uid's bytes can
        // change (a v3 version packed after its legacy one was cached):
        // hits must then come from the entry the lookup finds, as in legacy.
        if self.store.layout() != Layout::V3 || self.store.consults_legacy_now() {
            return None;
        }
        let found = self.hot.as_ref()?.get_file(uid, created_at)?;
        self.metrics.payload_cache_hits.inc();
        Some(found)
    }

    /// Reads the payload of `hit`. If storage says the shard changed since its
    /// index was cached, or the bytes fail their check, the index is reloaded
    /// once and the read retried; a second failure is final. Bytes that fail a
    /// check are never returned.
    async fn read(
        &self,
        uid: &str,
        created_at: Timestamp,
        hit: Hit,
    ) -> Result<(Hit, Payload), ApiError> {
        let first = match payload::open(&self.store, &hit).await {
            Ok(p) => return Ok((hit, p)),
            Err(e) => e,
        };
        self.count_corruption(&first);
        if !worth_refreshing(&first) {
            return Err(first.into());
        }
        tracing::warn!(shard = %hit.loaded.key, uid, error = %first, "cached index stale or payload bad; reloading once");
        self.forget(&hit.loaded).await;
        let hit = self.locate(uid, created_at).await?;
        match payload::open(&self.store, &hit).await {
            Ok(p) => Ok((hit, p)),
            Err(e) => {
                self.count_corruption(&e);
                tracing::error!(shard = %hit.loaded.key, uid, error = %e, "payload read failed after index reload");
                Err(final_error(&hit, e))
            }
        }
    }

    fn count_corruption(&self, e: &des_storage::Error) {
        if e.kind() == StorageKind::Corrupt {
            self.metrics.corruption.inc();
        }
    }

    /// Drops a cached index (and, for legacy, its part list) so the next
    /// lookup reads the shard again; a no-op if someone already refreshed it.
    pub async fn forget(&self, stale: &Arc<OpenedShard>) {
        if let Some(current) = self.indexes.get(&stale.key).await
            && Arc::ptr_eq(&current.loaded, stale)
        {
            self.indexes.invalidate(&stale.key).await;
        }
        if let Some((prefix, _)) = stale.key.rsplit_once('_') {
            self.parts.invalidate(&format!("{prefix}_")).await;
            // An auto store's part that went away was most likely converted
            // (des-upgrade deletes parts only after the v3 shard holds their
            // files): the retry must read the v3 shard again, not an index
            // cached (or an absence remembered) before the files were added.
            if self.store.has_legacy_fallback()
                && let Some(v3) =
                    des_storage::store::v3_key_of_legacy_part(&stale.key, self.store.n_bits())
            {
                self.indexes.invalidate(&v3).await;
                self.missing.invalidate(&v3).await;
            }
        }
    }

    /// Auto stores: drops what is cached about a (date, shard)'s v3 shard
    /// and its legacy part list, after a listed part turned out to be gone.
    async fn forget_v3_of(&self, v3_key: &str, loc: &ShardLocation) {
        self.indexes.invalidate(v3_key).await;
        self.missing.invalidate(v3_key).await;
        let prefix = des_storage::store::legacy_prefix(&loc.date_dir, &loc.shard_hex);
        self.parts.invalidate(&prefix).await;
    }

    /// The shard's index, loading it (once, however many requests wait) on a miss.
    async fn index(&self, key: &str) -> Result<Option<Cached>, ApiError> {
        // Nearly every request finds its index cached: one lookup and no
        // allocation, before the negative cache and the coalescing fill.
        if let Some(cached) = self.indexes.get(key).await {
            self.metrics.cache_hits.inc();
            return Ok(Some(cached));
        }
        if self.missing.contains_key(key) {
            return Ok(None);
        }
        let store = self.store.clone();
        let owned = key.to_string();
        let filled = self
            .indexes
            .entry_by_ref(key)
            .or_try_insert_with(async move {
                match store.open_shard(&owned).await {
                    Ok(Some(ix)) => Ok(Cached {
                        loaded: Arc::new(ix),
                        at: Instant::now(),
                    }),
                    Ok(None) => Err(FillError::Missing),
                    Err(e) => Err(FillError::Storage(e)),
                }
            })
            .await;
        // Fresh: this call read storage. Requests that waited on it count as
        // hits, so misses equal index reads however many requests coalesced.
        match &filled {
            Ok(entry) if entry.is_fresh() => {
                self.metrics.cache_misses.inc();
                // The cache evicts lazily: without this, an index larger than
                // the whole bound would be served from memory until then.
                if u64::from(weight(key, entry.value())) > self.index_capacity {
                    self.indexes.invalidate(key).await;
                }
            }
            Ok(_) => self.metrics.cache_hits.inc(),
            Err(_) => self.metrics.cache_misses.inc(),
        }
        if let Err(e) = &filled
            && let FillError::Storage(err) = e.as_ref()
        {
            self.count_corruption(err);
        }
        self.settle(key, filled.map(moka::Entry::into_value)).await
    }

    /// The legacy parts of a (date, shard), newest first; the list is cached
    /// (the Python DES may still add parts while a store migrates).
    async fn legacy_parts(&self, loc: &ShardLocation) -> Result<Arc<Vec<String>>, ApiError> {
        let prefix = des_storage::store::legacy_prefix(&loc.date_dir, &loc.shard_hex);
        if self.missing.contains_key(&prefix) {
            return Ok(Arc::default());
        }
        let store = self.store.clone();
        let loc = loc.clone();
        let filled = self
            .parts
            .try_get_with(prefix.clone(), async move {
                let keys = store.legacy_parts(&loc).await.map_err(FillError::Storage)?;
                if keys.is_empty() {
                    return Err(FillError::Missing);
                }
                Ok(Arc::new(keys))
            })
            .await;
        Ok(self.settle(&prefix, filled).await?.unwrap_or_default())
    }

    /// Turns a cache fill result into a lookup result, remembering absences.
    async fn settle<T>(
        &self,
        key: &str,
        filled: Result<T, Arc<FillError>>,
    ) -> Result<Option<T>, ApiError> {
        match filled {
            Ok(v) => Ok(Some(v)),
            Err(e) => match e.as_ref() {
                FillError::Missing => {
                    self.missing.insert(key.to_string(), ()).await;
                    Ok(None)
                }
                FillError::Storage(err) => Err(ApiError::from(err)),
            },
        }
    }

    /// One cheap request to every store (each zone), concurrently, each
    /// given `timeout`: what `/ready` reports.
    pub async fn probe(&self, timeout: Duration) -> Vec<Probe> {
        let labels = match &self.backends {
            Backends::Single(label) => vec![label.clone()],
            Backends::Zones(z) => z.iter().map(|z| z.name.clone()).collect(),
        };
        let stores = self.store.placement().stores();
        // An auto store may have no store.json yet: probe it as a legacy one.
        let layout = if self.store.has_legacy_fallback() {
            Layout::Legacy
        } else {
            self.store.layout()
        };
        let checks = stores
            .into_iter()
            .zip(labels)
            .map(|(objects, backend)| async move {
                let result = match tokio::time::timeout(timeout, probe_one(&*objects, layout)).await
                {
                    Ok(r) => r,
                    Err(_) => Err(des_storage::Error::Timeout(format!(
                        "no answer within {timeout:?}"
                    ))),
                };
                Probe { backend, result }
            });
        futures::future::join_all(checks).await
    }
}

async fn probe_one(
    objects: &dyn des_storage::ObjectStore,
    layout: Layout,
) -> Result<(), des_storage::Error> {
    match layout {
        // Every store (each zone) holds the store settings.
        Layout::V3 => objects
            .head(des_storage::store::STORE_CONFIG_KEY)
            .await
            .map(drop),
        // Legacy stores have no fixed object; list a prefix that only
        // reads the root (one page at most), which fails if the root is gone.
        Layout::Legacy => objects
            .list(&Timestamp::now().date_dir(), None)
            .await
            .map(drop),
    }
}

/// Failures a fresh index can cure: the shard was replaced or removed under
/// the cached one, or the bytes we were pointed at are not the entry's.
fn worth_refreshing(e: &des_storage::Error) -> bool {
    matches!(
        e.kind(),
        StorageKind::PreconditionFailed | StorageKind::Corrupt | StorageKind::NotFound
    )
}

fn final_error(hit: &Hit, e: des_storage::Error) -> ApiError {
    let external = hit.located.shard_range().is_none();
    match e.kind() {
        // The index is fresh and names a payload object that is not there.
        StorageKind::NotFound if external => {
            let mut api = ApiError::corrupt(format!("{}: payload object missing", hit.located.uid));
            api.detail = Some(e.to_string());
            api
        }
        _ => ApiError::from(e),
    }
}
