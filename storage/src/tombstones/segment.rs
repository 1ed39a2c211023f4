//! Segments: applied tombstones merged into one immutable object each (see
//! the module docs for the byte layout), and the compaction that writes them.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::applied::{AppliedBatch, AppliedMarker, RunMarkers, put_batch};
use super::bundle::fully_gone;
use super::key::{APPLIED_PREFIX, LOG_PREFIX, LogName, format_time, parse_name};
use super::log::{LoggedName, TombstoneLog, list_names};
use super::record::Tombstone;
use crate::error::{Error, ErrorKind, Result};
use crate::object::{ByteRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, delete_all};

/// Segments live under this prefix (inside [`LOG_PREFIX`]: `s` sorts after
/// every digit, so time-ordered polls of the log list them last, and their
/// names do not parse as log names).
pub const SEGMENT_PREFIX: &str = "_tombstones/segments/";
const MAGIC: &[u8; 8] = b"DESTSEG1";
const VERSION: u32 = 1;
/// Magic, version, record count.
const HEADER_LEN: usize = 16;
/// Date u32, hash u64, shard index u32.
const ENTRY_LEN: usize = 16;
/// The first ranged read of a segment: the whole lookup section of every
/// segment a merge can still take (under 65,536 records, see `merge.rs`),
/// so only top-tier segments need a second request.
const FIRST_READ: u64 = (HEADER_LEN + 65_536 * ENTRY_LEN + 4) as u64;
const ZSTD_LEVEL: i32 = 3;

/// The 64-bit key of `(uid, date)` in lookup sections and readers: the
/// first 8 bytes (little-endian) of blake3(uid bytes ‖ date as u32 LE).
pub fn pair_hash(uid: &str, date: u32) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(uid.as_bytes());
    h.update(&date.to_le_bytes());
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// One fixed-width lookup entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LookupEntry {
    pub date: u32,
    pub hash: u64,
    /// The shard index of the uid (in the store's `n_bits`): lets a repack
    /// know which shards applied deletions route to without the details.
    pub shard: u32,
}

/// One line of the detail section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRecord {
    /// The log name (under [`LOG_PREFIX`]) the tombstone was written as.
    pub name: String,
    /// Index of the store of the placement holding it.
    pub store: usize,
    pub tombstone: Tombstone,
    /// The applied marker (shard key, generation, outcome).
    pub applied: AppliedMarker,
}

/// A segment's lookup section, as a reader holds it.
#[derive(Debug, Clone)]
pub struct SegmentLookup {
    pub store: usize,
    pub key: String,
    pub entries: Vec<LookupEntry>,
}

