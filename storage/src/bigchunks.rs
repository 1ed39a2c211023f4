//! Ranged reads of big files through their chunk tables (SPEC §6.5).
//!
//! Serving `bytes=0-0` of a 1 GiB big file used to mean reading and hashing
//! the whole object, since the index has one CRC32C and one digest for all
//! of it. With a chunk table (`_big/<hex>.chunks`, written by the packer),
//! [`read_window`] reads only the chunks covering the window, in one ranged
//! GET, and checks each chunk's CRC32C before handing out any of its bytes.
//!
//! The table is trusted only once bound to the (verified) index entry: same
//! stored length, and chunk CRCs that combine to the entry's whole-object
//! CRC32C (`des_format::ChunkTable::parse`). A missing table (big files
//! packed before tables existed) or an invalid one sends the caller back to
//! the whole-object path, which checks CRC32C and digest as before.
//!
//! Everything here is async and pulls the store's body stream on the
//! caller's task: nothing is spawned, so dropping the stream (a client
//! disconnecting) drops the body and stops the read.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use des_format::chunks::{self, ChunkTable, Covering};
use des_format::codec::Codec;
use des_format::shard::{Check, Located};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use crate::error::{Error, ErrorKind, Result};
use crate::object::{ByteRange, GetOptions, ObjectStore};

/// What [`load_table`] found.
#[derive(Debug)]
pub enum TableLookup {
    /// No table: the big file was packed before tables existed, its table
    /// was removed, or the entry is not a v3 one (nothing to bind it to).
    Missing,
    /// A table exists but must not be used: it is damaged, or describes
    /// other bytes than the index entry. Evidence of corruption (of the
    /// table, not necessarily of the file): count or log it.
    Invalid(Error),
    Valid(ChunkTable),
}

/// Fetches the chunk table of `big_key` (the entry's `_big/<hex>` object, in
/// the store the entry's shard lives in) and validates it against
/// `located`. `Err` only when the store fails (other than "not found").
pub async fn load_table(
    objects: &dyn ObjectStore,
    big_key: &str,
    located: &Located,
) -> Result<TableLookup> {
    let Check::V3 { crc32c, .. } = located.check else {
        return Ok(TableLookup::Missing);
    };
    let key = des_format::v3::chunk_table_key(big_key);
    let got = match objects.get(&key, GetOptions::range(ByteRange::All)).await {
        Ok(got) => got,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(TableLookup::Missing),
        Err(e) => return Err(e),
    };
    // Refused before buffering: no valid table for this entry is larger.
    let max = chunks::max_table_len(located.stored_len);
    if got.meta.size > max {
        return Ok(TableLookup::Invalid(Error::corrupt(
            &key,
            format!(
                "{} bytes, more than any table of a {}-byte object ({max})",
                got.meta.size, located.stored_len
            ),
        )));
    }
    let bytes = got.bytes().await?;
    Ok(
        match ChunkTable::parse(&bytes, located.stored_len, crc32c) {
            Ok(t) => TableLookup::Valid(t),
            Err(e) => TableLookup::Invalid(Error::format(&key, e)),
        },
    )
}

/// What [`read_window`] decided.
pub enum WindowRead {
    /// The window's bytes, in order; see [`ChunkStream`].
    Chunks(ChunkStream),
    /// No usable table, or an entry chunked reads do not apply to (not v3,
    /// codec other than none): read and verify the whole object as before.
    Fallback,
    /// The table is invalid ([`TableLookup::Invalid`]): report the error as
    /// corruption, then read the whole object as before.
    InvalidTable(Error),
}

impl WindowRead {
    /// The stream, or `None` when the caller must use the whole-object path.
    pub fn into_stream(self) -> Option<ChunkStream> {
        match self {
            Self::Chunks(s) => Some(s),
            Self::Fallback | Self::InvalidTable(_) => None,
        }
    }
}

impl std::fmt::Debug for WindowRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Chunks(s) => f.debug_tuple("Chunks").field(&s.covering).finish(),
            Self::Fallback => f.write_str("Fallback"),
            Self::InvalidTable(e) => f.debug_tuple("InvalidTable").field(e).finish(),
        }
    }
}

