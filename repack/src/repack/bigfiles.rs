//! Collecting big-file objects (`_big/<digest>`) that no shard references
//! any more.
//!
//! Big files are content-addressed and may be shared by several shards, so
//! dropping an entry does not mean its object can go. The repacker registers
//! the object as a *candidate* (`_des/gc/big/<hex>`, naming the files whose
//! entries referenced it) before it publishes the generation that drops the
//! reference — so a crash after publishing cannot forget it. A later step,
//! once the candidate is older than the grace period (readers still holding
//! an older index), deletes the object only if
//!
//! - no shard index of that store references it (a full scan),
//! - no legal hold covers a file the candidate names (I5: a hold stops every
//!   step of physical deletion, even one registered before the hold), and
//! - no packer in flight holds a live reference to it, under the rule of
//!   `des_storage::protocol::bigrefs` (refs are listed after the scan, and
//!   nothing is deleted once half the ref TTL has passed since the scan began).
//!
//! Objects a packer uploaded but never published a reference to (it failed
//! or died) become candidates when the packer's ref expires.
//!
//! A big file's chunk table (`_big/<hex>.chunks`, SPEC §6.5) goes with it:
//! deleted right after the object, under the same decision. A table whose
//! object is gone anyway (a crash between the two deletes, a repacker from
//! before tables, a packer that rewrote the table of an object collected
//! meanwhile) is found by listing `_big/` and removed too — never one whose
//! object exists.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use des_format::Timestamp;
use des_format::shard::AnyIndex;
use des_format::v3::chunk_table_key;
use des_storage::keys::{BIG_PREFIX, BIG_REFS_PREFIX, GC_PREFIX, ShardKey, StoreKey};
use des_storage::protocol::{GcWindow, refs_of};
use des_storage::{
    ByteRange, DesStore, ErrorKind, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
};
use serde::{Deserialize, Serialize};

use crate::error::{RepackError, Result};
use crate::holds::HoldSet;

/// Files named per candidate at most: enough for any real sharing of one
/// content, and a bound on the record's size.
const MAX_NAMED_FILES: usize = 1000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Candidate {
    big_key: String,
    shard_key: String,
    registered_at: String,
    registered_at_us: i64,
    /// The files whose dropped entries referenced the object.
    #[serde(default)]
    files: Vec<(String, u32)>,
}

/// Registers `_big/<hex>` keys whose last known reference is being dropped;
/// `dropped` pairs each key with the uid whose entry referenced it.
pub async fn register(
    objects: &dyn ObjectStore,
    dropped: &[(String, String)],
    shard_key: &str,
    date: u32,
) -> Result<()> {
    let now = Timestamp::now();
    for (big, uid) in dropped {
        let Some(StoreKey::Big { hex }) = StoreKey::parse(big) else {
            continue;
        };
        let key = StoreKey::GcCandidate { hex }.to_string();
        // Only the lease holder writes candidates: read-modify-write is safe.
        let mut c = read_candidate(objects, &key).await?.unwrap_or_default();
        c.big_key = big.clone();
        c.shard_key = shard_key.to_string();
        c.registered_at = now.to_rfc3339();
        c.registered_at_us = now.micros();
        let file = (uid.clone(), date);
        if !c.files.contains(&file) && c.files.len() < MAX_NAMED_FILES {
            c.files.push(file);
        }
        let body = serde_json::to_vec(&c).map_err(|e| RepackError::Invalid(e.to_string()))?;
        let put = PutOptions {
            mode: PutMode::Overwrite,
        };
        objects.put(&key, Bytes::from(body), put).await?;
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
    /// Candidates kept because a legal hold covers a file they name.
    pub held: u64,
    /// Candidates kept because a packer in flight references them.
    pub in_flight: u64,
    /// Expired packer refs removed.
    pub refs_expired: u64,
    /// Shard indexes read to look for references.
    pub shards_scanned: u64,
    /// Chunk tables whose big file was already gone, deleted (or, dry, to
    /// delete). Tables of the big files in `deleted` go with them and are
    /// not listed here.
    pub orphan_tables: Vec<String>,
}

/// How a collection runs.
#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    pub grace: Duration,
    /// The packers' big-file ref TTL (`des_storage::protocol::bigrefs`).
    pub ref_ttl: Duration,
    pub dry_run: bool,
}

