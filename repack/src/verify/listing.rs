//! Listing a store into shards to verify and stray objects.

use std::collections::BTreeSet;
use std::sync::Arc;

use des_storage::{DesStore, ObjectStore, ObjectStoreExt, Result};

use super::layout::{Listed, ShardTarget, classify};
use super::report::{Finding, FindingKind};

/// Every shard key of the store (each once) and every stray object, over
/// every store of its placement. With zones, a shard found in a zone that
/// does not own its index is a stray: readers would look for it elsewhere.
pub async fn list_targets(store: &DesStore) -> Result<(Vec<ShardTarget>, Vec<Finding>)> {
    let stores = store.placement().stores();
    let mut targets = Vec::new();
    let mut strays = Vec::new();
    let mut seen = BTreeSet::new();
    for objects in &stores {
        for meta in objects.list_all("").await? {
            match classify(store.layout(), &meta.key, store.n_bits()) {
                Listed::Shard(target) => {
                    let index = target.place.map_or(0, |p| p.shard_index);
                    if stores.len() > 1 && !owns(store, objects, index) {
                        strays.push(Finding {
                            key: meta.key,
                            uid: None,
                            kind: FindingKind::Stray,
                            reason: format!(
                                "found in {}, which does not hold shard {index:X}",
                                objects.describe()
                            ),
                        });
                    } else if seen.insert(target.key.clone()) {
                        targets.push(target);
                    }
                }
                Listed::Stray(finding) => strays.push(finding),
                Listed::Ignored => {}
            }
        }
    }
    Ok((targets, strays))
}

fn owns(store: &DesStore, objects: &Arc<dyn ObjectStore>, shard_index: u32) -> bool {
    store
        .objects_for_shard(shard_index)
        .is_ok_and(|owner| Arc::ptr_eq(&owner, objects))
}
