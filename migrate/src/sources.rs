//! `--delete-source-files`: a source is deleted only once its row is
//! settled (marked archived / passed by the watermark) and the copy in the
//! store was read back through des_storage, checked (CRC32C, decoding, the
//! index's content digest), and the source hashes to that same digest and
//! length. Anything short of that keeps the source and says why.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use des_format::Timestamp;
use des_format::shard::{Check, Located};
use des_packer::reader::SourceStores;
use des_packer::{SourceRef, SourceRoots};
use des_storage::store::{external_key, verify_stream};
use des_storage::{DesStore, LoadedIndex, ObjectStore};
use tokio::runtime::Handle;

/// Inline payloads up to this size are read whole and checked in memory;
/// larger ones are streamed (as des-verify does), so memory stays bounded
/// whatever the entry claims.
const MAX_BUFFERED: u64 = 16 << 20;

/// A source to delete once verified.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub uid: String,
    pub created_at: Timestamp,
    /// As given to the packer (absolute path or s3://bucket/key).
    pub source: String,
}

pub struct SourceCleaner<'a> {
    store: &'a DesStore,
    handle: &'a Handle,
    readers: SourceStores,
    buckets: HashMap<String, Arc<dyn ObjectStore>>,
}

impl<'a> SourceCleaner<'a> {
    /// Sources are read under the same `--source-root`s as when packing.
    pub fn new(store: &'a DesStore, roots: SourceRoots, handle: &'a Handle) -> Self {
        Self {
            store,
            handle,
            readers: SourceStores::new(roots),
            buckets: HashMap::new(),
        }
    }

    /// Verifies and deletes each candidate; returns how many were deleted
    /// and the ones kept, with the reason. Candidates are grouped by shard
    /// so each shard's index is read once per call. Blocks.
    pub fn clean(&mut self, mut items: Vec<Candidate>) -> (u64, Vec<(Candidate, String)>) {
        let mut keyed: Vec<(String, Candidate)> = Vec::with_capacity(items.len());
        let mut kept = Vec::new();
        for c in items.drain(..) {
            match self.store.locate(&c.uid, c.created_at) {
                Ok(loc) => keyed.push((DesStore::shard_key(&loc), c)),
                Err(e) => kept.push((c, format!("cannot locate in the store: {e}"))),
            }
        }
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let mut deleted = 0;
        let mut loaded: Option<(String, Result<LoadedIndex, String>)> = None;
        for (key, c) in keyed {
            if loaded.as_ref().is_none_or(|(k, _)| *k != key) {
                let index = match self.handle.block_on(self.store.load_index(&key)) {
                    Ok(Some(ix)) => Ok(ix),
                    Ok(None) => Err(format!("shard {key} not found in the store")),
                    Err(e) => Err(format!("reading shard {key}: {e}")),
                };
                loaded = Some((key.clone(), index));
            }
            let result = match loaded.as_ref().map(|(_, ix)| ix) {
                Some(Ok(ix)) => self.verify_and_delete(ix, &c),
                Some(Err(e)) => Err(e.clone()),
                None => Err("no index".into()),
            };
            match result {
                Ok(()) => deleted += 1,
                Err(reason) => kept.push((c, reason)),
            }
        }
        (deleted, kept)
    }

    fn verify_and_delete(&mut self, ix: &LoadedIndex, c: &Candidate) -> Result<(), String> {
        let located = ix
            .find(&c.uid)
            .ok_or_else(|| format!("{} is not in shard {}", c.uid, ix.key))?;
        self.check_stored(ix, &located)
            .map_err(|e| format!("stored copy failed its check: {e}"))?;
        let source = source_ref(&c.source)?;
        self.check_source(&source, &located)?;
        self.delete(&source)
    }

    /// Reads the stored copy back and checks it against its index entry.
    fn check_stored(&self, ix: &LoadedIndex, located: &Located) -> Result<(), String> {
        let store = self.store;
        match located.shard_range() {
            Some(_) if located.stored_len <= MAX_BUFFERED && located.orig_len <= MAX_BUFFERED => {
                let stored = self
                    .handle
                    .block_on(store.read_stored(ix, located))
                    .map_err(|e| e.to_string())?;
                // Length, CRC32C, decoding and content digest.
                located.decode(&stored).map(drop).map_err(|e| e.to_string())
            }
            Some(range) => {
                let objects = store.objects_for_key(&ix.key).map_err(|e| e.to_string())?;
                let etag = ix.object.etag.clone();
                self.handle
                    .block_on(verify_stream(objects, &ix.key, Some(range), located, etag))
                    .map_err(|e| e.to_string())
            }
            None => {
                let key = external_key(&ix.key, located)
                    .ok_or_else(|| "entry has no payload".to_string())?;
                let objects = store.objects_for_key(&ix.key).map_err(|e| e.to_string())?;
                self.handle
                    .block_on(verify_stream(objects, &key, None, located, None))
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// The source must hash to the stored entry's digest, with its length.
    fn check_source(&self, source: &SourceRef, located: &Located) -> Result<(), String> {
        let Check::V3 { digest, alg, .. } = &located.check else {
            return Err("the stored entry has no content digest to compare with".into());
        };
        let mut open = self
            .readers
            .open(source, self.handle)
            .map_err(|e| e.to_string())?;
        let mut hasher = alg.hasher();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = open
                .reader
                .read(&mut buf)
                .map_err(|e| format!("reading {source}: {e}"))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            hasher.update(buf.get(..n).unwrap_or_default());
        }
        if total != located.orig_len {
            return Err(format!(
                "source has {total} bytes, the stored copy {}; kept",
                located.orig_len
            ));
        }
        if hasher.finalize() != *digest {
            return Err("source differs from the stored copy (digest mismatch); kept".into());
        }
        Ok(())
    }

    fn delete(&mut self, source: &SourceRef) -> Result<(), String> {
        match source {
            SourceRef::Local(path) => {
                std::fs::remove_file(path).map_err(|e| format!("deleting {source}: {e}"))
            }
            SourceRef::S3 { bucket, key } => {
                let store = self.bucket(bucket)?;
                self.handle
                    .block_on(store.delete(key))
                    .map_err(|e| format!("deleting {source}: {e}"))
            }
        }
    }

    fn bucket(&mut self, bucket: &str) -> Result<Arc<dyn ObjectStore>, String> {
        if let Some(s) = self.buckets.get(bucket) {
            return Ok(Arc::clone(s));
        }
        let url = format!("s3://{bucket}");
        // open_location gives S3 the retries and breaker every tool's requests get.
        let store =
            des_storage::open_location(&url).map_err(|e| format!("cannot open {url}: {e}"))?;
        self.buckets.insert(bucket.to_string(), Arc::clone(&store));
        Ok(store)
    }
}

fn source_ref(source: &str) -> Result<SourceRef, String> {
    if source.starts_with("s3://") {
        SourceRef::parse_s3(source)
    } else {
        Ok(SourceRef::Local(PathBuf::from(source)))
    }
}
