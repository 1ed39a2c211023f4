//! Turning one source file into what the shard writer needs. Inline files are
//! read whole (they are at most `big_file_threshold` bytes, so memory is
//! bounded by configuration); big files are streamed twice — once to learn
//! their digest (their object name) and chunk CRCs, once to upload — and
//! never held. Each big file also gets its chunk table (`_big/<hex>.chunks`,
//! SPEC §6.5), so readers can serve a range of it without reading it whole.

use std::borrow::Cow;
use std::io::{BufReader, Read, Write};
use std::sync::Arc;

use des_format::chunks::{ChunkCrcs, ChunkTable, DEFAULT_CHUNK_SIZE};
use des_format::codec::{self, Codec};
use des_format::v3::{NewEntry, chunk_table_key, external_key};
use des_format::{ContentDigest, DigestAlgorithm};
use des_storage::bridge::SyncObjectWriter;
use des_storage::keys::BIG_PREFIX;
use des_storage::protocol::{BigRef, DeletionGuard};
use des_storage::{DesStore, ErrorKind, ObjectStore, PutOptions};
use tokio::runtime::Handle;

use crate::dicts::Dictionaries;
use crate::options::{PackOptions, UPLOAD_CHUNK};
use crate::reader::{OpenSource, SourceStores};
use crate::report::{FailureKind, FileError};
use crate::source::FileRecord;

pub enum Prepared {
    Inline {
        entry: NewEntry,
        stored: Vec<u8>,
    },
    /// Payload already uploaded to `_big/<digest>`, stored raw, and the
    /// ref that keeps clean-up from deleting it until the shard is published.
    External {
        entry: NewEntry,
        stored_len: u64,
        crc32c: u32,
        big_ref: BigRef,
    },
}

impl Prepared {
    pub fn entry(&self) -> &NewEntry {
        match self {
            Self::Inline { entry, .. } | Self::External { entry, .. } => entry,
        }
    }

    pub fn stored_len(&self) -> u64 {
        match self {
            Self::Inline { stored, .. } => stored.len() as u64,
            Self::External { stored_len, .. } => *stored_len,
        }
    }
}

pub struct Ingest<'a> {
    pub store: &'a DesStore,
    pub handle: &'a Handle,
    pub opts: &'a PackOptions,
    pub sources: &'a SourceStores,
    /// Deleted (uid, day) pairs: never packed again.
    pub deletions: &'a DeletionGuard,
    /// This run's name on the big-file refs it writes.
    pub holder: &'a str,
    /// Shared zstd dictionaries (trained in this run, or `--dict ID`).
    pub dicts: &'a Dictionaries,
}

/// Streams `r`, returning its digest and its chunk table (per-chunk CRC32C,
/// and with them length and whole CRC32C). Raw storage makes the CRCs of
/// stored bytes those of the original bytes.
fn scan(
    alg: DigestAlgorithm,
    r: impl Read,
    mut sink: Option<&mut dyn Write>,
) -> std::io::Result<(ContentDigest, ChunkTable)> {
    let mut r = BufReader::with_capacity(1 << 20, r);
    let mut h = alg.hasher();
    let mut chunks = ChunkCrcs::new(DEFAULT_CHUNK_SIZE).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = buf.get(..k).unwrap_or_default();
        h.update(chunk);
        chunks.update(chunk);
        if let Some(s) = sink.as_mut() {
            s.write_all(chunk)?;
        }
    }
    let table = chunks.finish().map_err(std::io::Error::other)?;
    Ok((h.finalize(), table))
}

fn new_entry(rec: &FileRecord, codec: Codec, orig_len: u64, digest: ContentDigest) -> NewEntry {
    NewEntry {
        uid: rec.uid.clone(),
        created_at: rec.created_at,
        content_type: rec.content_type.clone(),
        meta: rec.meta.clone(),
        codec,
        orig_len,
        digest,
    }
}

