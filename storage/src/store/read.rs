use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use des_format::Timestamp;
use des_format::codec;
use des_format::shard::{Check, Located, Source};

use super::{DesStore, Layout, OpenedShard, ShardVersion};
use crate::bridge::BlockingStreamReader;
use crate::error::{Error, Result};
use crate::object::{ByteRange, GetOptions, ObjectStore, ObjectStoreExt};

/// Key of an entry's external payload.
pub fn external_key(shard_key: &str, located: &Located) -> Option<String> {
    match &located.source {
        Source::InShard { .. } => None,
        Source::External {
            key,
            relative_to_shard: false,
        } => Some(key.clone()),
        Source::External {
            key,
            relative_to_shard: true,
        } => Some(match shard_key.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{key}"),
            None => key.clone(),
        }),
    }
}

impl DesStore {
    /// The stored (possibly compressed) bytes of one entry: one range read of
    /// the shard version the index came from, or one read of the external object.
    pub async fn read_stored(&self, shard: &impl ShardVersion, located: &Located) -> Result<Bytes> {
        let shard_key = shard.key();
        match located.shard_range() {
            Some(r) => {
                self.read_exact(shard_key, r.start, r.end, shard.object())
                    .await
            }
            None => {
                let key = external_key(shard_key, located)
                    .ok_or_else(|| Error::corrupt(shard_key, "entry has no payload"))?;
                let (_, body) = self
                    .objects_for_key(shard_key)?
                    .get_range(&key, ByteRange::All)
                    .await?;
                Ok(body)
            }
        }
    }

    /// Verified original bytes of one entry (buffered; big files should use
    /// [`verify_stream`] or a streaming read instead).
    pub async fn read_file(&self, shard: &impl ShardVersion, located: &Located) -> Result<Vec<u8>> {
        let stored = self.read_stored(shard, located).await?;
        let data = self.decode_entry(shard.key(), located, stored).await?;
        Ok(data.into())
    }

    /// Finds `uid` in the shard it routes to. Legacy stores may hold several
    /// parts per shard; the highest-numbered part holding the uid wins. An
    /// auto store searches its v3 shard before the legacy parts.
    pub async fn find(&self, uid: &str, created_at: Timestamp) -> Result<(OpenedShard, Located)> {
        let loc = self.locate(uid, created_at)?;
        let v3 = self.layout() == Layout::V3;
        if v3 && let Some(found) = self.find_in(&Self::shard_key(&loc), uid).await? {
            return Ok(found);
        }
        // Listed only when needed: an auto store lists its legacy parts
        // after a v3 miss, and not at all once it has none.
        if !v3 || self.consults_legacy().await {
            for key in self.legacy_parts(&loc).await? {
                if let Some(found) = self.find_in(&key, uid).await? {
                    return Ok(found);
                }
            }
        }
        Err(Error::not_found(format!(
            "{uid} ({})",
            created_at.date_dir()
        )))
    }

    async fn find_in(&self, key: &str, uid: &str) -> Result<Option<(OpenedShard, Located)>> {
        let Some(shard) = self.open_shard(key).await? else {
            return Ok(None);
        };
        let found = self.find_in_shard(&shard, uid).await?;
        Ok(found.map(|located| (shard, located)))
    }

    /// Library read of one file by (uid, created_at).
    pub async fn get_file(&self, uid: &str, created_at: Timestamp) -> Result<(Located, Vec<u8>)> {
        let (loaded, located) = self.find(uid, created_at).await?;
        let data = self.read_file(&loaded, &located).await?;
        Ok((located, data))
    }
}