/// Opens bytes `window` (of the original file, end exclusive) of the external
/// entry `located`, stored at `big_key` in `objects` (the store of the
/// entry's shard: `DesStore::objects_for_key(shard key)`, and `big_key` from
/// `des_storage::store::external_key`).
///
/// Two requests: a GET of the chunk table, then — only when it is valid —
/// one ranged GET of the covering chunks, `[⌊start/cs⌋·cs, min(⌈end/cs⌉·cs,
/// stored_len))`. Both are made before this returns, so a missing object is
/// an `Err` here, before any response is committed.
///
/// A chunked read checks the CRC32C of each chunk it reads, not the
/// whole-file digest; the whole-object path still checks both.
///
/// `Err`: `Invalid` for an empty window or one beyond the file; `Corrupt`
/// if the object's size contradicts the index; anything the store returns
/// (e.g. `NotFound` for a missing object, retryable outages; a failure to
/// fetch the table is one too — the caller may retry or fall back).
pub async fn read_window(
    objects: &dyn ObjectStore,
    big_key: &str,
    located: &Located,
    window: Range<u64>,
) -> Result<WindowRead> {
    // Only raw bytes can be sliced: with a codec, window offsets are not
    // stored offsets.
    let raw = located.codec == Codec::None && located.stored_len == located.orig_len;
    if !raw || !matches!(located.check, Check::V3 { .. }) {
        return Ok(WindowRead::Fallback);
    }
    if window.start >= window.end || window.end > located.orig_len {
        return Err(Error::Invalid(format!(
            "{big_key}: window {}..{} of a {}-byte file",
            window.start, window.end, located.orig_len
        )));
    }
    let table = match load_table(objects, big_key, located).await? {
        TableLookup::Valid(t) => t,
        TableLookup::Missing => return Ok(WindowRead::Fallback),
        TableLookup::Invalid(e) => return Ok(WindowRead::InvalidTable(e)),
    };
    // The table is bound to stored_len, which the window was checked against.
    let Some(covering) = table.covering(window.clone()) else {
        return Ok(WindowRead::Fallback);
    };
    let range = ByteRange::Bounded {
        start: covering.bytes.start,
        end: covering.bytes.end,
    };
    let got = match objects.get(big_key, GetOptions::range(range)).await {
        Ok(got) => got,
        // Unsatisfiable: the object ends before the chunks the index and
        // table promise.
        Err(e) if e.kind() == ErrorKind::Invalid => {
            return Err(Error::corrupt(
                big_key,
                format!(
                    "{}: object shorter than the {} bytes the index says ({e})",
                    located.uid, located.stored_len
                ),
            ));
        }
        Err(e) => return Err(e),
    };
    if got.meta.size != located.stored_len || got.range != covering.bytes {
        return Err(Error::corrupt(
            big_key,
            format!(
                "{}: object has {} bytes, index says {}",
                located.uid, got.meta.size, located.stored_len
            ),
        ));
    }
    Ok(WindowRead::Chunks(ChunkStream::new(
        big_key,
        &located.uid,
        table,
        covering,
        window,
        got.body,
    )))
}

/// Whether an error from a [`ChunkStream`] is corruption (a chunk failed its
/// CRC32C) rather than the store failing to deliver.
pub fn is_corruption(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
        .is_some_and(|inner| inner.kind() == ErrorKind::Corrupt)
}

/// The window's bytes from [`read_window`]. No byte is yielded before the
/// chunk holding it passed its CRC32C. A failed chunk ends the stream with
/// an `io::Error` of kind `InvalidData` ([`is_corruption`] is true); a
/// failed or short transfer with another kind. After an error the stream
/// ends. Dropping it stops the read.
pub struct ChunkStream {
    /// Object bytes the ranged GET covers.
    covering: Range<u64>,
    inner: BoxStream<'static, io::Result<Bytes>>,
}

