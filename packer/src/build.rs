//! Building one (date, shard) object: the previous generation's entries
//! (copied as stored bytes, CRC-checked, in one sequential read) plus the new
//! files, published atomically in the store of the zone owning the shard.
//! The rules of publishing (conditional write, re-check, rebuild on
//! conflict), of never adding a deleted file, and of relying on an existing
//! big file are des-storage's (`des_storage::protocol`); this module follows
//! them.

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use des_format::Timestamp;
use des_format::shard::AnyIndex;
use des_format::v3::{self, EntryRef, ShardIdent, ShardWriter};
use des_storage::bridge::{BlockingStreamReader, SyncObjectWriter};
use des_storage::keys::{BIG_PREFIX, ShardKey};
use des_storage::protocol::{BigRef, PublishError, ShardPublish, rebuild_on_conflict};
use des_storage::{ByteRange, ErrorKind, GetOptions, LoadedIndex, ObjectStore, PutOptions};

use crate::ingest::{Ingest, Prepared};
use crate::options::UPLOAD_CHUNK;
use crate::plan::ShardGroup;
use crate::report::{Failure, FailureKind, FileError, ShardStat};
use crate::source::FileRecord;

#[derive(Debug, Default)]
pub struct GroupResult {
    /// `None` when the shard was left as it was.
    pub stat: Option<ShardStat>,
    pub packed: u64,
    pub already_present: u64,
    pub big_files: u64,
    pub bytes_in: u64,
    pub bytes_stored: u64,
    pub failures: Vec<Failure>,
    /// Files whose (uid, day) is deleted: not packed (see `partition`).
    pub deleted: Vec<Failure>,
}

pub(crate) enum BuildError {
    /// Someone else replaced the shard while we built ours: rebuild from theirs.
    Conflict,
    Fatal(FileError),
}

impl From<PublishError> for BuildError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Conflict => Self::Conflict,
            PublishError::Store(e) => Self::store(e),
        }
    }
}

impl BuildError {
    fn store(detail: impl std::fmt::Display) -> Self {
        Self::Fatal(FileError::new(FailureKind::Store, detail))
    }

    fn unusable(detail: impl std::fmt::Display) -> Self {
        Self::Fatal(FileError::new(FailureKind::ShardUnusable, detail))
    }
}

fn failure(rec: &FileRecord, e: FileError) -> Failure {
    Failure {
        line: rec.line,
        uid: Some(rec.uid.clone()),
        source: Some(rec.source.to_string()),
        kind: e.kind,
        reason: e.detail,
    }
}

pub fn build_group(ctx: &Ingest<'_>, group: &ShardGroup) -> GroupResult {
    let built = rebuild_on_conflict(
        ctx.opts.conflict_retries,
        || try_build(ctx, group),
        |e| matches!(e, BuildError::Conflict),
    );
    match built {
        Ok(Some(r)) => r,
        Err(BuildError::Fatal(e)) => fail_all(group, &e),
        Ok(None) | Err(BuildError::Conflict) => fail_all(
            group,
            &FileError::new(
                FailureKind::Contention,
                "shard kept changing under concurrent writers; retry later",
            ),
        ),
    }
}

fn fail_all(group: &ShardGroup, e: &FileError) -> GroupResult {
    GroupResult {
        failures: group.files.iter().map(|r| failure(r, e.clone())).collect(),
        ..GroupResult::default()
    }
}

pub(crate) fn storage_err(e: des_storage::Error) -> BuildError {
    PublishError::from_store(e).into()
}

fn load_old(
    ctx: &Ingest<'_>,
    key: &str,
    group: &ShardGroup,
) -> Result<Option<LoadedIndex>, BuildError> {
    let old = ctx
        .handle
        .block_on(ctx.store.load_index(key))
        .map_err(|e| {
            let detail = format!("existing shard {key} is unreadable ({e}); run des-verify");
            match e.kind() {
                ErrorKind::Corrupt | ErrorKind::Invalid => BuildError::unusable(detail),
                _ => BuildError::store(detail),
            }
        })?;
    if let Some(o) = &old {
        let Some(t) = o.index.trailer() else {
            return Err(BuildError::unusable(format!("{key} is not a v3 shard")));
        };
        let date: u32 = group.date_dir.parse().unwrap_or(0);
        if t.date != date
            || u32::from(t.shard_index) != group.shard_index
            || t.n_bits != ctx.store.n_bits()
        {
            return Err(BuildError::unusable(format!(
                "{key} holds a different shard (trailer {t:?})"
            )));
        }
    }
    Ok(old)
}

