use bytes::Bytes;
use des_format::legacy;
use des_format::shard::{AnyIndex, Located, Tail};

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

impl DesStore {
    /// Reads a shard's index: one suffix read, plus one more only when the
    /// index is larger than the suffix (or, for legacy shards, when the
    /// version cannot be told from the index alone). `Ok(None)` if no such shard.
    pub async fn load_index(&self, key: &str) -> Result<Option<LoadedIndex>> {
        // A shard replaced between our two reads fails the second one's If-Match; start over once.
        match self.load_index_once(key).await {
            Err(e) if e.kind() == ErrorKind::PreconditionFailed => self.load_index_once(key).await,
            other => other,
        }
    }

    async fn load_index_once(&self, key: &str) -> Result<Option<LoadedIndex>> {
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
        let tail_start = got.range.start;
        let tail = got.bytes().await?;
        let parsed = Tail::parse(&tail, object.size).map_err(|e| Error::format(key, e))?;
        let range = parsed.index_range();
        let mut requests = 1;
        let index_bytes = if range.start >= tail_start {
            let from = usize::try_from(range.start - tail_start).unwrap_or(usize::MAX);
            let to = usize::try_from(range.end - tail_start).unwrap_or(usize::MAX);
            if from > to || to > tail.len() {
                return Err(Error::corrupt(key, "index range outside the object"));
            }
            tail.slice(from..to)
        } else {
            requests += 1;
            self.read_exact(key, range.start, range.end, &object)
                .await?
        };
        // Legacy versions live in the header; the suffix alone covers it for small shards.
        let mut header_version = None;
        if matches!(parsed, Tail::Legacy { .. }) && tail_start == 0 {
            header_version = Some(legacy::parse_header(&tail).map_err(|e| Error::format(key, e))?);
        }
        let index = match AnyIndex::parse(&parsed, index_bytes.clone(), header_version)
            .map_err(|e| Error::format(key, e))?
        {
            Some(ix) => ix,
            None => {
                requests += 1;
                let head = self.read_exact(key, 0, legacy::HEADER_LEN, &object).await?;
                let v = legacy::parse_header(&head).map_err(|e| Error::format(key, e))?;
                AnyIndex::parse(&parsed, index_bytes, Some(v))
                    .map_err(|e| Error::format(key, e))?
                    .ok_or_else(|| Error::corrupt(key, "legacy index version undecidable"))?
            }
        };
        Ok(Some(LoadedIndex {
            key: key.to_string(),
            object,
            index,
            requests,
        }))
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
