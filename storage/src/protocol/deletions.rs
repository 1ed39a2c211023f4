//! What a packer may add to a shard: never a deleted `(uid, day)`.
//!
//! A tombstone is permanent. A packer re-running yesterday's input, or a
//! business system sending a deleted file again, must not bring its bytes
//! back, so every attempt to build a shard asks this guard, *after* reading
//! the generation it builds on, whether each file to add is deleted.
//!
//! Why after: the repacker reads a tombstone, then publishes the generation
//! without the file. A packer that read that generation read it after the
//! tombstone was written, so a refresh that follows the read lists the
//! tombstone (listings are strongly consistent; names older than the log's
//! overlap window are the documented clock-skew limit). A packer that read an
//! older generation loses its conditional publish to the repacker's and
//! rebuilds — with a fresh refresh. The one case left, a tombstone written
//! between a packer's refresh and its publish when the repacker found nothing
//! to remove, is caught by the repacker's re-check of changed shards
//! (`checked`).

use std::sync::Mutex;

use crate::error::Result;
use crate::store::DesStore;
use crate::tombstones::{TombstoneLog, TombstoneSet};

/// The deleted pairs of a store, refreshed on demand; shared by a packer's jobs.
#[derive(Debug)]
pub struct DeletionGuard {
    log: TombstoneLog,
    set: Mutex<TombstoneSet>,
}

impl DeletionGuard {
    /// Reads the whole tombstone log once.
    pub async fn load(store: &DesStore) -> Result<Self> {
        let log = TombstoneLog::new(store);
        let set = TombstoneSet::load(&log).await?;
        Ok(Self {
            log,
            set: Mutex::new(set),
        })
    }

    /// Picks up tombstones logged since the last refresh. Call after reading
    /// the shard generation a build starts from.
    pub async fn refresh(&self) -> Result<()> {
        let cursor = self.lock().cursor().clone();
        // The listing runs without the lock; two jobs refreshing at once
        // both add what they saw, and either cursor is a valid next start.
        let update = TombstoneSet::fetch_updates(&self.log, &cursor).await?;
        self.lock().apply(update);
        Ok(())
    }

    /// Is `(uid, date)` deleted?
    pub fn is_deleted(&self, uid: &str, date: u32) -> bool {
        self.lock().contains(uid, date)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TombstoneSet> {
        self.set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use des_format::Timestamp;

    use super::*;
    use crate::MemoryStore;
    use crate::store::CreateOptions;
    use crate::tombstones::{DeleteReason, Tombstone};

    /// A packer sees a tombstone logged after it loaded the guard once it
    /// refreshes (which it does after reading the generation it builds on),
    /// and only for the pair deleted.
    #[tokio::test]
    async fn refresh_picks_up_new_tombstones_for_their_pair_only() {
        let (store, _) = DesStore::open_or_create(
            Arc::new(MemoryStore::new()),
            CreateOptions {
                n_bits: Some(4),
                digest: None,
            },
        )
        .await
        .unwrap();
        let guard = DeletionGuard::load(&store).await.unwrap();
        let at = Timestamp::parse_rfc3339("2024-05-17T10:00:00Z").unwrap();
        let day = at.date_number();
        assert!(!guard.is_deleted("u1", day));
        let t = Tombstone::new("u1", at, DeleteReason::Gdpr, "tester");
        TombstoneLog::new(&store).append(&t).await.unwrap();
        assert!(!guard.is_deleted("u1", day), "not before a refresh");
        guard.refresh().await.unwrap();
        assert!(guard.is_deleted("u1", day));
        assert!(!guard.is_deleted("u2", day), "another uid");
        assert!(!guard.is_deleted("u1", day + 1), "another day");
        // Loaded afresh, the log already holds it.
        assert!(
            DeletionGuard::load(&store)
                .await
                .unwrap()
                .is_deleted("u1", day)
        );
    }
}
