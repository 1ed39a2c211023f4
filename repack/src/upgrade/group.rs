//! Converting one (date, shard): its legacy parts become (or join) its v3
//! shard, which is read back and verified before any part is deleted.
//!
//! Order of work, and why a crash anywhere is harmless:
//!
//! 1. Read every part's index; the newest part holding a uid wins, as the
//!    legacy reader decides. Nothing has been written.
//! 2. Read the v3 shard of the (date, shard), if any (a packer may have
//!    written one since the upgrade started), then the tombstone log (after
//!    the shard, as `DeletionGuard` requires). Deleted (uid, day)s are not
//!    converted. A uid the v3 shard already holds must have the same content
//!    in the legacy winner, or the group is refused: neither version is lost.
//! 3. Copy legacy big files to `_big/<digest>` (with their chunk tables,
//!    under a big-file ref), then build the next generation: the v3 shard's
//!    entries copied as stored bytes, then the legacy entries, stored bytes
//!    unchanged, with CRC32C and digest computed from what they decode to.
//!    Published through `ShardPublish` (create-only for a new shard, else
//!    conditional on the generation read); a conflict starts over at 1.
//! 4. Read the published shard back: every converted uid must be listed, and
//!    its bytes must pass CRC32C, decoding and digest.
//! 5. Only then delete the group's parts, lowest-numbered first, so a legacy
//!    reader never finds an older copy of a uid whose newer copy is gone.
//!
//! A re-run finds a group whose v3 shard already holds all its uids: it
//! verifies (4) and finishes deleting (5). Parts that appear after step 1
//! (a Python DES still writing) are left for the next run.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use des_format::legacy::{LegacyEntry, LegacyIndex, LegacyPayload};
use des_format::shard::{AnyIndex, Located};
use des_format::v3::{self, EntryRef, NewEntry, ShardIdent, ShardWriter};
use des_format::{ContentDigest, FormatError, Timestamp, routing};
use des_storage::bridge::SyncObjectWriter;
use des_storage::keys::BIG_PREFIX;
use des_storage::protocol::{
    BigRef, DeletionGuard, PublishError, ShardPublish, big_ref_ttl, rebuild_on_conflict,
};
use des_storage::store::external_key;
use des_storage::{DesStore, ErrorKind, LoadedIndex, ObjectStore, PutOptions};
use tokio::runtime::Handle;

use super::copy::{
    self, BUFFER_ORIG_MAX, BUFFER_STORED_MAX, BigCopy, BigSource, SequentialReader, UPLOAD_CHUNK,
    hex_of,
};
use super::error::{Attempt, GroupError};
use super::pause::PausePoint;
use super::plan::Group;
use super::report::{GroupReport, GroupStatus};

/// What every group's conversion shares.
pub struct Ctx {
    pub handle: Handle,
    /// The legacy store (its layout: parts, `_bigFiles/`).
    pub source: DesStore,
    /// The v3 store (in place: the same objects as `source`).
    pub target: DesStore,
    pub deletions: DeletionGuard,
    pub dry_run: bool,
    /// Delete a group's parts once its v3 shard is verified.
    pub delete_legacy: bool,
    /// This run's name on its big-file refs.
    pub holder: String,
    pub conflict_retries: u32,
}

/// Converts one group; never panics, never deletes a part of a group that
/// failed. Call from a blocking thread.
pub fn convert(ctx: &Ctx, group: &Group) -> GroupReport {
    let mut last = GroupReport::new(group);
    let outcome = rebuild_on_conflict(
        ctx.conflict_retries,
        || {
            last = GroupReport::new(group);
            attempt(ctx, group, &mut last)
        },
        |e| matches!(e, Attempt::Conflict),
    );
    let error = match outcome {
        Ok(Some(())) => return last,
        Ok(None) | Err(Attempt::Conflict) => GroupError::Conflict,
        Err(Attempt::Failed(e)) => e,
    };
    last.status = GroupStatus::Failed;
    last.error = Some(error.to_string());
    last
}

