//! Reading ahead: the indexes of the next shards to process are read first
//! and what their rewrites will drop journaled in one request, instead of
//! one journal write per shard. Each shard is then processed as before from
//! its index in memory (with the holds as of its start, I5); a
//! rewrite whose drops the journal already covers writes no entry, and one
//! that differs (a conflict rebuilt it on a newer generation) writes its
//! own.
//!
//! An entry for a shard that is not rewritten after all proves nothing
//! wrong: recovery counts a journaled uid as removed only once it is gone
//! from the shard, which only a rewrite of the repacker does.

use std::collections::HashMap;
use std::sync::Arc;

use des_storage::keys::ShardKey;
use des_storage::protocol::RepackJournal;
use des_storage::{LoadedIndex, ObjectStore};

use super::holds_view::unheld;
use super::state::PendingTomb;
use super::{Ctx, INDEX_READ, Trigger, assess, decide, shard_store, tombstoned};
use crate::error::Result;

/// Most shards read ahead at once.
const MAX_SHARDS: usize = 64;
/// Most bytes of read-ahead index reads held at once (each holds up to
/// `INDEX_READ` bytes): the read-ahead's memory bound.
const MAX_BYTES: u64 = 64 << 20;

/// A shard's index as read ahead: `None` when there was no shard object.
pub(super) type ReadAhead = HashMap<String, Option<LoadedIndex>>;

/// Reads the indexes of the first of `items` (up to [`MAX_SHARDS`] and
/// [`MAX_BYTES`]) and journals, in one request per store, what each
/// rewrite will drop. Returns the indexes read and how many items the
/// window takes (at least one). A shard whose read failed is read again
/// when processed, where an error is that shard's alone; if the journal
/// cannot be written, no index is returned and each shard journals its own
/// rewrite.
pub(super) async fn read_ahead(
    ctx: &Ctx<'_>,
    items: &[(String, Vec<PendingTomb>, Trigger)],
) -> (ReadAhead, usize) {
    let most = items.len().clamp(1, MAX_SHARDS);
    if ctx.opts.dry_run || items.len() < 2 {
        return (ReadAhead::new(), most);
    }
    match read(ctx, &items[..most]).await {
        Ok((ahead, taken)) => (ahead, taken.max(1)),
        Err(_) => (ReadAhead::new(), most),
    }
}

async fn read(
    ctx: &Ctx<'_>,
    items: &[(String, Vec<PendingTomb>, Trigger)],
) -> Result<(ReadAhead, usize)> {
    let mut out = ReadAhead::new();
    let mut taken = 0;
    let holds = ctx.holds.current(ctx.store).await?;
    let cutoffs = ctx.expiry.as_ref().map(|e| e.cutoffs.clone());
    let mut bytes = 0u64;
    let mut entries: Vec<(Arc<dyn ObjectStore>, ShardKey, RepackJournal)> = Vec::new();
    for (key, pending, trigger) in items {
        if bytes >= MAX_BYTES {
            break;
        }
        taken += 1;
        let Ok(loaded) = ctx.store.load_index(key).await else {
            continue;
        };
        if let Some(l) = &loaded {
            let index_len = l.index.trailer().map_or(0, |t| t.index_len);
            bytes += l.object.size.min(INDEX_READ).max(index_len);
            let pending = unheld(pending, &holds);
            let Ok(garbage) = assess(ctx, &holds, cutoffs.as_ref(), l) else {
                continue;
            };
            let dropped = tombstoned(&pending, &garbage.drop);
            let rewrites = decide(ctx, &pending, *trigger, &garbage).is_some();
            if rewrites && !dropped.is_empty() {
                let (owner, shard) = shard_store(ctx, key)?;
                let generation = l.index.trailer().map_or(0, |t| t.generation) + 1;
                entries.push((
                    owner,
                    shard,
                    RepackJournal {
                        generation,
                        dropped,
                    },
                ));
            }
        }
        out.insert(key.clone(), loaded);
    }
    ctx.journals.write_many(&entries).await?;
    Ok((out, taken))
}
