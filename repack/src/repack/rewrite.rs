//! Writing a shard's next generation without its deleted entries.
//!
//! Live entries are copied as stored bytes (CRC-checked on the way, never
//! re-compressed unless asked) from one sequential read of the old data
//! region; the new index and trailer are captured and checked against what
//! was meant to be written before the upload is committed. Publishing
//! follows des-storage's protocol (`ShardPublish`: conditional on the old
//! generation, or re-checked where the store ignores conditions), after the
//! journal names what this generation drops. Runs on a blocking thread.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use des_format::shard::{AnyIndex, Located};
use des_format::v3::{self, EntryRef, ShardIdent, ShardWriter, Trailer};
use des_format::{Codec, Compression, ContentDigest, Timestamp, codec};
use des_storage::bridge::{BlockingStreamReader, SyncObjectWriter};
use des_storage::keys::ShardKey;
use des_storage::protocol::journal::RunJournal;
use des_storage::protocol::{PublishError, RepackJournal, ShardPublish};
use des_storage::{ByteRange, DesStore, GetOptions, Layout, LoadedIndex, ObjectStore, PutOptions};
use tokio::runtime::Handle;

use super::bigfiles;
use super::capture::{Captured, CapturingWriter};
use crate::crash::CrashPoint;
use crate::error::{RepackError, Result};
use crate::verify::place_of;

/// Chunk handed to the object writer (S3 multipart parts are at least this).
const UPLOAD_CHUNK: usize = 8 << 20;
/// Entries larger than this are copied as they are even with `--recompress`:
/// recompressing holds an entry in memory.
pub const MAX_RECOMPRESS: u64 = 64 << 20;