fn try_build(ctx: &Ingest<'_>, group: &ShardGroup) -> Result<GroupResult, BuildError> {
    let started = Instant::now();
    let date = group.date_dir.parse().unwrap_or(0);
    let key = ShardKey::new(date, group.shard_index, ctx.store.n_bits()).to_string();
    let objects = ctx
        .store
        .objects_for_shard(group.shard_index)
        .map_err(|e| BuildError::store(format!("no store for {key}: {e}")))?;
    let old = load_old(ctx, &key, group)?;
    // After reading the base generation, never before: see `DeletionGuard`.
    ctx.handle
        .block_on(ctx.deletions.refresh())
        .map_err(|e| BuildError::store(format!("reading the tombstone log: {e}")))?;
    let mut out = GroupResult::default();
    let to_add = partition(ctx, group, old.as_ref(), &mut out);
    if to_add.is_empty() {
        return Ok(out);
    }
    let publish = ShardPublish::new(Arc::clone(&objects), &key, old.as_ref());
    let upload = ctx
        .handle
        .block_on(objects.put_writer(
            &key,
            PutOptions {
                mode: publish.mode(),
            },
        ))
        .map_err(storage_err)?;
    let sink = SyncObjectWriter::new(ctx.handle.clone(), upload, UPLOAD_CHUNK);
    let ident = ShardIdent {
        date,
        shard_index: u16::try_from(group.shard_index).unwrap_or(u16::MAX),
        n_bits: ctx.store.n_bits(),
        generation: old
            .as_ref()
            .and_then(|o| o.index.trailer())
            .map_or(1, |t| t.generation + 1),
        digest_alg: ctx.store.digest(),
        written_at: Timestamp::now(),
    };
    let mut w = ShardWriter::new(sink, ident).map_err(BuildError::store)?;
    if let Some(o) = &old {
        copy_old(ctx, &objects, o, &mut w)?;
    }
    let mut refs = Vec::new();
    let added = add_new(ctx, &objects, &to_add, &mut w, &mut out, &mut refs);
    if added.is_empty() {
        // Everything new failed: keep the old shard untouched (dropping `w` aborts the upload).
        return Ok(out);
    }
    let (sink, summary) = w.finish().map_err(BuildError::store)?;
    recheck_big_files(ctx, &objects, &mut refs)?;
    let put = publish.commit_blocking(ctx.handle, ctx.store, sink, |latest| {
        added.iter().all(|uid| latest.find(uid).is_some())
    })?;
    out.stat = Some(ShardStat {
        key,
        generation: summary.trailer.generation,
        entries: u64::from(summary.entries),
        new_entries: added.len() as u64,
        bytes: put.size,
        new_original_bytes: out.bytes_in,
        new_stored_bytes: out.bytes_stored,
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(out)
}

/// Right before publishing: every big file the new entries rely on must
/// still exist, under a ref young enough to protect it (see
/// `des_storage::protocol::bigrefs`). One that clean-up deleted meanwhile
/// makes the attempt start over, which uploads it again.
fn recheck_big_files(
    ctx: &Ingest<'_>,
    objects: &Arc<dyn ObjectStore>,
    refs: &mut [BigRef],
) -> Result<(), BuildError> {
    for r in refs.iter_mut() {
        if r.needs_renewal(Timestamp::now()) {
            ctx.handle
                .block_on(r.renew(objects.as_ref()))
                .map_err(storage_err)?;
        }
        let key = format!("{BIG_PREFIX}{}", r.hex);
        match ctx.handle.block_on(objects.head(&key)) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(BuildError::Conflict),
            Err(e) => return Err(storage_err(e)),
        }
    }
    Ok(())
}

/// Splits the group into files to add and files already in the old shard
/// (identical content: counted as present; different content: a failure,
/// because stored files are immutable). A deleted (uid, day) is never added:
/// it is reported as deleted, whether or not the shard still holds it.
fn partition<'g>(
    ctx: &Ingest<'_>,
    group: &'g ShardGroup,
    old: Option<&LoadedIndex>,
    out: &mut GroupResult,
) -> Vec<&'g FileRecord> {
    let mut to_add = Vec::with_capacity(group.files.len());
    for rec in &group.files {
        if ctx
            .deletions
            .is_deleted(&rec.uid, rec.created_at.date_number())
        {
            out.deleted.push(failure(
                rec,
                FileError::new(FailureKind::Deleted, "deleted"),
            ));
            continue;
        }
        let Some(existing) = old.and_then(|o| o.find(&rec.uid)) else {
            to_add.push(rec);
            continue;
        };
        let same = match (&existing.check, ctx.digest_of(rec)) {
            (des_format::shard::Check::V3 { digest, .. }, Ok(d)) => *digest == d,
            (_, Err(reason)) => {
                out.failures.push(failure(rec, reason));
                continue;
            }
            _ => false,
        };
        if same {
            out.already_present += 1;
        } else {
            out.failures.push(failure(
                rec,
                FileError::new(
                    FailureKind::ContentConflict,
                    "uid already stored for this day with different content",
                ),
            ));
        }
    }
    to_add
}