impl ChunkStream {
    /// Reads `body`, the object bytes `covering.bytes`, handing out `window`.
    fn new(
        key: &str,
        uid: &str,
        table: ChunkTable,
        covering: Covering,
        window: Range<u64>,
        body: BoxStream<'static, Result<Bytes>>,
    ) -> Self {
        let reader = Reader {
            key: key.to_string(),
            uid: uid.to_string(),
            pos: covering.bytes.start,
            chunk: covering.chunks.start,
            end_chunk: covering.chunks.end,
            table,
            body,
            window,
            pieces: Vec::new(),
            crc: 0,
            ready: VecDeque::new(),
            done: false,
        };
        Self {
            covering: covering.bytes,
            inner: futures::stream::unfold(reader, Reader::next).boxed(),
        }
    }

    /// The object bytes fetched for the window (whole chunks).
    pub fn covering(&self) -> Range<u64> {
        self.covering.clone()
    }
}

impl Stream for ChunkStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

struct Reader {
    key: String,
    uid: String,
    table: ChunkTable,
    body: BoxStream<'static, Result<Bytes>>,
    window: Range<u64>,
    /// Object offset of the next body byte.
    pos: u64,
    /// The chunk being received, and the first one not to read.
    chunk: u32,
    end_chunk: u32,
    /// Bytes of `chunk` received so far (slices of the body's, no copies),
    /// with their running CRC32C.
    pieces: Vec<Bytes>,
    crc: u32,
    /// Window bytes of verified chunks, not yet handed out.
    ready: VecDeque<Bytes>,
    done: bool,
}

