//! The tombstone state a run works from: every deleted pair, the pending
//! tombstones with their uids, and which of those a legal hold keeps.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use des_format::Timestamp;
use des_storage::DesStore;
use des_storage::keys::ShardKey;
use des_storage::tombstones::{LoggedName, TombstoneLog, TombstoneSet};

use crate::error::{RepackError, Result};
use crate::holds::HoldSet;

/// A tombstone not yet applied.
#[derive(Debug, Clone)]
pub struct PendingTomb {
    pub at: LoggedName,
    pub uid: String,
    pub date: u32,
}

impl PendingTomb {
    pub fn logged_at(&self) -> Timestamp {
        self.at.name.logged_at
    }
}

#[derive(Debug, Default)]
pub struct TombState {
    /// Every tombstoned pair, applied or not: a rewrite drops all of them.
    pub set: TombstoneSet,
    pub total: u64,
    /// Pending and not held, by shard key.
    pub by_shard: BTreeMap<String, Vec<PendingTomb>>,
    /// Pending but held: (store, name) of each.
    pub held: HashSet<(usize, String)>,
    /// Every shard some tombstone (applied, or pending and not held) routes
    /// to: the shards whose changes are re-checked.
    pub routed: BTreeSet<String>,
}

/// The v3 key of the shard holding `(uid, date)`.
pub fn shard_key_of(store: &DesStore, uid: &str, date: u32) -> Result<String> {
    ShardKey::of(uid, date, store.n_bits())
        .map(|k| k.to_string())
        .ok_or_else(|| RepackError::Invalid(format!("{uid:?} cannot be routed")))
}

pub async fn load(log: &TombstoneLog, holds: &HoldSet) -> Result<TombState> {
    let (pending, applied) = log.names_by_state().await?;
    let mut state = TombState {
        total: (pending.len() + applied.len()) as u64,
        ..TombState::default()
    };
    // Listed after the small records: a record compacted meanwhile is in
    // one of these (the compaction writes before it deletes).
    let n_bits = log.store().n_bits();
    for seg in log.segment_lookups().await? {
        state.total += seg.entries.len() as u64;
        for e in &seg.entries {
            if e.shard != u32::MAX {
                state
                    .routed
                    .insert(ShardKey::new(e.date, e.shard, n_bits).to_string());
            }
        }
        state.set.insert_segment(&seg);
    }
    let mut pending_tombs = Vec::with_capacity(pending.len());
    let mut unnamed = Vec::new();
    for n in applied {
        match &n.name.uid {
            Some(uid) => {
                state.set.insert(uid, n.name.date);
                route(log.store(), &mut state.routed, uid, n.name.date);
            }
            None => unnamed.push(n),
        }
    }
    let mut unnamed_pending = HashSet::new();
    for n in pending {
        match n.name.uid.clone() {
            Some(uid) => {
                state.set.insert(&uid, n.name.date);
                pending_tombs.push(PendingTomb {
                    date: n.name.date,
                    uid,
                    at: n,
                });
            }
            None => {
                unnamed_pending.insert(n.clone());
                unnamed.push(n);
            }
        }
    }
    // Uids too long for their object names: read those records.
    for logged in log.read_all(unnamed).await? {
        let t = &logged.tombstone;
        state.set.insert(&t.uid, t.date);
        route(log.store(), &mut state.routed, &t.uid, t.date);
        if unnamed_pending.contains(&logged.at) {
            pending_tombs.push(PendingTomb {
                uid: t.uid.clone(),
                date: t.date,
                at: logged.at,
            });
        }
    }
    for p in pending_tombs {
        if holds.holding(&p.uid, p.date).is_some() {
            state.held.insert((p.at.store, p.at.name.name.clone()));
            continue;
        }
        let key = shard_key_of(log.store(), &p.uid, p.date)?;
        state.routed.insert(key.clone());
        state.by_shard.entry(key).or_default().push(p);
    }
    Ok(state)
}

/// An unroutable uid is in no shard: nothing to re-check for it.
fn route(store: &DesStore, routed: &mut BTreeSet<String>, uid: &str, date: u32) {
    if let Ok(key) = shard_key_of(store, uid, date) {
        routed.insert(key);
    }
}
