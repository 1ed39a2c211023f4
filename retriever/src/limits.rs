//! Request rate limits per client address and per API key (token buckets,
//! `governor`). Over the limit is 429 with the wait in Retry-After.
//!
//! The address is the TCP peer: behind a proxy every request shares the
//! proxy's address, so per-IP limits belong on the proxy there. We do not
//! trust `X-Forwarded-For`, which any client can set.
//!
//! An IPv6 client is keyed by its network prefix (/64 by default), not its
//! full address: a host is usually given a whole /64 and can pick any of its
//! 2^64 addresses, each of which would otherwise get a fresh bucket.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;

use governor::clock::{Clock, DefaultClock, FakeRelativeClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::config::{Rate, RateLimits};
use crate::error::ApiError;

/// Every this many checks, state identical to a fresh bucket is dropped, so
/// memory follows the clients active in the last few seconds rather than
/// every address ever seen.
const PRUNE_EVERY: u64 = 4096;

type Buckets<K, C> = RateLimiter<K, HashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The clock the buckets refill by: the system's, or one a test moves
/// ([`Limits::with_clock`]), so that refills are checked exactly.
enum Clocked<K: Hash + Eq + Clone> {
    System(Buckets<K, DefaultClock>),
    Manual(Buckets<K, FakeRelativeClock>, FakeRelativeClock),
}

struct Limiter<K: Hash + Eq + Clone> {
    what: &'static str,
    inner: Clocked<K>,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    fn new(what: &'static str, rate: Rate, clock: Option<&FakeRelativeClock>) -> Self {
        let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
        let inner = match clock {
            None => Clocked::System(RateLimiter::hashmap_with_clock(
                quota,
                DefaultClock::default(),
            )),
            Some(c) => {
                Clocked::Manual(RateLimiter::hashmap_with_clock(quota, c.clone()), c.clone())
            }
        };
        Self {
            what,
            inner,
            checks: AtomicU64::new(0),
        }
    }

    fn check(&self, key: &K) -> Result<(), ApiError> {
        let prune = self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1;
        let result = match &self.inner {
            Clocked::System(b) => take(b, &DefaultClock::default(), key, prune),
            Clocked::Manual(b, clock) => take(b, clock, key, prune),
        };
        result.map_err(|wait| {
            ApiError::throttled(format!("rate limit per {} exceeded", self.what), wait)
        })
    }
}

/// A token of `key`'s bucket, or how long until there is one.
fn take<K: Hash + Eq + Clone, C: Clock>(
    buckets: &Buckets<K, C>,
    clock: &C,
    key: &K,
    prune: bool,
) -> Result<(), Duration> {
    if prune {
        buckets.retain_recent();
        buckets.shrink_to_fit();
    }
    buckets
        .check_key(key)
        .map_err(|not_until| not_until.wait_time_from(clock.now()))
}

#[derive(Clone, Default)]
pub struct Limits {
    per_ip: Option<Arc<Limiter<IpAddr>>>,
    per_key: Option<Arc<Limiter<Arc<str>>>>,
    /// Bits of an IPv6 address that name a client.
    ipv6_prefix: u8,
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
    pub fn new(cfg: &RateLimits, ipv6_prefix: u8) -> Self {
        Self::clocked(cfg, ipv6_prefix, None)
    }

    /// Limits whose buckets refill only as `clock` is advanced: tests check
    /// refills exactly instead of racing the system clock.
    #[doc(hidden)]
    pub fn with_clock(cfg: &RateLimits, ipv6_prefix: u8, clock: &FakeRelativeClock) -> Self {
        Self::clocked(cfg, ipv6_prefix, Some(clock))
    }

    fn clocked(cfg: &RateLimits, ipv6_prefix: u8, clock: Option<&FakeRelativeClock>) -> Self {
        Self {
            ipv6_prefix,
            per_ip: cfg
                .per_ip
                .map(|r| Arc::new(Limiter::new("client address", r, clock))),
            per_key: cfg
                .per_key
                .map(|r| Arc::new(Limiter::new("API key", r, clock))),
        }
    }

    /// Before authentication, so guessing keys is limited too.
    pub fn check_ip(&self, ip: Option<IpAddr>) -> Result<(), ApiError> {
        match (&self.per_ip, ip) {
            (Some(l), Some(ip)) => l.check(&client_of(ip, self.ipv6_prefix)),
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

/// The key a client address is limited under: an IPv4 address (also when
/// written as IPv4-mapped IPv6) as is, an IPv6 one cut to `prefix` bits.
fn client_of(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u32::from(prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
        v4 => v4,
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
        let limits = Limits::with_clock(
            &RateLimits {
                per_key: rate(1, 2),
                per_ip: rate(1, 3),
            },
            64,
            &FakeRelativeClock::default(),
        );
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
    fn buckets_refill_by_the_clock() {
        let clock = FakeRelativeClock::default();
        let cfg = RateLimits {
            per_key: None,
            per_ip: rate(2, 1),
        };
        let limits = Limits::with_clock(&cfg, 64, &clock);
        let ip = Some(IpAddr::from([10, 0, 0, 1]));
        limits.check_ip(ip).unwrap();
        let e = limits.check_ip(ip).unwrap_err();
        assert_eq!(e.retry_after, Some(Duration::from_millis(500)));
        clock.advance(Duration::from_millis(499));
        assert!(limits.check_ip(ip).is_err(), "a token is 500 ms at 2/s");
        clock.advance(Duration::from_millis(1));
        limits.check_ip(ip).unwrap();
        assert!(limits.check_ip(ip).is_err(), "burst 1");
    }

    #[test]
    fn pruning_keeps_limits() {
        let limits = Limits::with_clock(
            &RateLimits {
                per_key: None,
                per_ip: rate(1, 1),
            },
            64,
            &FakeRelativeClock::default(),
        );
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

    #[test]
    fn ipv6_clients_are_limited_by_prefix() {
        let limits = Limits::with_clock(
            &RateLimits {
                per_key: None,
                per_ip: rate(1, 2),
            },
            64,
            &FakeRelativeClock::default(),
        );
        let v6 = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        limits.check_ip(v6("2001:db8:1:2::1")).unwrap();
        limits.check_ip(v6("2001:db8:1:2:ffff:1:2:3")).unwrap();
        let e = limits.check_ip(v6("2001:db8:1:2:abcd::9")).unwrap_err();
        assert_eq!(
            e.kind,
            ErrorKind::Throttled,
            "a third address of the same /64"
        );
        limits.check_ip(v6("2001:db8:1:3::1")).unwrap();
        // IPv4-mapped addresses are their IPv4 client, never a /64 of them.
        limits.check_ip(v6("::ffff:10.0.0.1")).unwrap();
        limits.check_ip(v6("::ffff:10.0.0.2")).unwrap();
        limits.check_ip(v6("::ffff:10.0.0.2")).unwrap();
        assert!(limits.check_ip(Some(IpAddr::from([10, 0, 0, 2]))).is_err());
    }

    #[test]
    fn prefix_lengths() {
        let ip: IpAddr = "2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff".parse().unwrap();
        assert_eq!(client_of(ip, 128), ip);
        assert_eq!(client_of(ip, 48).to_string(), "2001:db8:aaaa::");
        assert_eq!(client_of(ip, 64).to_string(), "2001:db8:aaaa:bbbb::");
        assert_eq!(client_of(ip, 1).to_string(), "::");
        let v4 = IpAddr::from([192, 0, 2, 7]);
        assert_eq!(client_of(v4, 64), v4);
    }
}