/// One legacy part, read.
struct Part {
    loaded: LoadedIndex,
    index: Arc<LegacyIndex>,
}

/// The copy of a uid a reader of the legacy store would serve.
struct Winner<'p> {
    part: usize,
    entry: &'p LegacyEntry,
}

fn storage(key: &str) -> impl Fn(des_storage::Error) -> GroupError + '_ {
    move |e| GroupError::storage(key, e)
}

fn attempt(ctx: &Ctx, group: &Group, report: &mut GroupReport) -> Result<(), Attempt> {
    let key = group.v3_key();
    let parts = load_parts(ctx, group)?;
    report.parts = parts.iter().map(|p| p.loaded.key.clone()).collect();
    if parts.is_empty() {
        report.status = GroupStatus::Gone;
        return Ok(());
    }
    let winners = winners(&parts, report);
    check_entries(ctx, group, &winners)?;
    let base = load_base(ctx, group, &key)?;
    // After reading the generation we build on, never before: see `DeletionGuard`.
    ctx.handle
        .block_on(ctx.deletions.refresh())
        .map_err(storage("_tombstones/"))?;
    let mut expected: BTreeMap<&str, Option<ContentDigest>> = BTreeMap::new();
    let mut to_add = Vec::new();
    let mut present = Vec::new();
    for (uid, w) in &winners {
        if ctx.deletions.is_deleted(uid, group.date) {
            report.deleted += 1;
            continue;
        }
        match base.as_ref().and_then(|b| v3_digest(b, uid)) {
            Some(d) => present.push((w, d)),
            None => to_add.push(w),
        }
        expected.insert(*uid, None);
    }
    report.already_in_v3 = present.len() as u64;
    report.added = to_add.len() as u64;
    if ctx.dry_run {
        report.status = GroupStatus::WouldConvert;
        return Ok(());
    }
    check_same_content(ctx, group, &parts, &present, report)?;
    if !to_add.is_empty() {
        let added = build(ctx, group, &key, base.as_ref(), &parts, &to_add, report)?;
        for (uid, digest) in added {
            if let Some(slot) = expected.get_mut(uid) {
                *slot = Some(digest);
            }
        }
        PausePoint::AfterPublish.check();
    }
    // Nothing to verify when every file of the group is deleted (there may
    // be no v3 shard at all then).
    if !expected.is_empty() {
        verify(ctx, group, &key, &expected, report)?;
    }
    if ctx.delete_legacy {
        for p in &parts {
            let objects = ctx
                .source
                .objects_for_key(&p.loaded.key)
                .map_err(storage(&p.loaded.key))?;
            ctx.handle
                .block_on(objects.delete(&p.loaded.key))
                .map_err(storage(&p.loaded.key))?;
            report.parts_deleted += 1;
            PausePoint::AfterDeletePart.check();
        }
    }
    report.status = if to_add.is_empty() {
        GroupStatus::AlreadyConverted
    } else {
        GroupStatus::Converted
    };
    Ok(())
}

/// Every part's index, ascending. A part that vanished since the listing
/// (another run converted it) is skipped.
fn load_parts(ctx: &Ctx, group: &Group) -> Result<Vec<Part>, GroupError> {
    let mut parts = Vec::with_capacity(group.parts.len());
    for key in &group.parts {
        let loaded = match ctx.handle.block_on(ctx.source.load_index(key)) {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Invalid) => {
                return Err(GroupError::corrupt(key, e));
            }
            Err(e) => return Err(GroupError::storage(key, e)),
        };
        let index = match &loaded.index {
            AnyIndex::Legacy(ix) => Arc::clone(ix),
            AnyIndex::V3(_) => {
                return Err(GroupError::corrupt(
                    key,
                    "a v3 shard under a legacy part name",
                ));
            }
        };
        parts.push(Part { loaded, index });
    }
    Ok(parts)
}