/// Checks an entry's payload by streaming it (CRC of stored bytes, decode,
/// digest), never holding it whole. Must be called from async context; the
/// work runs on a blocking thread.
pub async fn verify_stream(
    objects: Arc<dyn ObjectStore>,
    key: &str,
    range: Option<std::ops::Range<u64>>,
    located: &Located,
    if_match: Option<String>,
) -> Result<()> {
    let range = range.map(|r| ByteRange::Bounded {
        start: r.start,
        end: r.end,
    });
    let got = objects
        .get(
            key,
            GetOptions {
                range: range.or(Some(ByteRange::All)),
                if_match,
            },
        )
        .await?;
    if got.range.end - got.range.start != located.stored_len {
        return Err(Error::corrupt(
            key,
            format!("{}: stored length mismatch", located.uid),
        ));
    }
    let handle = tokio::runtime::Handle::current();
    let located = located.clone();
    let key = key.to_string();
    tokio::task::spawn_blocking(move || {
        let reader = CrcReader {
            inner: BlockingStreamReader::new(handle, got.body),
            crc: 0,
            read: 0,
            failed: None,
        };
        check_stream(&key, &located, reader)
    })
    .await
    .map_err(|e| Error::other("verify task failed", e))?
}

fn check_stream(
    key: &str,
    located: &Located,
    reader: CrcReader<BlockingStreamReader>,
) -> Result<()> {
    let mut reader = reader;
    let decoded = decode_digest(key, located, &mut reader);
    // A broken or short transfer is not evidence of corruption: report it as
    // retryable so a scrub does not flag a healthy shard after a network blip.
    if let Some(e) = reader.failed.take() {
        return Err(Error::Unavailable {
            msg: format!("{key}: reading {}: {e}", located.uid),
            retry_after: None,
        });
    }
    if reader.read < located.stored_len {
        return Err(Error::Unavailable {
            msg: format!(
                "{key}: body of {} ended after {} of {} bytes",
                located.uid, reader.read, located.stored_len
            ),
            retry_after: None,
        });
    }
    let (total, digest) = decoded?;
    let bad = |d: String| Error::corrupt(key, format!("{}: {d}", located.uid));
    if total != located.orig_len {
        return Err(bad(format!(
            "decoded {total} bytes, index says {}",
            located.orig_len
        )));
    }
    match (&located.check, digest) {
        (Check::V3 { crc32c, digest, .. }, Some(got)) => {
            if reader.crc != *crc32c {
                return Err(bad("crc32c mismatch".into()));
            }
            if got.as_slice() != digest.as_slice() {
                return Err(bad("content digest mismatch".into()));
            }
        }
        (Check::Sha256Hex(h), Some(got)) if hex::encode(&got) != *h => {
            return Err(bad("sha256 mismatch".into()));
        }
        _ => {}
    }
    Ok(())
}

/// Decodes the stored bytes, returning the decoded length and the digest the
/// entry's check calls for.
fn decode_digest(
    key: &str,
    located: &Located,
    reader: &mut CrcReader<BlockingStreamReader>,
) -> Result<(u64, Option<Vec<u8>>)> {
    let bad = |d: String| Error::corrupt(key, format!("{}: {d}", located.uid));
    let mut hasher = match &located.check {
        Check::V3 { alg, .. } => Some(alg.hasher()),
        Check::Sha256Hex(_) => Some(des_format::DigestAlgorithm::Sha256.hasher()),
        Check::None => None,
    };
    let mut total = 0u64;
    let mut dec = codec::decoder(located.codec, reader).map_err(|e| bad(e.to_string()))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(bad(format!("decode: {e}"))),
        };
        total += n as u64;
        if total > located.orig_len {
            return Err(bad("decodes to more bytes than the index says".into()));
        }
        if let Some(d) = hasher.as_mut() {
            d.update(buf.get(..n).unwrap_or_default());
        }
    }
    Ok((total, hasher.map(|d| d.finalize().to_vec())))
}

/// Counts and checksums the stored bytes, and remembers a transport error so
/// it is not mistaken for corruption once the decoder has wrapped it.
struct CrcReader<R> {
    inner: R,
    crc: u32,
    read: u64,
    failed: Option<std::io::Error>,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => {
                let copy = std::io::Error::new(e.kind(), e.to_string());
                self.failed = Some(e);
                return Err(copy);
            }
        };
        self.crc = crc32c::crc32c_append(self.crc, buf.get(..n).unwrap_or_default());
        self.read += n as u64;
        Ok(n)
    }
}
