//! The repacker's journal: which entries a rewrite is about to drop
//! (`_des/journal/<YYYYMMDD>/<HEX>.json`), written before the new
//! generation is published and removed once its tombstones are marked.
//!
//! Without it, a repacker killed between publishing and marking comes back,
//! finds the files gone and cannot tell "removed by me" from "never there":
//! the proof would say `Absent` for bytes it removed. With it, a file the
//! journal names that is gone from a generation at or after the journal's is
//! recorded as `Removed` in the journal's generation.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::keys::{ShardKey, StoreKey};
use crate::object::{ByteRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepackJournal {
    /// The generation being published.
    pub generation: u64,
    /// uids it leaves out.
    pub dropped: Vec<String>,
}

fn key(shard: &ShardKey) -> String {
    StoreKey::Journal {
        shard: shard.clone(),
    }
    .to_string()
}

pub async fn write(objects: &dyn ObjectStore, shard: &ShardKey, j: &RepackJournal) -> Result<()> {
    let body = serde_json::to_vec(j).map_err(|e| Error::other("repack journal", e))?;
    let put = PutOptions {
        mode: PutMode::Overwrite,
    };
    objects.put(&key(shard), Bytes::from(body), put).await?;
    Ok(())
}

pub async fn read(objects: &dyn ObjectStore, shard: &ShardKey) -> Result<Option<RepackJournal>> {
    let key = key(shard);
    match objects.get_range(&key, ByteRange::All).await {
        Ok((_, body)) => serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| Error::corrupt(&key, e)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub async fn clear(objects: &dyn ObjectStore, shard: &ShardKey) -> Result<()> {
    objects.delete(&key(shard)).await
}
