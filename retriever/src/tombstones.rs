//! Deleted files as this replica knows them: the tombstone log
//! (`des_storage::tombstones`) read in full at start, then polled, plus
//! every delete this replica accepted (visible here at once, elsewhere after
//! the other replicas' next poll). Each newly known deletion also drops the
//! file's bytes from the hot payload cache.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use des_format::Timestamp;
use des_storage::DesStore;
use des_storage::tombstones::{Tombstone, TombstoneLog, TombstoneSet};
use prometheus::{IntCounter, IntGauge};

use crate::hot::HotCache;
use crate::metrics::Metrics;
use crate::retention::Retention;

#[derive(Debug)]
pub struct Deleted {
    log: TombstoneLog,
    set: RwLock<TombstoneSet>,
    /// One poll at a time, so two cannot apply cursors out of order.
    polling: tokio::sync::Mutex<()>,
    known: IntGauge,
    segments: IntGauge,
    appended: IntCounter,
    poll_failures: IntCounter,
    /// Requests check tombstones before the hot cache, so its copy of a
    /// deleted file is never served; it is dropped anyway so deleted (GDPR)
    /// bytes do not stay in memory until evicted.
    hot: Option<HotCache>,
    /// Retention rules and holds, re-read on the same polls.
    retention: Option<Arc<Retention>>,
}

impl Deleted {
    /// Reads the whole log. Failing here fails startup: serving without
    /// knowing what was deleted could hand out files that must be gone.
    /// `hot`: the payload cache to drop deleted files from.
    pub async fn load(
        store: &DesStore,
        metrics: &Metrics,
        hot: Option<HotCache>,
    ) -> des_storage::Result<Self> {
        let log = TombstoneLog::new(store);
        let set = TombstoneSet::load(&log).await?;
        let d = Self {
            log,
            set: RwLock::new(set),
            polling: tokio::sync::Mutex::new(()),
            known: metrics.tombstones_known.clone(),
            segments: metrics.tombstones_segments.clone(),
            appended: metrics.tombstones_appended.clone(),
            poll_failures: metrics.tombstones_poll_failures.clone(),
            hot,
            retention: None,
        };
        d.update_gauge();
        Ok(d)
    }

    /// Polls `retention` together with the log.
    pub fn with_retention(mut self, retention: Arc<Retention>) -> Self {
        self.retention = Some(retention);
        self
    }

    pub fn retention(&self) -> Option<&Arc<Retention>> {
        self.retention.as_ref()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, TombstoneSet> {
        // The set is only ever inserted into; a writer that panicked left it usable.
        self.set.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, TombstoneSet> {
        self.set.write().unwrap_or_else(|p| p.into_inner())
    }

    fn update_gauge(&self) {
        let (n, segments) = {
            let set = self.read();
            (set.len(), set.segments())
        };
        self.known.set(i64::try_from(n).unwrap_or(i64::MAX));
        self.segments
            .set(i64::try_from(segments).unwrap_or(i64::MAX));
    }

    /// Is `(uid, the UTC day of created_at)` deleted?
    pub fn contains(&self, uid: &str, created_at: Timestamp) -> bool {
        self.read().contains_at(uid, created_at)
    }

    /// Logs `t` durably, then hides the file here at once.
    pub async fn append(&self, t: &Tombstone) -> des_storage::Result<String> {
        let key = self.log.append(t).await?;
        self.write().insert_tombstone(t);
        self.appended.inc();
        self.update_gauge();
        // After the insert: the hot cache relies on the tombstone being
        // visible before its invalidation (see hot::Slot::fill).
        if let Some(hot) = &self.hot {
            hot.invalidate(&t.uid, t.date);
        }
        Ok(key)
    }

    /// Picks up tombstones other replicas logged. The listing runs without
    /// the set's lock, so lookups never wait on storage.
    pub async fn poll(&self) -> des_storage::Result<usize> {
        let _one = self.polling.lock().await;
        let cursor = self.read().cursor().clone();
        let update = TombstoneSet::fetch_updates(&self.log, &cursor).await;
        let update = update.inspect_err(|_| self.poll_failures.inc())?;
        // Every pair, not just the new ones: dropping an absent entry is a
        // hash lookup, and `apply` does not say which pairs were new.
        let dropped = match self.hot {
            Some(_) => update.pairs.clone(),
            None => Vec::new(),
        };
        let new = self.write().apply(update);
        self.update_gauge();
        if let Some(hot) = &self.hot {
            for (uid, date) in &dropped {
                hot.invalidate(uid, *date);
            }
        }
        Ok(new)
    }
}

/// Polls every `interval` until the runtime stops, the log and then the
/// retention rules and holds; a failed poll keeps what is known and is
/// retried at the next tick.
pub fn spawn_polling(deleted: Arc<Deleted>, interval: Duration) {
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match deleted.poll().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(new = n, "tombstones picked up"),
                Err(e) => tracing::error!(error = %e, "polling the tombstone log failed"),
            }
            if let Some(r) = deleted.retention() {
                match r.poll().await {
                    Ok(false) => {}
                    Ok(true) => {
                        tracing::info!(version = r.rules_version(), "retention rules picked up");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "re-reading retention rules or legal holds failed")
                    }
                }
            }
        }
    });
}
