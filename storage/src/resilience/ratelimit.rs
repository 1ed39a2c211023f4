//! Outgoing request rate limit (GCRA via `governor`): requests wait for a
//! permit instead of being sent and throttled by the backend, which would
//! cost a round trip and, on S3, prolong the throttling.
//!
//! Innermost in a zone's stack, so every attempt that reaches the backend —
//! retries and hedges included — takes a permit.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter as Gcra};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::durations;
use crate::error::{Error, Result};
use crate::object::{
    GetOptions, GetResult, ListPage, ObjectMeta, ObjectStore, ObjectWriter, PutOptions, PutResult,
};

/// Keys: `requests_per_second`, `burst` (default: one second's worth),
/// `max_wait_ms` (default 5000).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests_per_second: u32,
    #[serde(default)]
    pub burst: Option<u32>,
    /// Longest a request waits for a permit before failing with `Throttled`.
    #[serde(
        rename = "max_wait_ms",
        with = "durations::ms",
        default = "default_max_wait"
    )]
    pub max_wait: Duration,
}

fn default_max_wait() -> Duration {
    Duration::from_secs(5)
}

impl RateLimit {
    pub fn per_second(requests_per_second: u32) -> Self {
        Self {
            requests_per_second,
            burst: None,
            max_wait: default_max_wait(),
        }
    }

    fn quota(&self) -> Result<Quota> {
        let rate = NonZeroU32::new(self.requests_per_second).ok_or_else(|| {
            Error::Invalid("rate_limit: requests_per_second must be positive".into())
        })?;
        let burst = NonZeroU32::new(self.burst.unwrap_or(self.requests_per_second))
            .ok_or_else(|| Error::Invalid("rate_limit: burst must be positive".into()))?;
        Ok(Quota::per_second(rate).allow_burst(burst))
    }

    pub fn validate(&self) -> Result<()> {
        self.quota().map(|_| ())
    }
}

/// governor's clock on tokio's time, so limits follow paused test time and
/// waits use tokio timers rather than a separate timer thread.
#[derive(Debug, Clone)]
struct TokioClock {
    origin: Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A shareable limiter; one per backend location in a zone.
#[derive(Debug)]
pub struct RateLimiter {
    gcra: Gcra<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>,
    clock: TokioClock,
    max_wait: Duration,
    name: String,
}

impl RateLimiter {
    pub fn new(name: impl Into<String>, cfg: &RateLimit) -> Result<Self> {
        let clock = TokioClock {
            origin: Instant::now(),
        };
        Ok(Self {
            gcra: Gcra::direct_with_clock(cfg.quota()?, clock.clone()),
            clock,
            max_wait: cfg.max_wait,
            name: name.into(),
        })
    }

    /// Waits for a permit; fails with `Throttled` (and the wait it would
    /// have needed as `retry_after`) at once when that wait would exceed
    /// `max_wait`, rather than sleeping only to fail.
    pub async fn acquire(&self) -> Result<()> {
        let give_up = Instant::now() + self.max_wait;
        loop {
            let Err(not_until) = self.gcra.check() else {
                return Ok(());
            };
            let wait = not_until.wait_time_from(self.clock.now());
            if Instant::now() + wait > give_up {
                return Err(Error::Throttled {
                    msg: format!(
                        "{}: local rate limit, no permit within {:?}",
                        self.name, self.max_wait
                    ),
                    retry_after: Some(wait),
                });
            }
            // Another waiter may take the permit first; then wait again.
            tokio::time::sleep(wait).await;
        }
    }
}

#[derive(Debug)]
pub struct RateLimitedStore<S: ?Sized + ObjectStore = dyn ObjectStore> {
    inner: Arc<S>,
    limiter: Arc<RateLimiter>,
}

impl<S: ?Sized + ObjectStore> RateLimitedStore<S> {
    pub fn new(inner: Arc<S>, limiter: Arc<RateLimiter>) -> Self {
        Self { inner, limiter }
    }
}

#[async_trait]
impl<S: ?Sized + ObjectStore> ObjectStore for RateLimitedStore<S> {
    // No permit for a sweep: a local walk, once per run.
    crate::forward_methods!(inner => describe, capabilities, sweep_leftovers);

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        self.limiter.acquire().await?;
        self.inner.get(key, opts).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.limiter.acquire().await?;
        self.inner.head(key).await
    }

    async fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<PutResult> {
        self.limiter.acquire().await?;
        self.inner.put(key, data, opts).await
    }

    /// One permit for the upload as a whole: its parts are paced by the
    /// caller's own chunking, and a limit that stalled an upload half-way
    /// would only hold its memory longer.
    async fn put_writer(&self, key: &str, opts: PutOptions) -> Result<Box<dyn ObjectWriter>> {
        self.limiter.acquire().await?;
        self.inner.put_writer(key, opts).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.limiter.acquire().await?;
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<ListPage> {
        self.limiter.acquire().await?;
        self.inner.list(prefix, start_after).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn config_parses_and_validates() {
        let r: RateLimit = serde_json::from_str(r#"{"requests_per_second": 10}"#).unwrap();
        assert_eq!(r, RateLimit::per_second(10));
        assert!(r.validate().is_ok());
        let zero = RateLimit::per_second(0);
        assert_eq!(zero.validate().unwrap_err().kind(), ErrorKind::Invalid);
        let no_burst = RateLimit {
            burst: Some(0),
            ..RateLimit::per_second(5)
        };
        assert!(no_burst.validate().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_paced() {
        let cfg = RateLimit {
            burst: Some(3),
            ..RateLimit::per_second(10)
        };
        let limiter = RateLimiter::new("t", &cfg).unwrap();
        let start = Instant::now();
        for _ in 0..3 {
            limiter.acquire().await.unwrap();
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is free");
        for _ in 0..5 {
            limiter.acquire().await.unwrap();
        }
        let spent = start.elapsed();
        assert!(
            spent >= Duration::from_millis(500) && spent < Duration::from_millis(520),
            "{spent:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_wait() {
        let cfg = RateLimit {
            burst: Some(1),
            max_wait: Duration::from_millis(50),
            ..RateLimit::per_second(1)
        };
        let limiter = RateLimiter::new("t", &cfg).unwrap();
        limiter.acquire().await.unwrap();
        let start = Instant::now();
        let err = limiter.acquire().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Throttled);
        assert!(
            err.retry_after()
                .is_some_and(|d| d > Duration::from_millis(900))
        );
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "fails at once, does not sleep to fail"
        );
    }
}