/// The newest part holding a uid wins (the legacy reader's rule); within a
/// part the index already kept the later record.
fn winners<'p>(parts: &'p [Part], report: &mut GroupReport) -> BTreeMap<&'p str, Winner<'p>> {
    let mut out = BTreeMap::new();
    for (i, p) in parts.iter().enumerate() {
        for e in p.index.entries() {
            if out
                .insert(e.uid.as_str(), Winner { part: i, entry: e })
                .is_some()
            {
                report.shadowed += 1;
            }
        }
    }
    report.files = out.len() as u64;
    out
}

/// Refuses the group if an entry is unreachable under this n_bits, or is
/// something a v3 shard cannot hold (checked before anything is uploaded).
fn check_entries(
    ctx: &Ctx,
    group: &Group,
    winners: &BTreeMap<&str, Winner<'_>>,
) -> Result<(), GroupError> {
    let n_bits = ctx.source.n_bits();
    let elsewhere: Vec<&str> = winners
        .keys()
        .copied()
        .filter(|uid| routing::shard_index(uid, n_bits).ok() != Some(group.shard_index))
        .collect();
    if let Some(first) = elsewhere.first() {
        return Err(GroupError::Unreachable {
            key: group.v3_key(),
            count: elsewhere.len(),
            example: (*first).to_string(),
            n_bits,
        });
    }
    for (uid, w) in winners {
        let unsupported = |detail: String| GroupError::Unsupported {
            uid: (*uid).to_string(),
            detail,
        };
        if uid.len() > v3::MAX_UID_LEN {
            return Err(unsupported(format!("uid of {} bytes", uid.len())));
        }
        if let Some(meta) = &w.entry.meta {
            if meta.len() > v3::MAX_META_LEN {
                return Err(unsupported(format!("metadata of {} bytes", meta.len())));
            }
            if serde_json::from_str::<serde_json::Value>(meta).is_err() {
                return Err(unsupported("metadata is not JSON".into()));
            }
        }
        if w.entry.orig_len > v3::MAX_U40 {
            return Err(unsupported("larger than 1 TiB".into()));
        }
    }
    Ok(())
}

/// The v3 shard of the group, if there is one; it must be the shard its key
/// names in this store, or building on it would carry a misplaced shard on.
fn load_base(ctx: &Ctx, group: &Group, key: &str) -> Result<Option<LoadedIndex>, GroupError> {
    let base = ctx
        .handle
        .block_on(ctx.target.load_index(key))
        .map_err(|e| GroupError::V3Shard {
            key: key.to_string(),
            detail: format!("unreadable ({e})"),
        })?;
    if let Some(b) = &base {
        check_identity(ctx, group, b).map_err(|detail| GroupError::V3Shard {
            key: key.to_string(),
            detail,
        })?;
    }
    Ok(base)
}

fn check_identity(ctx: &Ctx, group: &Group, loaded: &LoadedIndex) -> Result<(), String> {
    let Some(t) = loaded.index.trailer() else {
        return Err("a legacy-format object under a v3 shard key".into());
    };
    if t.date != group.date
        || u32::from(t.shard_index) != group.shard_index
        || t.n_bits != ctx.target.n_bits()
        || t.digest_alg != ctx.target.digest()
    {
        return Err(format!(
            "its trailer does not match its key or the store ({t:?})"
        ));
    }
    Ok(())
}

fn v3_digest(base: &LoadedIndex, uid: &str) -> Option<ContentDigest> {
    match &base.index {
        AnyIndex::V3(ix) => ix.view().find(uid).map(|e| e.digest()),
        AnyIndex::Legacy(_) => None,
    }
}

