//! "Applied" markers: the repacker's proof that a tombstone's file is gone
//! from its shard, written only after the shard generation without the
//! file is published. A crash before the marker leaves the tombstone
//! pending, and the next run finds the file already gone and just writes
//! the marker.
//!
//! Written today: one [`AppliedBatch`] per repack run,
//! `_tombstones_applied/_run/<time>.json`, naming every log name the run
//! applied with its shard and generation ([`RunMarkers`]; written by the
//! run's compaction right before it merges them, so usually gone when the
//! run ends). Still read: one batch per shard generation,
//! `_tombstones_applied/<shard key>/<generation or "none">.json` (runs
//! before run batches), and one [`AppliedMarker`]
//! per tombstone under the tombstone's own name (stores written before
//! batches). Only the repacker writes markers, under its lease.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use des_format::Timestamp;
use serde::{Deserialize, Serialize};

use super::key::APPLIED_PREFIX;
use super::key::parse_name;
use super::log::{LoggedName, TombstoneLog};
use crate::error::{Error, ErrorKind, Result};
use crate::object::{ByteRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions};

/// What the repacker found when it applied a tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppliedOutcome {
    /// The file was in the shard and is not in `generation`.
    Removed,
    /// The shard (at `generation`, or no shard at all) never held the file.
    Absent,
}

/// Written to `_tombstones_applied/<tombstone name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedMarker {
    pub shard_key: String,
    /// The first published generation without the file; `None` when there
    /// was no shard object at all.
    pub generation: Option<u64>,
    pub outcome: AppliedOutcome,
    /// RFC 3339.
    pub applied_at: String,
    /// Big-file objects that only this deletion referenced are removed later,
    /// after a grace period; their keys are listed here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub big_files: Vec<String>,
}

impl AppliedMarker {
    pub fn new(shard_key: &str, generation: Option<u64>, outcome: AppliedOutcome) -> Self {
        Self {
            shard_key: shard_key.to_string(),
            generation,
            outcome,
            applied_at: Timestamp::now().to_rfc3339(),
            big_files: Vec::new(),
        }
    }
}

/// Written to `_tombstones_applied/<shard key>/<generation or "none">.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedBatch {
    pub shard_key: String,
    /// The first published generation without the files; `None` when there
    /// was no shard object at all.
    pub generation: Option<u64>,
    /// RFC 3339, of the latest write.
    pub applied_at: String,
    /// Log names (under `_tombstones/`) and what the repacker found.
    pub names: BTreeMap<String, AppliedOutcome>,
    /// A run's batch (`_tombstones_applied/_run/<time>.json`, `shard_key`
    /// [`RUN_SHARD`]): where each name was applied. Readers that predate it
    /// ignore it and still see every name applied.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub places: BTreeMap<String, Place>,
}

/// A name's shard and generation in a run's batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    pub shard_key: String,
    pub generation: Option<u64>,
}

/// The `shard_key` of a run's batch, whose names span shards.
pub const RUN_SHARD: &str = "*";

impl AppliedBatch {
    pub fn key(shard_key: &str, generation: Option<u64>) -> String {
        let generation = generation.map_or_else(|| "none".to_string(), |g| g.to_string());
        format!("{APPLIED_PREFIX}{shard_key}/{generation}.json")
    }

    /// The per-tombstone view of one of its names.
    pub fn marker(&self, outcome: AppliedOutcome) -> AppliedMarker {
        AppliedMarker {
            shard_key: self.shard_key.clone(),
            generation: self.generation,
            outcome,
            applied_at: self.applied_at.clone(),
            big_files: Vec::new(),
        }
    }

    /// Per-tombstone markers of every name.
    pub fn markers(&self) -> impl Iterator<Item = (&String, AppliedMarker)> {
        self.names.iter().map(|(n, o)| {
            let mut m = self.marker(*o);
            if let Some(p) = self.places.get(n) {
                m.shard_key.clone_from(&p.shard_key);
                m.generation = p.generation;
            }
            (n, m)
        })
    }
}

/// Markers a repack run holds in memory until its compaction merges them
/// ([`TombstoneLog::compact_applied`]): log name → marker, per store.
#[derive(Debug, Clone, Default)]
pub struct RunMarkers(pub(crate) BTreeMap<usize, HashMap<String, AppliedMarker>>);

impl RunMarkers {
    /// Records that `names` (log names in store `store`, all routed to
    /// `shard_key`) are applied at `generation`.
    pub fn add(
        &mut self,
        store: usize,
        shard_key: &str,
        generation: Option<u64>,
        names: &[(String, AppliedOutcome)],
    ) {
        let of_store = self.0.entry(store).or_default();
        for (name, outcome) in names {
            of_store.insert(
                name.clone(),
                AppliedMarker::new(shard_key, generation, *outcome),
            );
        }
    }

    /// One store's markers as one batch, and the key to write it to.
    pub(crate) fn batch(markers: &HashMap<String, AppliedMarker>) -> (String, AppliedBatch) {
        let now = Timestamp::now();
        let batch = AppliedBatch {
            shard_key: RUN_SHARD.to_string(),
            generation: None,
            applied_at: now.to_rfc3339(),
            names: markers
                .iter()
                .map(|(n, m)| (n.clone(), m.outcome))
                .collect(),
            places: markers
                .iter()
                .map(|(n, m)| {
                    let place = Place {
                        shard_key: m.shard_key.clone(),
                        generation: m.generation,
                    };
                    (n.clone(), place)
                })
                .collect(),
        };
        let key = format!("{APPLIED_PREFIX}_run/{}.json", super::key::format_time(now));
        (key, batch)
    }
}

