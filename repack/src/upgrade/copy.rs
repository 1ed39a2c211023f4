//! Reading legacy payloads and checking stored bytes: the building blocks of
//! a group's conversion. Everything here is blocking (runs on a blocking
//! thread, driving async reads through the runtime handle) and holds at
//! most one buffered entry of bounded size: larger ones are streamed.

use std::io::{self, Read};
use std::sync::Arc;

use des_format::codec::{self, Codec};
use des_format::{ChunkCrcs, ChunkTable, ContentDigest, DigestAlgorithm};
use des_storage::bridge::{BlockingStreamReader, SyncObjectWriter};
use des_storage::{ByteRange, GetOptions, LoadedIndex, ObjectStore, PutOptions};
use tokio::runtime::Handle;

use super::error::GroupError;

/// Chunk handed to the object writer (S3 multipart parts are at least this).
pub const UPLOAD_CHUNK: usize = 8 << 20;
/// Entries up to these sizes are read into memory and checked with the same
/// decode a reader uses; larger ones are streamed twice (see
/// `group::add_inline`).
pub const BUFFER_STORED_MAX: u64 = 16 << 20;
pub const BUFFER_ORIG_MAX: u64 = 64 << 20;

/// What streaming one entry's stored bytes found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// CRC32C of the stored bytes.
    pub crc32c: u32,
    /// Digest of the decoded bytes.
    pub digest: ContentDigest,
}

/// Counts and checksums what passes through, and remembers a transport
/// error so it is not reported as damage once a decoder has wrapped it.
struct CrcRead<R> {
    inner: R,
    crc: u32,
    read: u64,
    failed: Option<String>,
}

impl<R: Read> Read for CrcRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => {
                self.failed = Some(e.to_string());
                return Err(e);
            }
        };
        self.crc = crc32c::crc32c_append(self.crc, buf.get(..n).unwrap_or_default());
        self.read += n as u64;
        Ok(n)
    }
}

/// Why a scan failed: the bytes, or the reading of them.
#[derive(Debug)]
pub enum ScanError {
    /// The bytes do not decode to what the index records.
    Bad(String),
    /// The transfer broke: says nothing about the bytes.
    Io(String),
}

impl ScanError {
    pub fn into_group(self, key: &str, uid: &str) -> GroupError {
        match self {
            Self::Bad(d) => GroupError::corrupt(key, format!("{uid:?}: {d}")),
            Self::Io(d) => GroupError::storage(
                key,
                des_storage::Error::Unavailable {
                    msg: format!("reading {uid:?}: {d}"),
                    retry_after: None,
                },
            ),
        }
    }
}

/// Reads exactly `stored_len` bytes from `r`, decodes them with `codec`
/// (never more than `orig_len + 1` bytes of output), and returns the CRC32C
/// of the stored bytes and the digest of the decoded ones, which must be
/// exactly `orig_len` long.
pub fn scan(
    r: impl Read,
    codec: Codec,
    stored_len: u64,
    orig_len: u64,
    alg: DigestAlgorithm,
) -> Result<Scanned, ScanError> {
    let mut counted = CrcRead {
        inner: r.take(stored_len),
        crc: 0,
        read: 0,
        failed: None,
    };
    let mut hasher = alg.hasher();
    let mut total = 0u64;
    let decoded = (|| -> Result<(), String> {
        let mut dec = codec::decoder(codec, &mut counted).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match dec.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("decoding: {e}")),
            };
            total += n as u64;
            if total > orig_len {
                return Err(format!(
                    "decodes to more than the {orig_len} bytes recorded"
                ));
            }
            hasher.update(buf.get(..n).unwrap_or_default());
        }
    })();
    // A decoder may stop at the end of its frame: the CRC covers every
    // stored byte, so read the rest too.
    let drained = io::copy(&mut counted, &mut io::sink());
    if let Some(e) = counted.failed.take() {
        return Err(ScanError::Io(e));
    }
    decoded.map_err(ScanError::Bad)?;
    drained.map_err(|e| ScanError::Io(e.to_string()))?;
    if counted.read != stored_len {
        return Err(ScanError::Io(format!(
            "got {} of {stored_len} stored bytes",
            counted.read
        )));
    }
    if total != orig_len {
        return Err(ScanError::Bad(format!(
            "decoded {total} bytes, the index records {orig_len}"
        )));
    }
    Ok(Scanned {
        crc32c: counted.crc,
        digest: hasher.finalize(),
    })
}

/// A streamed range of one object version.
pub fn open_range(
    handle: &Handle,
    objects: &Arc<dyn ObjectStore>,
    key: &str,
    range: std::ops::Range<u64>,
    etag: Option<String>,
) -> des_storage::Result<BlockingStreamReader> {
    let opts = GetOptions {
        range: Some(ByteRange::Bounded {
            start: range.start,
            end: range.end,
        }),
        if_match: etag,
    };
    let got = handle.block_on(objects.get(key, opts))?;
    if got.range != range {
        return Err(des_storage::Error::corrupt(
            key,
            format!("asked for {range:?}, got {:?}", got.range),
        ));
    }
    Ok(BlockingStreamReader::new(handle.clone(), got.body))
}

