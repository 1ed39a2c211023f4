//! A DES store on top of any [`ObjectStore`]: its settings (`_des/store.json`),
//! key layout, and shard index / file reads that count their requests.

mod auto;
mod dicts;
mod index;
mod placement;
mod read;

use std::sync::Arc;

use bytes::Bytes;
use des_format::routing::{self, ShardLocation};
use des_format::{DigestAlgorithm, Timestamp};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::object::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions};

pub use auto::{
    LEGACY_MARKER_KEY, LEGACY_RECHECK, LegacyMarker, legacy_prefix, v3_key_of_legacy_part,
};
pub use dicts::{DEFAULT_DICT_CACHE_BYTES, DictCache, LatestDict, dict_key};
pub use index::{LoadedIndex, OpenedShard, Route, ShardLookup, ShardVersion};
pub use placement::{Placement, Single, shard_index_of_key};
pub use read::{external_key, verify_stream};

pub use crate::keys::{CONFIG_KEY as STORE_CONFIG_KEY, SHARD_EXT};
/// One suffix read of this size returns the trailer and the whole index of
/// small shards, and the page directory of paged ones (SPEC §7.1), leaving
/// room in a 64 KiB cold-read budget for one page of at most 8 KiB.
pub const DEFAULT_SUFFIX_LEN: u64 = 48 * 1024;

/// Written once when a store is created; every tool reads n_bits from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    pub format_version: u8,
    pub n_bits: u8,
    pub digest: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `<root>/<YYYYMMDD>/<HEX>.des`, one object per (date, shard).
    V3,
    /// Flat `<root>/<YYYYMMDD>_<HEX>_<NNNN>.des` from the Python DES; read-only.
    Legacy,
}
// A store that may hold both (`--layout auto`, during and after an in-place
// `des-upgrade`) is a `V3` store opened with `DesStore::open_auto`: it writes
// and lists v3 keys only, and its lookups fall back to the legacy parts of
// the same (date, shard). No third variant: listing, repacking and
// verifying, which match on the layout, have nothing to do with the fallback.

/// What to do when `open_or_create` finds no store.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateOptions {
    /// Required to match an existing store; defaults to 8 for a new one.
    pub n_bits: Option<u8>,
    /// `Some(Sha256)` for FIPS stores; must match an existing store when given.
    pub digest: Option<DigestAlgorithm>,
}

pub const DEFAULT_N_BITS: u8 = 8;

#[derive(Debug, Clone)]
pub struct DesStore {
    placement: Arc<dyn Placement>,
    /// The placement's first store (store-wide objects live there), and
    /// whether it is the only one: resolved once, not on every request.
    first: Arc<dyn ObjectStore>,
    single: bool,
    layout: Layout,
    n_bits: u8,
    digest: DigestAlgorithm,
    suffix_len: u64,
    /// Set by [`DesStore::open_auto`]: lookups also search legacy parts.
    legacy: Option<Arc<auto::LegacyFallback>>,
    /// Shared by clones: dictionaries are loaded once per handle.
    dicts: Arc<DictCache>,
}

impl DesStore {
    /// Opens an existing v3 store in one object store.
    pub async fn open(objects: Arc<dyn ObjectStore>) -> Result<Self> {
        Self::open_placed(Arc::new(Single(objects))).await
    }

    /// Opens an existing v3 store spread over a placement (zones).
    pub async fn open_placed(placement: Arc<dyn Placement>) -> Result<Self> {
        match Self::read_config(&placement).await? {
            Some(cfg) => Self::from_config(placement, &cfg),
            None => Err(Error::Invalid(format!(
                "{} has no {STORE_CONFIG_KEY}: not a DES store (a Python DES store needs \
                 --layout legacy --n-bits N)",
                placement.describe()
            ))),
        }
    }

    /// Opens a Python-DES store, whose n_bits is not recorded anywhere.
    pub fn legacy(objects: Arc<dyn ObjectStore>, n_bits: u8) -> Result<Self> {
        Self::legacy_placed(Arc::new(Single(objects)), n_bits)
    }

