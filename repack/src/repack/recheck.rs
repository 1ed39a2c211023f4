//! Which shards to re-check: those some tombstone routes to whose current
//! version differs from the one last checked (`des_storage::protocol::
//! checked`). One listing of the records per store, one listing of each
//! date directory that holds such shards: the cost follows the number of
//! days with deletions that the retention rules keep, not the number of
//! tombstones.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use des_storage::keys::ShardKey;
use des_storage::protocol::checked;
use des_storage::{DesStore, ObjectStore, ObjectStoreExt};

use super::Ctx;
use crate::error::Result;

/// Every recorded (shard, tag), over all stores of the placement.
pub(super) async fn recorded(store: &DesStore) -> Result<HashMap<ShardKey, String>> {
    let mut out = HashMap::new();
    for objects in store.placement().stores() {
        out.extend(checked::recorded(objects.as_ref()).await?);
    }
    Ok(out)
}

/// Shard keys to re-check, in key order; `done` were processed this run.
pub(super) async fn changed(ctx: &Ctx<'_>, done: &HashSet<String>) -> Result<Vec<String>> {
    let n_bits = ctx.store.n_bits();
    let mut by_dir: BTreeMap<(String, usize), Vec<ShardKey>> = BTreeMap::new();
    let stores = ctx.store.placement().stores();
    for key in ctx.state.routed.iter().filter(|k| !done.contains(*k)) {
        let Some(shard) = ShardKey::parse(key, Some(n_bits)) else {
            continue;
        };
        // A date the rules expire entirely is the expiry candidates' job
        // (a changed shard of it is one); listing it here again would cost
        // a LIST per day of deletions ever made, growing without end.
        if ctx
            .expiry
            .as_ref()
            .is_some_and(|e| e.cutoffs.expires_all(shard.date))
        {
            continue;
        }
        let owner = ctx.store.objects_for_key(key)?;
        let pos = stores
            .iter()
            .position(|s| Arc::ptr_eq(s, &owner))
            .unwrap_or(0);
        by_dir
            .entry((format!("{:08}/", shard.date), pos))
            .or_default()
            .push(shard);
    }
    let mut out = Vec::new();
    for ((dir, pos), shards) in by_dir {
        let Some(objects) = stores.get(pos) else {
            continue;
        };
        let listed = list_dir(objects.as_ref(), &dir).await?;
        for shard in shards {
            let key = shard.to_string();
            let Some(meta) = listed.get(&key) else {
                continue;
            };
            if ctx.checked.get(&shard) != Some(&checked::version_tag(meta)) {
                out.push(key);
            }
        }
    }
    Ok(out)
}

async fn list_dir(
    objects: &dyn ObjectStore,
    dir: &str,
) -> Result<HashMap<String, des_storage::ObjectMeta>> {
    Ok(objects
        .list_all(dir)
        .await?
        .into_iter()
        .map(|m| (m.key.clone(), m))
        .collect())
}