/// Reads the entries of one object (a legacy part, a v3 shard) in offset
/// order with one streamed GET, skipping the gaps; an entry that starts
/// before the stream's position (overlapping payloads, which legacy indexes
/// do not forbid) gets a GET of its own.
pub struct SequentialReader {
    handle: Handle,
    objects: Arc<dyn ObjectStore>,
    key: String,
    etag: Option<String>,
    end: u64,
    stream: Option<BlockingStreamReader>,
    pos: u64,
    /// Bytes read, gaps included.
    pub bytes_read: u64,
}

impl SequentialReader {
    /// `span` covers every entry that will be read.
    pub fn new(
        handle: &Handle,
        objects: Arc<dyn ObjectStore>,
        loaded: &LoadedIndex,
        span: std::ops::Range<u64>,
    ) -> Self {
        Self {
            handle: handle.clone(),
            objects,
            key: loaded.key.clone(),
            etag: loaded.object.etag.clone(),
            end: span.end,
            stream: None,
            pos: span.start,
            bytes_read: 0,
        }
    }

    /// A reader of exactly `len` bytes at `offset`; read it to the end (or
    /// give up on this reader) before the next call, which continues the
    /// stream where this one should have ended.
    pub fn open_at(&mut self, offset: u64, len: u64) -> des_storage::Result<Box<dyn Read + '_>> {
        if len == 0 {
            return Ok(Box::new(io::empty()));
        }
        if offset < self.pos || offset.saturating_add(len) > self.end {
            let r = open_range(
                &self.handle,
                &self.objects,
                &self.key,
                offset..offset + len,
                self.etag.clone(),
            )?;
            self.bytes_read += len;
            return Ok(Box::new(r.take(len)));
        }
        if self.stream.is_none() {
            if self.pos >= self.end {
                return Ok(Box::new(io::empty()));
            }
            self.stream = Some(open_range(
                &self.handle,
                &self.objects,
                &self.key,
                self.pos..self.end,
                self.etag.clone(),
            )?);
        }
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| des_storage::Error::Invalid("stream not open".into()))?;
        let gap = offset - self.pos;
        let skipped = io::copy(&mut stream.take(gap), &mut io::sink())
            .map_err(|e| des_storage::Error::other("reading", e))?;
        if skipped != gap {
            return Err(des_storage::Error::Unavailable {
                msg: format!("{}: body ended early", self.key),
                retry_after: None,
            });
        }
        self.bytes_read += gap + len;
        self.pos = offset + len;
        Ok(Box::new(stream.take(len)))
    }

    /// Exactly `len` bytes at `offset`, in memory.
    pub fn read_at(&mut self, offset: u64, len: u64) -> des_storage::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        self.open_at(offset, len)?
            .read_to_end(&mut buf)
            .map_err(|e| des_storage::Error::other("reading", e))?;
        if buf.len() as u64 != len {
            return Err(des_storage::Error::Unavailable {
                msg: format!("{}: got {} of {len} bytes", self.key, buf.len()),
                retry_after: None,
            });
        }
        Ok(buf)
    }
}

/// A legacy big file as the v3 store holds it: raw under `_big/<hex>`.
#[derive(Debug, Clone, Copy)]
pub struct BigCopy {
    pub digest: ContentDigest,
    pub len: u64,
    pub crc32c: u32,
    /// Whether this run uploaded it (else it was already there).
    pub uploaded: bool,
}

/// Streams `key` through the SHA-256 its legacy name promises, the store's
/// digest and the chunk CRCs (SPEC §6.5), optionally copying it to `sink`.
fn hash_big(
    r: impl Read,
    alg: DigestAlgorithm,
    mut sink: Option<&mut SyncObjectWriter>,
) -> io::Result<(String, ContentDigest, ChunkTable)> {
    let mut r = io::BufReader::with_capacity(1 << 20, r);
    let mut sha = DigestAlgorithm::Sha256.hasher();
    let mut store = (alg != DigestAlgorithm::Sha256).then(|| alg.hasher());
    let mut chunks =
        ChunkCrcs::new(des_format::chunks::DEFAULT_CHUNK_SIZE).map_err(io::Error::other)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        sha.update(chunk);
        if let Some(h) = store.as_mut() {
            h.update(chunk);
        }
        chunks.update(chunk);
        if let Some(s) = sink.as_mut() {
            io::Write::write_all(s, chunk)?;
        }
    }
    let sha = sha.finalize();
    let digest = store.map_or(sha, |h| h.finalize());
    let table = chunks.finish().map_err(io::Error::other)?;
    Ok((hex_of(&sha), digest, table))
}

