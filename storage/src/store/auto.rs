//! Reading a store that may hold both layouts (`--layout auto`): a Python-DES
//! store being converted in place by `des-upgrade`, where every (date, shard)
//! is either still in its legacy parts, already in its v3 shard, or — between
//! publishing the v3 shard and deleting the parts — in both.
//!
//! A lookup tries the v3 shard of the (date, shard) first and, only if the
//! uid is not there, the legacy parts of the same (date, shard), newest part
//! first. Legacy (date, HEX) and v3 (date, HEX) are the same function of
//! (uid, created_at, n_bits) (SPEC §3, §4.2), so no other place can hold the
//! file. Each layout's reads keep their own checks.
//!
//! Legacy parts are looked for only while the store may still have some:
//! when it has no `_des/store.json` (nothing has converted it yet), or while
//! [`LEGACY_MARKER_KEY`] exists. `des-upgrade` writes that marker before it
//! writes anything else into a legacy store and removes it once no legacy
//! part is left. A v3 store opened as auto therefore pays one request when
//! opened and none per lookup, also for uids it does not have; whether the
//! store still needs legacy lookups is re-checked at most every
//! [`LEGACY_RECHECK`] (one request for the marker once `store.json` is
//! known), and only by a lookup that would use the answer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use des_format::DigestAlgorithm;
use des_format::routing::{self, ShardLocation};
use serde::{Deserialize, Serialize};

use super::{DEFAULT_SUFFIX_LEN, DesStore, Layout, SHARD_EXT, STORE_CONFIG_KEY};
use crate::error::{Error, ErrorKind, Result};
use crate::object::{ObjectStore, ObjectStoreExt};
use crate::store::{Placement, Single};

/// "This store may still hold legacy parts": written by `des-upgrade` before
/// it changes a legacy store, deleted when the last legacy part is gone.
pub const LEGACY_MARKER_KEY: &str = "_des/legacy.json";

/// How long an auto store trusts its last answer to "may legacy parts exist?".
pub const LEGACY_RECHECK: Duration = Duration::from_secs(60);

/// The marker's content. Readers only test that it exists; the fields say
/// who wrote it, for people looking at the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyMarker {
    /// Routing bits the legacy parts were converted with.
    pub n_bits: u8,
    pub written_at: String,
    pub writer: String,
}

/// Whether legacy parts are looked up, and when that was last checked.
#[derive(Debug)]
pub(super) struct LegacyFallback {
    state: Mutex<FallbackState>,
}

#[derive(Debug, Clone, Copy)]
struct FallbackState {
    consult: bool,
    checked: Instant,
    /// `store.json` was seen: it is written once and never removed, so
    /// re-checks need only look for the marker.
    has_config: bool,
}