/// Deletes candidates past the grace period that nothing references or
/// holds, with their chunk tables, then chunk tables left without a big file.
pub async fn collect(store: &DesStore, holds: &HoldSet, opts: GcOptions) -> Result<GcOutcome> {
    let mut out = GcOutcome::default();
    for objects in store.placement().stores() {
        if !opts.dry_run {
            out.refs_expired += sweep_expired_refs(store, objects.as_ref()).await?;
        }
        // After the sweep, which may have just registered candidates.
        collect_candidates(store, holds, opts, &objects, &mut out).await?;
        sweep_orphan_tables(objects.as_ref(), opts.dry_run, &mut out).await?;
    }
    Ok(out)
}

async fn collect_candidates(
    store: &DesStore,
    holds: &HoldSet,
    opts: GcOptions,
    objects: &Arc<dyn ObjectStore>,
    out: &mut GcOutcome,
) -> Result<()> {
    let grace_us = i64::try_from(opts.grace.as_micros()).unwrap_or(i64::MAX);
    let now = Timestamp::now().micros();
    let mut due: BTreeMap<String, Candidate> = BTreeMap::new();
    for meta in objects.list_all(GC_PREFIX).await? {
        match read_candidate(objects.as_ref(), &meta.key).await? {
            Some(c) if now.saturating_sub(c.registered_at_us) >= grace_us => {
                due.insert(meta.key, c);
            }
            Some(_) => out.waiting += 1,
            None => {}
        }
    }
    if due.is_empty() {
        return Ok(());
    }
    // The window opens before the scan: refs are listed after it.
    let window = GcWindow::start(opts.ref_ttl);
    let wanted: HashSet<&str> = due.values().map(|c| c.big_key.as_str()).collect();
    let referenced = referenced_in(store, objects, &wanted, out).await?;
    for (candidate, c) in &due {
        let gone = decide(objects, holds, &referenced, c, &window, out).await?;
        if gone && !opts.dry_run {
            objects.delete(&c.big_key).await?;
            // Before the candidate goes: a crash in between leaves the
            // candidate, and the next run deletes the table then.
            objects.delete(&chunk_table_key(&c.big_key)).await?;
        }
        // A held or in-flight candidate stays for a later run to decide again.
        let settled = gone || referenced.contains(c.big_key.as_str());
        if settled && !opts.dry_run {
            objects.delete(candidate).await?;
        }
    }
    Ok(())
}