/// Copies every entry of the previous generation with one sequential read
/// of its data region, in offset order.
fn copy_old(
    ctx: &Ingest<'_>,
    objects: &Arc<dyn ObjectStore>,
    old: &LoadedIndex,
    w: &mut ShardWriter<SyncObjectWriter>,
) -> Result<(), BuildError> {
    let AnyIndex::V3(ix) = &old.index else {
        return Err(BuildError::unusable(format!(
            "{} is not a v3 shard",
            old.key
        )));
    };
    let view = ix.view();
    let mut entries: Vec<EntryRef<'_>> = view.iter().collect();
    entries.sort_by_key(|e| (e.is_external(), e.data_offset()));
    // An old entry that fails its check: the shard cannot be built on.
    let fatal =
        |e: des_format::FormatError| BuildError::unusable(format!("copying {}: {e}", old.key));
    let data_end = ix.trailer().data_end();
    let opts = GetOptions {
        range: Some(ByteRange::Bounded {
            start: v3::HEADER_LEN,
            end: data_end,
        }),
        if_match: old.object.etag.clone(),
    };
    let body = if data_end > v3::HEADER_LEN {
        let got = ctx
            .handle
            .block_on(objects.get(&old.key, opts))
            .map_err(storage_err)?;
        Some(BlockingStreamReader::new(ctx.handle.clone(), got.body))
    } else {
        None
    };
    let mut reader = body;
    let mut pos = v3::HEADER_LEN;
    for e in entries {
        if e.is_external() {
            w.add_external(e.to_new_entry(), e.stored_len(), e.crc32c())
                .map_err(fatal)?;
            continue;
        }
        let r = reader
            .as_mut()
            .ok_or_else(|| BuildError::unusable(format!("{}: empty data region", old.key)))?;
        let gap = e.data_offset().saturating_sub(pos);
        std::io::copy(&mut r.take(gap), &mut std::io::sink())
            .map_err(|err| BuildError::store(format!("reading {}: {err}", old.key)))?;
        w.add_inline_from(e.to_new_entry(), e.stored_len(), e.crc32c(), &mut *r)
            .map_err(fatal)?;
        pos = e.data_offset() + e.stored_len();
    }
    Ok(())
}

/// Adds what can be added; returns the uids that made it into the shard.
fn add_new<'g>(
    ctx: &Ingest<'_>,
    objects: &Arc<dyn ObjectStore>,
    to_add: &[&'g FileRecord],
    w: &mut ShardWriter<SyncObjectWriter>,
    out: &mut GroupResult,
    refs: &mut Vec<BigRef>,
) -> Vec<&'g str> {
    let mut added = Vec::with_capacity(to_add.len());
    for rec in to_add {
        let prepared = match ctx.prepare(rec, objects) {
            Ok(p) => p,
            Err(reason) => {
                out.failures.push(failure(rec, reason));
                continue;
            }
        };
        let (orig, stored) = (prepared.entry().orig_len, prepared.stored_len());
        let is_big = matches!(prepared, Prepared::External { .. });
        let res = match prepared {
            Prepared::Inline { entry, stored } => w.add_inline(entry, &stored),
            Prepared::External {
                entry,
                stored_len,
                crc32c,
                big_ref,
            } => {
                refs.push(big_ref);
                w.add_external(entry, stored_len, crc32c)
            }
        };
        match res {
            Ok(()) => {
                added.push(rec.uid.as_str());
                out.packed += 1;
                out.bytes_in += orig;
                out.bytes_stored += stored;
                out.big_files += u64::from(is_big);
            }
            Err(e) => out
                .failures
                .push(failure(rec, FileError::new(FailureKind::Unsupported, e))),
        }
    }
    added
}
