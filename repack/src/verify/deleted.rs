//! What verification reports about deletions: per shard, how many
//! tombstones are still pending and how much of it is deleted-but-present
//! bytes (the garbage a repack would reclaim).

use std::collections::HashMap;

use des_format::shard::AnyIndex;
use des_storage::tombstones::{TombstoneLog, TombstoneSet};
use des_storage::{DesStore, Result};

use crate::repack::state::shard_key_of;

/// Deletion state of a store, loaded once per run.
#[derive(Debug, Default)]
pub struct Deleted {
    /// Every tombstoned pair, applied or not.
    pub set: TombstoneSet,
    /// Pending tombstones per shard key.
    pub pending_by_shard: HashMap<String, u64>,
    pub pending_total: u64,
}

impl Deleted {
    pub async fn load(store: &DesStore) -> Result<Self> {
        let log = TombstoneLog::new(store);
        let set = TombstoneSet::load(&log).await?;
        let mut out = Self {
            set,
            ..Self::default()
        };
        let pending = log.pending().await?;
        let unnamed: Vec<_> = pending
            .iter()
            .filter(|n| n.name.uid.is_none())
            .cloned()
            .collect();
        let mut pairs: Vec<(String, u32)> = pending
            .into_iter()
            .filter_map(|n| n.name.uid.map(|u| (u, n.name.date)))
            .collect();
        for t in log.read_all(unnamed).await? {
            pairs.push((t.tombstone.uid, t.tombstone.date));
        }
        for (uid, date) in pairs {
            // An unroutable uid cannot be in any shard; nothing to count.
            if let Ok(key) = shard_key_of(store, &uid, date) {
                *out.pending_by_shard.entry(key).or_default() += 1;
                out.pending_total += 1;
            }
        }
        Ok(out)
    }

    /// (deleted entries present, garbage ratio) of a loaded v3 index.
    pub fn garbage(&self, index: &AnyIndex) -> (u64, f64) {
        let AnyIndex::V3(ix) = index else {
            return (0, 0.0);
        };
        let date = ix.trailer().date;
        let (mut inline, mut gone, mut count, mut deleted) = (0u64, 0u64, 0u64, 0u64);
        for e in ix.view().iter() {
            count += 1;
            let is_deleted = self.set.contains(e.uid, date);
            deleted += u64::from(is_deleted);
            if !e.is_external() {
                inline += e.stored_len();
                if is_deleted {
                    gone += e.stored_len();
                }
            }
        }
        let ratio = if inline > 0 {
            gone as f64 / inline as f64
        } else if count > 0 {
            deleted as f64 / count as f64
        } else {
            0.0
        };
        (deleted, ratio)
    }
}