/// Deletes chunk tables whose big file does not exist. One listing of
/// `_big/` per run (a page per thousand big files): keys come in byte
/// order, so a table directly follows its object (`<hex>` < `<hex>.chunks`,
/// and no other big-file key sorts between them); a table that does not is
/// a candidate. Each candidate is checked again right before its delete:
/// no live packer ref to its hex (a packer may be uploading the object;
/// it writes the table after the object) and no object (HEAD). So the
/// table of an existing big file is never deleted; what is left is a
/// packer finishing its upload *and* its table between our HEAD and our
/// delete, which costs that file its table (readers fall back to whole
/// reads), not its data.
async fn sweep_orphan_tables(
    objects: &dyn ObjectStore,
    dry_run: bool,
    out: &mut GcOutcome,
) -> Result<()> {
    let mut orphans = Vec::new();
    let mut last_big: Option<String> = None;
    let mut after: Option<String> = None;
    loop {
        let page = objects.list(BIG_PREFIX, after.as_deref()).await?;
        for meta in page.objects {
            match StoreKey::parse(&meta.key) {
                Some(StoreKey::Big { hex }) => last_big = Some(hex),
                Some(StoreKey::BigChunks { hex }) if last_big.as_ref() != Some(&hex) => {
                    orphans.push(hex);
                }
                _ => {}
            }
        }
        match page.next_start_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    for hex in orphans {
        if refs_of(objects, &hex, Timestamp::now()).await?.live > 0 {
            continue;
        }
        let big = StoreKey::Big { hex: hex.clone() }.to_string();
        match objects.head(&big).await {
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let table = StoreKey::BigChunks { hex }.to_string();
        if !dry_run {
            objects.delete(&table).await?;
        }
        out.orphan_tables.push(table);
    }
    Ok(())
}

/// Whether `c`'s object may be deleted now; counts why not.
async fn decide(
    objects: &Arc<dyn ObjectStore>,
    holds: &HoldSet,
    referenced: &HashSet<&str>,
    c: &Candidate,
    window: &GcWindow,
    out: &mut GcOutcome,
) -> Result<bool> {
    if referenced.contains(c.big_key.as_str()) {
        out.still_referenced += 1;
        return Ok(false);
    }
    if c.files
        .iter()
        .any(|(uid, date)| holds.holding(uid, *date).is_some())
    {
        out.held += 1;
        return Ok(false);
    }
    let hex = c.big_key.strip_prefix(BIG_PREFIX).unwrap_or(&c.big_key);
    if refs_of(objects.as_ref(), hex, Timestamp::now()).await?.live > 0 || !window.open() {
        out.in_flight += 1;
        return Ok(false);
    }
    out.bytes_deleted += match objects.head(&c.big_key).await {
        Ok(m) => m.size,
        Err(e) if e.kind() == ErrorKind::NotFound => 0,
        Err(e) => return Err(e.into()),
    };
    out.deleted.push(c.big_key.clone());
    Ok(true)
}

/// Removes packer refs past their expiry. Packers never remove their own
/// refs (a ref must outlive the publish it protects), so an expired ref is
/// either one whose shard was published — the shard it names references the
/// object, and the ref simply goes — or one whose packer failed or died after
/// uploading: then the object is registered as a candidate and collected
/// like any other (grace, holds, scan). One index read per expired ref.
async fn sweep_expired_refs(store: &DesStore, objects: &dyn ObjectStore) -> Result<u64> {
    let now = Timestamp::now();
    // Ordered, so a run's requests come in the same order every time.
    let mut hexes = BTreeSet::new();
    for meta in objects.list_all(BIG_REFS_PREFIX).await? {
        if let Some(StoreKey::BigRef { hex, .. }) = StoreKey::parse(&meta.key) {
            hexes.insert(hex);
        }
    }
    let mut n = 0;
    for hex in hexes {
        let big = StoreKey::Big { hex: hex.clone() }.to_string();
        let mut expired = refs_of(objects, &hex, now).await?.expired;
        // By file, not by key: keys end in random holder names.
        expired.sort_by(|a, b| a.1.cmp(&b.1));
        for (key, (uid, date)) in expired {
            if !shard_references(store, &uid, date, &big).await? {
                match objects.head(&big).await {
                    Ok(_) => register(objects, &[(big.clone(), uid)], "", date).await?,
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            objects.delete(&key).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// Whether the shard holding `(uid, date)` has an entry for `uid` stored as
/// the big file `big`.
async fn shard_references(store: &DesStore, uid: &str, date: u32, big: &str) -> Result<bool> {
    let Some(key) = ShardKey::of(uid, date, store.n_bits()) else {
        return Ok(false);
    };
    let Some(loaded) = store.load_index(&key.to_string()).await? else {
        return Ok(false);
    };
    let AnyIndex::V3(ix) = &loaded.index else {
        return Ok(false);
    };
    Ok(ix.view().iter().any(|e| {
        e.uid == uid && e.is_external() && des_format::v3::external_key(&e.digest()) == big
    }))
}

async fn read_candidate(objects: &dyn ObjectStore, key: &str) -> Result<Option<Candidate>> {
    match objects.get_range(key, ByteRange::All).await {
        Ok((_, body)) => Ok(serde_json::from_slice(&body).ok()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Which of `wanted` (big-file keys) some shard of `objects` references.
async fn referenced_in<'w>(
    store: &DesStore,
    objects: &Arc<dyn ObjectStore>,
    wanted: &HashSet<&'w str>,
    out: &mut GcOutcome,
) -> Result<HashSet<&'w str>> {
    let mut found = HashSet::new();
    for meta in store.list_shards().await? {
        let owned = store
            .objects_for_key(&meta.key)
            .is_ok_and(|o| Arc::ptr_eq(&o, objects));
        if !owned {
            continue;
        }
        let Some(loaded) = store.load_index(&meta.key).await? else {
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
