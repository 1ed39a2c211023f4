//! "Applied" markers: the repacker's proof that a tombstone's file is gone
//! from its shard. One marker per tombstone, under [`APPLIED_PREFIX`] with
//! the tombstone's own name, written only after the shard generation
//! without the file is published. A crash before the marker leaves the
//! tombstone pending, and the next run finds the file already gone and just
//! writes the marker, so no object is ever read, modified and written back.

use bytes::Bytes;
use des_format::Timestamp;
use serde::{Deserialize, Serialize};

use super::key::APPLIED_PREFIX;
use super::log::{LoggedName, TombstoneLog, list_names};
use crate::error::{Error, ErrorKind, Result};
use crate::object::{ByteRange, ObjectStoreExt, PutMode, PutOptions};

/// What the repacker found when it applied a tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppliedOutcome {
    /// The file was in the shard and is not in `generation`.
    Removed,
    /// The shard (at `generation`, or no shard at all) never held the file.
    Absent,
}

/// Written to `_tombstones_applied/<tombstone name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedMarker {
    pub shard_key: String,
    /// The first published generation without the file; `None` when there
    /// was no shard object at all.
    pub generation: Option<u64>,
    pub outcome: AppliedOutcome,
    /// RFC 3339.
    pub applied_at: String,
    /// Big-file objects that only this deletion referenced are removed later,
    /// after a grace period; their keys are listed here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub big_files: Vec<String>,
}

impl AppliedMarker {
    pub fn new(shard_key: &str, generation: Option<u64>, outcome: AppliedOutcome) -> Self {
        Self {
            shard_key: shard_key.to_string(),
            generation,
            outcome,
            applied_at: Timestamp::now().to_rfc3339(),
            big_files: Vec::new(),
        }
    }
}

impl TombstoneLog {
    /// Records that `at` is applied. Idempotent (a re-run may write it again).
    pub async fn mark_applied(&self, at: &LoggedName, marker: &AppliedMarker) -> Result<()> {
        let body = serde_json::to_vec(marker).map_err(|e| Error::other("applied marker", e))?;
        let put = PutOptions {
            mode: PutMode::Overwrite,
        };
        self.objects(at.store)?
            .put(&at.name.applied_key(), Bytes::from(body), put)
            .await?;
        Ok(())
    }

    /// The marker of `at`, if it was applied.
    pub async fn applied_marker(&self, at: &LoggedName) -> Result<Option<AppliedMarker>> {
        let key = at.name.applied_key();
        match self
            .objects(at.store)?
            .get_range(&key, ByteRange::All)
            .await
        {
            Ok((_, body)) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| Error::corrupt(&key, e)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every tombstone name, split into (pending, applied): names only,
    /// from two listings per store.
    pub async fn names_by_state(&self) -> Result<(Vec<LoggedName>, Vec<LoggedName>)> {
        let all = self.list_all_names().await?;
        let mut applied = std::collections::HashSet::new();
        for (i, objects) in self.stores().iter().enumerate() {
            for name in list_names(objects.as_ref(), APPLIED_PREFIX, None).await? {
                applied.insert((i, name.name));
            }
        }
        Ok(all
            .into_iter()
            .partition(|n| !applied.contains(&(n.store, n.name.name.clone()))))
    }

    /// Tombstones not yet applied by a repack.
    pub async fn pending(&self) -> Result<Vec<LoggedName>> {
        Ok(self.names_by_state().await?.0)
    }
}
