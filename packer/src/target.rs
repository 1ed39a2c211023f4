//! Where a run writes: the placement every shard and big-file request goes
//! through (with retries and breakers for S3), plus the bare S3 stores behind
//! it for the S3-only housekeeping done once per run (the rest of the
//! housekeeping goes through the placement's stores).

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Context, Result};
use des_storage::ObjectStore;
use des_storage::cli::StoreArgs;
use des_storage::keys::StoreKey;
use des_storage::s3::S3Store;
use des_storage::store::Placement;
use des_storage::store::Single;
use serde::Serialize;

pub struct Target {
    pub placement: Arc<dyn Placement>,
    /// Every S3 location of the placement (zone primaries and replicas).
    s3: Vec<S3Store>,
}

/// What the start-of-run housekeeping found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Housekeeping {
    /// Multipart uploads aborted as left over from crashed runs.
    pub stale_uploads_aborted: u64,
    /// Temp files (local stores) removed as left over from crashed runs.
    pub temp_files_swept: u64,
    /// Problems that did not stop the run (e.g. no permission to list uploads).
    pub warnings: Vec<String>,
}

impl Target {
    /// Opens `--store LOCATION` or `--zones FILE` (exactly one).
    pub fn open(store: &StoreArgs) -> Result<Self> {
        let opened = store
            .open()
            .with_context(|| format!("opening store {}", store.describe()))?;
        Ok(Self::new(opened.placement, opened.s3))
    }

    /// A placement built by the caller; `s3` lists the S3 stores inside it
    /// (clones share their state) for housekeeping, if any.
    pub fn new(placement: Arc<dyn Placement>, s3: Vec<S3Store>) -> Self {
        Self { placement, s3 }
    }

    /// One object store, no S3 housekeeping.
    pub fn single(objects: Arc<dyn ObjectStore>) -> Self {
        Self::new(Arc::new(Single(objects)), Vec::new())
    }

    /// Finds out whether each S3 location enforces conditional writes (the
    /// answer drives how shards are published, see `build`), aborts
    /// multipart uploads older than `stale_after` and removes temp files not
    /// modified for as long: both are what crashed writers leave, and the
    /// same threshold keeps both clear of writers still running.
    pub async fn housekeeping(&self, stale_after: Duration) -> Result<Housekeeping> {
        let mut done = Housekeeping::default();
        for store in self.placement.stores() {
            match store.sweep_leftovers(stale_after).await {
                Ok(n) => done.temp_files_swept += n,
                Err(e) => done.warnings.push(format!(
                    "{}: could not remove leftover temp files: {e}",
                    store.describe()
                )),
            }
        }
        for s3 in &self.s3 {
            if s3.config().conditional_put.is_none() {
                s3.probe_conditional_put()
                    .await
                    .with_context(|| format!("probing conditional writes on {}", s3.describe()))?;
            }
            // Not being allowed to clean up must not stop packing: the
            // leftovers cost storage, not correctness.
            match s3
                .abort_stale_uploads_where("", stale_after, is_des_object)
                .await
            {
                Ok(n) => done.stale_uploads_aborted += n as u64,
                Err(e) => done.warnings.push(format!(
                    "{}: could not abort stale multipart uploads: {e}",
                    s3.describe()
                )),
            }
        }
        Ok(done)
    }
}

/// What a packer uploads, possibly in parts: shards, big files and their
/// chunk tables. Other keys may be another application's, when the store
/// sits at the root of a shared bucket.
fn is_des_object(key: &str) -> bool {
    matches!(
        StoreKey::parse(key),
        Some(StoreKey::Shard(_) | StoreKey::Big { .. } | StoreKey::BigChunks { .. })
    )
}

#[cfg(test)]
mod tests {
    use super::is_des_object;

    #[test]
    fn only_shards_and_big_files_are_ours() {
        assert!(is_des_object("20240517/5C.des"));
        assert!(is_des_object("_big/0123abcd"));
        assert!(!is_des_object("backups/db.tar"));
        assert!(!is_des_object("_des/store.json"));
    }
}
