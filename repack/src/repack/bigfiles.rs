//! Collecting big-file objects (`_big/<digest>`) that no shard references
//! any more.
//!
//! Big files are content-addressed and may be shared by several shards, so
//! dropping an entry does not mean its object can go. The repacker registers
//! the object as a *candidate* (`_des/gc/big/<hex>`) before it publishes the
//! generation that drops the reference — so a crash after publishing cannot
//! forget it — and a later step, once the candidate is older than the grace
//! period, scans every shard index of that store and deletes the object only
//! if none references it. The grace period covers readers still holding an
//! older index and packers that found the object present and are about to
//! publish a shard referencing it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use des_format::Timestamp;
use des_format::shard::AnyIndex;
use des_storage::{
    ByteRange, DesStore, ErrorKind, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
};
use serde::{Deserialize, Serialize};

use crate::error::{RepackError, Result};

pub const GC_PREFIX: &str = "_des/gc/big/";
pub const BIG_PREFIX: &str = "_big/";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Candidate {
    big_key: String,
    shard_key: String,
    registered_at: String,
    registered_at_us: i64,
}

/// Registers `_big/<hex>` keys whose last known reference is being dropped.
pub async fn register(
    objects: &dyn ObjectStore,
    big_keys: &[String],
    shard_key: &str,
) -> Result<()> {
    let now = Timestamp::now();
    for big in big_keys {
        let Some(hex) = big.strip_prefix(BIG_PREFIX) else {
            continue;
        };
        let c = Candidate {
            big_key: big.clone(),
            shard_key: shard_key.to_string(),
            registered_at: now.to_rfc3339(),
            registered_at_us: now.micros(),
        };
        let body = serde_json::to_vec(&c).map_err(|e| RepackError::Invalid(e.to_string()))?;
        let put = PutOptions {
            mode: PutMode::Overwrite,
        };
        objects
            .put(&format!("{GC_PREFIX}{hex}"), Bytes::from(body), put)
            .await?;
    }
    Ok(())
}

/// What a collection did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcOutcome {
    /// Unreferenced big files deleted (or to delete).
    pub deleted: Vec<String>,
    pub bytes_deleted: u64,
    /// Candidates found still referenced by some shard (kept).
    pub still_referenced: u64,
    /// Candidates younger than the grace period.
    pub waiting: u64,
    /// Shard indexes read to look for references.
    pub shards_scanned: u64,
}

/// Deletes candidates past `grace` that no shard of their store references.
pub async fn collect(store: &DesStore, grace: Duration, dry_run: bool) -> Result<GcOutcome> {
    let mut out = GcOutcome::default();
    let grace_us = i64::try_from(grace.as_micros()).unwrap_or(i64::MAX);
    let now = Timestamp::now().micros();
    let mut shards: Option<Vec<String>> = None;
    for objects in store.placement().stores() {
        let mut due: BTreeMap<String, String> = BTreeMap::new();
        for meta in objects.list_all(GC_PREFIX).await? {
            let c = read_candidate(objects.as_ref(), &meta.key).await?;
            match c {
                Some(c) if now.saturating_sub(c.registered_at_us) >= grace_us => {
                    due.insert(meta.key, c.big_key);
                }
                Some(_) => out.waiting += 1,
                None => {}
            }
        }
        if due.is_empty() {
            continue;
        }
        if shards.is_none() {
            shards = Some(
                store
                    .list_shards()
                    .await?
                    .into_iter()
                    .map(|m| m.key)
                    .collect(),
            );
        }
        let owned: Vec<&String> = shards
            .iter()
            .flatten()
            .filter(|k| {
                store
                    .objects_for_key(k)
                    .is_ok_and(|o| Arc::ptr_eq(&o, &objects))
            })
            .collect();
        let wanted: HashSet<&str> = due.values().map(String::as_str).collect();
        let referenced = referenced_among(store, &owned, &wanted, &mut out).await?;
        for (candidate, big) in &due {
            if referenced.contains(big.as_str()) {
                out.still_referenced += 1;
            } else {
                out.bytes_deleted += match objects.head(big).await {
                    Ok(m) => m.size,
                    Err(e) if e.kind() == ErrorKind::NotFound => 0,
                    Err(e) => return Err(e.into()),
                };
                out.deleted.push(big.clone());
                if !dry_run {
                    objects.delete(big).await?;
                }
            }
            if !dry_run {
                objects.delete(candidate).await?;
            }
        }
    }
    Ok(out)
}

async fn read_candidate(objects: &dyn ObjectStore, key: &str) -> Result<Option<Candidate>> {
    match objects.get_range(key, ByteRange::All).await {
        Ok((_, body)) => Ok(serde_json::from_slice(&body).ok()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Which of `wanted` (big-file keys) some shard in `keys` references.
async fn referenced_among<'w>(
    store: &DesStore,
    keys: &[&String],
    wanted: &HashSet<&'w str>,
    out: &mut GcOutcome,
) -> Result<HashSet<&'w str>> {
    let mut found = HashSet::new();
    for key in keys {
        let Some(loaded) = store.load_index(key).await? else {
            continue;
        };
        out.shards_scanned += 1;
        let AnyIndex::V3(ix) = &loaded.index else {
            continue;
        };
        for e in ix.view().iter().filter(|e| e.is_external()) {
            let big = des_format::v3::external_key(&e.digest());
            if let Some(w) = wanted.get(big.as_str()) {
                found.insert(*w);
            }
        }
    }
    Ok(found)
}
