//! Which version of a shard the repacker last checked against every
//! tombstone of the store (`_des/checked/<YYYYMMDD>/<HEX>/<tag>`).
//!
//! An applied marker says a file is gone from one generation. A packer that
//! read the shard before the tombstone existed and published after the
//! repacker looked (the one race the deletion guard cannot close) makes a
//! newer generation that holds the file again. So every run re-checks each
//! shard that any tombstone routes to and whose current version differs
//! from the one recorded here, and records the version it checked. The tag
//! is a hash of the object's ETag and size, so one listing of this prefix
//! and one of the shards tell which changed, without reading a record.

use std::collections::HashMap;

use bytes::Bytes;

use crate::error::Result;
use crate::keys::{CHECKED_PREFIX, ShardKey, StoreKey};
use crate::object::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions};

/// The tag of a shard object's current version.
pub fn version_tag(meta: &ObjectMeta) -> String {
    let etag = meta.etag.as_deref().unwrap_or("");
    let bare = etag.trim().trim_start_matches("W/").trim_matches('"');
    format!(
        "{:016x}",
        fnv1a64(format!("{bare}\n{}", meta.size).as_bytes())
    )
}

/// Every recorded (shard, tag) of one object store.
pub async fn recorded(objects: &dyn ObjectStore) -> Result<HashMap<ShardKey, String>> {
    let mut out = HashMap::new();
    for meta in objects.list_all(CHECKED_PREFIX).await? {
        if let Some(StoreKey::Checked { shard, tag }) = StoreKey::parse(&meta.key) {
            out.insert(shard, tag);
        }
    }
    Ok(out)
}

/// Records `tag` as checked for `shard`, replacing `old` (written first,
/// removed after: a crash between leaves two tags, and a shard whose current
/// tag is either one counts as checked).
pub async fn record(
    objects: &dyn ObjectStore,
    shard: &ShardKey,
    tag: &str,
    old: Option<&str>,
) -> Result<()> {
    if old == Some(tag) {
        return Ok(());
    }
    let key = StoreKey::Checked {
        shard: shard.clone(),
        tag: tag.to_string(),
    };
    let put = PutOptions {
        mode: PutMode::Overwrite,
    };
    objects.put(&key.to_string(), Bytes::new(), put).await?;
    if let Some(old) = old {
        let old = StoreKey::Checked {
            shard: shard.clone(),
            tag: old.to_string(),
        };
        objects.delete(&old.to_string()).await?;
    }
    Ok(())
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
    async fn a_record_replaces_the_previous_one() {
        let objects = MemoryStore::new();
        let shard = ShardKey::new(20240517, 0x5C, 8);
        let a = version_tag(&meta("\"e1\"", 10));
        let b = version_tag(&meta("e2", 10));
        assert_eq!(a, version_tag(&meta("e1", 10)));
        assert_ne!(a, version_tag(&meta("e1", 11)));
        record(&objects, &shard, &a, None).await.unwrap();
        assert_eq!(recorded(&objects).await.unwrap().get(&shard), Some(&a));
        record(&objects, &shard, &b, Some(&a)).await.unwrap();
        let now = recorded(&objects).await.unwrap();
        assert_eq!((now.len(), now.get(&shard)), (1, Some(&b)));
    }
}