    pub fn legacy_placed(placement: Arc<dyn Placement>, n_bits: u8) -> Result<Self> {
        routing::check_n_bits(n_bits).map_err(|e| Error::Invalid(e.to_string()))?;
        if placement.n_bits().is_some_and(|z| z != n_bits) {
            return Err(Error::Invalid(format!(
                "zones say n_bits {:?}, not {n_bits}",
                placement.n_bits()
            )));
        }
        let (first, single) = first_store(placement.as_ref())?;
        Ok(Self {
            placement,
            first,
            single,
            layout: Layout::Legacy,
            n_bits,
            digest: DigestAlgorithm::Sha256,
            suffix_len: DEFAULT_SUFFIX_LEN,
            legacy: None,
            dicts: Arc::default(),
        })
    }

    /// Opens a store, creating it (with `opts`) if there is none. Returns
    /// whether it was created. Settings that contradict the store are errors,
    /// so a wrong `--n-bits` can never silently route files to the wrong shard.
    pub async fn open_or_create(
        objects: Arc<dyn ObjectStore>,
        opts: CreateOptions,
    ) -> Result<(Self, bool)> {
        Self::open_or_create_placed(Arc::new(Single(objects)), opts).await
    }

    /// As [`DesStore::open_or_create`]; the settings object is written to every
    /// store of the placement so each zone is self-describing.
    pub async fn open_or_create_placed(
        placement: Arc<dyn Placement>,
        opts: CreateOptions,
    ) -> Result<(Self, bool)> {
        let opts = CreateOptions {
            n_bits: opts.n_bits.or(placement.n_bits()),
            ..opts
        };
        if let Some(cfg) = Self::read_config(&placement).await? {
            return Ok((Self::checked(placement, &cfg, opts)?, false));
        }
        let n_bits = opts.n_bits.unwrap_or(DEFAULT_N_BITS);
        routing::check_n_bits(n_bits).map_err(|e| Error::Invalid(e.to_string()))?;
        let cfg = StoreConfig {
            format_version: des_format::v3::FORMAT_VERSION,
            n_bits,
            digest: opts.digest.unwrap_or_default().name().to_string(),
            created_at: Timestamp::now().to_rfc3339(),
        };
        let body = serde_json::to_vec_pretty(&cfg).map_err(|e| Error::other("store.json", e))?;
        let body = Bytes::from(body);
        let put = PutOptions {
            mode: PutMode::Create,
        };
        let mut created = false;
        for objects in placement.stores() {
            match objects
                .put(STORE_CONFIG_KEY, body.clone(), put.clone())
                .await
            {
                Ok(_) => created = true,
                // Another packer created it first: theirs must be compatible (checked below).
                Err(e) if e.kind() == ErrorKind::PreconditionFailed => {}
                Err(e) => return Err(e),
            }
        }
        let cfg = Self::read_config(&placement)
            .await?
            .ok_or_else(|| Error::Invalid(format!("{STORE_CONFIG_KEY} vanished after creation")))?;
        Ok((Self::checked(placement, &cfg, opts)?, created))
    }

    fn checked(
        placement: Arc<dyn Placement>,
        cfg: &StoreConfig,
        opts: CreateOptions,
    ) -> Result<Self> {
        let store = Self::from_config(placement, cfg)?;
        if let Some(n) = opts.n_bits.filter(|n| *n != store.n_bits) {
            return Err(Error::Invalid(format!(
                "store {} was created with n_bits {}, not {n}",
                store.placement.describe(),
                store.n_bits
            )));
        }
        if let Some(d) = opts.digest.filter(|d| *d != store.digest) {
            return Err(Error::Invalid(format!(
                "store {} uses digest {}, not {}",
                store.placement.describe(),
                store.digest.name(),
                d.name()
            )));
        }
        Ok(store)
    }

