//! What a packer may add to a shard: never a deleted `(uid, day)`, nor one
//! a retention rule has expired (`crate::retention`) and no legal hold keeps.
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
//!
//! Retention rules and holds are read once, when the guard is loaded, and
//! applied as of that day: a packer started before a rule was set may still
//! pack files it expires; the repacker removes them from the changed shard
//! at its next run.

use std::sync::Mutex;

use des_format::Timestamp;

use crate::error::Result;
use crate::holds::HoldSet;
use crate::retention::{self, Cutoffs};
use crate::store::DesStore;
use crate::tombstones::{TombstoneLog, TombstoneSet};

/// The deleted pairs of a store, refreshed on demand; shared by a packer's jobs.
#[derive(Debug)]
pub struct DeletionGuard {
    log: TombstoneLog,
    set: Mutex<TombstoneSet>,
    /// The retention rules as of the load's day, and the holds then.
    expiry: Option<(Cutoffs, HoldSet)>,
}

impl DeletionGuard {
    /// Reads the whole tombstone log once, and the retention rules and
    /// legal holds. Rules that cannot be read are an error: packing files
    /// they may expire would bring back what must be gone.
    pub async fn load(store: &DesStore) -> Result<Self> {
        Self::load_at(store, Timestamp::now()).await
    }

    /// [`load`](Self::load), judging expiry on the UTC day of `now` (a
    /// packer replaying past days, e.g. a benchmark).
    pub async fn load_at(store: &DesStore, now: Timestamp) -> Result<Self> {
        let log = TombstoneLog::new(store);
        let set = TombstoneSet::load(&log).await?;
        let expiry = match retention::load(store).await? {
            Some(rules) if rules.rules.min_days().is_some() => {
                let today = retention::today(now);
                Some((rules.rules.cutoffs(today), HoldSet::load(store).await?))
            }
            _ => None,
        };
        Ok(Self {
            log,
            set: Mutex::new(set),
            expiry,
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

    /// Is `(uid, date)` deleted, or expired by a retention rule and not held?
    pub fn is_deleted(&self, uid: &str, date: u32) -> bool {
        self.lock().contains(uid, date) || self.is_expired(uid, date)
    }

    /// Is `(uid, date)` expired by a retention rule (and no hold keeps it)?
    pub fn is_expired(&self, uid: &str, date: u32) -> bool {
        self.expiry.as_ref().is_some_and(|(cutoffs, holds)| {
            cutoffs.expired(uid, date) && holds.holding(uid, date).is_none()
        })
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

    /// Files a retention rule expired are refused like deleted ones, unless
    /// a legal hold keeps them.
    #[tokio::test]
    async fn expired_files_are_refused_unless_held() {
        let (store, _) =
            DesStore::open_or_create(Arc::new(MemoryStore::new()), CreateOptions::default())
                .await
                .unwrap();
        let rules = crate::retention::RetentionRules::from_toml(
            "[[rule]]\nuid_prefix = \"logs/\"\nmax_age_days = 30\n",
        )
        .unwrap();
        crate::retention::set(&store, &rules, "tester")
            .await
            .unwrap();
        let held = crate::holds::Hold::new("case", "logs/held", "legal");
        let body = serde_json::to_vec(&held).unwrap();
        store
            .objects()
            .put(
                &held.key(),
                bytes::Bytes::from(body),
                crate::PutOptions::default(),
            )
            .await
            .unwrap();
        let guard = DeletionGuard::load(&store).await.unwrap();
        assert!(guard.is_deleted("logs/a", 20240517));
        assert!(guard.is_expired("logs/a", 20240517));
        assert!(!guard.is_deleted("logs/held/a", 20240517), "held");
        assert!(!guard.is_deleted("img/a", 20240517), "no rule");
        let today = retention::today(Timestamp::now());
        assert!(
            !guard.is_deleted("logs/a", today),
            "today's files are young"
        );
        // As of 2024-06-01, a file of 2024-05-17 is 15 days old: kept.
        let then = Timestamp::parse_rfc3339("2024-06-01T12:00:00Z").unwrap();
        let past = DeletionGuard::load_at(&store, then).await.unwrap();
        assert!(!past.is_expired("logs/a", 20240517));
        assert!(past.is_expired("logs/a", 20240501), "31 days old then");
    }
}
