//! Checking one entry's payload: stored length, CRC32C, decoding, digest;
//! and for a big file, its chunk table (SPEC §6.5) when it has one.

use des_format::shard::{Located, Source};
use des_storage::bigchunks::{TableLookup, load_table};
use des_storage::store::{external_key, verify_stream};
use des_storage::{DesStore, Error, ErrorKind, Layout, LoadedIndex, ObjectStore};

/// Inline payloads up to this size are read into memory and checked in one go;
/// larger ones (only a corrupt or unusual index has them) are streamed like
/// external payloads, so an index claiming a huge length cannot exhaust memory.
pub const MAX_BUFFERED: u64 = 16 << 20;

/// Why an entry did not pass.
#[derive(Debug)]
pub enum EntryFailure {
    Corrupt(String),
    MissingExternal(String),
    /// The big file is sound but its chunk table is not: readers of a range
    /// of it fall back to whole reads until it is rewritten.
    BadChunkTable(String),
    /// The payload is out of reach from this store; not evidence of corruption.
    Unverifiable(String),
    /// The shard object changed or disappeared under us: re-read its index.
    ShardChanged,
    Io(Error),
}

pub async fn check_entry(
    store: &DesStore,
    loaded: &LoadedIndex,
    located: &Located,
) -> Result<(), EntryFailure> {
    match located.shard_range() {
        Some(_) if located.stored_len <= MAX_BUFFERED && located.orig_len <= MAX_BUFFERED => {
            let stored = store
                .read_stored(loaded, located)
                .await
                .map_err(shard_read_error)?;
            // Fails as corrupt on bad bytes (length, CRC, codec, digest) and
            // on a missing or damaged dictionary; otherwise it is I/O.
            match store.decode_entry(&loaded.key, located, stored).await {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    Err(EntryFailure::Corrupt(e.to_string()))
                }
                Err(e) => Err(EntryFailure::Io(e)),
            }
        }
        Some(range) => {
            let etag = loaded.object.etag.clone();
            let objects = store
                .objects_for_key(&loaded.key)
                .map_err(EntryFailure::Io)?;
            verify_stream(objects, &loaded.key, Some(range), located, etag)
                .await
                .map_err(shard_read_error)
        }
        None => check_external(store, loaded, located).await,
    }
}

async fn check_external(
    store: &DesStore,
    loaded: &LoadedIndex,
    located: &Located,
) -> Result<(), EntryFailure> {
    let key = external_key(&loaded.key, located)
        .ok_or_else(|| EntryFailure::Corrupt("entry has no payload".into()))?;
    let from_store_root = matches!(
        located.source,
        Source::External {
            relative_to_shard: false,
            ..
        }
    );
    if from_store_root && store.layout() != Layout::V3 {
        return Err(EntryFailure::Unverifiable(format!(
            "external payload {key} not checked: the shard is not inside a v3 store \
             (no _des/store.json two levels up)"
        )));
    }
    // Big files live in the same store (zone) as the shard referencing them.
    let objects = store
        .objects_for_key(&loaded.key)
        .map_err(EntryFailure::Io)?;
    match verify_stream(objects.clone(), &key, None, located, None).await {
        Ok(()) => check_table(objects.as_ref(), &key, located).await,
        Err(e) if e.kind() == ErrorKind::NotFound => Err(EntryFailure::MissingExternal(format!(
            "external payload {key} is missing"
        ))),
        Err(e) if e.kind() == ErrorKind::Corrupt => Err(EntryFailure::Corrupt(e.to_string())),
        Err(e) => Err(EntryFailure::Io(e)),
    }
}

/// A table is optional (big files packed before tables have none), but one
/// that exists must bind to the entry: readers would otherwise log it as
/// corruption on every ranged read. Only the binding is checked (stored
/// length, combined CRC32C, the table's own checksum), not each chunk
/// against the object, which would take a second read of it.
async fn check_table(
    objects: &dyn ObjectStore,
    key: &str,
    located: &Located,
) -> Result<(), EntryFailure> {
    match load_table(objects, key, located).await {
        Ok(TableLookup::Missing | TableLookup::Valid(_)) => Ok(()),
        Ok(TableLookup::Invalid(e)) => Err(EntryFailure::BadChunkTable(e.to_string())),
        Err(e) => Err(EntryFailure::Io(e)),
    }
}

/// Errors reading from the shard object itself.
fn shard_read_error(e: Error) -> EntryFailure {
    match e.kind() {
        ErrorKind::Corrupt => EntryFailure::Corrupt(e.to_string()),
        // Reads carry the index's ETag: a rewritten or removed shard lands here.
        ErrorKind::PreconditionFailed | ErrorKind::NotFound => EntryFailure::ShardChanged,
        _ => EntryFailure::Io(e),
    }
}