/// A uid already in the v3 shard (from a packer, or an interrupted run)
/// counts as converted only if its content is the legacy winner's; else
/// deleting the part would lose one of two different files.
fn check_same_content(
    ctx: &Ctx,
    group: &Group,
    parts: &[Part],
    present: &[(&Winner<'_>, ContentDigest)],
    report: &mut GroupReport,
) -> Result<(), GroupError> {
    if present.is_empty() {
        return Ok(());
    }
    let mut bigs = HashMap::new();
    for (i, part) in parts.iter().enumerate() {
        let mut mine: Vec<_> = present.iter().filter(|(w, _)| w.part == i).collect();
        mine.sort_by_key(|(w, _)| match w.entry.payload {
            LegacyPayload::Inline { offset, .. } => offset,
            LegacyPayload::BigFile { .. } => u64::MAX,
        });
        let mut reader = part_reader(ctx, part, mine.iter().map(|(w, _)| w.entry))?;
        for (w, v3) in mine {
            let legacy = match &w.entry.payload {
                LegacyPayload::Inline { offset, len } => {
                    inline_digest(ctx, part, w.entry, *offset, *len, &mut reader)?
                }
                LegacyPayload::BigFile { sha256_hex } => {
                    big_digest(ctx, part, w.entry, sha256_hex, &mut bigs)?
                }
            };
            if legacy != *v3 {
                return Err(GroupError::V3Shard {
                    key: group.v3_key(),
                    detail: format!(
                        "it holds {:?} with other content than the legacy part {}; both are \
                         kept (readers get the v3 one)",
                        w.entry.uid, part.loaded.key
                    ),
                });
            }
        }
        report.bytes_read += reader.bytes_read;
    }
    Ok(())
}

/// A reader over the inline entries of one part that will be read.
fn part_reader<'e>(
    ctx: &Ctx,
    part: &Part,
    entries: impl Iterator<Item = &'e LegacyEntry>,
) -> Result<SequentialReader, GroupError> {
    let key = &part.loaded.key;
    let (mut start, mut end) = (u64::MAX, 0);
    for e in entries {
        if let LegacyPayload::Inline { offset, len } = e.payload {
            start = start.min(offset);
            end = end.max(offset + len);
        }
    }
    let objects = ctx.source.objects_for_key(key).map_err(storage(key))?;
    Ok(SequentialReader::new(
        &ctx.handle,
        objects,
        &part.loaded,
        start.min(end)..end,
    ))
}

/// The digest of an inline legacy entry's content, checked as the legacy
/// reader checks it (length after decoding).
fn inline_digest(
    ctx: &Ctx,
    part: &Part,
    e: &LegacyEntry,
    offset: u64,
    len: u64,
    reader: &mut SequentialReader,
) -> Result<ContentDigest, GroupError> {
    let key = &part.loaded.key;
    let alg = ctx.target.digest();
    if len <= BUFFER_STORED_MAX && e.orig_len <= BUFFER_ORIG_MAX {
        let stored = reader.read_at(offset, len).map_err(storage(key))?;
        let data = Located::from_legacy(e)
            .decode(&stored)
            .map_err(|err| GroupError::corrupt(key, err))?;
        return Ok(alg.digest(&data));
    }
    let r = reader.open_at(offset, len).map_err(storage(key))?;
    copy::scan(r, e.codec, len, e.orig_len, alg)
        .map(|s| s.digest)
        .map_err(|err| err.into_group(key, &e.uid))
}

fn big_source<'a>(
    ctx: &'a Ctx,
    e: &LegacyEntry,
    sha256_hex: &'a str,
    src: &'a Arc<dyn ObjectStore>,
    dst: &'a Arc<dyn ObjectStore>,
    key: &'a str,
) -> BigSource<'a> {
    BigSource {
        handle: &ctx.handle,
        source: src,
        key,
        sha256_hex,
        size: e.orig_len,
        target: dst,
        alg: ctx.target.digest(),
    }
}

fn big_key_of(part: &Part, e: &LegacyEntry) -> Result<String, GroupError> {
    external_key(&part.loaded.key, &Located::from_legacy(e))
        .ok_or_else(|| GroupError::corrupt(&part.loaded.key, "big file entry without a key"))
}