/// Encodes a segment. `records` in any order.
pub fn encode_segment(records: &[SegmentRecord], n_bits: u8) -> Result<Bytes> {
    let mut entries = Vec::with_capacity(records.len());
    for r in records {
        let t = &r.tombstone;
        let shard = des_format::routing::shard_index(&t.uid, n_bits).unwrap_or(u32::MAX);
        entries.push(LookupEntry {
            date: t.date,
            hash: pair_hash(&t.uid, t.date),
            shard,
        });
    }
    entries.sort_unstable();
    let count = u32::try_from(records.len())
        .map_err(|_| Error::Invalid("too many records for one segment".into()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + entries.len() * ENTRY_LEN + 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for e in &entries {
        out.extend_from_slice(&e.date.to_le_bytes());
        out.extend_from_slice(&e.hash.to_le_bytes());
        out.extend_from_slice(&e.shard.to_le_bytes());
    }
    let lookup_crc = crc32c::crc32c(&out);
    out.extend_from_slice(&lookup_crc.to_le_bytes());
    let mut lines = Vec::new();
    for r in records {
        serde_json::to_writer(&mut lines, r).map_err(|e| Error::other("segment record", e))?;
        lines.push(b'\n');
    }
    let detail = zstd::encode_all(lines.as_slice(), ZSTD_LEVEL)
        .map_err(|e| Error::other("compressing a segment", e))?;
    out.extend_from_slice(&detail);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(Bytes::from(out))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Record count from a header, checked.
pub(crate) fn header_count(key: &str, b: &[u8]) -> Result<usize> {
    if b.len() < HEADER_LEN || &b[..8] != MAGIC {
        return Err(Error::corrupt(key, "not a tombstone segment"));
    }
    let version = le_u32(b, 8).unwrap_or(0);
    if version != VERSION {
        return Err(Error::corrupt(key, format!("segment version {version}")));
    }
    Ok(le_u32(b, 12).unwrap_or(0) as usize)
}

fn lookup_len(count: usize) -> usize {
    HEADER_LEN + count * ENTRY_LEN + 4
}

/// Parses the header and lookup section (the first `lookup_len` bytes).
pub fn decode_lookup(key: &str, b: &[u8]) -> Result<Vec<LookupEntry>> {
    let count = header_count(key, b)?;
    let end = lookup_len(count);
    let body = b
        .get(..end - 4)
        .ok_or_else(|| Error::corrupt(key, "truncated lookup section"))?;
    if le_u32(b, end - 4) != Some(crc32c::crc32c(body)) {
        return Err(Error::corrupt(key, "lookup section checksum mismatch"));
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let at = HEADER_LEN + i * ENTRY_LEN;
        out.push(LookupEntry {
            date: le_u32(b, at).unwrap_or(0),
            hash: le_u64(b, at + 4).unwrap_or(0),
            shard: le_u32(b, at + 12).unwrap_or(0),
        });
    }
    Ok(out)
}

/// Parses a whole segment (checksums included): lookup and records.
pub fn decode_segment(key: &str, b: &[u8]) -> Result<(Vec<LookupEntry>, Vec<SegmentRecord>)> {
    if b.len() < 4 {
        return Err(Error::corrupt(key, "truncated segment"));
    }
    let (body, tail) = b.split_at(b.len() - 4);
    if le_u32(tail, 0) != Some(crc32c::crc32c(body)) {
        return Err(Error::corrupt(key, "segment checksum mismatch"));
    }
    let lookup = decode_lookup(key, body)?;
    let start = lookup_len(lookup.len());
    let lines = zstd::decode_all(body.get(start..).unwrap_or_default())
        .map_err(|e| Error::corrupt(key, e))?;
    let mut records = Vec::with_capacity(lookup.len());
    for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        records.push(serde_json::from_slice(line).map_err(|e| Error::corrupt(key, e))?);
    }
    if records.len() != lookup.len() {
        return Err(Error::corrupt(key, "detail and lookup sections disagree"));
    }
    Ok((lookup, records))
}

/// The record count a segment's name carries, if it carries one
/// (`<newest>-<crc>-<count>.seg`).
pub(crate) fn count_in_name(key: &str) -> Option<usize> {
    let stem = key.strip_prefix(SEGMENT_PREFIX)?.strip_suffix(".seg")?;
    let mut parts = stem.split('-');
    let (_, _, count) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    count.parse().ok()
}

/// Keys of every segment in `objects`, in name (time) order.
pub(crate) async fn list_segments(objects: &dyn ObjectStore) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = objects.list(SEGMENT_PREFIX, after.as_deref()).await?;
        out.extend(
            page.objects
                .iter()
                .filter(|m| m.key.ends_with(".seg"))
                .map(|m| m.key.clone()),
        );
        match page.next_start_after {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

/// The header and lookup section of one segment: one ranged read, and a
/// second for the rest when the lookup section is larger than [`FIRST_READ`].
pub(crate) async fn read_lookup(objects: &dyn ObjectStore, key: &str) -> Result<Vec<LookupEntry>> {
    let first = ByteRange::Bounded {
        start: 0,
        end: FIRST_READ,
    };
    let (_, head) = objects.get_range(key, first).await?;
    let count = header_count(key, &head)?;
    let need = lookup_len(count);
    if head.len() >= need {
        return decode_lookup(key, &head[..need]);
    }
    // Only what the first read did not bring.
    let rest = ByteRange::Bounded {
        start: head.len() as u64,
        end: need as u64,
    };
    let (_, tail) = objects.get_range(key, rest).await?;
    let mut all = Vec::with_capacity(need);
    all.extend_from_slice(&head);
    all.extend_from_slice(&tail);
    decode_lookup(key, &all)
}

/// Where compaction is: a hook sees each step (tests crash there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactStep {
    /// The segment is written, not yet read back.
    SegmentWritten,
    /// The segment is read back and verified; nothing deleted yet.
    SegmentVerified,
    /// The merged small records are deleted, their markers not yet.
    RecordsDeleted,
    /// Everything merged is deleted.
    Done,
    /// Segments merged into a new one (see `merge.rs`), written only.
    MergeWritten,
    /// The merged segment is read back and verified; inputs not deleted yet.
    MergeVerified,
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CompactReport {
    pub segments_written: u64,
    pub records_merged: u64,
    /// Small records (and markers) already in a segment, deleted only.
    pub leftovers_deleted: u64,
    /// Segments merged into bigger ones (and deleted).
    pub segments_merged: u64,
}

/// Most records per segment (a bigger backlog makes several).
pub const MAX_SEGMENT_RECORDS: usize = 1_000_000;

impl TombstoneLog {
    /// Lookup sections of every segment of every store.
    pub async fn segment_lookups(&self) -> Result<Vec<SegmentLookup>> {
        let mut out = Vec::new();
        for (store, objects) in self.stores().iter().enumerate() {
            for key in list_segments(objects.as_ref()).await? {
                let entries = read_lookup(objects.as_ref(), &key).await?;
                out.push(SegmentLookup {
                    store,
                    key,
                    entries,
                });
            }
        }
        Ok(out)
    }

    /// Every record of every segment (details included): for tools, not readers.
    pub async fn segment_records(&self) -> Result<Vec<SegmentRecord>> {
        let mut out = Vec::new();
        for objects in self.stores() {
            for key in list_segments(objects.as_ref()).await? {
                let (_, body) = objects.get_range(&key, ByteRange::All).await?;
                out.extend(decode_segment(&key, &body)?.1);
            }
        }
        Ok(out)
    }

    /// Segment records of `(uid, date)`: only segments whose lookup
    /// section holds its hash are read in full.
    pub async fn segment_records_of(&self, uid: &str, date: u32) -> Result<Vec<SegmentRecord>> {
        let hash = pair_hash(uid, date);
        let records = self
            .segment_records_where(|e| e.date == date && e.hash == hash)
            .await?;
        Ok(records
            .into_iter()
            .filter(|r| r.tombstone.uid == uid && r.tombstone.date == date)
            .collect())
    }

    /// Records of the segments whose lookup section has an entry for which
    /// `wanted` is true (so a query by date reads only segments holding
    /// that date). Every record of such a segment is returned: filter them.
    pub async fn segment_records_where(
        &self,
        wanted: impl Fn(&LookupEntry) -> bool,
    ) -> Result<Vec<SegmentRecord>> {
        let mut out = Vec::new();
        for seg in self.segment_lookups().await? {
            if !seg.entries.iter().any(&wanted) {
                continue;
            }
            let (_, body) = self
                .objects(seg.store)?
                .get_range(&seg.key, ByteRange::All)
                .await?;
            out.extend(decode_segment(&seg.key, &body)?.1);
        }
        Ok(out)
    }

    /// Merges applied tombstones that are still small objects into segments
    /// and deletes the merged objects and their markers. Single writer: run
    /// it under the repacker's lease.
    pub async fn compact(&self) -> Result<CompactReport> {
        self.compact_with(&|_| {}).await
    }

    /// [`compact`](Self::compact), calling `hook` after each step.
    pub async fn compact_with(&self, hook: &(dyn Fn(CompactStep) + Sync)) -> Result<CompactReport> {
        self.compact_applied(RunMarkers::default(), hook).await
    }

    /// [`compact_with`](Self::compact_with), also merging the tombstones a
    /// repack run applied and holds only in memory (`run`). Such a run
    /// writes no marker per shard: the journal of each shard it rewrote
    /// stays until this returns, so a crash before the segment is written
    /// leaves the tombstones pending and the journal proving them removed.
    /// The run's markers are written as one batch before anything is
    /// merged (see `write_run_batch`).
    pub async fn compact_applied(
        &self,
        mut run: RunMarkers,
        hook: &(dyn Fn(CompactStep) + Sync),
    ) -> Result<CompactReport> {
        let mut report = CompactReport::default();
        for (store, objects) in self.stores().iter().enumerate() {
            let in_run = run.0.remove(&store).unwrap_or_default();
            self.compact_store(store, objects.as_ref(), in_run, hook, &mut report)
                .await?;
            self.merge_segments(objects.as_ref(), hook, &mut report)
                .await?;
        }
        Ok(report)
    }

    async fn compact_store(
        &self,
        store: usize,
        objects: &dyn ObjectStore,
        in_run: HashMap<String, AppliedMarker>,
        hook: &(dyn Fn(CompactStep) + Sync),
        report: &mut CompactReport,
    ) -> Result<()> {
        // Records first, then markers: a marker exists only for a record
        // listed already (or one deleted by a compaction: an orphan).
        let records: Vec<LogName> = list_names(objects, LOG_PREFIX, None).await?;
        let (own, mut batches) = self.applied_state(store).await?;
        let mut from_batches: HashMap<String, AppliedMarker> = HashMap::new();
        for (_, batch) in &batches {
            for (name, marker) in batch.markers() {
                from_batches.insert(name.clone(), marker);
            }
        }
        if let Some(run) = self.write_run_batch(objects, &in_run).await? {
            batches.push(run);
        }
        from_batches.extend(in_run);
        let recorded: HashSet<&str> = records.iter().map(|n| n.name.as_str()).collect();
        let applied: Vec<&LogName> = records
            .iter()
            .filter(|n| own.contains(&n.name) || from_batches.contains_key(&n.name))
            .collect();
        // Markers without a record: the record was merged (or removed by an
        // operator); such a marker makes nothing pending and can go.
        let orphans: Vec<&String> = own
            .iter()
            .filter(|m| !recorded.contains(m.as_str()))
            .collect();
        if applied.is_empty() && orphans.is_empty() && batches.is_empty() {
            return Ok(());
        }
        // What earlier segments already hold: only segments whose newest
        // record is at least as new as the oldest candidate can.
        let mut covered = HashSet::new();
        if let Some(oldest) = applied.iter().map(|n| n.name.as_str()).min() {
            let oldest = oldest.get(..22).unwrap_or(oldest);
            for key in list_segments(objects).await? {
                let stem = key.strip_prefix(SEGMENT_PREFIX).unwrap_or(&key);
                if stem.get(..22).unwrap_or(stem) < oldest {
                    continue;
                }
                let (_, body) = objects.get_range(&key, ByteRange::All).await?;
                covered.extend(decode_segment(&key, &body)?.1.into_iter().map(|r| r.name));
            }
        }
        let (leftover, fresh): (Vec<&LogName>, Vec<&LogName>) =
            applied.into_iter().partition(|n| covered.contains(&n.name));
        // Names merged (or found merged), and objects deleted: a bundle goes
        // only once every member is merged.
        let mut gone: HashSet<String> = leftover.iter().map(|n| n.name.clone()).collect();
        let mut deleted: HashSet<String> = HashSet::new();
        for chunk in fresh.chunks(MAX_SEGMENT_RECORDS) {
            let merged = self.merge_records(store, chunk, &from_batches).await?;
            if merged.is_empty() {
                continue;
            }
            let key = write_segment(objects, &merged, self.store().n_bits()).await?;
            hook(CompactStep::SegmentWritten);
            verify_segment(objects, &key, &merged).await?;
            hook(CompactStep::SegmentVerified);
            gone.extend(merged.iter().map(|r| r.name.clone()));
            delete_gone_objects(objects, &records, &gone, &mut deleted).await?;
            hook(CompactStep::RecordsDeleted);
            delete_all(
                objects,
                merged
                    .iter()
                    .filter(|r| own.contains(&r.name))
                    .map(|r| format!("{APPLIED_PREFIX}{}", r.name)),
            )
            .await?;
            report.segments_written += 1;
            report.records_merged += merged.len() as u64;
        }
        // Left over by a crash after a segment was written: delete (record
        // first, then marker), never merge again.
        delete_gone_objects(objects, &records, &gone, &mut deleted).await?;
        let stale: Vec<String> = leftover
            .iter()
            .map(|n| &n.name)
            .chain(orphans.iter().copied())
            .filter(|m| own.contains(*m))
            .map(|m| format!("{APPLIED_PREFIX}{m}"))
            .collect();
        report.leftovers_deleted += leftover.len() as u64;
        delete_all(objects, stale.into_iter()).await?;
        // A batch goes once none of its names is still listed: a merged
        // member of a bundle that is still there keeps its marker, or it
        // would look pending again.
        let left: HashSet<&str> = records
            .iter()
            .filter(|n| !deleted.contains(n.object()))
            .map(|n| n.name.as_str())
            .collect();
        delete_all(
            objects,
            batches
                .iter()
                .filter(|(_, b)| b.names.keys().all(|n| !left.contains(n.as_str())))
                .map(|(k, _)| k.clone()),
        )
        .await?;
        hook(CompactStep::Done);
        Ok(())
    }
}

impl TombstoneLog {
    /// Writes a run's markers as one batch before anything is merged: a
    /// crash at any later step then leaves them marked, as markers written
    /// per shard would. The batch goes with the others, once none of its
    /// names is still a record.
    async fn write_run_batch(
        &self,
        objects: &dyn ObjectStore,
        in_run: &HashMap<String, AppliedMarker>,
    ) -> Result<Option<(String, AppliedBatch)>> {
        if in_run.is_empty() {
            return Ok(None);
        }
        let (key, batch) = RunMarkers::batch(in_run);
        put_batch(objects, &key, &batch).await?;
        Ok(Some((key, batch)))
    }

    /// The segment records of `chunk` (applied names of store `store`):
    /// each bundle is read once; a name gone meanwhile is left out.
    async fn merge_records(
        &self,
        store: usize,
        chunk: &[&LogName],
        from_batches: &HashMap<String, AppliedMarker>,
    ) -> Result<Vec<SegmentRecord>> {
        let names = chunk
            .iter()
            .map(|n| LoggedName {
                store,
                name: (*n).clone(),
            })
            .collect();
        let mut merged = Vec::with_capacity(chunk.len());
        for logged in self.read_all(names).await? {
            let applied = match from_batches.get(&logged.at.name.name) {
                Some(m) => m.clone(),
                None => match self.applied_marker(&logged.at).await? {
                    Some(m) => m,
                    None => continue,
                },
            };
            merged.push(SegmentRecord {
                name: logged.at.name.name,
                store,
                tombstone: logged.tombstone,
                applied,
            });
        }
        Ok(merged)
    }
}

/// Writes `merged` as a segment, create-only; returns its key.
pub(crate) async fn write_segment(
    objects: &dyn ObjectStore,
    merged: &[SegmentRecord],
    n_bits: u8,
) -> Result<String> {
    let newest = merged
        .iter()
        .filter_map(|r| parse_name(&r.name))
        .map(|n| n.logged_at)
        .max()
        .map(format_time)
        .unwrap_or_default();
    let body = encode_segment(merged, n_bits)?;
    // The checksum the segment ends with (a CRC over data followed by its
    // own CRC is a constant, so that would name every segment alike).
    let crc = le_u32(&body, body.len() - 4).unwrap_or_default();
    // The record count in the name lets merging pick segments from a
    // listing alone (segments named before it are asked their header).
    let key = format!("{SEGMENT_PREFIX}{newest}-{crc:08x}-{}.seg", merged.len());
    let create = PutOptions {
        mode: PutMode::Create,
    };
    match objects.put(&key, body, create).await {
        Ok(_) => Ok(key),
        // Same name, same checksum: the same content, written by an
        // earlier attempt; the caller's read-back checks it.
        Err(e) if e.kind() == ErrorKind::PreconditionFailed => Ok(key),
        Err(e) => Err(e),
    }
}

/// Reads segment `key` back and checks it holds every record of `merged`.
pub(crate) async fn verify_segment(
    objects: &dyn ObjectStore,
    key: &str,
    merged: &[SegmentRecord],
) -> Result<()> {
    let (_, back) = objects.get_range(key, ByteRange::All).await?;
    let (_, read) = decode_segment(key, &back)?;
    let names: HashSet<&str> = read.iter().map(|r| r.name.as_str()).collect();
    if merged.iter().any(|r| !names.contains(r.name.as_str())) {
        return Err(Error::corrupt(
            key,
            "segment read back lacks merged records",
        ));
    }
    Ok(())
}

/// Deletes every record or bundle all of whose names are in `gone` and
/// that is not in `deleted` yet; adds them to `deleted`.
async fn delete_gone_objects(
    objects: &dyn ObjectStore,
    records: &[LogName],
    gone: &HashSet<String>,
    deleted: &mut HashSet<String>,
) -> Result<()> {
    let now: Vec<String> = fully_gone(records, gone)
        .into_iter()
        .filter(|o| !deleted.contains(o))
        .collect();
    delete_all(objects, now.iter().map(|o| format!("{LOG_PREFIX}{o}"))).await?;
    deleted.extend(now);
    Ok(())
}

/// Applied hashes per day, sorted: what a reader keeps of segments.
#[derive(Debug, Clone, Default)]
pub(crate) struct AppliedHashes {
    days: BTreeMap<u32, Vec<u64>>,
    len: usize,
}

impl AppliedHashes {
    pub fn contains(&self, uid: &str, date: u32) -> bool {
        self.days
            .get(&date)
            .is_some_and(|h| h.binary_search(&pair_hash(uid, date)).is_ok())
    }

    /// Adds lookup entries; sorts, dedups and trims each touched day.
    pub fn extend(&mut self, entries: &[LookupEntry]) {
        let mut touched = std::collections::BTreeSet::new();
        for e in entries {
            self.days.entry(e.date).or_default().push(e.hash);
            touched.insert(e.date);
        }
        for date in &touched {
            if let Some(v) = self.days.get_mut(date) {
                v.sort_unstable();
                v.dedup();
                v.shrink_to_fit();
            }
        }
        self.len = self.days.values().map(Vec::len).sum();
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Heap bytes: hash capacity plus a per-day estimate of the map node.
    pub fn heap_bytes(&self) -> usize {
        const PER_DAY: usize = 4 + std::mem::size_of::<Vec<u64>>() + 16;
        self.days.values().map(|v| v.capacity() * 8 + PER_DAY).sum()
    }
}
