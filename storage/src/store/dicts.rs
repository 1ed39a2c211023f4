//! Shared zstd dictionaries in the store (`_dicts/<id>`, SPEC §6.7).
//!
//! The write rule: a dictionary is written (to every store of the
//! placement, so each shard finds it beside itself) before any shard that
//! uses it is published, is never replaced (its id follows from its bytes,
//! and an existing object is compared, not overwritten — some S3 servers
//! ignore conditional PUTs), and is never deleted. Readers load dictionaries
//! through one byte-bounded, single-flight cache per store handle, verified
//! before first use.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use des_format::codec::Codec;
use des_format::dict::{self, DecoderDict, Dictionary};
use des_format::shard::Located;
use tokio::sync::OnceCell;

use super::DesStore;
use crate::error::{Error, ErrorKind, Result};
use crate::keys::DICTS_PREFIX;
use crate::object::{ByteRange, ObjectStore, ObjectStoreExt, PutOptions};

/// The object holding dictionary `id`.
pub fn dict_key(id: u32) -> String {
    format!("{DICTS_PREFIX}{}", dict::id_hex(id))
}

/// Which dictionary a content class got last, and when: a hint that lets
/// frequent small runs share a class's dictionary for a while instead of
/// each training its own (`_dicts/classes/<hex of the class name>`, `-`
/// for the empty class; overwritten by each training; losing it only costs
/// a retraining).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatestDict {
    pub id: u32,
    pub trained_at: std::time::SystemTime,
    /// Held-back files' size with it / with plain zstd, when it was trained.
    pub ratio_to_plain: f64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct LatestJson {
    id: u32,
    trained_at_unix_ms: u64,
    ratio_to_plain: f64,
}

fn latest_key(class: &str) -> String {
    // The empty class (no extension, no content type) would end the key in
    // a slash, which no store accepts; `-` is no hex encoding of a class.
    let name = match class {
        "" => "-".to_string(),
        c => hex::encode(c.as_bytes()),
    };
    format!("{DICTS_PREFIX}classes/{name}")
}

/// Default bound of a store handle's dictionary cache (prepared
/// dictionaries take about their size again in zstd's tables).
pub const DEFAULT_DICT_CACHE_BYTES: u64 = 64 << 20;

type Slot = Arc<OnceCell<Arc<DecoderDict>>>;

/// Dictionaries ready for decoding, by id: loads of one id share one read,
/// and the least recently loaded go first once `limit` bytes are held.
#[derive(Debug)]
pub struct DictCache {
    limit: u64,
    inner: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    slots: HashMap<u32, (Slot, u64)>,
    order: VecDeque<u32>,
    bytes: u64,
    loads: u64,
}

impl Default for DictCache {
    fn default() -> Self {
        Self::new(DEFAULT_DICT_CACHE_BYTES)
    }
}

impl DictCache {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes the cached dictionaries are weighed at.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Dictionaries read from storage so far (cache misses).
    pub fn loads(&self) -> u64 {
        self.lock().loads
    }

    fn slot(&self, id: u32) -> Slot {
        let mut held = self.lock();
        if let Some((slot, _)) = held.slots.get(&id) {
            return Arc::clone(slot);
        }
        let slot = Slot::default();
        held.slots.insert(id, (Arc::clone(&slot), 0));
        held.order.push_back(id);
        slot
    }

    /// Drops `id`'s slot if its load failed, so ids of failed loads (a
    /// corrupt frame can name any) do not pile up; the next request retries.
    fn forget_failed(&self, id: u32) {
        let mut held = self.lock();
        if held
            .slots
            .get(&id)
            .is_some_and(|(slot, _)| !slot.initialized())
        {
            held.slots.remove(&id);
            held.order.retain(|o| *o != id);
        }
    }

    /// Records a loaded dictionary's size and evicts the oldest while over
    /// the limit (never the one just loaded).
    fn loaded(&self, id: u32, size: u64) {
        let mut held = self.lock();
        held.loads += 1;
        if let Some(entry) = held.slots.get_mut(&id) {
            entry.1 = size;
        }
        held.bytes += size;
        while held.bytes > self.limit && held.order.len() > 1 {
            let Some(old) = held.order.pop_front() else {
                break;
            };
            if old == id {
                held.order.push_back(old);
                continue;
            }
            if let Some((_, size)) = held.slots.remove(&old) {
                held.bytes -= size;
            }
        }
    }
}

/// Stored payloads above this are decoded on the blocking pool, so a large
/// zstd entry does not stall the other requests of an async worker; below
/// it, handing the work over costs more than the decoding.
const DECODE_INLINE_MAX: usize = 256 * 1024;