impl LegacyFallback {
    fn new(consult: bool, has_config: bool) -> Self {
        Self {
            state: Mutex::new(FallbackState {
                consult,
                checked: Instant::now(),
                has_config,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FallbackState> {
        // Two plain fields: a poisoned lock holds nothing half-updated.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current state and whether this caller should refresh it. The
    /// first caller past the deadline claims the refresh (others keep using
    /// the old answer meanwhile), so a burst of lookups makes one check.
    fn current(&self) -> (FallbackState, bool) {
        let mut s = self.lock();
        let stale = s.checked.elapsed() >= LEGACY_RECHECK;
        if stale {
            s.checked = Instant::now();
        }
        (*s, stale)
    }

    /// The current answer, without claiming a refresh.
    fn peek(&self) -> bool {
        self.lock().consult
    }

    fn set(&self, consult: bool, has_config: bool) {
        let mut s = self.lock();
        s.consult = consult;
        s.has_config = has_config;
    }
}

/// `Ok(false)` for "not found", the error for anything else.
async fn exists(objects: &dyn ObjectStore, key: &str) -> Result<bool> {
    match objects.head(key).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Does the store still need legacy lookups (see the module comment), and
/// does it have `store.json`?
async fn needs_legacy(objects: &dyn ObjectStore, has_config: bool) -> Result<(bool, bool)> {
    if !has_config && !exists(objects, STORE_CONFIG_KEY).await? {
        return Ok((true, false));
    }
    Ok((exists(objects, LEGACY_MARKER_KEY).await?, true))
}

impl DesStore {
    /// Opens a store that may hold both layouts (see the module comment).
    /// `n_bits` is required when the store has no `_des/store.json` yet, and
    /// must match it when it has one.
    pub async fn open_auto(objects: Arc<dyn ObjectStore>, n_bits: Option<u8>) -> Result<Self> {
        Self::open_auto_placed(Arc::new(Single(objects)), n_bits).await
    }

    pub async fn open_auto_placed(
        placement: Arc<dyn Placement>,
        n_bits: Option<u8>,
    ) -> Result<Self> {
        let (mut store, consult, has_config) = match Self::read_config(&placement).await? {
            Some(cfg) => {
                let store = Self::from_config(placement, &cfg)?;
                if let Some(n) = n_bits.filter(|n| *n != store.n_bits) {
                    return Err(Error::Invalid(format!(
                        "store {} was created with n_bits {}, not {n}",
                        store.describe(),
                        store.n_bits
                    )));
                }
                let marked = exists(store.first.as_ref(), LEGACY_MARKER_KEY).await?;
                (store, marked, true)
            }
            None => {
                let n_bits = n_bits.or(placement.n_bits()).ok_or_else(|| {
                    Error::Invalid(format!(
                        "{} has no {STORE_CONFIG_KEY}: reading it as a Python DES store needs \
                         n_bits (--n-bits N)",
                        placement.describe()
                    ))
                })?;
                // Validates n_bits and the zones' agreement with it.
                let legacy = Self::legacy_placed(placement, n_bits)?;
                // Shards written later (by des-upgrade) carry their digest
                // algorithm in their trailers; this one is only a default.
                let store = Self {
                    layout: Layout::V3,
                    digest: DigestAlgorithm::default(),
                    suffix_len: DEFAULT_SUFFIX_LEN,
                    ..legacy
                };
                (store, true, false)
            }
        };
        store.legacy = Some(Arc::new(LegacyFallback::new(consult, has_config)));
        Ok(store)
    }

    /// Whether this store was opened with [`DesStore::open_auto`].
    pub fn has_legacy_fallback(&self) -> bool {
        self.legacy.is_some()
    }

    /// Whether lookups currently fall back to legacy parts, as last checked
    /// (no request). Always false for stores not opened as auto.
    pub fn consults_legacy_now(&self) -> bool {
        self.legacy.as_ref().is_some_and(|f| f.peek())
    }

    /// Whether lookups fall back to legacy parts; re-checks the store at most
    /// every [`LEGACY_RECHECK`]. A failed check keeps the previous answer.
    /// Always false (and no request) for stores not opened as auto.
    pub async fn consults_legacy(&self) -> bool {
        let Some(fallback) = &self.legacy else {
            return false;
        };
        let (state, refresh) = fallback.current();
        if !refresh {
            return state.consult;
        }
        match needs_legacy(self.first.as_ref(), state.has_config).await {
            Ok((now, has_config)) => {
                fallback.set(now, has_config);
                now
            }
            Err(_) => state.consult,
        }
    }

    /// The legacy parts `<date>_<HEX>_<NNNN>.des` of a (date, shard), newest
    /// (highest-numbered) first: the order in which a reader searches them,
    /// since the newest part holding a uid wins.
    pub async fn legacy_parts(&self, loc: &ShardLocation) -> Result<Vec<String>> {
        let prefix = legacy_prefix(&loc.date_dir, &loc.shard_hex);
        let metas = self
            .placement
            .for_shard(loc.shard_index)?
            .list_all(&prefix)
            .await?;
        let mut keys: Vec<String> = metas
            .into_iter()
            .map(|m| m.key)
            .filter(|k| k.ends_with(SHARD_EXT) && !k.contains('/'))
            .collect();
        keys.sort_unstable_by(|a, b| b.cmp(a));
        Ok(keys)
    }
}

/// The listing prefix of a (date, shard)'s legacy parts.
pub fn legacy_prefix(date_dir: &str, shard_hex: &str) -> String {
    format!("{date_dir}_{shard_hex}_")
}

/// The v3 key of the (date, shard) a legacy part `<date>_<HEX>_<NNNN>.des`
/// belongs to; `None` for anything else (v3 keys included).
pub fn v3_key_of_legacy_part(key: &str, n_bits: u8) -> Option<String> {
    let stem = key.strip_suffix(SHARD_EXT)?;
    if stem.contains('/') {
        return None;
    }
    let mut parts = stem.splitn(3, '_');
    let (date, hex, number) = (parts.next()?, parts.next()?, parts.next()?);
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if date.len() != 8 || !numeric(date) || !numeric(number) {
        return None;
    }
    let index = u32::from_str_radix(hex, 16).ok()?;
    // Only the router's own spelling names a shard a reader can reach.
    if index >> n_bits != 0 || routing::shard_hex(index, n_bits) != hex {
        return None;
    }
    Some(format!("{date}/{hex}{SHARD_EXT}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::Bytes;
    use des_format::Timestamp;

    use super::*;
    use crate::memory::MemoryStore;
    use crate::object::PutOptions;

    #[test]
    fn legacy_part_keys_map_to_their_v3_key() {
        assert_eq!(
            v3_key_of_legacy_part("20240517_5C_0003.des", 8).as_deref(),
            Some("20240517/5C.des")
        );
        for other in [
            "20240517/5C.des",
            "20240517_5c_0000.des",
            "20240517_5C_.des",
            "2024051_5C_0000.des",
            "20240517_NONE_0000.des",
            "20240517_C_0000.des",
            "_bigFiles/ab",
        ] {
            assert_eq!(v3_key_of_legacy_part(other, 8), None, "{other}");
        }
    }

    async fn put(objects: &MemoryStore, key: &str) {
        objects
            .put(key, Bytes::from_static(b"{}"), PutOptions::default())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn legacy_is_consulted_without_store_json_or_with_the_marker() {
        let objects = Arc::new(MemoryStore::new());
        // No store.json: a Python-DES store, n_bits required.
        assert!(DesStore::open_auto(objects.clone(), None).await.is_err());
        let s = DesStore::open_auto(objects.clone(), Some(8)).await.unwrap();
        assert!(s.has_legacy_fallback() && s.consults_legacy().await);
        assert_eq!((s.layout(), s.n_bits()), (Layout::V3, 8));
        // A v3 store without the marker: no legacy lookups.
        let (_, created) = DesStore::open_or_create(
            objects.clone(),
            crate::store::CreateOptions {
                n_bits: Some(8),
                digest: None,
            },
        )
        .await
        .unwrap();
        assert!(created);
        let s = DesStore::open_auto(objects.clone(), None).await.unwrap();
        assert!(!s.consults_legacy().await && !s.consults_legacy_now());
        assert!(DesStore::open_auto(objects.clone(), Some(9)).await.is_err());
        put(&objects, LEGACY_MARKER_KEY).await;
        let s = DesStore::open_auto(objects.clone(), Some(8)).await.unwrap();
        assert!(s.consults_legacy().await);
        // Not opened as auto: never.
        let plain = DesStore::open(objects.clone()).await.unwrap();
        assert!(!plain.has_legacy_fallback() && !plain.consults_legacy().await);
    }

    #[tokio::test]
    async fn parts_are_listed_newest_first() {
        let objects = Arc::new(MemoryStore::new());
        for key in [
            "20240517_5C_0000.des",
            "20240517_5C_0002.des",
            "20240517_5C_0001.des",
            "20240517_5D_0000.des",
            "20240517/5C.des",
        ] {
            put(&objects, key).await;
        }
        let s = DesStore::open_auto(objects, Some(8)).await.unwrap();
        let loc = s
            .locate(
                "abc123",
                Timestamp::parse_rfc3339("2024-05-17T10:00:00Z").unwrap(),
            )
            .unwrap();
        assert_eq!(
            s.legacy_parts(&loc).await.unwrap(),
            [
                "20240517_5C_0002.des",
                "20240517_5C_0001.des",
                "20240517_5C_0000.des"
            ]
        );
        assert_eq!(
            s.shard_keys(&loc).await.unwrap(),
            [
                "20240517/5C.des",
                "20240517_5C_0002.des",
                "20240517_5C_0001.des",
                "20240517_5C_0000.des"
            ]
        );
    }
}