    async fn read_config(placement: &Arc<dyn Placement>) -> Result<Option<StoreConfig>> {
        let (objects, _) = first_store(placement.as_ref())?;
        match objects
            .get_range(STORE_CONFIG_KEY, crate::object::ByteRange::All)
            .await
        {
            Ok((_, body)) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| Error::corrupt(STORE_CONFIG_KEY, e)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn from_config(placement: Arc<dyn Placement>, cfg: &StoreConfig) -> Result<Self> {
        if cfg.format_version != des_format::v3::FORMAT_VERSION {
            return Err(Error::Invalid(format!(
                "store format version {} is not supported",
                cfg.format_version
            )));
        }
        routing::check_n_bits(cfg.n_bits).map_err(|e| Error::corrupt(STORE_CONFIG_KEY, e))?;
        let digest = DigestAlgorithm::from_name(&cfg.digest)
            .map_err(|e| Error::corrupt(STORE_CONFIG_KEY, e))?;
        if placement.n_bits().is_some_and(|z| z != cfg.n_bits) {
            return Err(Error::Invalid(format!(
                "zones say n_bits {:?} but the store was created with {}",
                placement.n_bits(),
                cfg.n_bits
            )));
        }
        let (first, single) = first_store(placement.as_ref())?;
        Ok(Self {
            placement,
            first,
            single,
            layout: Layout::V3,
            n_bits: cfg.n_bits,
            digest,
            suffix_len: DEFAULT_SUFFIX_LEN,
            legacy: None,
            dicts: Arc::default(),
        })
    }

    pub fn dict_cache(&self) -> &DictCache {
        &self.dicts
    }

    pub fn with_suffix_len(mut self, n: u64) -> Self {
        // The trailer alone must fit, or every read would need a second request.
        self.suffix_len = n.max(des_format::v3::TRAILER_LEN as u64 + 16);
        self
    }

    /// The first store of the placement (the only one unless zoned): where
    /// store-wide objects such as `_des/store.json` are read.
    pub fn objects(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.first)
    }

    pub fn placement(&self) -> &Arc<dyn Placement> {
        &self.placement
    }

    pub fn describe(&self) -> String {
        self.placement.describe()
    }

    /// The store holding shard `shard_index` and the big files it references.
    pub fn objects_for_shard(&self, shard_index: u32) -> Result<Arc<dyn ObjectStore>> {
        self.placement.for_shard(shard_index)
    }

    /// The store holding the shard object `key`.
    pub fn objects_for_key(&self, shard_key: &str) -> Result<Arc<dyn ObjectStore>> {
        // A single store holds every object, whether or not its name parses as
        // a shard key (lone shard files such as `20240517_NONE_0000.des`).
        if self.single {
            return Ok(Arc::clone(&self.first));
        }
        self.placement.for_shard(shard_index_of_key(shard_key)?)
    }
    pub fn layout(&self) -> Layout {
        self.layout
    }
    pub fn n_bits(&self) -> u8 {
        self.n_bits
    }
    pub fn digest(&self) -> DigestAlgorithm {
        self.digest
    }
    pub fn suffix_len(&self) -> u64 {
        self.suffix_len
    }

    pub fn locate(&self, uid: &str, created_at: Timestamp) -> Result<ShardLocation> {
        routing::locate_ts(uid, created_at, self.n_bits).map_err(|e| Error::Invalid(e.to_string()))
    }

    /// The v3 key of a (date, shard).
    pub fn shard_key(loc: &ShardLocation) -> String {
        crate::keys::ShardKey::at(loc).to_string()
    }

    /// Keys that may hold the shard, in the order a lookup searches them:
    /// the v3 key; every legacy part, newest first; for an auto store the v3
    /// key, then (while the store may still have some) the legacy parts.
    pub async fn shard_keys(&self, loc: &ShardLocation) -> Result<Vec<String>> {
        match self.layout {
            Layout::V3 => {
                let mut keys = vec![Self::shard_key(loc)];
                if self.consults_legacy().await {
                    keys.extend(self.legacy_parts(loc).await?);
                }
                Ok(keys)
            }
            Layout::Legacy => self.legacy_parts(loc).await,
        }
    }

    /// Every shard object in the store, in key order. With zones, only the
    /// shards each zone owns are listed from it.
    pub async fn list_shards(&self) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        let stores = self.placement.stores();
        for objects in &stores {
            for m in objects.list_all("").await? {
                let shape_ok = m.key.ends_with(SHARD_EXT)
                    && !m.key.starts_with('_')
                    && match self.layout {
                        Layout::V3 => m.key.split('/').count() == 2,
                        Layout::Legacy => !m.key.contains('/'),
                    };
                if !shape_ok {
                    continue;
                }
                let owned =
                    match shard_index_of_key(&m.key).and_then(|i| self.placement.for_shard(i)) {
                        Ok(owner) => stores.len() == 1 || Arc::ptr_eq(&owner, objects),
                        Err(_) => stores.len() == 1,
                    };
                if owned {
                    out.push(m);
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// The first store of `placement` and whether it is the only one.
fn first_store(placement: &dyn Placement) -> Result<(Arc<dyn ObjectStore>, bool)> {
    let stores = placement.stores();
    let single = stores.len() == 1;
    let first = stores
        .into_iter()
        .next()
        .ok_or_else(|| Error::Invalid("placement has no stores".into()))?;
    Ok((first, single))
}
