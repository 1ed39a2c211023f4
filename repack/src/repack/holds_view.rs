//! The legal holds as a run sees them (I5): read at the run's start, and
//! again before a shard is read or rewritten once the last read is older
//! than `RepackOptions::holds_refresh`. Re-reading before every shard
//! costs one LIST per shard (a rewrite's most expensive request on S3) for
//! a prefix that rarely changes; with the refresh, a hold binds every
//! rewrite that starts more than `holds_refresh` after it is placed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use des_storage::DesStore;
use tokio::sync::Mutex;

use super::state::PendingTomb;
use crate::error::Result;
use crate::holds::HoldSet;

/// The tombstones of `pending` no hold covers: those a rewrite may apply
/// (a held one stays pending, unmarked).
pub(super) fn unheld(pending: &[PendingTomb], holds: &HoldSet) -> Vec<PendingTomb> {
    pending
        .iter()
        .filter(|p| holds.holding(&p.uid, p.date).is_none())
        .cloned()
        .collect()
}

pub(super) struct HoldsView {
    refresh: Duration,
    /// When the holds in hand were asked for, and what came back.
    last: Mutex<(Instant, Arc<HoldSet>)>,
}

impl HoldsView {
    /// Reads the holds now; returns the view and what it read.
    pub(super) async fn load(store: &DesStore, refresh: Duration) -> Result<(Self, Arc<HoldSet>)> {
        let asked = Instant::now();
        let holds = Arc::new(HoldSet::load(store).await?);
        let view = Self {
            refresh,
            last: Mutex::new((asked, holds.clone())),
        };
        Ok((view, holds))
    }

    /// The holds, read again if the last read was asked for `refresh` ago
    /// or more (always, with a zero refresh).
    pub(super) async fn current(&self, store: &DesStore) -> Result<Arc<HoldSet>> {
        let mut last = self.last.lock().await;
        if last.0.elapsed() >= self.refresh {
            // Timed from the request: a hold placed while the listing was
            // under way may be missing from it.
            let asked = Instant::now();
            *last = (asked, Arc::new(HoldSet::load(store).await?));
        }
        Ok(last.1.clone())
    }
}
