//! A run's journals (`des_storage::protocol::journal`): the entries earlier
//! runs left (read once at the start, for the shards whose tombstones they
//! prove removed), the chunks this run writes before each publish, and which
//! objects can go once the run's markers are merged.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use des_storage::keys::ShardKey;
use des_storage::protocol::RepackJournal;
use des_storage::protocol::journal::{self, Journals, RunJournal};
use des_storage::{DesStore, ObjectStore};

use super::lock;
use crate::error::Result;

pub(super) struct RunJournals {
    /// Per object store: what was there at the start, what this run writes.
    stores: Vec<(Arc<dyn ObjectStore>, Journals, Arc<RunJournal>)>,
    /// Shards with tombstones pending at the start.
    pending: HashSet<ShardKey>,
    /// Shards whose tombstones this run marked.
    done: Mutex<HashSet<ShardKey>>,
}

impl RunJournals {
    pub async fn load(store: &DesStore, pending: HashSet<ShardKey>) -> Result<Self> {
        let mut stores = Vec::new();
        for objects in store.placement().stores() {
            let found = Journals::load(objects.as_ref()).await?;
            let run = Arc::new(RunJournal::new(Arc::clone(&objects)));
            stores.push((objects, found, run));
        }
        Ok(Self {
            stores,
            pending,
            done: Mutex::default(),
        })
    }

    fn of(
        &self,
        owner: &Arc<dyn ObjectStore>,
    ) -> Option<&(Arc<dyn ObjectStore>, Journals, Arc<RunJournal>)> {
        self.stores.iter().find(|(o, _, _)| Arc::ptr_eq(o, owner))
    }

    /// Where to journal a rewrite of a shard of `owner`.
    pub fn writer(&self, owner: &Arc<dyn ObjectStore>) -> Option<Arc<RunJournal>> {
        self.of(owner).map(|(_, _, run)| Arc::clone(run))
    }

    /// Journals entries of shards of several stores (each with the store
    /// holding it): one request per store; nothing for an entry that drops
    /// no tombstoned uid.
    pub async fn write_many(
        &self,
        entries: &[(Arc<dyn ObjectStore>, ShardKey, RepackJournal)],
    ) -> Result<()> {
        for (objects, _, run) in &self.stores {
            let mine: Vec<(ShardKey, RepackJournal)> = entries
                .iter()
                .filter(|(owner, _, e)| Arc::ptr_eq(owner, objects) && !e.dropped.is_empty())
                .map(|(_, shard, e)| (shard.clone(), e.clone()))
                .collect();
            if !mine.is_empty() {
                run.add_many(&mine).await?;
            }
        }
        Ok(())
    }

    /// The newest entry for `shard`: this run's, else one found at the start.
    pub async fn entry(
        &self,
        owner: &Arc<dyn ObjectStore>,
        shard: &ShardKey,
    ) -> Option<RepackJournal> {
        let (_, found, run) = self.of(owner)?;
        match run.get(shard).await {
            Some(j) => Some(j),
            None => found.get(shard).cloned(),
        }
    }

    /// The shard's tombstones are marked (in memory, merged at the end).
    pub fn done(&self, shard: &ShardKey) {
        lock(&self.done).insert(shard.clone());
    }

    /// Once the run's markers are merged: deletes every journal object all
    /// of whose shards are done, or had nothing pending (their entries
    /// prove nothing any more). The rest stay for the next run.
    pub async fn clear_finished(&self) -> Result<()> {
        let done = lock(&self.done).clone();
        let finished = |s: &ShardKey| done.contains(s) || !self.pending.contains(s);
        for (objects, found, run) in &self.stores {
            let mut keys = found.finished(finished);
            keys.extend(run.finished(finished).await);
            journal::clear(objects.as_ref(), &keys).await?;
        }
        Ok(())
    }
}
