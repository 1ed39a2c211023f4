//! Files expired by the store's retention rules, as this replica knows them.
//!
//! The rules (`des_storage::retention`) and the legal holds
//! (`des_storage::holds`) are read at start (failing start-up if they cannot
//! be: serving without them could hand out files that must be gone) and
//! re-read on every tombstone poll. Expiry is date arithmetic on the
//! request's own uid and UTC day, so answering 410 for an expired file costs
//! no storage request and no per-file record exists. A held file never
//! expires. Expired files are dropped from the hot payload cache when the
//! rules, the holds or the day change, so their bytes do not stay in memory
//! (requests check expiry before that cache, so none is ever served from it).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use arc_swap::ArcSwap;
use des_format::Timestamp;
use des_storage::DesStore;
use des_storage::holds::HoldSet;
use des_storage::retention::{self, Cutoffs, StoredRules};
use prometheus::{IntCounter, IntGauge};

use crate::hot::HotCache;
use crate::metrics::Metrics;

/// What one read of the rules and holds says, resolved for one UTC day.
#[derive(Debug)]
struct Snapshot {
    rules: Option<StoredRules>,
    holds: HoldSet,
    /// `rules` resolved for `day`.
    cutoffs: Option<Cutoffs>,
    /// Days since 1970-01-01 (UTC).
    day: i64,
}

impl Snapshot {
    fn new(rules: Option<StoredRules>, holds: HoldSet, day: i64) -> Self {
        let today = retention::date_of_day(day).unwrap_or(0);
        let cutoffs = rules.as_ref().map(|r| r.rules.cutoffs(today));
        Self {
            rules,
            holds,
            cutoffs,
            day,
        }
    }

    fn expiring(&self, uid: &str, date: u32) -> Option<Expired> {
        let rule = self.cutoffs.as_ref()?.expiring(uid, date)?;
        if self.holds.holding(uid, date).is_some() {
            return None;
        }
        let days = rule.max_age_days?;
        let on = retention::day_number(date)
            .and_then(|d| retention::date_of_day(d + i64::from(days) + 1))
            .unwrap_or(0);
        Some(Expired {
            uid_prefix: rule.uid_prefix.clone(),
            max_age_days: days,
            expired_on: on,
            rules_version: self.rules.as_ref().map_or(0, |r| r.version),
        })
    }

    /// What decides which cached files must go.
    fn sweep_key(&self) -> (u64, String, i64) {
        let version = self.rules.as_ref().map_or(0, |r| r.version);
        (version, self.holds.fingerprint(), self.day)
    }
}

/// Why a file is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub uid_prefix: String,
    pub max_age_days: u32,
    /// The first day (`YYYYMMDD`) it was expired on.
    pub expired_on: u32,
    pub rules_version: u64,
}

#[derive(Debug)]
pub struct Retention {
    store: DesStore,
    state: ArcSwap<Snapshot>,
    /// One poll at a time, so an older read never replaces a newer one.
    polling: tokio::sync::Mutex<()>,
    /// What the hot cache was last swept for.
    swept: std::sync::Mutex<(u64, String, i64)>,
    hot: Option<HotCache>,
    version: IntGauge,
    poll_failures: IntCounter,
    /// A pinned clock (micros), for tests; `i64::MIN`: the system clock.
    pinned: AtomicI64,
}

const SYSTEM_CLOCK: i64 = i64::MIN;

impl Retention {
    /// Reads the rules and the holds. Failing here fails start-up.
    /// `hot`: the payload cache to drop expired files from.
    pub async fn load(
        store: &DesStore,
        metrics: &Metrics,
        hot: Option<HotCache>,
    ) -> des_storage::Result<Self> {
        let rules = retention::load(store).await?;
        let holds = HoldSet::load(store).await?;
        let snap = Snapshot::new(rules, holds, retention::day_of(Timestamp::now()));
        let r = Self {
            store: store.clone(),
            swept: std::sync::Mutex::new(snap.sweep_key()),
            state: ArcSwap::from_pointee(snap),
            polling: tokio::sync::Mutex::new(()),
            hot,
            version: metrics.retention_rules_version.clone(),
            poll_failures: metrics.retention_poll_failures.clone(),
            pinned: AtomicI64::new(SYSTEM_CLOCK),
        };
        r.update_gauge();
        Ok(r)
    }