/// The digest of a legacy big file (read whole: its SHA-256 name and size
/// are checked on the way), once per file per attempt.
fn big_digest(
    ctx: &Ctx,
    part: &Part,
    e: &LegacyEntry,
    sha256_hex: &str,
    seen: &mut HashMap<String, ContentDigest>,
) -> Result<ContentDigest, GroupError> {
    if let Some(d) = seen.get(sha256_hex) {
        return Ok(*d);
    }
    let key = big_key_of(part, e)?;
    let src = ctx
        .source
        .objects_for_key(&part.loaded.key)
        .map_err(storage(&key))?;
    let (digest, _) = big_source(ctx, e, sha256_hex, &src, &src, &key).scan()?;
    seen.insert(sha256_hex.to_string(), digest);
    Ok(digest)
}

fn write_err(key: &str) -> impl Fn(FormatError) -> GroupError + '_ {
    move |e| match e {
        FormatError::Io(io) => GroupError::storage(key, des_storage::Error::other("writing", io)),
        other => GroupError::corrupt(key, other),
    }
}

fn publish_err(key: &str) -> impl Fn(des_storage::Error) -> Attempt + '_ {
    move |e| match PublishError::from_store(e) {
        PublishError::Conflict => Attempt::Conflict,
        PublishError::Store(e) => Attempt::Failed(GroupError::storage(key, e)),
    }
}

/// Builds and publishes the next generation of the group's v3 shard: the
/// current one's entries plus `to_add`. Returns the digest of each added uid.
fn build<'p>(
    ctx: &Ctx,
    group: &Group,
    key: &str,
    base: Option<&LoadedIndex>,
    parts: &'p [Part],
    to_add: &[&Winner<'p>],
    report: &mut GroupReport,
) -> Result<Vec<(&'p str, ContentDigest)>, Attempt> {
    let objects = ctx
        .target
        .objects_for_shard(group.shard_index)
        .map_err(storage(key))?;
    let created_at = des_storage::tombstones::start_of_date(group.date).map_err(storage(key))?;
    // Big files first: their copies do not depend on the shard upload, and
    // must exist (with their tables) before a shard referencing them does.
    let mut refs = Vec::new();
    let mut bigs: HashMap<&str, BigCopy> = HashMap::new();
    for w in to_add {
        if let LegacyPayload::BigFile { sha256_hex } = &w.entry.payload
            && !bigs.contains_key(sha256_hex.as_str())
        {
            let part = parts
                .get(w.part)
                .ok_or_else(|| GroupError::corrupt(key, "part index out of range"))?;
            let c = copy_big(ctx, group, part, w.entry, sha256_hex, &objects, &mut refs)?;
            report.big_files_uploaded += u64::from(c.uploaded);
            report.bytes_written += if c.uploaded { c.len } else { 0 };
            bigs.insert(sha256_hex, c);
        }
    }
    let publish = ShardPublish::new(Arc::clone(&objects), key, base);
    let upload = ctx
        .handle
        .block_on(objects.put_writer(
            key,
            PutOptions {
                mode: publish.mode(),
            },
        ))
        .map_err(publish_err(key))?;
    let sink = SyncObjectWriter::new(ctx.handle.clone(), upload, UPLOAD_CHUNK);
    let ident = ShardIdent {
        date: group.date,
        shard_index: u16::try_from(group.shard_index)
            .map_err(|_| GroupError::corrupt(key, "shard index out of range"))?,
        n_bits: ctx.target.n_bits(),
        generation: base
            .and_then(|b| b.index.trailer())
            .map_or(1, |t| t.generation + 1),
        digest_alg: ctx.target.digest(),
        written_at: Timestamp::now(),
    };
    let mut w = ShardWriter::new(sink, ident).map_err(write_err(key))?;
    let mut kept: Vec<String> = Vec::new();
    if let Some(b) = base {
        kept = copy_base(ctx, &objects, b, &mut w, report)?;
    }
    let mut added = Vec::with_capacity(to_add.len());
    for (i, part) in parts.iter().enumerate() {
        let mine: Vec<&LegacyEntry> = to_add
            .iter()
            .filter(|w| w.part == i)
            .map(|w| w.entry)
            .collect();
        let mut inline: Vec<(&LegacyEntry, u64, u64)> = Vec::new();
        for e in &mine {
            match &e.payload {
                LegacyPayload::Inline { offset, len } => inline.push((e, *offset, *len)),
                LegacyPayload::BigFile { sha256_hex } => {
                    let c = bigs
                        .get(sha256_hex.as_str())
                        .ok_or_else(|| GroupError::corrupt(key, "big file not copied"))?;
                    let entry = new_entry(e, created_at, c.digest);
                    w.add_external(entry, c.len, c.crc32c)
                        .map_err(write_err(key))?;
                    added.push((e.uid.as_str(), c.digest));
                }
            }
        }
        inline.sort_by_key(|(_, offset, _)| *offset);
        let mut reader = part_reader(ctx, part, inline.iter().map(|(e, _, _)| *e))?;
        for (e, offset, len) in inline {
            let digest = add_inline(ctx, part, e, offset, len, created_at, &mut reader, &mut w)?;
            added.push((e.uid.as_str(), digest));
        }
        report.bytes_read += reader.bytes_read;
    }
    let (sink, summary) = w.finish().map_err(write_err(key))?;
    recheck_big_files(ctx, &objects, &mut refs)?;
    let put = publish
        .commit_blocking(&ctx.handle, &ctx.target, sink, |latest| {
            kept.iter().all(|u| latest.find(u).is_some())
                && added.iter().all(|(u, _)| latest.find(u).is_some())
        })
        .map_err(|e| match e {
            PublishError::Conflict => Attempt::Conflict,
            PublishError::Store(e) => Attempt::Failed(GroupError::storage(key, e)),
        })?;
    report.generation = Some(summary.trailer.generation);
    report.bytes_written += put.size;
    Ok(added)
}

