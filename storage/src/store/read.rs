use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use des_format::codec;
use des_format::shard::{Check, Located, Source};
use des_format::Timestamp;

use super::{DesStore, LoadedIndex};
use crate::bridge::BlockingStreamReader;
use crate::error::{Error, Result};
use crate::object::{ByteRange, GetOptions, ObjectStore, ObjectStoreExt};

/// Key of an entry's external payload.
pub fn external_key(shard_key: &str, located: &Located) -> Option<String> {
    match &located.source {
        Source::InShard { .. } => None,
        Source::External { key, relative_to_shard: false } => Some(key.clone()),
        Source::External { key, relative_to_shard: true } => Some(match shard_key.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{key}"),
            None => key.clone(),
        }),
    }
}

fn entry_error(key: &str, e: des_format::FormatError) -> Error {
    Error::format(key, e)
}

impl DesStore {
    /// The stored (possibly compressed) bytes of one entry: one range read of
    /// the shard version the index came from, or one read of the external object.
    pub async fn read_stored(&self, loaded: &LoadedIndex, located: &Located) -> Result<Bytes> {
        match located.shard_range() {
            Some(r) => self.read_exact(&loaded.key, r.start, r.end, &loaded.object).await,
            None => {
                let key = external_key(&loaded.key, located)
                    .ok_or_else(|| Error::corrupt(&loaded.key, "entry has no payload"))?;
                let (_, body) = self.objects.get_range(&key, ByteRange::All).await?;
                Ok(body)
            }
        }
    }

    /// Verified original bytes of one entry (buffered; big files should use
    /// [`verify_stream`] or a streaming read instead).
    pub async fn read_file(&self, loaded: &LoadedIndex, located: &Located) -> Result<Vec<u8>> {
        let stored = self.read_stored(loaded, located).await?;
        let located = located.clone();
        let key = loaded.key.clone();
        tokio::task::spawn_blocking(move || located.decode(&stored).map_err(|e| entry_error(&key, e)))
            .await
            .map_err(|e| Error::other("decode task failed", e))?
    }

    /// Finds `uid` in the shard it routes to. Legacy stores may hold several
    /// parts per shard; the highest-numbered part holding the uid wins.
    pub async fn find(&self, uid: &str, created_at: Timestamp) -> Result<(LoadedIndex, Located)> {
        let loc = self.locate(uid, created_at)?;
        let mut keys = self.shard_keys(&loc).await?;
        keys.sort();
        for key in keys.iter().rev() {
            if let Some(loaded) = self.load_index(key).await? {
                if let Some(found) = loaded.find(uid) {
                    return Ok((loaded, found));
                }
            }
        }
        Err(Error::not_found(format!("{uid} ({})", created_at.date_dir())))
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
    let range = range.map(|r| ByteRange::Bounded { start: r.start, end: r.end });
    let got = objects.get(key, GetOptions { range: range.or(Some(ByteRange::All)), if_match }).await?;
    if got.range.end - got.range.start != located.stored_len {
        return Err(Error::corrupt(key, format!("{}: stored length mismatch", located.uid)));
    }
    let handle = tokio::runtime::Handle::current();
    let located = located.clone();
    let key = key.to_string();
    tokio::task::spawn_blocking(move || {
        let reader = CrcReader { inner: BlockingStreamReader::new(handle, got.body), crc: 0 };
        check_stream(&key, &located, reader)
    })
    .await
    .map_err(|e| Error::other("verify task failed", e))?
}

fn check_stream(key: &str, located: &Located, reader: CrcReader<BlockingStreamReader>) -> Result<()> {
    let bad = |d: String| Error::corrupt(key, format!("{}: {d}", located.uid));
    let mut reader = reader;
    let (mut digester, mut sha) = match &located.check {
        Check::V3 { alg, .. } => (Some(alg.hasher()), None),
        Check::Sha256Hex(_) => (None, Some(des_format::DigestAlgorithm::Sha256.hasher())),
        Check::None => (None, None),
    };
    let mut total = 0u64;
    {
        let mut dec = codec::decoder(located.codec, &mut reader).map_err(|e| bad(e.to_string()))?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match dec.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => return Err(bad(format!("decode: {e}"))),
            };
            let chunk = buf.get(..n).unwrap_or_default();
            total += n as u64;
            if total > located.orig_len {
                return Err(bad("decodes to more bytes than the index says".into()));
            }
            if let Some(d) = digester.as_mut() {
                d.update(chunk);
            }
            if let Some(d) = sha.as_mut() {
                d.update(chunk);
            }
        }
    }
    if total != located.orig_len {
        return Err(bad(format!("decoded {total} bytes, index says {}", located.orig_len)));
    }
    match &located.check {
        Check::V3 { crc32c, digest, .. } => {
            if reader.crc != *crc32c {
                return Err(bad("crc32c mismatch".into()));
            }
            if digester.map(|d| d.finalize()) != Some(*digest) {
                return Err(bad("content digest mismatch".into()));
            }
        }
        Check::Sha256Hex(h) => {
            if sha.map(|d| hex::encode(d.finalize())).as_deref() != Some(h.as_str()) {
                return Err(bad("sha256 mismatch".into()));
            }
        }
        Check::None => {}
    }
    Ok(())
}

struct CrcReader<R> {
    inner: R,
    crc: u32,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}
