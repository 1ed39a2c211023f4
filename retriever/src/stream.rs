//! Streams an external payload to the client while checking it.
//!
//! The whole object is read, decoded and hashed chunk by chunk on a blocking
//! thread (the codecs are synchronous `Read`ers); memory stays at a few chunks
//! whatever the file size. The checks (stored length, CRC32C, decoded length,
//! content digest) can only be decided at the end of the object, after the
//! status line went out, so the last chunk of the response is held back until
//! they pass. If they fail the stream ends with an error and the server drops
//! the connection before `Content-Length` bytes were sent: the client sees a
//! truncated (failed) transfer, never a complete response with wrong bytes.
//!
//! A range of an external payload read here still reads and checks the
//! whole object; only the bytes inside the range are sent. Ranges of big
//! files with a chunk table read only their chunks instead
//! ([`crate::payload::open_window`], SPEC §6.5).
//!
//! Raw payloads (every big file DES writes) take [`crate::stream_raw`]
//! instead, which needs no thread; this path is for compressed ones.

use std::io::{self, Read};
use std::ops::Range;

use bytes::Bytes;
use des_format::DigestAlgorithm;
use des_format::codec::{self, Codec};
use des_format::digest::Digester;
use des_format::shard::{Check, Located};
use des_storage::bridge::BlockingStreamReader;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::admission::Held;
use crate::payload::External;

const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the reader thread and the connection.
const QUEUE: usize = 2;

/// The bytes `window` (of the original file) of `ext`, checked as described above.
/// Must be called inside the runtime.
/// Check failures are counted in `corruption`.
pub fn verified(
    ext: Box<External>,
    window: Range<u64>,
    corruption: prometheus::IntCounter,
    slot: Option<Held>,
) -> BoxStream<'static, io::Result<Bytes>> {
    if ext.located.codec == Codec::None {
        return crate::stream_raw::verified(ext, window, corruption, slot).boxed();
    }
    decoded(ext, window, corruption, slot).boxed()
}

/// A chunk-verified window (see [`crate::payload::open_window`]): its
/// check failures are counted in `corruption`, and `slot` is held as long
/// as the stream.
pub fn counted(
    chunks: des_storage::bigchunks::ChunkStream,
    corruption: prometheus::IntCounter,
    slot: Option<Held>,
) -> BoxStream<'static, io::Result<Bytes>> {
    chunks
        .inspect(move |item| {
            let _slot = &slot;
            if let Err(e) = item {
                if des_storage::bigchunks::is_corruption(e) {
                    corruption.inc();
                }
                tracing::error!(error = %e, "chunked read failed; aborting response");
            }
        })
        .boxed()
}

