//! The repacker's journal: which tombstoned entries a rewrite is about to
//! drop, written before the new generation is published and removed once
//! the run's markers are merged.
//!
//! Without it, a repacker killed between publishing and marking comes back,
//! finds the files gone and cannot tell "removed by me" from "never there":
//! the proof would say `Absent` for bytes it removed. With it, a file the
//! journal names that is gone from a generation at or after the journal's is
//! recorded as `Removed` in the journal's generation.
//!
//! A run keeps its entries in a few objects, `_des/journal/_run/<run
//! time>-<n>.json` (shard key → entry), each rewritten as entries are added
//! until it names [`CHUNK_UIDS`] uids: one PUT per rewrite, one DELETE per
//! chunk. Stores written before chunks have one object per shard,
//! `_des/journal/<YYYYMMDD>/<HEX>.json`; both are read.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use des_format::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::error::{Error, ErrorKind, Result};
use crate::keys::{JOURNAL_PREFIX, ShardKey, StoreKey};
use crate::object::{ByteRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, delete_all};

/// A chunk takes entries until it names this many uids (a few tens of KB).
pub const CHUNK_UIDS: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepackJournal {
    /// The generation being published.
    pub generation: u64,
    /// uids it leaves out (those with a tombstone pending).
    pub dropped: Vec<String>,
}

/// A run's chunk: shard key → entry.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Chunk {
    shards: BTreeMap<String, RepackJournal>,
}

fn run_prefix() -> String {
    format!("{JOURNAL_PREFIX}_run/")
}

/// Every journal entry of one object store, read once at a run's start.
#[derive(Debug, Default)]
pub struct Journals {
    by_shard: HashMap<ShardKey, RepackJournal>,
    /// Each object read, with the shards it names.
    objects: Vec<(String, Vec<ShardKey>)>,
}

impl Journals {
    /// One listing of `_des/journal/`, one read per object listed.
    pub async fn load(objects: &dyn ObjectStore) -> Result<Self> {
        let mut out = Self::default();
        let run = run_prefix();
        for meta in objects.list_all(JOURNAL_PREFIX).await? {
            let entries: Vec<(ShardKey, RepackJournal)> = if meta.key.starts_with(&run) {
                let Some(chunk) = read_json::<Chunk>(objects, &meta.key).await? else {
                    continue;
                };
                chunk
                    .shards
                    .into_iter()
                    .filter_map(|(k, j)| Some((ShardKey::parse(&k, None)?, j)))
                    .collect()
            } else if let Some(StoreKey::Journal { shard }) = StoreKey::parse(&meta.key) {
                match read_json::<RepackJournal>(objects, &meta.key).await? {
                    Some(j) => vec![(shard, j)],
                    None => continue,
                }
            } else {
                continue;
            };
            let shards = entries.iter().map(|(s, _)| s.clone()).collect();
            for (shard, j) in entries {
                out.insert(shard, j);
            }
            out.objects.push((meta.key, shards));
        }
        Ok(out)
    }

    /// The newest entry: a later rewrite of the same shard supersedes.
    fn insert(&mut self, shard: ShardKey, j: RepackJournal) {
        let newer = self
            .by_shard
            .get(&shard)
            .is_none_or(|old| j.generation >= old.generation);
        if newer {
            self.by_shard.insert(shard, j);
        }
    }

    pub fn get(&self, shard: &ShardKey) -> Option<&RepackJournal> {
        self.by_shard.get(shard)
    }

    /// Objects all of whose shards `done` says are finished with.
    pub fn finished(&self, done: impl Fn(&ShardKey) -> bool) -> Vec<String> {
        finished(&self.objects, done)
    }
}

/// The chunks one run writes to one object store.
#[derive(Debug)]
pub struct RunJournal {
    objects: Arc<dyn ObjectStore>,
    state: Mutex<RunState>,
}