pub struct RewriteInput {
    pub store: DesStore,
    pub loaded: LoadedIndex,
    /// uids to leave out.
    pub drop: HashSet<String>,
    pub recompress: Option<Compression>,
    /// The dictionary `recompress` compresses with, if any.
    pub recompress_dict: Option<super::dicts::RecompressDict>,
    /// Raised when the lease is lost: publishing must not happen then.
    pub lease_lost: Arc<AtomicBool>,
    /// Where the run journals what it drops.
    pub journal: Option<Arc<RunJournal>>,
    /// The dropped uids with a tombstone pending: what the journal names.
    pub journaled: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Rewritten {
    pub generation: u64,
    /// The published object's ETag.
    pub etag: Option<String>,
    pub bytes_after: u64,
    pub entries_after: u64,
    /// Bytes of the old data region read.
    pub bytes_read: u64,
    /// uids actually left out.
    pub dropped: Vec<String>,
    /// `_big/<hex>` keys of dropped external entries, with the uid of each
    /// (registered for collection).
    pub big_dropped: Vec<(String, String)>,
}

/// What the new index must say about one kept entry.
struct Expect {
    digest: ContentDigest,
    orig_len: u64,
    external: bool,
    /// `None` when recompressed: the stored form is new.
    stored: Option<(u64, u32)>,
}

/// Rewrites one shard; call from a blocking thread.
pub fn rewrite(handle: &Handle, input: &RewriteInput) -> Result<Rewritten> {
    let key = input.loaded.key.as_str();
    let AnyIndex::V3(ix) = &input.loaded.index else {
        return Err(RepackError::shard(key, "not a v3 shard; repack needs v3"));
    };
    let old = ix.trailer();
    check_identity(&input.store, key, old)?;
    let objects = input.store.objects_for_key(key)?;
    let publish = ShardPublish::new(Arc::clone(&objects), key, Some(&input.loaded));
    let mode = publish.mode();
    let upload = handle
        .block_on(objects.put_writer(key, PutOptions { mode }))
        .map_err(|e| RepackError::on_shard(key, e))?;
    let (sink, captured) =
        CapturingWriter::new(SyncObjectWriter::new(handle.clone(), upload, UPLOAD_CHUNK));
    let ident = ShardIdent {
        generation: old.generation + 1,
        written_at: Timestamp::now(),
        date: old.date,
        shard_index: old.shard_index,
        n_bits: old.n_bits,
        digest_alg: old.digest_alg,
    };
    let mut w = ShardWriter::new(sink, ident).map_err(|e| RepackError::shard(key, e))?;
    let mut out = Rewritten::default();
    let expect = copy_live(handle, input, &objects, &mut w, &mut out)?;
    captured.start();
    let (sink, summary) = w.finish().map_err(|e| RepackError::shard(key, e))?;
    check_new_index(
        key,
        &captured,
        summary.total_len,
        &summary.trailer,
        &expect,
        &input.drop,
    )?;
    // Before publishing, so a crash right after cannot forget them.
    handle.block_on(bigfiles::register(
        objects.as_ref(),
        &out.big_dropped,
        key,
        ident.date,
    ))?;
    let shard = ShardKey::parse(key, Some(ident.n_bits))
        .ok_or_else(|| RepackError::shard(key, "not a shard key"))?;
    if let Some(journal) = input
        .journal
        .as_ref()
        .filter(|_| !input.journaled.is_empty())
    {
        let entry = RepackJournal {
            generation: ident.generation,
            dropped: input.journaled.clone(),
        };
        handle.block_on(journal.add(&shard, &entry))?;
    }
    CrashPoint::BeforePublish.check();
    if input.lease_lost.load(Ordering::SeqCst) {
        return Err(RepackError::LeaseLost {
            key: crate::lease::LEASE_KEY.to_string(),
            detail: "not publishing".into(),
        });
    }
    let kept: Vec<&String> = expect.keys().collect();
    let put = publish
        .commit_blocking(handle, &input.store, sink.into_inner(), |latest| {
            out.dropped.iter().all(|u| latest.find(u).is_none())
                && kept.iter().all(|u| latest.find(u).is_some())
        })
        .map_err(|e| match e {
            PublishError::Conflict => RepackError::Conflict {
                key: key.to_string(),
            },
            PublishError::Store(e) => RepackError::on_shard(key, e),
        })?;
    out.generation = ident.generation;
    out.etag = put.etag;
    out.bytes_after = put.size;
    out.entries_after = u64::from(summary.entries);
    Ok(out)
}

/// The trailer must name the shard its key names, or rewriting would
/// carry a misplaced shard forward under a new generation.
fn check_identity(store: &DesStore, key: &str, t: &Trailer) -> Result<()> {
    let place = place_of(Layout::V3, key, store.n_bits())
        .ok_or_else(|| RepackError::shard(key, "not a shard key of this store"))?;
    if t.date != place.date
        || u32::from(t.shard_index) != place.shard_index
        || t.n_bits != store.n_bits()
        || t.digest_alg != store.digest()
    {
        return Err(RepackError::shard(
            key,
            format!("trailer does not match its key or store ({t:?}); run des-verify"),
        ));
    }
    Ok(())
}

/// Copies every entry not in `drop` into `w`, reading the old data region
/// once, in offset order, up to the end of the last live inline entry.
fn copy_live<W: std::io::Write>(
    handle: &Handle,
    input: &RewriteInput,
    objects: &Arc<dyn ObjectStore>,
    w: &mut ShardWriter<W>,
    out: &mut Rewritten,
) -> Result<HashMap<String, Expect>> {
    let key = input.loaded.key.as_str();
    let AnyIndex::V3(ix) = &input.loaded.index else {
        return Err(RepackError::shard(key, "not a v3 shard"));
    };
    let view = ix.view();
    let mut entries: Vec<EntryRef<'_>> = view.iter().collect();
    entries.sort_by_key(|e| (e.is_external(), e.data_offset()));
    let live = |e: &EntryRef<'_>| !input.drop.contains(e.uid);
    let read_end = entries
        .iter()
        .filter(|e| !e.is_external() && live(e))
        .map(|e| e.data_offset() + e.stored_len())
        .max()
        .unwrap_or(v3::HEADER_LEN);
    let mut reader = open_data(handle, input, objects, read_end)?;
    out.bytes_read = read_end.saturating_sub(v3::HEADER_LEN);
    let mut expect = HashMap::with_capacity(entries.len());
    let mut pos = v3::HEADER_LEN;
    let fatal = |e: des_format::FormatError| RepackError::shard(key, e);
    for e in entries {
        if !live(&e) {
            out.dropped.push(e.uid.to_string());
            if e.is_external() {
                out.big_dropped
                    .push((v3::external_key(&e.digest()), e.uid.to_string()));
            }
            continue;
        }
        let mut exp = Expect {
            digest: e.digest(),
            orig_len: e.orig_len(),
            external: e.is_external(),
            stored: Some((e.stored_len(), e.crc32c())),
        };
        if e.is_external() {
            w.add_external(e.to_new_entry(), e.stored_len(), e.crc32c())
                .map_err(fatal)?;
        } else {
            let r = reader
                .as_mut()
                .ok_or_else(|| RepackError::shard(key, "data region not read"))?;
            let gap = e.data_offset().saturating_sub(pos);
            std::io::copy(&mut r.take(gap), &mut std::io::sink())
                .map_err(|err| RepackError::shard(key, format!("reading: {err}")))?;
            match input.recompress {
                Some(policy) if e.stored_len() <= MAX_RECOMPRESS => {
                    recompress(handle, input, &e, policy, r, w)?;
                    exp.stored = None;
                }
                _ => w
                    .add_inline_from(e.to_new_entry(), e.stored_len(), e.crc32c(), &mut *r)
                    .map_err(fatal)?,
            }
            pos = e.data_offset() + e.stored_len();
        }
        expect.insert(e.uid.to_string(), exp);
    }
    Ok(expect)
}

fn open_data(
    handle: &Handle,
    input: &RewriteInput,
    objects: &Arc<dyn ObjectStore>,
    end: u64,
) -> Result<Option<BlockingStreamReader>> {
    if end <= v3::HEADER_LEN {
        return Ok(None);
    }
    let key = &input.loaded.key;
    let opts = GetOptions {
        range: Some(ByteRange::Bounded {
            start: v3::HEADER_LEN,
            end,
        }),
        if_match: input.loaded.object.etag.clone(),
    };
    let got = handle
        .block_on(objects.get(key, opts))
        .map_err(|e| RepackError::on_shard(key, e))?;
    Ok(Some(BlockingStreamReader::new(handle.clone(), got.body)))
}

fn recompress<W: std::io::Write>(
    handle: &Handle,
    input: &RewriteInput,
    e: &EntryRef<'_>,
    policy: Compression,
    r: &mut BlockingStreamReader,
    w: &mut ShardWriter<W>,
) -> Result<()> {
    let key = input.loaded.key.as_str();
    let mut stored = Vec::with_capacity(usize::try_from(e.stored_len()).unwrap_or(0));
    r.take(e.stored_len())
        .read_to_end(&mut stored)
        .map_err(|err| RepackError::shard(key, format!("reading {}: {err}", e.uid)))?;
    // An entry with a dictionary decodes only with it (loaded once, cached).
    let dict = match (e.codec(), des_format::dict::frame_dict_id(&stored)) {
        (Codec::ZstdDict, Some(id)) => Some(
            handle
                .block_on(input.store.dictionary(key, id))
                .map_err(|err| RepackError::on_shard(key, err))?,
        ),
        _ => None,
    };
    // `decode` checks length, CRC32C, decoding and digest before anything is re-encoded.
    let data = Located::from_v3(e, input.store.digest())
        .decode_with(&stored, dict.as_deref())
        .map_err(|err| RepackError::shard(key, err))?;
    let target = match &input.recompress_dict {
        Some(d) => handle.block_on(d.for_entry(&input.store, e.uid, e.content_type))?,
        None => None,
    };
    let (codec, encoded) =
        codec::encode_with(policy, e.uid, e.content_type, &data, target.as_deref())
            .map_err(|err| RepackError::shard(key, err))?;
    let mut entry = e.to_new_entry();
    entry.codec = codec;
    w.add_inline(entry, &encoded)
        .map_err(|err| RepackError::shard(key, err))
}

/// Parses the captured index and trailer as a reader would and checks that
/// they list exactly the live entries, unchanged, and none of the dropped.
fn check_new_index(
    key: &str,
    captured: &Captured,
    total_len: u64,
    written: &Trailer,
    expect: &HashMap<String, Expect>,
    dropped: &HashSet<String>,
) -> Result<()> {
    let bad = |d: String| RepackError::shard(key, format!("new generation failed its check: {d}"));
    let tail = captured.take();
    let trailer = Trailer::parse(&tail, total_len).map_err(|e| bad(e.to_string()))?;
    if trailer != *written {
        return Err(bad("trailer differs from the one written".into()));
    }
    let index = tail
        .get(..tail.len().saturating_sub(v3::TRAILER_LEN))
        .ok_or_else(|| bad("short tail".into()))?;
    // Either index layout, checked as a reader would check it.
    let parsed = v3::ShardIndex::parse(bytes::Bytes::copy_from_slice(index), trailer)
        .map_err(|e| bad(e.to_string()))?;
    let view = parsed.view();
    if view.len() != expect.len() {
        return Err(bad(format!(
            "{} entries, expected {}",
            view.len(),
            expect.len()
        )));
    }
    for e in view.iter() {
        if dropped.contains(e.uid) {
            return Err(bad(format!("dropped uid {:?} is still listed", e.uid)));
        }
        let x = expect
            .get(e.uid)
            .ok_or_else(|| bad(format!("unexpected uid {:?}", e.uid)))?;
        let same_stored = x
            .stored
            .is_none_or(|(len, crc)| e.stored_len() == len && e.crc32c() == crc);
        if e.digest() != x.digest
            || e.orig_len() != x.orig_len
            || e.is_external() != x.external
            || !same_stored
        {
            return Err(bad(format!("entry {:?} changed", e.uid)));
        }
    }
    Ok(())
}