fn new_entry(e: &LegacyEntry, created_at: Timestamp, digest: ContentDigest) -> NewEntry {
    NewEntry {
        uid: e.uid.clone(),
        // Legacy indexes record no time: the start of the part's (UTC) day,
        // the one thing the layout says about it (retention may count such
        // a file up to a day older than it is, never younger).
        created_at,
        content_type: None,
        meta: e.meta.clone(),
        codec: e.codec,
        orig_len: e.orig_len,
        digest,
    }
}

/// Copies one inline legacy entry as stored bytes. Small entries are read
/// once and checked with the legacy reader's own decode; large ones are
/// streamed twice: a first GET of their own for length, decoding and
/// digest, then the copy, checked against the first pass's CRC32C so the
/// bytes stored are the bytes hashed.
#[allow(clippy::too_many_arguments)]
fn add_inline(
    ctx: &Ctx,
    part: &Part,
    e: &LegacyEntry,
    offset: u64,
    len: u64,
    created_at: Timestamp,
    reader: &mut SequentialReader,
    w: &mut ShardWriter<SyncObjectWriter>,
) -> Result<ContentDigest, GroupError> {
    let key = &part.loaded.key;
    let alg = ctx.target.digest();
    if len <= BUFFER_STORED_MAX && e.orig_len <= BUFFER_ORIG_MAX {
        let stored = reader.read_at(offset, len).map_err(storage(key))?;
        let data = Located::from_legacy(e)
            .decode(&stored)
            .map_err(|err| GroupError::corrupt(key, err))?;
        let digest = alg.digest(&data);
        w.add_inline(new_entry(e, created_at, digest), &stored)
            .map_err(write_err(key))?;
        return Ok(digest);
    }
    let objects = ctx.source.objects_for_key(key).map_err(storage(key))?;
    let first = copy::open_range(
        &ctx.handle,
        &objects,
        key,
        offset..offset + len,
        part.loaded.object.etag.clone(),
    )
    .map_err(storage(key))?;
    let scanned = copy::scan(first, e.codec, len, e.orig_len, alg)
        .map_err(|err| err.into_group(key, &e.uid))?;
    let r = reader.open_at(offset, len).map_err(storage(key))?;
    w.add_inline_from(
        new_entry(e, created_at, scanned.digest),
        len,
        scanned.crc32c,
        r,
    )
    .map_err(write_err(key))?;
    Ok(scanned.digest)
}