impl Reader {
    async fn next(mut self) -> Option<(io::Result<Bytes>, Self)> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Some((Ok(b), self));
            }
            if self.done || self.chunk >= self.end_chunk {
                return None;
            }
            match self.body.next().await {
                Some(Ok(piece)) => {
                    if let Err(e) = self.take(piece) {
                        return self.fail(e);
                    }
                }
                Some(Err(e)) => {
                    let kind = match e.kind() {
                        ErrorKind::Timeout => io::ErrorKind::TimedOut,
                        _ => io::ErrorKind::Other,
                    };
                    return self.fail(io::Error::new(kind, e));
                }
                None => {
                    let short = Error::Unavailable {
                        msg: format!(
                            "{}: body ended at byte {}, before chunk {} was complete",
                            self.key, self.pos, self.chunk
                        ),
                        retry_after: None,
                    };
                    return self.fail(io::Error::new(io::ErrorKind::UnexpectedEof, short));
                }
            }
        }
    }

    /// Takes body bytes at `self.pos`; every chunk they complete is checked,
    /// and its window bytes queued.
    fn take(&mut self, mut piece: Bytes) -> io::Result<()> {
        while !piece.is_empty() {
            let range = match self.table.chunk_range(self.chunk) {
                Some(r) if self.chunk < self.end_chunk => r,
                _ => {
                    return Err(io::Error::other(Error::Unavailable {
                        msg: format!("{}: body longer than the range asked for", self.key),
                        retry_after: None,
                    }));
                }
            };
            let need = usize::try_from(range.end - self.pos).unwrap_or(usize::MAX);
            let now = piece.split_to(need.min(piece.len()));
            self.crc = crc32c::crc32c_append(self.crc, &now);
            self.pos += now.len() as u64;
            self.pieces.push(now);
            if self.pos == range.end {
                self.chunk_done(range)?;
            }
        }
        Ok(())
    }

    /// All of chunk `self.chunk` (object bytes `range`) is in `pieces`.
    fn chunk_done(&mut self, range: Range<u64>) -> io::Result<()> {
        let want = self.table.chunk_crc(self.chunk);
        if want != Some(self.crc) {
            let detail = format!(
                "{}: chunk {} (bytes {}..{}) has crc32c {:08x}, its table says {:08x}",
                self.uid,
                self.chunk,
                range.start,
                range.end,
                self.crc,
                want.unwrap_or_default()
            );
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                Error::corrupt(&self.key, detail),
            ));
        }
        let mut at = range.start;
        for piece in self.pieces.drain(..) {
            let end = at + piece.len() as u64;
            let (lo, hi) = (self.window.start.max(at), self.window.end.min(end));
            if lo < hi {
                let off = |n: u64| usize::try_from(n - at).unwrap_or(piece.len());
                self.ready.push_back(piece.slice(off(lo)..off(hi)));
            }
            at = end;
        }
        self.crc = 0;
        self.chunk += 1;
        Ok(())
    }

    fn fail(mut self, e: io::Error) -> Option<(io::Result<Bytes>, Self)> {
        self.done = true;
        self.pieces.clear();
        self.ready.clear();
        Some((Err(e), self))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use des_format::chunks::MIN_CHUNK_SIZE;
    use des_format::shard::Source;
    use des_format::{DigestAlgorithm, v3};

    use super::*;
    use crate::memory::MemoryStore;
    use crate::object::{
        GetResult, ListPage, ObjectMeta, ObjectStoreExt, ObjectWriter, PutOptions, PutResult,
    };

    const CS: u64 = MIN_CHUNK_SIZE as u64;

    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Records every GET (key, range returned, bytes pulled from its body)
    /// and serves bodies in small pieces, as a network would.
    #[derive(Debug, Default)]
    struct Counting {
        inner: MemoryStore,
        gets: Mutex<Vec<(String, Range<u64>)>>,
        pulled: Arc<AtomicU64>,
        /// One more strong count per body handed out and still alive.
        alive: Arc<()>,
        /// Body piece size (0: 4096, a multiple of the chunk size).
        piece: AtomicU64,
        /// Bytes of the object past the range that a misbehaving server
        /// appends to a ranged body (while reporting the range asked for).
        overlong: AtomicU64,
    }

    #[async_trait]
    impl ObjectStore for Counting {
        fn describe(&self) -> String {
            "counting".into()
        }
        async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
            let mut got = self.inner.get(key, opts).await?;
            self.gets
                .lock()
                .unwrap()
                .push((key.to_string(), got.range.clone()));
            let mut whole = got.bytes_of_body().await?.to_vec();
            let extra = self.overlong.load(Ordering::SeqCst);
            if extra > 0 && got.range.end < got.meta.size {
                let end = (got.range.end + extra).min(got.meta.size);
                let more = ByteRange::Bounded {
                    start: got.range.end,
                    end,
                };
                whole.extend_from_slice(&self.inner.get_range(key, more).await?.1);
            }
            let pulled = Arc::clone(&self.pulled);
            let token = Arc::clone(&self.alive);
            let size = match self.piece.load(Ordering::SeqCst) {
                0 => 4096,
                n => usize::try_from(n).unwrap_or(usize::MAX),
            };
            let pieces: Vec<Bytes> = whole.chunks(size).map(Bytes::copy_from_slice).collect();
            got.body = futures::stream::iter(pieces)
                .map(move |p| {
                    let _keep = &token;
                    pulled.fetch_add(p.len() as u64, Ordering::SeqCst);
                    Ok(p)
                })
                .boxed();
            Ok(got)
        }
        async fn head(&self, key: &str) -> Result<ObjectMeta> {
            self.inner.head(key).await
        }
        async fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<PutResult> {
            self.inner.put(key, data, opts).await
        }
        async fn put_writer(&self, key: &str, opts: PutOptions) -> Result<Box<dyn ObjectWriter>> {
            self.inner.put_writer(key, opts).await
        }
        async fn delete(&self, key: &str) -> Result<()> {
            self.inner.delete(key).await
        }
        async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<ListPage> {
            self.inner.list(prefix, start_after).await
        }
    }

    trait BodyBytes {
        async fn bytes_of_body(&mut self) -> Result<Bytes>;
    }

    impl BodyBytes for GetResult {
        async fn bytes_of_body(&mut self) -> Result<Bytes> {
            let mut out = Vec::new();
            while let Some(b) = self.body.next().await {
                out.extend_from_slice(&b?);
            }
            Ok(out.into())
        }
    }

    impl Counting {
        fn take_gets(&self) -> Vec<(String, Range<u64>)> {
            std::mem::take(&mut *self.gets.lock().unwrap())
        }
    }

    fn located(data: &[u8]) -> (String, Located) {
        let digest = DigestAlgorithm::Blake3.digest(data);
        let key = v3::external_key(&digest);
        let l = Located {
            uid: "u".into(),
            created_at: None,
            codec: Codec::None,
            stored_len: data.len() as u64,
            orig_len: data.len() as u64,
            source: Source::External {
                key: key.clone(),
                relative_to_shard: false,
            },
            check: Check::V3 {
                crc32c: crc32c::crc32c(data),
                digest,
                alg: DigestAlgorithm::Blake3,
            },
            content_type: None,
            meta: None,
        };
        (key, l)
    }

    /// A store holding `data` as a big file, with its table.
    async fn stored(data: &[u8]) -> (Counting, String, Located) {
        let s = Counting::default();
        let (key, l) = located(data);
        s.put(&key, Bytes::copy_from_slice(data), PutOptions::default())
            .await
            .unwrap();
        let table = ChunkTable::of(MIN_CHUNK_SIZE, data).unwrap().encode();
        s.put(
            &v3::chunk_table_key(&key),
            table.into(),
            PutOptions::default(),
        )
        .await
        .unwrap();
        (s, key, l)
    }

    /// The yielded bytes and the error that ended the stream, if any.
    async fn drain(s: ChunkStream) -> (Vec<u8>, Option<io::Error>) {
        let mut s = s;
        let mut out = Vec::new();
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => {
                    assert!(!b.is_empty(), "an empty piece");
                    out.extend_from_slice(&b);
                }
                Err(e) => {
                    assert!(
                        s.next().await.is_none(),
                        "the stream goes on after an error"
                    );
                    return (out, Some(e));
                }
            }
        }
        (out, None)
    }

    async fn open(s: &Counting, key: &str, l: &Located, w: Range<u64>) -> ChunkStream {
        match read_window(s, key, l, w).await.unwrap() {
            WindowRead::Chunks(c) => c,
            other => panic!("no chunked read: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_window_reads_only_its_chunks() {
        let data = noise(1, 5 * CS as usize + 123);
        let (s, key, l) = stored(&data).await;
        let len = data.len() as u64;
        for (w, cov) in [
            (0..1, 0..CS),
            (CS + 5..CS + 6, CS..2 * CS),
            (CS - 1..CS + 1, 0..2 * CS),
            (2 * CS..3 * CS, 2 * CS..3 * CS),
            (len - 1..len, 5 * CS..len),
            (3 * CS + 7..len, 3 * CS..len),
            (0..len, 0..len),
        ] {
            let stream = open(&s, &key, &l, w.clone()).await;
            assert_eq!(stream.covering(), cov);
            let (got, err) = drain(stream).await;
            assert!(err.is_none(), "{err:?}");
            assert!(got == data[w.start as usize..w.end as usize], "{w:?}");
            let table = v3::chunk_table_key(&key);
            assert_eq!(
                s.take_gets(),
                [(table, 0..chunks::table_len(6)), (key.clone(), cov)],
                "{w:?}"
            );
        }
    }

    /// Body pieces that do not line up with chunks (a network's): each
    /// chunk is checked once whole, whatever pieces it arrived in.
    #[tokio::test]
    async fn pieces_across_chunk_boundaries() {
        let data = noise(7, 4 * CS as usize + 99);
        let (s, key, l) = stored(&data).await;
        let len = data.len() as u64;
        for piece in [1000, CS + 1, 3 * CS, u64::MAX] {
            s.piece.store(piece, Ordering::SeqCst);
            for w in [0..len, CS - 1..CS + 1, CS + 1..3 * CS - 1, len - 5..len] {
                let (got, err) = drain(open(&s, &key, &l, w.clone()).await).await;
                assert!(err.is_none(), "pieces of {piece}, {w:?}: {err:?}");
                assert!(
                    got == data[w.start as usize..w.end as usize],
                    "{piece} {w:?}"
                );
            }
        }
    }

    /// A server that sends more than the range it reports: the extra bytes
    /// are not taken for the next chunk.
    #[tokio::test]
    async fn a_body_longer_than_its_range_is_refused() {
        let data = noise(8, 3 * CS as usize);
        let (s, key, l) = stored(&data).await;
        s.piece.store(u64::MAX, Ordering::SeqCst);
        s.overlong.store(10, Ordering::SeqCst);
        let (_, err) = drain(open(&s, &key, &l, 0..1).await).await;
        let err = err.expect("an overlong body must fail the read");
        assert!(!is_corruption(&err), "{err}");
        assert!(err.to_string().contains("longer than the range"), "{err}");
    }

    /// An object longer than the index says is not the file the index
    /// describes, even where the chunks asked for still match.
    #[tokio::test]
    async fn an_object_of_another_size_is_corrupt() {
        let data = noise(9, 2 * CS as usize);
        let (s, key, l) = stored(&data).await;
        let mut longer = data.clone();
        longer.extend_from_slice(b"appended");
        s.put(&key, longer.into(), PutOptions::default())
            .await
            .unwrap();
        let err = read_window(&s, &key, &l, 0..10).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    }

    #[tokio::test]
    async fn corruption_is_caught_inside_the_window_only() {
        let data = noise(2, 4 * CS as usize);
        let (s, key, l) = stored(&data).await;
        // Damage a byte of chunk 2, table untouched.
        let mut bad = data.clone();
        bad[2 * CS as usize + 17] ^= 0x40;
        s.put(&key, bad.into(), PutOptions::default())
            .await
            .unwrap();

        let (got, err) = drain(open(&s, &key, &l, 10..CS + 10).await).await;
        assert!(err.is_none(), "{err:?}");
        assert!(got == data[10..CS as usize + 10]);

        // Chunk 1 is served, chunk 2 is not, not even its first bytes.
        let w = CS + 3..3 * CS;
        let (got, err) = drain(open(&s, &key, &l, w.clone()).await).await;
        let err = err.expect("a corrupt chunk must end the stream with an error");
        assert!(is_corruption(&err), "{err}");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("chunk 2"), "{err}");
        assert!(got == data[w.start as usize..2 * CS as usize]);

        let (got, err) = drain(open(&s, &key, &l, 2 * CS + 17..2 * CS + 18).await).await;
        assert!(got.is_empty());
        assert!(is_corruption(&err.unwrap()));
    }

    #[tokio::test]
    async fn no_or_bad_table_falls_back() {
        let data = noise(3, 2 * CS as usize + 1);
        let (s, key, l) = stored(&data).await;
        let table_key = v3::chunk_table_key(&key);
        let good = s
            .inner
            .get_range(&table_key, ByteRange::All)
            .await
            .unwrap()
            .1;

        // Damaged.
        let mut b = good.to_vec();
        b[30] ^= 1;
        s.put(&table_key, b.into(), PutOptions::default())
            .await
            .unwrap();
        let r = read_window(&s, &key, &l, 0..1).await.unwrap();
        let WindowRead::InvalidTable(e) = r else {
            panic!("{r:?}")
        };
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.to_string().contains(".chunks"), "{e}");

        // Valid, but another object's (a stale or planted table).
        let other = ChunkTable::of(MIN_CHUNK_SIZE, &noise(4, data.len()))
            .unwrap()
            .encode();
        s.put(&table_key, other.into(), PutOptions::default())
            .await
            .unwrap();
        let r = read_window(&s, &key, &l, 0..1).await.unwrap();
        assert!(matches!(r, WindowRead::InvalidTable(_)), "{r:?}");

        // Too large to be any table of this entry: not even read.
        let huge = vec![0u8; chunks::max_table_len(l.stored_len) as usize + 1];
        s.put(&table_key, huge.into(), PutOptions::default())
            .await
            .unwrap();
        s.take_gets();
        s.pulled.store(0, Ordering::SeqCst);
        let r = read_window(&s, &key, &l, 0..1).await.unwrap();
        assert!(matches!(r, WindowRead::InvalidTable(_)), "{r:?}");
        assert_eq!(s.pulled.load(Ordering::SeqCst), 0);

        // Missing: a big file from before tables.
        s.delete(&table_key).await.unwrap();
        let r = read_window(&s, &key, &l, 0..1).await.unwrap();
        assert!(matches!(r, WindowRead::Fallback), "{r:?}");
        assert!(r.into_stream().is_none());

        // Not raw: window offsets are not stored offsets.
        s.put(&table_key, good, PutOptions::default())
            .await
            .unwrap();
        let zstd = Located {
            codec: Codec::Zstd,
            ..l.clone()
        };
        s.take_gets();
        let r = read_window(&s, &key, &zstd, 0..1).await.unwrap();
        assert!(matches!(r, WindowRead::Fallback), "{r:?}");
        assert!(
            s.take_gets().is_empty(),
            "no request for an entry with a codec"
        );
        let legacy = Located {
            check: Check::None,
            ..l.clone()
        };
        let r = read_window(&s, &key, &legacy, 0..1).await.unwrap();
        assert!(matches!(r, WindowRead::Fallback), "{r:?}");
    }

    #[tokio::test]
    async fn bad_windows_and_objects_are_errors() {
        let data = noise(5, CS as usize + 9);
        let (s, key, l) = stored(&data).await;
        let len = data.len() as u64;
        for (start, end) in [(3, 3), (5, 4), (0, len + 1), (len, len + 1)] {
            let w = start..end;
            let e = read_window(&s, &key, &l, w.clone()).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{w:?}");
        }
        // The object is shorter than the index (and table) say.
        s.put(
            &key,
            Bytes::copy_from_slice(&data[..10]),
            PutOptions::default(),
        )
        .await
        .unwrap();
        let e = read_window(&s, &key, &l, 0..5).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        let e = read_window(&s, &key, &l, CS + 1..CS + 2).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        // Gone altogether.
        s.delete(&key).await.unwrap();
        let e = read_window(&s, &key, &l, 0..5).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    }

    #[tokio::test]
    async fn a_failed_transfer_is_not_corruption() {
        let data = noise(6, 3 * CS as usize);
        let table = ChunkTable::of(MIN_CHUNK_SIZE, &data).unwrap();
        let over = |body: Vec<Result<Bytes>>| {
            let covering = table.covering(0..3 * CS).unwrap();
            let body = futures::stream::iter(body).boxed();
            ChunkStream::new("k", "u", table.clone(), covering, 0..3 * CS, body)
        };
        let part = |r: Range<u64>| {
            Ok(Bytes::copy_from_slice(
                &data[r.start as usize..r.end as usize],
            ))
        };

        // Stops half-way through chunk 1.
        let (got, err) = drain(over(vec![part(0..CS + CS / 2)])).await;
        let err = err.unwrap();
        assert!(!is_corruption(&err), "{err}");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(got == data[..CS as usize]);

        // The store fails mid-body.
        let broken = Err(Error::Timeout("slow".into()));
        let (got, err) = drain(over(vec![part(0..CS + 1), broken])).await;
        let err = err.unwrap();
        assert!(!is_corruption(&err), "{err}");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(got == data[..CS as usize]);

        // More than was asked for, in the piece that completes the last
        // chunk: the body is not the range asked for, and nothing is served.
        let longer = Ok(Bytes::from([&data[2 * CS as usize..], b"x"].concat()));
        let (got, err) = drain(over(vec![part(0..2 * CS), longer])).await;
        assert!(!is_corruption(&err.unwrap()));
        assert!(got == data[..2 * CS as usize]);
    }

    #[tokio::test]
    async fn dropping_the_stream_stops_the_read() {
        let data = noise(7, 8 * CS as usize);
        let (s, key, l) = stored(&data).await;
        let mut stream = open(&s, &key, &l, 0..8 * CS).await;
        s.pulled.store(0, Ordering::SeqCst);
        let first = stream.next().await.unwrap().unwrap();
        assert!(first == data[..first.len()]);
        // One chunk, not the whole object, was pulled to release it.
        let pulled = s.pulled.load(Ordering::SeqCst);
        assert!(pulled <= CS, "{pulled}");
        assert!(Arc::strong_count(&s.alive) > 1, "the body is alive");
        drop(stream);
        assert_eq!(
            Arc::strong_count(&s.alive),
            1,
            "the body outlived its stream"
        );
        assert_eq!(s.pulled.load(Ordering::SeqCst), pulled);
    }
}