impl DesStore {
    /// Writes `dict` to every store of the placement where it is not yet;
    /// an object of another dictionary under its id (a 31-bit collision) is
    /// an error, and the caller packs without this dictionary.
    pub async fn put_dictionary(&self, dict: &Dictionary) -> Result<()> {
        let key = dict_key(dict.id());
        let object = Bytes::from(dict.to_object());
        for objects in self.placement().stores() {
            match objects.get_range(&key, ByteRange::All).await {
                Ok((_, existing)) if existing == object => continue,
                Ok(_) => {
                    return Err(Error::Invalid(format!(
                        "{key} holds another dictionary with the same id"
                    )));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            objects
                .put(&key, object.clone(), PutOptions::default())
                .await?;
        }
        Ok(())
    }

    /// Dictionary `id` for the shard `shard_key`, from the cache or read
    /// and verified from the shard's store.
    pub async fn dictionary(&self, shard_key: &str, id: u32) -> Result<Arc<DecoderDict>> {
        let slot = self.dict_cache().slot(id);
        let objects = self.objects_for_key(shard_key)?;
        let loaded = slot
            .get_or_try_init(|| async {
                let key = dict_key(id);
                let dict = read_dictionary(objects.as_ref(), id, shard_key).await?;
                let prepared = dict.decoder().map_err(|e| Error::format(&key, e))?;
                // Prepared, a dictionary takes about its size again in
                // zstd's tables.
                self.dict_cache().loaded(id, 2 * prepared.size() as u64);
                Ok::<_, Error>(Arc::new(prepared))
            })
            .await;
        match loaded {
            Ok(dict) => Ok(Arc::clone(dict)),
            Err(e) => {
                self.dict_cache().forget_failed(id);
                Err(e)
            }
        }
    }

    /// Dictionary `id` as stored (in the placement's first store), verified.
    pub async fn stored_dictionary(&self, id: u32) -> Result<Dictionary> {
        read_dictionary(self.objects().as_ref(), id, &dict_key(id)).await
    }

    /// The latest dictionary recorded for `class`, if any.
    pub async fn latest_dictionary(&self, class: &str) -> Result<Option<LatestDict>> {
        let key = latest_key(class);
        let bytes = match self.objects().get_range(&key, ByteRange::All).await {
            Ok((_, b)) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let j: LatestJson = serde_json::from_slice(&bytes).map_err(|e| Error::corrupt(&key, e))?;
        Ok(Some(LatestDict {
            id: j.id,
            trained_at: std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(j.trained_at_unix_ms),
            ratio_to_plain: j.ratio_to_plain,
        }))
    }

    /// Records `latest` as `class`'s dictionary (after [`Self::put_dictionary`]).
    pub async fn set_latest_dictionary(&self, class: &str, latest: &LatestDict) -> Result<()> {
        let ms = latest
            .trained_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let j = LatestJson {
            id: latest.id,
            trained_at_unix_ms: ms,
            ratio_to_plain: latest.ratio_to_plain,
        };
        let body =
            serde_json::to_vec(&j).map_err(|e| Error::other("encoding a dictionary hint", e))?;
        self.objects()
            .put(&latest_key(class), body.into(), PutOptions::default())
            .await?;
        Ok(())
    }

    /// Verified original bytes of an inline entry from its stored bytes,
    /// loading its dictionary first when it has one.
    pub async fn decode_entry(
        &self,
        shard_key: &str,
        located: &Located,
        stored: Bytes,
    ) -> Result<Bytes> {
        let dict = match located.codec {
            Codec::ZstdDict => {
                let id = dict::frame_dict_id(&stored).ok_or_else(|| {
                    Error::corrupt(
                        shard_key,
                        format!("entry {:?} names no dictionary", located.uid),
                    )
                })?;
                Some(self.dictionary(shard_key, id).await?)
            }
            _ => None,
        };
        if stored.len() <= DECODE_INLINE_MAX {
            return located
                .decode_bytes_with(stored, dict.as_deref())
                .map_err(|e| Error::format(shard_key, e));
        }
        let located = located.clone();
        let key = shard_key.to_string();
        tokio::task::spawn_blocking(move || {
            located
                .decode_bytes_with(stored, dict.as_deref())
                .map_err(|e| Error::format(&key, e))
        })
        .await
        .map_err(|e| Error::other("decode task failed", e))?
    }
}

/// Reads and verifies `_dicts/<id>`; missing, it makes `needed_by` corrupt.
async fn read_dictionary(
    objects: &dyn ObjectStore,
    id: u32,
    needed_by: &str,
) -> Result<Dictionary> {
    let key = dict_key(id);
    let (_, object) =
        objects
            .get_range(&key, ByteRange::All)
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => {
                    Error::corrupt(needed_by, format!("it needs {key}, which is missing"))
                }
                _ => e,
            })?;
    // Two digests of a dictionary (at most `--dict-size`, 256 KiB by
    // default): well under a millisecond, fine on an async thread.
    Dictionary::parse(&object, id).map_err(|e| Error::format(&key, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Every class has its own record, the empty one (files without an
    /// extension or content type) included.
    #[tokio::test]
    async fn each_class_keeps_its_latest_dictionary() {
        let mem = crate::MemoryStore::new();
        let create = crate::store::CreateOptions {
            n_bits: Some(4),
            digest: None,
        };
        let (store, _) = DesStore::open_or_create(Arc::new(mem), create)
            .await
            .unwrap();
        let latest = |id| LatestDict {
            id,
            trained_at: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
            ratio_to_plain: 0.5,
        };
        for (class, id) in [("", 1), (".html", 2), ("text/plain", 3)] {
            assert!(store.latest_dictionary(class).await.unwrap().is_none());
            store
                .set_latest_dictionary(class, &latest(id))
                .await
                .unwrap();
        }
        for (class, id) in [("", 1), (".html", 2), ("text/plain", 3)] {
            let got = store.latest_dictionary(class).await.unwrap().unwrap();
            assert_eq!((got.id, got.ratio_to_plain), (id, 0.5), "{class:?}");
        }
    }
}