impl Ingest<'_> {
    fn alg(&self) -> DigestAlgorithm {
        self.store.digest()
    }

    fn open(&self, rec: &FileRecord) -> Result<OpenSource, FileError> {
        self.sources.open(&rec.source, self.handle)
    }

    /// The whole file if it has at most `max` bytes (a dictionary sample);
    /// `None` if it is larger or cannot be read (it fails later, if at all).
    pub fn read_small(&self, rec: &FileRecord, max: usize) -> Option<Vec<u8>> {
        let src = self.open(rec).ok()?;
        if src.len > max as u64 {
            return None;
        }
        let mut data = Vec::with_capacity(usize::try_from(src.len).ok()?);
        src.reader
            .take(max as u64 + 1)
            .read_to_end(&mut data)
            .ok()?;
        (data.len() <= max).then_some(data)
    }

    /// Digest of the file's current content (to compare with an existing entry).
    pub fn digest_of(&self, rec: &FileRecord) -> Result<ContentDigest, FileError> {
        let src = self.open(rec)?;
        scan(self.alg(), src.reader, None)
            .map(|(d, _)| d)
            .map_err(|e| unreadable(rec, e))
    }

    /// Reads an inline file, or uploads a big one to `objects` (the store of
    /// the shard that will reference it).
    pub fn prepare(
        &self,
        rec: &FileRecord,
        objects: &Arc<dyn ObjectStore>,
    ) -> Result<Prepared, FileError> {
        let src = self.open(rec)?;
        if src.len > self.opts.big_file_threshold {
            return self.prepare_big(rec, objects, src);
        }
        let mut data = Vec::with_capacity(usize::try_from(src.len).unwrap_or(0));
        // Cap the read: a file growing under us must not blow the memory bound.
        src.reader
            .take(self.opts.big_file_threshold + 1)
            .read_to_end(&mut data)
            .map_err(|e| unreadable(rec, e))?;
        if data.len() as u64 > self.opts.big_file_threshold {
            // It grew while we read it: start over as a big file.
            return self.prepare_big(rec, objects, self.open(rec)?);
        }
        let digest = self.alg().digest(&data);
        let ct = rec.content_type.as_deref();
        let dict = self.dicts.for_file(&rec.uid, ct, data.len());
        let (codec, stored) =
            codec::encode_with(self.opts.compression, &rec.uid, ct, &data, dict.as_deref())
                .map_err(|e| {
                    FileError::new(
                        FailureKind::Unsupported,
                        format!("compressing {}: {e}", rec.uid),
                    )
                })?;
        let entry = new_entry(rec, codec, data.len() as u64, digest);
        // Kept raw, `stored` borrows `data`: hand the buffer over instead of copying it.
        let stored = match stored {
            Cow::Owned(packed) => packed,
            Cow::Borrowed(_) => data,
        };
        Ok(Prepared::Inline { entry, stored })
    }

    /// `src` is the freshly opened source, read here for the digest.
    fn prepare_big(
        &self,
        rec: &FileRecord,
        objects: &Arc<dyn ObjectStore>,
        src: OpenSource,
    ) -> Result<Prepared, FileError> {
        let (digest, table) = scan(self.alg(), src.reader, None).map_err(|e| unreadable(rec, e))?;
        // The whole-object CRC, combined from the chunks' (the same value a
        // reader binds the table with).
        let (len, crc) = (table.stored_len(), table.whole_crc32c());
        let key = external_key(&digest);
        let hex = key.strip_prefix(BIG_PREFIX).unwrap_or(&key);
        // The ref comes before the check that the object exists, so that
        // clean-up either sees the ref or deleted the object before the check.
        let big_ref = self
            .handle
            .block_on(BigRef::take(
                objects.as_ref(),
                hex,
                self.holder,
                (&rec.uid, rec.created_at.date_number()),
                self.opts.big_ref_ttl,
            ))
            .map_err(|e| store_err(format!("recording a reference to {key}: {e}")))?;
        let existing = self.handle.block_on(objects.head(&key));
        crate::pause::PausePoint::AfterBigFileCheck.check();
        match existing {
            // Content-addressed and stored raw: an object of the right size is this file.
            Ok(meta) if meta.size == len => {}
            Ok(_) => self.upload_big(rec, objects, &key, digest)?,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.upload_big(rec, objects, &key, digest)?;
            }
            Err(e) => return Err(store_err(format!("checking {key}: {e}"))),
        }
        self.put_chunk_table(objects, &key, &table)?;
        Ok(Prepared::External {
            entry: new_entry(rec, Codec::None, len, digest),
            stored_len: len,
            crc32c: crc,
            big_ref,
        })
    }

    /// Streams the file a second time, into `_big/<digest>`; the object only
    /// becomes visible if the bytes still hash to `digest`.
    fn upload_big(
        &self,
        rec: &FileRecord,
        objects: &Arc<dyn ObjectStore>,
        key: &str,
        digest: ContentDigest,
    ) -> Result<(), FileError> {
        let src = self.open(rec)?;
        let writer = self
            .handle
            .block_on(objects.put_writer(key, PutOptions::default()))
            .map_err(|e| store_err(format!("uploading {key}: {e}")))?;
        let mut sink = SyncObjectWriter::new(self.handle.clone(), writer, UPLOAD_CHUNK);
        let scanned = scan(self.alg(), src.reader, Some(&mut sink));
        match scanned {
            Ok((d, _)) if d == digest => {
                sink.finish()
                    .map_err(|e| store_err(format!("uploading {key}: {e}")))?;
                Ok(())
            }
            Ok(_) => {
                let _ = sink.abort();
                Err(FileError::new(
                    FailureKind::SourceChanged,
                    format!("{} changed while it was being packed", rec.source),
                ))
            }
            Err(e) => {
                let _ = sink.abort();
                // The source failed to read, or the upload to write.
                Err(store_err(format!("uploading {key}: {e}")))
            }
        }
    }

    /// Writes the chunk table of `_big/<hex>` once that object is in place,
    /// and before any shard can reference it: a reader that finds the entry
    /// then finds the table (unless it was written before tables existed).
    ///
    /// Always a PUT, whether the big object was uploaded now or already
    /// there: the table is content-determined, so rewriting it is
    /// idempotent; it costs one small request (4 KiB per GiB) per big file
    /// added, little next to the file's own scan and upload; and it
    /// restores a table that is missing or damaged, where a HEAD first
    /// would cost a request too and only notice a missing one. A failure
    /// fails the file, like a failed upload.
    fn put_chunk_table(
        &self,
        objects: &Arc<dyn ObjectStore>,
        big_key: &str,
        table: &ChunkTable,
    ) -> Result<(), FileError> {
        let key = chunk_table_key(big_key);
        self.handle
            .block_on(objects.put(&key, table.encode().into(), PutOptions::default()))
            .map(drop)
            .map_err(|e| store_err(format!("writing chunk table {key}: {e}")))
    }
}

fn unreadable(rec: &FileRecord, e: std::io::Error) -> FileError {
    FileError::new(
        FailureKind::SourceUnreadable,
        format!("cannot read {}: {e}", rec.source),
    )
}

fn store_err(detail: String) -> FileError {
    FileError::new(FailureKind::Store, detail)
}