#[derive(Debug, Default)]
struct RunState {
    started: String,
    seq: u32,
    chunk: Chunk,
    uids: usize,
    /// Keys of the chunks written so far, with the shards each names.
    written: Vec<(String, Vec<ShardKey>)>,
    /// Every entry written (a run rewrites a shard at most a few times).
    entries: HashMap<ShardKey, RepackJournal>,
}

impl RunJournal {
    pub fn new(objects: Arc<dyn ObjectStore>) -> Self {
        let state = RunState {
            started: crate::tombstones::format_time(Timestamp::now()),
            ..RunState::default()
        };
        Self {
            objects,
            state: Mutex::new(state),
        }
    }

    /// Durably records `j` for `shard` (one PUT) before its generation is
    /// published; nothing when an entry of this run already covers it.
    pub async fn add(&self, shard: &ShardKey, j: &RepackJournal) -> Result<()> {
        self.add_many(&[(shard.clone(), j.clone())]).await
    }

    /// Records several entries with one PUT (a run reading ahead journals
    /// what the shards it read will drop). Entries that one already written
    /// covers (same generation, no uid it lacks) are left out.
    pub async fn add_many(&self, entries: &[(ShardKey, RepackJournal)]) -> Result<()> {
        let mut st = self.state.lock().await;
        let fresh: Vec<&(ShardKey, RepackJournal)> = entries
            .iter()
            .filter(|(s, j)| !st.entries.get(s).is_some_and(|old| covers(old, j)))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        if st.uids >= CHUNK_UIDS {
            st.seq += 1;
            st.chunk = Chunk::default();
            st.uids = 0;
        }
        for (shard, j) in fresh {
            st.uids += j.dropped.len().max(1);
            st.chunk.shards.insert(shard.to_string(), j.clone());
            st.entries.insert(shard.clone(), j.clone());
        }
        let key = format!("{}{}-{:04}.json", run_prefix(), st.started, st.seq);
        let body = serde_json::to_vec(&st.chunk).map_err(|e| Error::other("repack journal", e))?;
        let put = PutOptions {
            mode: PutMode::Overwrite,
        };
        self.objects.put(&key, Bytes::from(body), put).await?;
        let shards: Vec<ShardKey> = st
            .chunk
            .shards
            .keys()
            .filter_map(|k| ShardKey::parse(k, None))
            .collect();
        match st.written.last_mut() {
            Some((k, names)) if *k == key => *names = shards,
            _ => st.written.push((key, shards)),
        }
        Ok(())
    }

    /// Chunks all of whose shards `done` says are finished with.
    pub async fn finished(&self, done: impl Fn(&ShardKey) -> bool) -> Vec<String> {
        finished(&self.state.lock().await.written, done)
    }

    /// The entry this run wrote for `shard`, if any.
    pub async fn get(&self, shard: &ShardKey) -> Option<RepackJournal> {
        self.state.lock().await.entries.get(shard).cloned()
    }
}