fn decoded(
    ext: Box<External>,
    window: Range<u64>,
    corruption: prometheus::IntCounter,
    slot: Option<Held>,
) -> impl Stream<Item = io::Result<Bytes>> + 'static {
    let (tx, rx) = mpsc::channel(QUEUE);
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        // Held until the thread is done with the object.
        let _slot = slot;
        let External {
            key,
            located,
            object,
        } = *ext;
        let reader = Counting {
            inner: BlockingStreamReader::new(handle, object.body),
            crc: 0,
            len: 0,
            io_failed: false,
        };
        let mut pump = Pump {
            tx,
            window,
            held: None,
        };
        if let Err((detail, corrupt)) = pump.run(reader, &located) {
            if corrupt {
                corruption.inc();
            }
            tracing::error!(object = %key, uid = %located.uid, %detail, "external payload failed its check; aborting response");
            // The receiver may be gone already (client hung up); nothing else to tell.
            let _ = pump
                .tx
                .blocking_send(Err(io::Error::other(format!("{}: {detail}", located.uid))));
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

struct Pump {
    tx: mpsc::Sender<io::Result<Bytes>>,
    window: Range<u64>,
    /// The latest window bytes, released only once the next chunk (or a passed check) is in.
    held: Option<Bytes>,
}

/// Why a stream stopped early without it being a check failure.
enum Stop {
    ClientGone,
    Bad(String),
}

impl Pump {
    /// On failure: what went wrong, and whether the stored bytes are to
    /// blame (rather than storage failing to deliver them).
    fn run(
        &mut self,
        mut reader: Counting<BlockingStreamReader>,
        located: &Located,
    ) -> Result<(), (String, bool)> {
        match self.decode_all(&mut reader, located) {
            Ok(digest) => {
                check_totals(located, reader.len, reader.crc, digest).map_err(|d| (d, true))?;
                if let Some(last) = self.held.take() {
                    let _ = self.tx.blocking_send(Ok(last));
                }
                Ok(())
            }
            Err(Stop::ClientGone) => Ok(()),
            Err(Stop::Bad(detail)) => Err((detail, !reader.io_failed)),
        }
    }

    /// Decodes to the end, sending window bytes; returns the digest of the
    /// decoded bytes (if the entry has one to compare with).
    fn decode_all(
        &mut self,
        reader: &mut Counting<BlockingStreamReader>,
        located: &Located,
    ) -> Result<Option<des_format::ContentDigest>, Stop> {
        let mut hasher = hasher_for(&located.check);
        let mut pos = 0u64;
        let mut buf = vec![0u8; CHUNK];
        {
            let mut dec = codec::decoder(located.codec, &mut *reader)
                .map_err(|e| Stop::Bad(e.to_string()))?;
            loop {
                let n = match dec.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Stop::Bad(format!("read/decode: {e}"))),
                };
                let chunk = buf.get(..n).unwrap_or_default();
                if pos + n as u64 > located.orig_len {
                    return Err(Stop::Bad(
                        "decodes to more bytes than the index says".into(),
                    ));
                }
                if let Some(h) = hasher.as_mut() {
                    h.update(chunk);
                }
                self.offer(chunk, pos)?;
                pos += n as u64;
            }
        }
        if pos != located.orig_len {
            return Err(Stop::Bad(format!(
                "decoded {pos} bytes, index says {}",
                located.orig_len
            )));
        }
        // A decoder may stop before the end of its input; the CRC covers every stored byte.
        io::copy(reader, &mut io::sink()).map_err(|e| Stop::Bad(format!("read: {e}")))?;
        Ok(hasher.map(Digester::finalize))
    }

    /// Queues the part of `chunk` (starting at original offset `pos`) inside the window.
    fn offer(&mut self, chunk: &[u8], pos: u64) -> Result<(), Stop> {
        let end = pos + chunk.len() as u64;
        let (lo, hi) = (self.window.start.max(pos), self.window.end.min(end));
        if lo >= hi {
            return Ok(());
        }
        let piece = chunk
            .get(to_usize(lo - pos)..to_usize(hi - pos))
            .unwrap_or_default();
        if let Some(prev) = self.held.replace(Bytes::copy_from_slice(piece)) {
            self.tx
                .blocking_send(Ok(prev))
                .map_err(|_| Stop::ClientGone)?;
        }
        Ok(())
    }
}

fn to_usize(n: u64) -> usize {
    // Offsets within one chunk, so always small.
    usize::try_from(n).unwrap_or(usize::MAX)
}

pub(crate) fn hasher_for(check: &Check) -> Option<Digester> {
    match check {
        Check::V3 { alg, .. } => Some(alg.hasher()),
        Check::Sha256Hex(_) => Some(DigestAlgorithm::Sha256.hasher()),
        Check::None => None,
    }
}

/// The checks of a whole stored object: `len` stored bytes with CRC32C
/// `crc`, whose decoded bytes hash to `digest`.
pub(crate) fn check_totals(
    located: &Located,
    len: u64,
    crc: u32,
    digest: Option<des_format::ContentDigest>,
) -> Result<(), String> {
    if len != located.stored_len {
        return Err(format!(
            "read {len} stored bytes, index says {}",
            located.stored_len
        ));
    }
    match &located.check {
        Check::V3 {
            crc32c,
            digest: want,
            ..
        } => {
            if crc != *crc32c {
                return Err(format!("crc32c {crc:08x} != {crc32c:08x}"));
            }
            if digest != Some(*want) {
                return Err("content digest mismatch".into());
            }
        }
        Check::Sha256Hex(want) => {
            if digest.map(hex::encode).as_deref() != Some(want.as_str()) {
                return Err("sha256 mismatch".into());
            }
        }
        Check::None => {}
    }
    Ok(())
}

/// CRC32C and count of the stored bytes as the decoder pulls them.
struct Counting<R> {
    inner: R,
    crc: u32,
    len: u64,
    /// Storage failed to deliver bytes: a failure that is not corruption.
    io_failed: bool,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted {
                self.io_failed = true;
            }
        })?;
        let got = buf.get(..n).unwrap_or_default();
        self.crc = crc32c::crc32c_append(self.crc, got);
        self.len += n as u64;
        Ok(n)
    }
}