    fn now(&self) -> Timestamp {
        match self.pinned.load(Ordering::SeqCst) {
            SYSTEM_CLOCK => Timestamp::now(),
            us => Timestamp::from_micros(us),
        }
    }

    /// Evaluates expiry as of `now` instead of the system clock (`None`:
    /// back to the system clock). For tests of day boundaries.
    pub fn pin_clock(&self, now: Option<Timestamp>) {
        let us = now.map_or(SYSTEM_CLOCK, |t| t.micros().max(SYSTEM_CLOCK + 1));
        self.pinned.store(us, Ordering::SeqCst);
    }

    fn update_gauge(&self) {
        let v = self.state.load().rules.as_ref().map_or(0, |r| r.version);
        self.version.set(i64::try_from(v).unwrap_or(i64::MAX));
    }

    /// The current snapshot, resolved for today (re-resolved once when the
    /// UTC day changes).
    fn snapshot(&self) -> Arc<Snapshot> {
        let day = retention::day_of(self.now());
        let snap = self.state.load_full();
        if snap.day == day {
            return snap;
        }
        // `rcu`: a poll storing newer rules meanwhile is not overwritten.
        self.state.rcu(|cur| {
            if cur.day == day {
                Arc::clone(cur)
            } else {
                Arc::new(Snapshot::new(cur.rules.clone(), cur.holds.clone(), day))
            }
        });
        self.state.load_full()
    }

    /// The rule that expired `(uid, the UTC day of created_at)` today, if
    /// one did and no legal hold keeps the file. No I/O.
    pub fn expired(&self, uid: &str, created_at: Timestamp) -> Option<Expired> {
        // Without rules, not even the clock is read.
        self.state.load().cutoffs.as_ref()?;
        let snap = self.snapshot();
        let date = retention::date_of_day(retention::day_of(created_at))?;
        snap.expiring(uid, date)
    }

    /// The rules version in force (0: none).
    pub fn rules_version(&self) -> u64 {
        self.state.load().rules.as_ref().map_or(0, |r| r.version)
    }

    /// Re-reads the rules and the holds; on failure keeps what is known.
    /// Returns whether the rules version changed. Storage is read without
    /// holding anything the request path takes.
    pub async fn poll(&self) -> des_storage::Result<bool> {
        let _one = self.polling.lock().await;
        let read = async {
            let rules = retention::load(&self.store).await?;
            let holds = HoldSet::load(&self.store).await?;
            Ok::<_, des_storage::Error>((rules, holds))
        };
        let (rules, holds) = read.await.inspect_err(|_| self.poll_failures.inc())?;
        let before = self.rules_version();
        let snap = Snapshot::new(rules, holds, retention::day_of(self.now()));
        self.state.store(Arc::new(snap));
        self.update_gauge();
        self.sweep_hot();
        Ok(self.rules_version() != before)
    }

    /// Drops expired files from the hot cache if the rules, the holds or
    /// the day changed since the last sweep (after the new state is
    /// visible to requests, as deletes invalidate after their tombstone is).
    fn sweep_hot(&self) {
        let Some(hot) = &self.hot else {
            return;
        };
        let snap = self.snapshot();
        let key = snap.sweep_key();
        {
            let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
            if *swept == key {
                return;
            }
            *swept = key;
        }
        if snap.cutoffs.is_some() {
            hot.drop_where(|uid, date| snap.expiring(uid, date).is_some());
        }
    }
}
