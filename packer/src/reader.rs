//! Opening a record's source for streaming: a local file, or an object read
//! through `des_storage` (`s3://bucket/key` in manifests). Every open goes
//! through the run's `--source-root`s (`crate::confine`), so no path to a
//! source's bytes bypasses them.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use des_storage::bridge::BlockingStreamReader;
use des_storage::{GetOptions, ObjectStore};
use tokio::runtime::Handle;

use crate::confine::{SourceRefused, SourceRoots};
use crate::report::{FailureKind, FileError};
use crate::source::SourceRef;

/// A source opened for reading: its bytes and its length when opened.
pub struct OpenSource {
    pub reader: Box<dyn Read + Send>,
    pub len: u64,
}

/// One store per source bucket, opened on first use and shared by every
/// worker thread (an S3 client pools its connections). The default reads
/// any source (no `--source-root`).
#[derive(Default)]
pub struct SourceStores {
    buckets: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    roots: SourceRoots,
}

impl SourceStores {
    /// Sources are confined to `roots` (none: unconfined).
    pub fn new(roots: SourceRoots) -> Self {
        Self {
            buckets: Mutex::default(),
            roots,
        }
    }

    /// Must be called from a blocking thread (it parks on `handle`).
    pub fn open(&self, source: &SourceRef, handle: &Handle) -> Result<OpenSource, FileError> {
        match source {
            SourceRef::Local(path) => self.open_local(path),
            SourceRef::S3 { bucket, key } => {
                // Before the bucket is opened: a refused source costs no client.
                self.roots.check_s3(bucket, key).map_err(refused)?;
                let store = self
                    .bucket(bucket)
                    .map_err(|e| FileError::new(FailureKind::SourceUnreadable, e))?;
                // Retries cover getting the response; a body that breaks
                // mid-stream fails this file, and a re-run picks it up.
                let got = handle
                    .block_on(store.get(key, GetOptions::default()))
                    .map_err(|e| {
                        let kind = match e.kind() {
                            des_storage::ErrorKind::NotFound => FailureKind::SourceMissing,
                            _ => FailureKind::SourceUnreadable,
                        };
                        FileError::new(kind, format!("cannot read {source}: {e}"))
                    })?;
                Ok(OpenSource {
                    len: got.meta.size,
                    reader: Box::new(BlockingStreamReader::new(handle.clone(), got.body)),
                })
            }
        }
    }

    /// The store of `bucket`, for reading (conditionally) or deleting
    /// `key` itself; refused like [`SourceStores::open`] when `key` is
    /// outside every `--source-root`, so no use of a source bypasses them.
    pub(crate) fn s3_bucket_for(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Arc<dyn ObjectStore>, FileError> {
        self.roots.check_s3(bucket, key).map_err(refused)?;
        self.bucket(bucket)
            .map_err(|e| FileError::new(FailureKind::SourceUnreadable, e))
    }

    fn bucket(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, String> {
        let mut buckets = self
            .buckets
            .lock()
            .map_err(|_| "source store cache poisoned".to_string())?;
        if let Some(s) = buckets.get(bucket) {
            return Ok(Arc::clone(s));
        }
        let url = format!("s3://{bucket}");
        let store = des_storage::open_location(&url)
            .map_err(|e| format!("cannot open source bucket {url}: {e}"))?;
        buckets.insert(bucket.to_string(), Arc::clone(&store));
        Ok(store)
    }

    fn open_local(&self, path: &Path) -> Result<OpenSource, FileError> {
        let f = self.roots.open_local(path).map_err(refused)?;
        // The opened file's own metadata: what is read is what was checked.
        let unreadable = |d: String| FileError::new(FailureKind::SourceUnreadable, d);
        let md = f
            .metadata()
            .map_err(|e| unreadable(format!("cannot stat {}: {e}", path.display())))?;
        if !md.is_file() {
            return Err(unreadable(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        Ok(OpenSource {
            reader: Box::new(f),
            len: md.len(),
        })
    }
}

/// A source the roots refused, or could not open.
fn refused(e: SourceRefused) -> FileError {
    let kind = match &e {
        SourceRefused::Open { err, .. } if err.kind() == std::io::ErrorKind::NotFound => {
            FailureKind::SourceMissing
        }
        SourceRefused::Open { .. } => FailureKind::SourceUnreadable,
        SourceRefused::Outside { .. } | SourceRefused::UnsafeKey { .. } => {
            FailureKind::SourceRefused
        }
    };
    FileError::new(kind, e)
}
