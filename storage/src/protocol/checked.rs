//! Which version of a shard the repacker last checked against every
//! tombstone of the store: one map per object store,
//! `_des/checked/versions.json` (shard key → tag), rewritten once at the
//! end of each run that checked something.
//!
//! An applied marker says a file is gone from one generation. A packer that
//! read the shard before the tombstone existed and published after the
//! repacker looked (the one race the deletion guard cannot close) makes a
//! newer generation that holds the file again. So every run re-checks each
//! shard that any tombstone routes to and whose current version differs
//! from the one recorded here, and records the version it checked. The tag
//! is a hash of the object's ETag and size, so one read of the map and one
//! listing of the shards tell which changed, without reading a shard.
//!
//! A run that dies before saving the map only makes the next run re-check
//! the shards it wrote (one index read each). Stores written before the map
//! have one empty object per shard, `_des/checked/<YYYYMMDD>/<HEX>/<tag>`:
//! read, folded into the map and deleted when it is next saved.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::keys::{CHECKED_PREFIX, ShardKey, StoreKey};
use crate::object::{
    ByteRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, delete_all,
};

/// The tag of a shard object's current version.
pub fn version_tag(meta: &ObjectMeta) -> String {
    let etag = meta.etag.as_deref().unwrap_or("");
    let bare = etag.trim().trim_start_matches("W/").trim_matches('"');
    format!(
        "{:016x}",
        fnv1a64(format!("{bare}\n{}", meta.size).as_bytes())
    )
}

/// Where the map lives in each object store.
pub const VERSIONS_KEY: &str = "_des/checked/versions.json";

/// One object store's checked versions.
#[derive(Debug, Clone, Default)]
pub struct Versions {
    tags: HashMap<ShardKey, String>,
    /// Per-shard records of the old layout, deleted once the map is saved.
    legacy: Vec<String>,
    changed: bool,
}

#[derive(Serialize, Deserialize)]
struct Body {
    /// Shard key (`YYYYMMDD/HEX.des`) → tag.
    tags: BTreeMap<String, String>,
}

impl Versions {
    /// One listing of `_des/checked/`, and the map if there is one.
    pub async fn load(objects: &dyn ObjectStore) -> Result<Self> {
        let mut out = Self::default();
        let mut has_map = false;
        for meta in objects.list_all(CHECKED_PREFIX).await? {
            if meta.key == VERSIONS_KEY {
                has_map = true;
            } else if let Some(StoreKey::Checked { shard, tag }) = StoreKey::parse(&meta.key) {
                out.tags.insert(shard, tag);
                out.legacy.push(meta.key);
            }
        }
        if has_map {
            match objects.get_range(VERSIONS_KEY, ByteRange::All).await {
                Ok((_, body)) => {
                    let body: Body = serde_json::from_slice(&body)
                        .map_err(|e| Error::corrupt(VERSIONS_KEY, e))?;
                    // The map is newer than any per-shard record left beside it.
                    out.tags.extend(
                        body.tags
                            .into_iter()
                            .filter_map(|(k, t)| Some((ShardKey::parse(&k, None)?, t))),
                    );
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    pub fn get(&self, shard: &ShardKey) -> Option<&String> {
        self.tags.get(shard)
    }

    /// Records that the version tagged `tag` of `shard` was checked.
    pub fn set(&mut self, shard: &ShardKey, tag: String) {
        if self.tags.get(shard) != Some(&tag) {
            self.tags.insert(shard.clone(), tag);
            self.changed = true;
        }
    }

    /// Forgets `shard` (its object is gone).
    pub fn remove(&mut self, shard: &ShardKey) {
        self.changed |= self.tags.remove(shard).is_some();
    }

    pub fn len(&self) -> usize {
        self.tags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// Writes the map if anything changed (one PUT, atomic: a reader sees
    /// the old map or the new), then deletes the old layout's records.
    pub async fn save(&mut self, objects: &dyn ObjectStore) -> Result<()> {
        if !self.changed && self.legacy.is_empty() {
            return Ok(());
        }
        let body = Body {
            tags: self
                .tags
                .iter()
                .map(|(k, t)| (k.to_string(), t.clone()))
                .collect(),
        };
        let body = serde_json::to_vec(&body).map_err(|e| Error::other("checked versions", e))?;
        let put = PutOptions {
            mode: PutMode::Overwrite,
        };
        objects.put(VERSIONS_KEY, Bytes::from(body), put).await?;
        delete_all(objects, std::mem::take(&mut self.legacy).into_iter()).await?;
        self.changed = false;
        Ok(())
    }
}

/// Spelled out: tags written today must compare equal in ten years.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::memory::MemoryStore;

    fn meta(etag: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: "20240517/5C.des".into(),
            size,
            etag: Some(etag.into()),
        }
    }

    #[tokio::test]
    async fn the_map_replaces_old_records_and_survives_a_reload() {
        let objects = MemoryStore::new();
        let shard = ShardKey::new(20240517, 0x5C, 8);
        let other = ShardKey::new(20240518, 0x01, 8);
        let a = version_tag(&meta("\"e1\"", 10));
        let b = version_tag(&meta("e2", 10));
        assert_eq!(a, version_tag(&meta("e1", 10)));
        assert_ne!(a, version_tag(&meta("e1", 11)));
        // A store written before the map: one empty object per shard.
        for (s, t) in [(&shard, &a), (&other, &a)] {
            let old = StoreKey::Checked {
                shard: s.clone(),
                tag: t.clone(),
            };
            objects
                .put(&old.to_string(), Bytes::new(), PutOptions::default())
                .await
                .unwrap();
        }
        let mut v = Versions::load(&objects).await.unwrap();
        assert_eq!((v.len(), v.get(&shard)), (2, Some(&a)));
        v.set(&shard, b.clone());
        v.remove(&other);
        v.save(&objects).await.unwrap();
        let keys: Vec<String> = objects
            .list_all(CHECKED_PREFIX)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, vec![VERSIONS_KEY.to_string()], "old records deleted");
        let again = Versions::load(&objects).await.unwrap();
        assert_eq!((again.len(), again.get(&shard)), (1, Some(&b)));
        assert_eq!(again.get(&other), None);
    }

    #[tokio::test]
    async fn nothing_changed_writes_nothing() {
        let objects = MemoryStore::new();
        let mut v = Versions::load(&objects).await.unwrap();
        v.save(&objects).await.unwrap();
        assert!(objects.list_all("").await.unwrap().is_empty());
        let shard = ShardKey::new(20240517, 0x5C, 8);
        v.set(&shard, "t".into());
        v.save(&objects).await.unwrap();
        v.set(&shard, "t".into());
        assert!(!v.changed, "the same tag again is no change");
    }
}
