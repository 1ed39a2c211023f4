//! Circuit breaker: stop sending requests to a backend that keeps failing,
//! so callers fail over (or fail) at once instead of each waiting out its
//! retries, and the backend gets room to recover.
//!
//! Closed → Open after `consecutive_failures` failures in a row, or when the
//! failure rate over a sliding window reaches `failure_rate` (with at least
//! `min_requests` outcomes in the window). Open fails fast for `cool_down`,
//! then Half-open admits up to `half_open_probes` concurrent requests: the
//! first probe to succeed closes the breaker, the first to fail re-opens it.
//!
//! What counts as a failure: only `Unavailable` and `Timeout`, the errors
//! that say the backend (or the path to it) is unhealthy. `NotFound`,
//! `PreconditionFailed`, `Invalid`, `Unauthorized`, `Corrupt` and `Other`
//! are answers from a working backend and count as successes. `Throttled`
//! counts as a success unless `count_throttled` is set: throttling is the
//! backend working as designed (retries and the rate limiter deal with it),
//! and our own rate limiter reports `Throttled` too, which must never open
//! the breaker of a healthy backend.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::durations;
use crate::error::{Error, ErrorKind, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    pub enabled: bool,
    /// Failures in a row that open the breaker (0 = this trigger is off).
    pub consecutive_failures: u32,
    /// Failure share in the window that opens the breaker, in (0, 1].
    pub failure_rate: f64,
    #[serde(rename = "window_ms", with = "durations::ms")]
    pub window: Duration,
    /// Outcomes the window must hold before `failure_rate` is judged, so two
    /// failures out of three requests at night do not open it.
    pub min_requests: u32,
    #[serde(rename = "cool_down_ms", with = "durations::ms")]
    pub cool_down: Duration,
    /// Requests let through at once while half-open.
    pub half_open_probes: u32,
    pub count_throttled: bool,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(30),
            min_requests: 20,
            cool_down: Duration::from_secs(10),
            half_open_probes: 1,
            count_throttled: false,
        }
    }
}

impl BreakerConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Invalid(format!("breaker: {m}")));
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return bad("failure_rate must be in (0, 1]");
        }
        if self.window.is_zero() || self.cool_down.is_zero() {
            return bad("window_ms and cool_down_ms must be positive");
        }
        if self.half_open_probes == 0 {
            return bad("half_open_probes must be at least 1");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// Gauge value for metrics: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }
}

/// How one request reflects on the backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
}

/// Called on every state change (outside the breaker's lock); for logging.
pub type TransitionHook = Arc<dyn Fn(&str, BreakerState) + Send + Sync>;

pub struct CircuitBreaker {
    name: String,
    cfg: BreakerConfig,
    state: Mutex<State>,
    opened: AtomicU64,
    on_transition: Option<TransitionHook>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("state", &self.lock().phase)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32 },
}

struct State {
    phase: Phase,
    /// Bumped on every transition, so outcomes of requests admitted under an
    /// earlier phase (still in flight when it changed) are ignored.
    generation: u64,
    consecutive: u32,
    window: Window,
}

impl CircuitBreaker {
    pub fn new(name: impl Into<String>, cfg: BreakerConfig) -> Self {
        let window = Window::new(cfg.window);
        Self {
            name: name.into(),
            cfg,
            state: Mutex::new(State {
                phase: Phase::Closed,
                generation: 0,
                consecutive: 0,
                window,
            }),
            opened: AtomicU64::new(0),
            on_transition: None,
        }
    }

