use std::sync::Arc;

use bytes::Bytes;
use des_format::legacy;
use des_format::shard::{AnyIndex, Located, Tail};
use des_format::v3::{Directory, IndexLayout, Page, paged};

use super::DesStore;
use crate::error::{Error, ErrorKind, Result};
use crate::object::{ByteRange, GetOptions, ObjectMeta};

/// A shard's parsed index and the object version it came from.
#[derive(Debug, Clone)]
pub struct LoadedIndex {
    pub key: String,
    /// Size and ETag of the shard object the index was read from; reads of
    /// payloads pass the ETag as `If-Match` so a replaced shard is noticed.
    pub object: ObjectMeta,
    pub index: AnyIndex,
    /// Storage requests this load took (1 when the suffix held the index).
    pub requests: u32,
}

impl LoadedIndex {
    pub fn find(&self, uid: &str) -> Option<Located> {
        self.index.find(uid)
    }
}

/// What a lookup needs of a shard, as [`DesStore::open_shard`] reads it: the
/// whole index when it came with the suffix read (or the shard is flat or
/// legacy), else only the page directory of a paged shard (SPEC §5.10).
#[derive(Debug, Clone)]
pub enum ShardLookup {
    Whole(AnyIndex),
    Paged(Arc<Directory>),
}

/// A shard opened for lookups; see [`ShardLookup`].
#[derive(Debug, Clone)]
pub struct OpenedShard {
    pub key: String,
    /// The object version read; page and payload reads pass its ETag as `If-Match`.
    pub object: ObjectMeta,
    pub lookup: ShardLookup,
    /// Storage requests the open took.
    pub requests: u32,
}

/// Where a lookup goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The answer, from a whole index.
    Done(Option<Located>),
    /// Page `k` of a paged shard holds the uid, if the shard does.
    Page(usize),
}

impl OpenedShard {
    pub fn route(&self, uid: &str) -> Route {
        match &self.lookup {
            ShardLookup::Whole(ix) => Route::Done(ix.find(uid)),
            ShardLookup::Paged(dir) => match dir.page_for(uid) {
                Some(k) => Route::Page(k),
                None => Route::Done(None),
            },
        }
    }

    /// Generation from the trailer (0 for legacy shards), for cache keys.
    pub fn generation(&self) -> u64 {
        match &self.lookup {
            ShardLookup::Whole(ix) => ix.trailer().map_or(0, |t| t.generation),
            ShardLookup::Paged(dir) => dir.trailer().generation,
        }
    }

    /// Heap bytes held: a whole index, or a directory.
    pub fn heap_size(&self) -> usize {
        let held = match &self.lookup {
            ShardLookup::Whole(ix) => ix.heap_size(),
            ShardLookup::Paged(dir) => dir.heap_size(),
        };
        held + self.key.len() + std::mem::size_of::<Self>()
    }
}

/// The object versions reads of entries are pinned to (`If-Match`): both
/// a whole-index load and a shard opened for lookups are one.
pub trait ShardVersion {
    fn key(&self) -> &str;
    fn object(&self) -> &ObjectMeta;
}

impl ShardVersion for LoadedIndex {
    fn key(&self) -> &str {
        &self.key
    }
    fn object(&self) -> &ObjectMeta {
        &self.object
    }
}

impl ShardVersion for OpenedShard {
    fn key(&self) -> &str {
        &self.key
    }
    fn object(&self) -> &ObjectMeta {
        &self.object
    }
}

/// A shard replaced between our reads fails a later one's If-Match: start
/// over once, from a fresh suffix read.
async fn retry_if_replaced<T, F, Fut>(read: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    match read().await {
        Err(e) if e.kind() == ErrorKind::PreconditionFailed => read().await,
        other => other,
    }
}

/// The first read of a shard: its last `suffix_len` bytes, parsed.
struct TailRead {
    object: ObjectMeta,
    /// Object offset of `bytes[0]`.
    start: u64,
    bytes: Bytes,
    tail: Tail,
}

impl TailRead {
    /// `range` from the suffix, if it lies inside it.
    fn slice(&self, key: &str, range: std::ops::Range<u64>) -> Result<Option<Bytes>> {
        if range.start < self.start {
            return Ok(None);
        }
        let from = usize::try_from(range.start - self.start).unwrap_or(usize::MAX);
        let to = usize::try_from(range.end - self.start).unwrap_or(usize::MAX);
        if from > to || to > self.bytes.len() {
            return Err(Error::corrupt(key, "index range outside the object"));
        }
        Ok(Some(self.bytes.slice(from..to)))
    }
}

impl DesStore {
    /// Reads a shard's index: one suffix read, plus one more only when the
    /// index is larger than the suffix (or, for legacy shards, when the
    /// version cannot be told from the index alone). `Ok(None)` if no such shard.
    pub async fn load_index(&self, key: &str) -> Result<Option<LoadedIndex>> {
        retry_if_replaced(|| self.load_index_once(key)).await
    }

    async fn load_index_once(&self, key: &str) -> Result<Option<LoadedIndex>> {
        let Some(t) = self.read_tail(key).await? else {
            return Ok(None);
        };
        let (index, requests) = self.whole_index(key, &t).await?;
        Ok(Some(LoadedIndex {
            key: key.to_string(),
            object: t.object,
            index,
            requests,
        }))
    }

