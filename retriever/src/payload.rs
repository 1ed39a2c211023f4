//! Opening an entry's bytes: inline entries are read, checked and decoded in
//! memory (their size is bounded by the packer's big-file threshold);
//! external ones are opened as a stream and checked while they are sent.

use bytes::Bytes;
use des_format::shard::Located;
use des_storage::store::external_key;
use std::ops::Range;

use des_storage::bigchunks::{self, ChunkStream, WindowRead};
use des_storage::{ByteRange, DesStore, Error, GetOptions, GetResult};

use crate::lookup::Hit;

/// Bytes a chunked read must save over reading the whole object to be
/// worth its extra request: two of the packer's 1 MiB chunks.
const WORTH_A_TABLE: u64 = 2 << 20;

pub enum Payload {
    /// Decoded bytes that passed every check the entry has.
    Inline(Bytes),
    /// An opened external object, not yet checked (see [`crate::stream`]).
    External(Box<External>),
    /// Exactly the requested window of an external object, read through its
    /// chunk table: each chunk is checked before its bytes are yielded.
    Window(Box<ChunkStream>),
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inline(b) => write!(f, "Inline({} bytes)", b.len()),
            Self::External(e) => write!(f, "External({})", e.key),
            Self::Window(w) => write!(f, "Window({:?})", w.covering()),
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
        let stored = store.read_stored(&*hit.loaded, &hit.located).await?;
        return store
            .decode_entry(&hit.loaded.key, &hit.located, stored)
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

/// A range of an external entry through its chunk table (SPEC §6.5): one
/// small read for the table, one for the chunks covering `window`, instead
/// of the whole object. `None` when the entry has no usable table (packed
/// before tables existed, compressed, or a table that fails its binding to
/// the index, which is counted in `corruption`): then the whole-object path
/// serves the range.
pub async fn open_window(
    store: &DesStore,
    hit: &Hit,
    window: Range<u64>,
    corruption: &prometheus::IntCounter,
) -> Result<Option<Payload>, Error> {
    let Some(key) = external_key(&hit.loaded.key, &hit.located) else {
        return Ok(None);
    };
    // The table costs a request, and the chunks around the window are read
    // whole: when that is about the object, one read of it (which also
    // checks the digest) is the better deal.
    if (window.end - window.start).saturating_add(WORTH_A_TABLE) >= hit.located.stored_len {
        return Ok(None);
    }
    let objects = store.objects_for_key(&hit.loaded.key)?;
    Ok(
        match bigchunks::read_window(objects.as_ref(), &key, &hit.located, window).await? {
            WindowRead::Chunks(stream) => Some(Payload::Window(Box::new(stream))),
            WindowRead::Fallback => None,
            WindowRead::InvalidTable(e) => {
                corruption.inc();
                tracing::error!(object = %key, uid = %hit.located.uid, error = %e, "chunk table unusable; reading the whole object");
                None
            }
        },
    )
}