/// Lower-case hex, as `_big/` keys and legacy names spell digests.
pub fn hex_of(d: &ContentDigest) -> String {
    let key = des_format::v3::external_key(d);
    key.strip_prefix(des_storage::keys::BIG_PREFIX)
        .unwrap_or(&key)
        .to_string()
}

/// Where a legacy big file comes from and goes to.
pub struct BigSource<'a> {
    pub handle: &'a Handle,
    pub source: &'a Arc<dyn ObjectStore>,
    /// `_bigFiles/<sha256>`.
    pub key: &'a str,
    pub sha256_hex: &'a str,
    pub size: u64,
    pub target: &'a Arc<dyn ObjectStore>,
    pub alg: DigestAlgorithm,
}

impl BigSource<'_> {
    fn read(&self) -> Result<BlockingStreamReader, GroupError> {
        let got = self
            .handle
            .block_on(self.source.get(self.key, GetOptions::range(ByteRange::All)))
            .map_err(|e| GroupError::storage(self.key, e))?;
        if got.meta.size != self.size {
            return Err(GroupError::corrupt(
                self.key,
                format!("{} bytes, the index records {}", got.meta.size, self.size),
            ));
        }
        Ok(BlockingStreamReader::new(self.handle.clone(), got.body))
    }

    fn check(&self, sha: &str) -> Result<(), GroupError> {
        if sha == self.sha256_hex {
            Ok(())
        } else {
            Err(GroupError::corrupt(
                self.key,
                format!("content has SHA-256 {sha}, not the one it is named by"),
            ))
        }
    }

    /// Its digest and chunk table, from one read that also checks the
    /// SHA-256 of its name and its size.
    pub fn scan(&self) -> Result<(ContentDigest, ChunkTable), GroupError> {
        let (sha, digest, table) = hash_big(self.read()?, self.alg, None)
            .map_err(|e| GroupError::storage(self.key, des_storage::Error::other("reading", e)))?;
        self.check(&sha)?;
        if table.stored_len() != self.size {
            return Err(GroupError::corrupt(
                self.key,
                format!("read {} bytes of {}", table.stored_len(), self.size),
            ));
        }
        Ok((digest, table))
    }

    /// Copies it to `big_key` (`_big/<hex of digest>`), visible only if the
    /// bytes read again are the ones scanned.
    pub fn upload(&self, big_key: &str, digest: &ContentDigest) -> Result<(), GroupError> {
        let writer = self
            .handle
            .block_on(self.target.put_writer(big_key, PutOptions::default()))
            .map_err(|e| GroupError::storage(big_key, e))?;
        let mut sink = SyncObjectWriter::new(self.handle.clone(), writer, UPLOAD_CHUNK);
        let copied = hash_big(self.read()?, self.alg, Some(&mut sink));
        match copied {
            Ok((sha, d, t)) if d == *digest && t.stored_len() == self.size => {
                self.check(&sha)?;
                sink.finish()
                    .map_err(|e| GroupError::storage(big_key, e))
                    .map(drop)
            }
            Ok(_) => {
                let _ = sink.abort();
                Err(GroupError::corrupt(
                    self.key,
                    "changed between two reads while being copied",
                ))
            }
            Err(e) => {
                let _ = sink.abort();
                Err(GroupError::storage(
                    big_key,
                    des_storage::Error::other("copying", e),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn scan_checks_length_crc_and_digest() {
        let data = b"hello, hello, hello, hello".repeat(20);
        let alg = DigestAlgorithm::Blake3;
        let policy = des_format::Compression::Zstd { level: 3 };
        let (codec, z) = codec::encode(policy, "x", None, &data).unwrap();
        assert_eq!(codec, Codec::Zstd);
        let s = scan(&z[..], Codec::Zstd, z.len() as u64, data.len() as u64, alg).unwrap();
        assert_eq!(s.crc32c, crc32c::crc32c(&z));
        assert_eq!(s.digest, alg.digest(&data));
        // Wrong original length either way.
        let short = scan(&z[..], Codec::Zstd, z.len() as u64, 10, alg);
        assert!(matches!(short, Err(ScanError::Bad(_))));
        let long = scan(&z[..], Codec::Zstd, z.len() as u64, 1 << 20, alg);
        assert!(matches!(long, Err(ScanError::Bad(_))));
        // Fewer stored bytes than recorded: a transfer problem, not damage.
        let cut = scan(&data[..10], Codec::None, 20, 20, alg);
        assert!(matches!(cut, Err(ScanError::Io(_))));
        // Garbage is damage.
        let bad = scan(&data[..], Codec::Lz4, data.len() as u64, 5, alg);
        assert!(matches!(bad, Err(ScanError::Bad(_))));
    }
}