    /// Opens a shard for lookups: one suffix read, and the whole index only
    /// when it is in the suffix or the shard is not paged. A paged shard with
    /// a larger index keeps only its directory; [`Self::find_in_shard`] (or a
    /// caller with a page cache, via [`Self::read_page`]) reads one page per
    /// lookup. `Ok(None)` if no such shard.
    pub async fn open_shard(&self, key: &str) -> Result<Option<OpenedShard>> {
        retry_if_replaced(|| self.open_shard_once(key)).await
    }

    async fn open_shard_once(&self, key: &str) -> Result<Option<OpenedShard>> {
        let Some(t) = self.read_tail(key).await? else {
            return Ok(None);
        };
        let (lookup, requests) = match &t.tail {
            Tail::V3(trailer)
                if trailer.layout == IndexLayout::Paged && trailer.index_offset < t.start =>
            {
                let range = paged::directory_range(&t.bytes, trailer, t.object.size)
                    .map_err(|e| Error::format(key, e))?;
                let (bytes, requests) = match t.slice(key, range.clone())? {
                    Some(b) => (b, 1),
                    None => (
                        self.read_exact(key, range.start, range.end, &t.object)
                            .await?,
                        2,
                    ),
                };
                let dir = Directory::parse(&bytes, trailer).map_err(|e| Error::format(key, e))?;
                (ShardLookup::Paged(Arc::new(dir)), requests)
            }
            _ => {
                let (index, requests) = self.whole_index(key, &t).await?;
                (ShardLookup::Whole(index), requests)
            }
        };
        Ok(Some(OpenedShard {
            key: key.to_string(),
            object: t.object,
            lookup,
            requests,
        }))
    }

    /// Page `k` of a paged shard, read from the version `shard` was opened at
    /// and validated (SPEC §5.10).
    pub async fn read_page(&self, shard: &OpenedShard, k: usize) -> Result<Page> {
        let ShardLookup::Paged(dir) = &shard.lookup else {
            return Err(Error::corrupt(&shard.key, "not a paged shard"));
        };
        let range = dir
            .page_range(k)
            .ok_or_else(|| Error::corrupt(&shard.key, format!("no page {k}")))?;
        let bytes = self
            .read_exact(&shard.key, range.start, range.end, &shard.object)
            .await?;
        dir.page(k, bytes).map_err(|e| Error::format(&shard.key, e))
    }

    /// `uid` in an opened shard, reading its page if it needs one (no cache).
    pub async fn find_in_shard(&self, shard: &OpenedShard, uid: &str) -> Result<Option<Located>> {
        match shard.route(uid) {
            Route::Done(found) => Ok(found),
            Route::Page(k) => Ok(self.read_page(shard, k).await?.find(uid)),
        }
    }

    /// What the end of a shard says about its layout (one suffix read), e.g.
    /// to find flat indexes worth rewriting as paged ones.
    pub async fn shard_tail(&self, key: &str) -> Result<Option<Tail>> {
        Ok(self.read_tail(key).await?.map(|t| t.tail))
    }

    async fn read_tail(&self, key: &str) -> Result<Option<TailRead>> {
        let objects = self.objects_for_key(key)?;
        let got = match objects
            .get(key, GetOptions::range(ByteRange::Suffix(self.suffix_len)))
            .await
        {
            Ok(g) => g,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let object = got.meta.clone();
        let start = got.range.start;
        let bytes = got.bytes().await?;
        let tail = Tail::parse(&bytes, object.size).map_err(|e| Error::format(key, e))?;
        Ok(Some(TailRead {
            object,
            start,
            bytes,
            tail,
        }))
    }

    /// The whole index of the shard whose suffix is `t`, and the requests it
    /// took counting the suffix read.
    async fn whole_index(&self, key: &str, t: &TailRead) -> Result<(AnyIndex, u32)> {
        let range = t.tail.index_range();
        let mut requests = 1;
        let index_bytes = match t.slice(key, range.clone())? {
            Some(b) => b,
            None => {
                requests += 1;
                self.read_exact(key, range.start, range.end, &t.object)
                    .await?
            }
        };
        // Legacy versions live in the header; the suffix alone covers it for small shards.
        let mut header_version = None;
        if matches!(t.tail, Tail::Legacy { .. }) && t.start == 0 {
            header_version =
                Some(legacy::parse_header(&t.bytes).map_err(|e| Error::format(key, e))?);
        }
        let index = match AnyIndex::parse(&t.tail, index_bytes.clone(), header_version)
            .map_err(|e| Error::format(key, e))?
        {
            Some(ix) => ix,
            None => {
                requests += 1;
                let head = self
                    .read_exact(key, 0, legacy::HEADER_LEN, &t.object)
                    .await?;
                let v = legacy::parse_header(&head).map_err(|e| Error::format(key, e))?;
                AnyIndex::parse(&t.tail, index_bytes, Some(v))
                    .map_err(|e| Error::format(key, e))?
                    .ok_or_else(|| Error::corrupt(key, "legacy index version undecidable"))?
            }
        };
        Ok((index, requests))
    }

    /// Reads `start..end` of the same object version as `object`.
    pub(crate) async fn read_exact(
        &self,
        key: &str,
        start: u64,
        end: u64,
        object: &ObjectMeta,
    ) -> Result<Bytes> {
        if start == end {
            return Ok(Bytes::new());
        }
        let opts = GetOptions {
            range: Some(ByteRange::Bounded { start, end }),
            if_match: object.etag.clone(),
        };
        let got = self.objects_for_key(key)?.get(key, opts).await?;
        if got.range != (start..end) {
            return Err(Error::corrupt(
                key,
                format!("asked for {start}..{end}, got {:?}", got.range),
            ));
        }
        got.bytes().await
    }
}