/// Copies a legacy big file to `_big/<hex of digest>` (unless that object
/// is there already: content-addressed, stored raw, so one of the right
/// size is this file) and writes its chunk table, under a big-file ref
/// taken before the existence check (`des_storage::protocol::bigrefs`).
fn copy_big(
    ctx: &Ctx,
    group: &Group,
    part: &Part,
    e: &LegacyEntry,
    sha256_hex: &str,
    objects: &Arc<dyn ObjectStore>,
    refs: &mut Vec<BigRef>,
) -> Result<BigCopy, GroupError> {
    let src_key = big_key_of(part, e)?;
    let src = ctx
        .source
        .objects_for_key(&part.loaded.key)
        .map_err(storage(&src_key))?;
    let source = big_source(ctx, e, sha256_hex, &src, objects, &src_key);
    let (digest, table) = source.scan()?;
    let big_key = v3::external_key(&digest);
    let hex = hex_of(&digest);
    let big_ref = ctx
        .handle
        .block_on(BigRef::take(
            objects.as_ref(),
            &hex,
            &ctx.holder,
            (&e.uid, group.date),
            big_ref_ttl(),
        ))
        .map_err(storage(&big_key))?;
    refs.push(big_ref);
    let uploaded = match ctx.handle.block_on(objects.head(&big_key)) {
        Ok(meta) if meta.size == table.stored_len() => false,
        Ok(_) => true,
        Err(err) if err.kind() == ErrorKind::NotFound => true,
        Err(err) => return Err(GroupError::storage(&big_key, err)),
    };
    if uploaded {
        source.upload(&big_key, &digest)?;
    }
    let table_key = v3::chunk_table_key(&big_key);
    ctx.handle
        .block_on(objects.put(&table_key, table.encode().into(), PutOptions::default()))
        .map_err(storage(&table_key))?;
    Ok(BigCopy {
        digest,
        len: table.stored_len(),
        crc32c: table.whole_crc32c(),
        uploaded,
    })
}

/// Right before publishing: every big file the new entries rely on must
/// still exist, under a ref young enough to protect it; one collected
/// meanwhile makes the attempt start over, which copies it again.
fn recheck_big_files(
    ctx: &Ctx,
    objects: &Arc<dyn ObjectStore>,
    refs: &mut [BigRef],
) -> Result<(), Attempt> {
    for r in refs.iter_mut() {
        let key = format!("{BIG_PREFIX}{}", r.hex);
        if r.needs_renewal(Timestamp::now()) {
            ctx.handle
                .block_on(r.renew(objects.as_ref()))
                .map_err(storage(&key))?;
        }
        match ctx.handle.block_on(objects.head(&key)) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(Attempt::Conflict),
            Err(e) => return Err(GroupError::storage(&key, e).into()),
        }
    }
    Ok(())
}

/// Copies every entry of the current v3 generation into `w` (stored bytes,
/// CRC-checked, one sequential read); returns their uids.
fn copy_base(
    ctx: &Ctx,
    objects: &Arc<dyn ObjectStore>,
    base: &LoadedIndex,
    w: &mut ShardWriter<SyncObjectWriter>,
    report: &mut GroupReport,
) -> Result<Vec<String>, GroupError> {
    let key = &base.key;
    let AnyIndex::V3(ix) = &base.index else {
        return Err(GroupError::V3Shard {
            key: key.clone(),
            detail: "not a v3 shard".into(),
        });
    };
    let view = ix.view();
    let mut entries: Vec<EntryRef<'_>> = view.iter().collect();
    entries.sort_by_key(|e| (e.is_external(), e.data_offset()));
    let span = v3::HEADER_LEN..ix.trailer().data_end();
    let mut reader = SequentialReader::new(&ctx.handle, Arc::clone(objects), base, span);
    let mut kept = Vec::with_capacity(entries.len());
    for e in entries {
        if e.is_external() {
            w.add_external(e.to_new_entry(), e.stored_len(), e.crc32c())
                .map_err(write_err(key))?;
        } else {
            let r = reader
                .open_at(e.data_offset(), e.stored_len())
                .map_err(storage(key))?;
            w.add_inline_from(e.to_new_entry(), e.stored_len(), e.crc32c(), r)
                .map_err(write_err(key))?;
        }
        kept.push(e.uid.to_string());
    }
    report.bytes_read += reader.bytes_read;
    Ok(kept)
}

