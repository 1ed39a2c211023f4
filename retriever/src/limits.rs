//! Request rate limits per client address and per API key (token buckets,
//! `governor`). Over the limit is 429 with the wait in Retry-After.
//!
//! The address is the TCP peer: behind a proxy every request shares the
//! proxy's address, so per-IP limits belong on the proxy there. We do not
//! trust `X-Forwarded-For`, which any client can set.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::config::{Rate, RateLimits};
use crate::error::ApiError;

/// Every this many checks, state identical to a fresh bucket is dropped, so
/// memory follows the clients active in the last few seconds rather than
/// every address ever seen.
const PRUNE_EVERY: u64 = 4096;

struct Limiter<K: Hash + Eq + Clone> {
    what: &'static str,
    inner: DefaultKeyedRateLimiter<K>,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    fn new(what: &'static str, rate: Rate) -> Self {
        let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
        Self {
            what,
            inner: DefaultKeyedRateLimiter::keyed(quota),
            checks: AtomicU64::new(0),
        }
    }

    fn check(&self, key: &K) -> Result<(), ApiError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.inner.retain_recent();
            self.inner.shrink_to_fit();
        }
        self.inner.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::throttled(format!("rate limit per {} exceeded", self.what), wait)
        })
    }
}

#[derive(Clone, Default)]
pub struct Limits {
    per_ip: Option<Arc<Limiter<IpAddr>>>,
    per_key: Option<Arc<Limiter<Arc<str>>>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("per_ip", &self.per_ip.is_some())
            .field("per_key", &self.per_key.is_some())
            .finish()
    }
}

impl Limits {
    pub fn new(cfg: &RateLimits) -> Self {
        Self {
            per_ip: cfg
                .per_ip
                .map(|r| Arc::new(Limiter::new("client address", r))),
            per_key: cfg.per_key.map(|r| Arc::new(Limiter::new("API key", r))),
        }
    }

    /// Before authentication, so guessing keys is limited too.
    pub fn check_ip(&self, ip: Option<IpAddr>) -> Result<(), ApiError> {
        match (&self.per_ip, ip) {
            (Some(l), Some(ip)) => l.check(&ip),
            _ => Ok(()),
        }
    }

    /// `None` (auth off) is not limited per key.
    pub fn check_key(&self, name: Option<&str>) -> Result<(), ApiError> {
        match (&self.per_key, name) {
            (Some(l), Some(name)) => l.check(&Arc::from(name)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::error::ErrorKind;

    fn rate(per_second: u32, burst: u32) -> Option<Rate> {
        Some(Rate {
            per_second: NonZeroU32::new(per_second).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        })
    }

    #[test]
    fn burst_then_throttled_per_key_and_ip() {
        let limits = Limits::new(&RateLimits {
            per_key: rate(1, 2),
            per_ip: rate(1, 3),
        });
        let ip = Some(IpAddr::from([10, 0, 0, 1]));
        for _ in 0..3 {
            limits.check_ip(ip).unwrap();
        }
        let e = limits.check_ip(ip).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Throttled);
        limits.check_ip(Some(IpAddr::from([10, 0, 0, 2]))).unwrap();
        limits.check_key(Some("a")).unwrap();
        limits.check_key(Some("a")).unwrap();
        assert!(limits.check_key(Some("a")).is_err());
        limits.check_key(Some("b")).unwrap();
        limits.check_key(None).unwrap();
        Limits::default().check_ip(ip).unwrap();
    }

    #[test]
    fn pruning_keeps_limits() {
        let limits = Limits::new(&RateLimits {
            per_key: None,
            per_ip: rate(1, 1),
        });
        let hot = Some(IpAddr::from([10, 0, 0, 1]));
        limits.check_ip(hot).unwrap();
        for i in 0..PRUNE_EVERY {
            let ip = IpAddr::from(u32::try_from(i).unwrap().to_be_bytes());
            let _ = limits.check_ip(Some(ip));
        }
        assert!(
            limits.check_ip(hot).is_err(),
            "pruning forgot an active client"
        );
    }
}