/// Keys of the objects (each with the shards it names) whose shards are all done.
fn finished(objects: &[(String, Vec<ShardKey>)], done: impl Fn(&ShardKey) -> bool) -> Vec<String> {
    objects
        .iter()
        .filter(|(_, shards)| shards.iter().all(&done))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Does `old` prove everything `new` would? Same generation, and every uid
/// `new` names (a superset is fine: recovery only counts a named uid as
/// removed once it is gone from the shard).
fn covers(old: &RepackJournal, new: &RepackJournal) -> bool {
    old.generation == new.generation && new.dropped.iter().all(|u| old.dropped.contains(u))
}

/// Deletes journal objects (a missing one is fine: a re-run after a crash).
pub async fn clear(objects: &dyn ObjectStore, keys: &[String]) -> Result<()> {
    delete_all(objects, keys.iter().cloned()).await
}

async fn read_json<T: serde::de::DeserializeOwned>(
    objects: &dyn ObjectStore,
    key: &str,
) -> Result<Option<T>> {
    match objects.get_range(key, ByteRange::All).await {
        Ok((_, body)) => serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| Error::corrupt(key, e)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::memory::MemoryStore;

    fn entry(generation: u64, uids: &[&str]) -> RepackJournal {
        RepackJournal {
            generation,
            dropped: uids.iter().map(|u| u.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn a_run_journal_is_read_back_by_the_next_run() {
        let mem = Arc::new(MemoryStore::new());
        let objects: Arc<dyn ObjectStore> = mem.clone();
        let a = ShardKey::new(20240517, 0x5C, 8);
        let b = ShardKey::new(20240518, 0x01, 8);
        let run = RunJournal::new(Arc::clone(&objects));
        run.add(&a, &entry(3, &["x", "y"])).await.unwrap();
        run.add(&b, &entry(1, &["z"])).await.unwrap();
        // One object, rewritten: the second write kept the first entry.
        assert_eq!(mem.list_all(JOURNAL_PREFIX).await.unwrap().len(), 1);
        let read = Journals::load(objects.as_ref()).await.unwrap();
        assert_eq!(read.get(&a), Some(&entry(3, &["x", "y"])));
        assert_eq!(read.get(&b), Some(&entry(1, &["z"])));
        // Not finished while one of its shards is not.
        assert!(read.finished(|s| *s == a).is_empty());
        let done = read.finished(|_| true);
        assert_eq!(run.finished(|_| true).await, done);
        clear(objects.as_ref(), &done).await.unwrap();
        assert!(mem.list_all(JOURNAL_PREFIX).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_entry_already_covered_costs_no_request() {
        let mem = Arc::new(MemoryStore::new());
        let objects: Arc<dyn ObjectStore> = mem.clone();
        let run = RunJournal::new(Arc::clone(&objects));
        let a = ShardKey::new(20240517, 0x5C, 8);
        let b = ShardKey::new(20240517, 0x5D, 8);
        run.add_many(&[
            (a.clone(), entry(2, &["x", "y"])),
            (b.clone(), entry(4, &["z"])),
        ])
        .await
        .unwrap();
        let key = &run.finished(|_| true).await[0];
        let (before, _) = mem.get_range(key, ByteRange::All).await.unwrap();
        // Fewer uids, same generation: covered, nothing written.
        run.add(&a, &entry(2, &["x"])).await.unwrap();
        let (same, _) = mem.get_range(key, ByteRange::All).await.unwrap();
        assert_eq!(before.etag, same.etag);
        // Another generation (a rebuild after a conflict): written.
        run.add(&a, &entry(3, &["x"])).await.unwrap();
        assert_eq!(run.get(&a).await, Some(entry(3, &["x"])));
        let read = Journals::load(objects.as_ref()).await.unwrap();
        assert_eq!(read.get(&a), Some(&entry(3, &["x"])));
        assert_eq!(read.get(&b), Some(&entry(4, &["z"])));
    }

    #[tokio::test]
    async fn chunks_fill_up_and_old_per_shard_journals_are_read() {
        let mem = Arc::new(MemoryStore::new());
        let objects: Arc<dyn ObjectStore> = mem.clone();
        let run = RunJournal::new(Arc::clone(&objects));
        let many: Vec<String> = (0..CHUNK_UIDS).map(|i| format!("u{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let a = ShardKey::new(20240517, 0x5C, 8);
        let b = ShardKey::new(20240517, 0x5D, 8);
        run.add(&a, &entry(2, &many)).await.unwrap();
        run.add(&b, &entry(2, &["v"])).await.unwrap();
        assert_eq!(run.finished(|_| true).await.len(), 2, "a second chunk");
        // A journal written before chunks, older than the run's entry.
        let old = StoreKey::Journal { shard: a.clone() }.to_string();
        let body = serde_json::to_vec(&entry(1, &["w"])).unwrap();
        mem.put(&old, Bytes::from(body), PutOptions::default())
            .await
            .unwrap();
        let read = Journals::load(objects.as_ref()).await.unwrap();
        assert_eq!(read.get(&a).unwrap().generation, 2, "the newer entry wins");
        assert_eq!(read.get(&b), Some(&entry(2, &["v"])));
        assert_eq!(read.finished(|_| true).len(), 3);
    }
}