/// Reads the published shard back: every uid of `expected` is listed (with
/// the digest computed while converting, where known), and its stored
/// bytes pass CRC32C, decoding and digest.
fn verify(
    ctx: &Ctx,
    group: &Group,
    key: &str,
    expected: &BTreeMap<&str, Option<ContentDigest>>,
    report: &mut GroupReport,
) -> Result<(), GroupError> {
    let loaded = ctx
        .handle
        .block_on(ctx.target.load_index(key))
        .map_err(|e| GroupError::verify(key, e))?
        .ok_or_else(|| GroupError::verify(key, "the v3 shard is gone"))?;
    check_identity(ctx, group, &loaded).map_err(|d| GroupError::verify(key, d))?;
    let AnyIndex::V3(ix) = &loaded.index else {
        return Err(GroupError::verify(key, "not a v3 shard"));
    };
    let alg = ix.trailer().digest_alg;
    let view = ix.view();
    let mut inline = Vec::new();
    let mut external = Vec::new();
    for (uid, want) in expected {
        let e = view
            .find(uid)
            .ok_or_else(|| GroupError::verify(key, format!("{uid:?} is not listed")))?;
        if want.is_some_and(|d| d != e.digest()) {
            return Err(GroupError::verify(
                key,
                format!("{uid:?} is listed with another digest"),
            ));
        }
        if e.is_external() {
            external.push(e);
        } else {
            inline.push(e);
        }
    }
    inline.sort_by_key(|e| e.data_offset());
    let objects = ctx
        .target
        .objects_for_shard(group.shard_index)
        .map_err(storage(key))?;
    let span = inline.first().map_or(0, |e| e.data_offset())
        ..inline
            .iter()
            .map(|e| e.data_offset() + e.stored_len())
            .max()
            .unwrap_or(0);
    let mut reader = SequentialReader::new(&ctx.handle, Arc::clone(&objects), &loaded, span);
    let check = |e: &EntryRef<'_>, r: &mut dyn std::io::Read, where_: &str| {
        let s =
            copy::scan(r, e.codec(), e.stored_len(), e.orig_len(), alg).map_err(|err| match err
                .into_group(where_, e.uid)
            {
                GroupError::Corrupt { key, detail } => GroupError::Verify { key, detail },
                other => other,
            })?;
        if s.crc32c != e.crc32c() || s.digest != e.digest() {
            return Err(GroupError::verify(
                where_,
                format!("{:?}: CRC32C or digest mismatch", e.uid),
            ));
        }
        Ok(())
    };
    for e in &inline {
        let mut r = reader
            .open_at(e.data_offset(), e.stored_len())
            .map_err(storage(key))?;
        check(e, &mut r, key)?;
    }
    report.bytes_read += reader.bytes_read;
    for e in &external {
        let big_key = v3::external_key(&e.digest());
        let mut r: Box<dyn std::io::Read> = if e.stored_len() == 0 {
            Box::new(std::io::empty())
        } else {
            Box::new(
                copy::open_range(&ctx.handle, &objects, &big_key, 0..e.stored_len(), None)
                    .map_err(storage(&big_key))?,
            )
        };
        check(e, &mut r, &big_key)?;
        report.bytes_read += e.stored_len();
    }
    report.verified = expected.len() as u64;
    Ok(())
}