/// Is `key` (under [`APPLIED_PREFIX`]) a batch rather than an old marker?
fn is_batch_key(key: &str) -> bool {
    key.strip_prefix(APPLIED_PREFIX)
        .is_some_and(|n| n.contains('/') && n.ends_with(".json") && parse_name(n).is_none())
}

/// Writes `batch` to `key` (only the repacker writes markers, under its
/// lease: overwriting is safe).
pub(crate) async fn put_batch(
    objects: &dyn ObjectStore,
    key: &str,
    batch: &AppliedBatch,
) -> Result<()> {
    let body = serde_json::to_vec(batch).map_err(|e| Error::other("applied batch", e))?;
    let put = PutOptions {
        mode: PutMode::Overwrite,
    };
    objects.put(key, Bytes::from(body), put).await?;
    Ok(())
}

impl TombstoneLog {
    /// Records in one object that `names` (log names in store `store`, all
    /// routed to `shard_key`) are applied at `generation`, as repack runs
    /// did before run batches: tests build older stores with it. Idempotent.
    #[cfg(test)]
    pub(crate) async fn mark_applied_batch(
        &self,
        store: usize,
        shard_key: &str,
        generation: Option<u64>,
        names: &[(String, AppliedOutcome)],
    ) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        let objects = self.objects(store)?;
        let key = AppliedBatch::key(shard_key, generation);
        let mut batch = match objects.get_range(&key, ByteRange::All).await {
            Ok((_, body)) => serde_json::from_slice::<AppliedBatch>(&body)
                .map_err(|e| Error::corrupt(&key, e))?,
            Err(e) if e.kind() == ErrorKind::NotFound => AppliedBatch {
                shard_key: shard_key.to_string(),
                generation,
                applied_at: String::new(),
                names: BTreeMap::new(),
                places: BTreeMap::new(),
            },
            Err(e) => return Err(e),
        };
        batch.applied_at = Timestamp::now().to_rfc3339();
        batch.names.extend(names.iter().cloned());
        put_batch(objects.as_ref(), &key, &batch).await
    }

    /// Every batch marker of store `store`, with its key.
    pub async fn applied_batches(&self, store: usize) -> Result<Vec<(String, AppliedBatch)>> {
        Ok(self.applied_state(store).await?.1)
    }

    /// From one listing of store `store`'s markers: the log names with a
    /// marker of their own (stores written before batches), and every
    /// batch with its key.
    pub(crate) async fn applied_state(
        &self,
        store: usize,
    ) -> Result<(HashSet<String>, Vec<(String, AppliedBatch)>)> {
        let objects = self.objects(store)?;
        let mut own = HashSet::new();
        let mut out = Vec::new();
        for meta in objects.list_all(APPLIED_PREFIX).await? {
            if !is_batch_key(&meta.key) {
                if let Some(n) = meta.key.strip_prefix(APPLIED_PREFIX).and_then(parse_name) {
                    own.insert(n.name);
                }
                continue;
            }
            match objects.get_range(&meta.key, ByteRange::All).await {
                Ok((_, body)) => out.push((
                    meta.key.clone(),
                    serde_json::from_slice(&body).map_err(|e| Error::corrupt(&meta.key, e))?,
                )),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok((own, out))
    }

    /// Log name → marker, from the batches of store `store`.
    pub(crate) async fn batch_markers(
        &self,
        store: usize,
    ) -> Result<HashMap<String, AppliedMarker>> {
        let mut out = HashMap::new();
        for (_, batch) in self.applied_batches(store).await? {
            for (name, marker) in batch.markers() {
                out.insert(name.clone(), marker);
            }
        }
        Ok(out)
    }

    /// Records that `at` is applied. Idempotent (a re-run may write it again).
    pub async fn mark_applied(&self, at: &LoggedName, marker: &AppliedMarker) -> Result<()> {
        let body = serde_json::to_vec(marker).map_err(|e| Error::other("applied marker", e))?;
        let put = PutOptions {
            mode: PutMode::Overwrite,
        };
        self.objects(at.store)?
            .put(&at.name.applied_key(), Bytes::from(body), put)
            .await?;
        Ok(())
    }

    /// The marker of `at`, if it was applied: its own (old) marker, or its
    /// entry in a batch. Not for segments (their records carry markers).
    pub async fn applied_marker(&self, at: &LoggedName) -> Result<Option<AppliedMarker>> {
        let key = at.name.applied_key();
        match self
            .objects(at.store)?
            .get_range(&key, ByteRange::All)
            .await
        {
            Ok((_, body)) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| Error::corrupt(&key, e)),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Ok(self.batch_markers(at.store).await?.remove(&at.name.name))
            }
            Err(e) => Err(e),
        }
    }

    /// Every tombstone name, split into (pending, applied): names only,
    /// from two listings per store.
    pub async fn names_by_state(&self) -> Result<(Vec<LoggedName>, Vec<LoggedName>)> {
        let all = self.list_all_names().await?;
        let mut applied = HashSet::new();
        for i in 0..self.stores().len() {
            let (own, batches) = self.applied_state(i).await?;
            applied.extend(own.into_iter().map(|n| (i, n)));
            for (_, batch) in batches {
                applied.extend(batch.names.into_keys().map(|n| (i, n)));
            }
        }
        Ok(all
            .into_iter()
            .partition(|n| !applied.contains(&(n.store, n.name.name.clone()))))
    }

    /// Tombstones not yet applied by a repack.
    pub async fn pending(&self) -> Result<Vec<LoggedName>> {
        Ok(self.names_by_state().await?.0)
    }
}