    pub fn on_transition(mut self, hook: TransitionHook) -> Self {
        self.on_transition = Some(hook);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// The current state; an open breaker whose cool-down is over reads as
    /// half-open (the next request is a probe).
    pub fn state(&self) -> BreakerState {
        let mut st = self.lock();
        let changed = self.expire_open(&mut st);
        let state = st.phase.public();
        drop(st);
        self.notify(changed);
        state
    }

    /// 0 closed, 1 half-open, 2 open.
    pub fn gauge(&self) -> u8 {
        self.state().gauge()
    }

    /// Times the breaker has opened (including re-opens from half-open).
    pub fn times_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Admits one request, or fails fast with `Unavailable` (carrying the
    /// remaining cool-down as `retry_after` while open).
    pub fn acquire(self: &Arc<Self>) -> Result<BreakerPermit> {
        let permit = |generation, probe, settled| BreakerPermit {
            breaker: Arc::clone(self),
            generation,
            probe,
            settled,
        };
        if !self.cfg.enabled {
            return Ok(permit(0, false, true));
        }
        let mut st = self.lock();
        let changed = self.expire_open(&mut st);
        let generation = st.generation;
        let admitted = match &mut st.phase {
            Phase::Closed => Ok(permit(generation, false, false)),
            Phase::Open { until } => Err(Error::Unavailable {
                msg: format!("circuit breaker {} is open", self.name),
                retry_after: Some(until.saturating_duration_since(Instant::now())),
            }),
            Phase::HalfOpen { in_flight } if *in_flight < self.cfg.half_open_probes => {
                *in_flight += 1;
                Ok(permit(generation, true, false))
            }
            Phase::HalfOpen { .. } => Err(Error::Unavailable {
                msg: format!(
                    "circuit breaker {} is half-open and its probes are busy",
                    self.name
                ),
                retry_after: None,
            }),
        };
        drop(st);
        self.notify(changed);
        admitted
    }

    /// How a result reflects on the backend's health (see the module docs).
    pub fn health<T>(&self, result: &Result<T>) -> Health {
        match result.as_ref().map_err(Error::kind) {
            Err(ErrorKind::Unavailable | ErrorKind::Timeout) => Health::Unhealthy,
            Err(ErrorKind::Throttled) if self.cfg.count_throttled => Health::Unhealthy,
            _ => Health::Healthy,
        }
    }

    /// Counts an outcome that was not admitted through a permit (the body of
    /// a streaming upload). Only a closed breaker listens: probes decide the
    /// other phases.
    pub fn observe(&self, health: Health) {
        let generation = self.lock().generation;
        self.settle(generation, false, Some(health));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn settle(&self, generation: u64, probe: bool, outcome: Option<Health>) {
        let mut st = self.lock();
        if st.generation != generation {
            return;
        }
        let changed = match (&mut st.phase, outcome) {
            (Phase::HalfOpen { in_flight }, outcome) => {
                if probe {
                    *in_flight = in_flight.saturating_sub(1);
                }
                match outcome {
                    Some(Health::Healthy) => Some(self.transition(&mut st, Phase::Closed)),
                    Some(Health::Unhealthy) => Some(self.open(&mut st)),
                    // A probe that was cancelled says nothing; free its slot.
                    None => None,
                }
            }
            (Phase::Closed, Some(health)) => {
                let failed = health == Health::Unhealthy;
                st.consecutive = if failed { st.consecutive + 1 } else { 0 };
                st.window.record(Instant::now(), failed);
                self.should_trip(&st).then(|| self.open(&mut st))
            }
            _ => None,
        };
        drop(st);
        self.notify(changed);
    }

    fn should_trip(&self, st: &State) -> bool {
        let n = self.cfg.consecutive_failures;
        if n > 0 && st.consecutive >= n {
            return true;
        }
        let (total, failed) = st.window.totals();
        total > 0
            && total >= self.cfg.min_requests
            && f64::from(failed) / f64::from(total) >= self.cfg.failure_rate
    }

    fn open(&self, st: &mut State) -> BreakerState {
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.transition(
            st,
            Phase::Open {
                until: Instant::now() + self.cfg.cool_down,
            },
        )
    }

    fn transition(&self, st: &mut State, phase: Phase) -> BreakerState {
        st.generation += 1;
        st.consecutive = 0;
        st.window.clear();
        st.phase = phase;
        st.phase.public()
    }

    fn expire_open(&self, st: &mut State) -> Option<BreakerState> {
        match st.phase {
            Phase::Open { until } if Instant::now() >= until => {
                Some(self.transition(st, Phase::HalfOpen { in_flight: 0 }))
            }
            _ => None,
        }
    }

    fn notify(&self, changed: Option<BreakerState>) {
        if let (Some(state), Some(hook)) = (changed, &self.on_transition) {
            hook(&self.name, state);
        }
    }
}

impl Phase {
    fn public(&self) -> BreakerState {
        match self {
            Self::Closed => BreakerState::Closed,
            Self::Open { .. } => BreakerState::Open,
            Self::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// One admitted request. Record its outcome with [`BreakerPermit::record`];
/// dropping it unrecorded (the request was cancelled) counts as nothing but
/// frees a half-open probe slot.
#[must_use = "record the request's outcome"]
pub struct BreakerPermit {
    breaker: Arc<CircuitBreaker>,
    generation: u64,
    probe: bool,
    settled: bool,
}

impl BreakerPermit {
    pub fn record(mut self, health: Health) {
        if !self.settled {
            self.settled = true;
            self.breaker
                .settle(self.generation, self.probe, Some(health));
        }
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.settle(self.generation, self.probe, None);
        }
    }
}

/// Outcome counts over the last `window`, in ten buckets so memory stays
/// fixed whatever the request rate.
struct Window {
    span: Duration,
    bucket: Duration,
    buckets: VecDeque<Bucket>,
}

struct Bucket {
    start: Instant,
    total: u32,
    failed: u32,
}

const BUCKETS: u32 = 10;

impl Window {
    fn new(span: Duration) -> Self {
        Self {
            span,
            bucket: (span / BUCKETS).max(Duration::from_millis(1)),
            buckets: VecDeque::new(),
        }
    }

    fn record(&mut self, now: Instant, failed: bool) {
        while self
            .buckets
            .front()
            .is_some_and(|b| b.start + self.span <= now)
        {
            self.buckets.pop_front();
        }
        let current = match self.buckets.back_mut() {
            Some(b) if now < b.start + self.bucket => b,
            _ => {
                self.buckets.push_back(Bucket {
                    start: now,
                    total: 0,
                    failed: 0,
                });
                let Some(b) = self.buckets.back_mut() else {
                    return;
                };
                b
            }
        };
        current.total = current.total.saturating_add(1);
        current.failed = current.failed.saturating_add(u32::from(failed));
    }

    fn totals(&self) -> (u32, u32) {
        self.buckets
            .iter()
            .fold((0, 0), |(t, f), b| (t + b.total, f + b.failed))
    }

    fn clear(&mut self) {
        self.buckets.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(cfg: BreakerConfig) -> Arc<CircuitBreaker> {
        Arc::new(CircuitBreaker::new("t", cfg))
    }

    fn outcome(b: &Arc<CircuitBreaker>, h: Health) {
        b.acquire().unwrap().record(h);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_outcomes_are_ignored() {
        let b = breaker(BreakerConfig {
            consecutive_failures: 1,
            ..BreakerConfig::default()
        });
        let early = b.acquire().unwrap();
        outcome(&b, Health::Unhealthy);
        assert_eq!(b.state(), BreakerState::Open);
        // Admitted while closed, finished while open: must not close it.
        early.record(Health::Healthy);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_probe_frees_its_slot() {
        let b = breaker(BreakerConfig {
            consecutive_failures: 1,
            ..BreakerConfig::default()
        });
        outcome(&b, Health::Unhealthy);
        tokio::time::advance(b.config().cool_down).await;
        let probe = b.acquire().unwrap();
        assert!(b.acquire().is_err(), "one probe at a time");
        drop(probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        outcome(&b, Health::Healthy);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn window_forgets_old_failures() {
        let cfg = BreakerConfig {
            consecutive_failures: 0,
            min_requests: 4,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            ..BreakerConfig::default()
        };
        let b = breaker(cfg);
        outcome(&b, Health::Unhealthy);
        outcome(&b, Health::Unhealthy);
        tokio::time::advance(Duration::from_secs(11)).await;
        outcome(&b, Health::Healthy);
        outcome(&b, Health::Healthy);
        outcome(&b, Health::Unhealthy);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "1 of 3 in the window, below min_requests"
        );
        outcome(&b, Health::Healthy);
        assert_eq!(b.state(), BreakerState::Closed, "1 of 4 is 25%");
        outcome(&b, Health::Unhealthy);
        assert_eq!(b.state(), BreakerState::Closed, "2 of 5 is 40%");
        outcome(&b, Health::Unhealthy);
        assert_eq!(b.state(), BreakerState::Open, "3 of 6 is 50%");
    }

    #[test]
    fn disabled_breaker_admits_everything() {
        let b = breaker(BreakerConfig {
            enabled: false,
            consecutive_failures: 1,
            ..BreakerConfig::default()
        });
        for _ in 0..10 {
            outcome(&b, Health::Unhealthy);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn classification() {
        let b = CircuitBreaker::new("t", BreakerConfig::default());
        let err = |e: Error| b.health::<()>(&Err(e));
        assert_eq!(err(Error::Timeout("x".into())), Health::Unhealthy);
        assert_eq!(
            err(Error::Unavailable {
                msg: "x".into(),
                retry_after: None
            }),
            Health::Unhealthy
        );
        assert_eq!(
            err(Error::Throttled {
                msg: "x".into(),
                retry_after: None
            }),
            Health::Healthy
        );
        assert_eq!(err(Error::not_found("k")), Health::Healthy);
        assert_eq!(
            err(Error::PreconditionFailed { key: "k".into() }),
            Health::Healthy
        );
        assert_eq!(err(Error::Invalid("x".into())), Health::Healthy);
        let strict = CircuitBreaker::new(
            "t",
            BreakerConfig {
                count_throttled: true,
                ..BreakerConfig::default()
            },
        );
        let e = Error::Throttled {
            msg: "x".into(),
            retry_after: None,
        };
        assert_eq!(strict.health::<()>(&Err(e)), Health::Unhealthy);
    }

    #[test]
    fn gauge_values() {
        assert_eq!(BreakerState::Closed.gauge(), 0);
        assert_eq!(BreakerState::HalfOpen.gauge(), 1);
        assert_eq!(BreakerState::Open.gauge(), 2);
    }
}
