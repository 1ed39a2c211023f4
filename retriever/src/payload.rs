//! Opening an entry's bytes: inline entries are read, checked and decoded in
//! memory (their size is bounded by the packer's big-file threshold);
//! external ones are opened as a stream and checked while they are sent.

use bytes::Bytes;
use des_format::shard::Located;
use des_storage::store::external_key;
use des_storage::{ByteRange, DesStore, Error, GetOptions, GetResult};

use crate::lookup::Hit;

/// Inline payloads above this are decoded on the blocking pool, so a large
/// zstd entry does not stall the other requests of an HTTP worker.
const DECODE_INLINE_MAX: usize = 256 * 1024;

pub enum Payload {
    /// Decoded bytes that passed every check the entry has.
    Inline(Bytes),
    /// An opened external object, not yet checked (see [`crate::stream`]).
    External(Box<External>),
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inline(b) => write!(f, "Inline({} bytes)", b.len()),
            Self::External(e) => write!(f, "External({})", e.key),
        }
    }
}

pub struct External {
    pub key: String,
    pub located: Located,
    pub object: GetResult,
}

/// One storage request: the entry's range of the shard version the index came
/// from (If-Match), or the external object (kept beside its shard, so in the
/// shard's store when zoned).
pub async fn open(store: &DesStore, hit: &Hit) -> Result<Payload, Error> {
    let Some(key) = external_key(&hit.loaded.key, &hit.located) else {
        let stored = store.read_stored(&hit.loaded, &hit.located).await?;
        return decode(&hit.loaded.key, &hit.located, stored)
            .await
            .map(Payload::Inline);
    };
    let objects = store.objects_for_key(&hit.loaded.key)?;
    let object = objects.get(&key, GetOptions::range(ByteRange::All)).await?;
    let len = object.range.end - object.range.start;
    if len != hit.located.stored_len {
        return Err(Error::corrupt(
            &key,
            format!(
                "{}: object has {len} bytes, index says {}",
                hit.located.uid, hit.located.stored_len
            ),
        ));
    }
    Ok(Payload::External(Box::new(External {
        key,
        located: hit.located.clone(),
        object,
    })))
}

async fn decode(shard_key: &str, located: &Located, stored: Bytes) -> Result<Bytes, Error> {
    if stored.len() <= DECODE_INLINE_MAX {
        return located
            .decode_bytes(stored)
            .map_err(|e| Error::format(shard_key, e));
    }
    let located = located.clone();
    let key = shard_key.to_string();
    tokio::task::spawn_blocking(move || {
        located
            .decode_bytes(stored)
            .map_err(|e| Error::format(&key, e))
    })
    .await
    .map_err(|e| Error::other("decode task failed", e))?
}
