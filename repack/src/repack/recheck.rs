//! Which shards to re-check: those some tombstone routes to whose current
//! version differs from the one last checked (`des_storage::protocol::
//! checked`). One read of the records per store, one listing of each
//! date directory that holds such shards: the cost follows the number of
//! days with deletions that the retention rules keep, not the number of
//! tombstones.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use des_storage::keys::ShardKey;
use des_storage::protocol::checked::{self, Versions};
use des_storage::{DesStore, ObjectMeta, ObjectStore, ObjectStoreExt};

use super::{Ctx, lock};
use crate::error::Result;

/// The checked versions of every store of the placement (a shard's record
/// lives in the store holding the shard).
#[derive(Default)]
pub(super) struct Checked {
    stores: Vec<(Arc<dyn ObjectStore>, Versions)>,
}

impl Checked {
    /// One listing (and one map read) per store.
    pub async fn load(store: &DesStore) -> Result<Self> {
        let mut stores = Vec::new();
        for objects in store.placement().stores() {
            let versions = Versions::load(objects.as_ref()).await?;
            stores.push((objects, versions));
        }
        Ok(Self { stores })
    }

    pub fn get(&self, shard: &ShardKey) -> Option<&String> {
        self.stores.iter().find_map(|(_, v)| v.get(shard))
    }

    fn of(&mut self, owner: &Arc<dyn ObjectStore>) -> Option<&mut Versions> {
        self.stores
            .iter_mut()
            .find(|(o, _)| Arc::ptr_eq(o, owner))
            .map(|(_, v)| v)
    }

    /// Records that this version of the shard was checked.
    pub fn set(&mut self, owner: &Arc<dyn ObjectStore>, shard: &ShardKey, version: &ObjectMeta) {
        if let Some(v) = self.of(owner) {
            v.set(shard, checked::version_tag(version));
        }
    }

    /// Forgets a shard whose object is gone.
    pub fn remove(&mut self, owner: &Arc<dyn ObjectStore>, shard: &ShardKey) {
        if let Some(v) = self.of(owner) {
            v.remove(shard);
        }
    }

    /// Writes each store's map that changed (one request each).
    pub async fn save(&mut self) -> Result<()> {
        for (objects, versions) in &mut self.stores {
            versions.save(objects.as_ref()).await?;
        }
        Ok(())
    }
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
            if lock(&ctx.checked).get(&shard) != Some(&checked::version_tag(meta)) {
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
