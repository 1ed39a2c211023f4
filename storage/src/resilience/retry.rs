//! Retries of transient failures (throttling, unavailability, time-outs)
//! with full-jitter exponential backoff, a per-attempt time-out and an
//! overall deadline.
//!
//! Only [`Error::is_retryable`] errors are retried: a `NotFound`,
//! `PreconditionFailed` or `Invalid` is an answer, and asking again would
//! only get the same answer later. Full jitter (a uniform draw in
//! `[0, cap]`) rather than a fixed schedule keeps many clients that failed
//! together from retrying together.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::durations;
use crate::error::{Error, Result};
use crate::object::{
    GetOptions, GetResult, ListPage, ObjectMeta, ObjectStore, PutOptions, PutResult,
};

/// How hard to try. Configuration keys are `max_attempts`, `base_delay_ms`,
/// `max_delay_ms`, `attempt_timeout_ms` and `deadline_ms` (0 = none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = never retry).
    pub max_attempts: u32,
    /// Backoff cap before the first retry; doubles per retry up to `max_delay`.
    #[serde(rename = "base_delay_ms", with = "durations::ms")]
    pub base_delay: Duration,
    #[serde(rename = "max_delay_ms", with = "durations::ms")]
    pub max_delay: Duration,
    /// Time allowed for one attempt to produce a response (for `get`, the
    /// response head, not the whole body).
    #[serde(rename = "attempt_timeout_ms", with = "durations::opt_ms")]
    pub attempt_timeout: Option<Duration>,
    /// Time allowed for all attempts and backoff sleeps together.
    #[serde(rename = "deadline_ms", with = "durations::opt_ms")]
    pub deadline: Option<Duration>,
}

impl Default for RetryPolicy {
    /// Four attempts within 30 s: enough to ride out a throttling burst or a
    /// failed-over endpoint, short enough that an HTTP client waiting on the
    /// retriever has not given up yet.
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(5),
            attempt_timeout: Some(Duration::from_secs(10)),
            deadline: Some(Duration::from_secs(30)),
        }
    }
}

impl RetryPolicy {
    /// A policy that makes exactly one attempt (no time-outs either).
    pub fn never() -> Self {
        Self {
            max_attempts: 1,
            attempt_timeout: None,
            deadline: None,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 {
            return Err(Error::Invalid(
                "retry: max_attempts must be at least 1".into(),
            ));
        }
        if self.base_delay > self.max_delay {
            return Err(Error::Invalid(format!(
                "retry: base_delay_ms ({}) exceeds max_delay_ms ({})",
                self.base_delay.as_millis(),
                self.max_delay.as_millis()
            )));
        }
        Ok(())
    }

    /// Upper bound of the sleep before retry number `retry` (0-based):
    /// `min(max_delay, base_delay * 2^retry)`.
    pub fn backoff_cap(&self, retry: u32) -> Duration {
        let factor = 2u32.checked_pow(retry).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// The sleep before retry number `retry` after `err`: uniform in
    /// `[0, backoff_cap(retry)]`, but never shorter than the server's
    /// `Retry-After` (a throttling server means it; retrying earlier only
    /// earns another 503 and counts against us).
    pub fn delay_for(&self, retry: u32, err: &Error, rng: &mut impl Rng) -> Duration {
        let cap = u64::try_from(self.backoff_cap(retry).as_nanos()).unwrap_or(u64::MAX);
        let jittered = Duration::from_nanos(rng.gen_range(0..=cap));
        err.retry_after()
            .map_or(jittered, |after| after.max(jittered))
    }
}

/// Called before each backoff sleep with the operation name, the error being
/// retried and the sleep chosen; for logging.
pub type RetryHook = Arc<dyn Fn(&'static str, &Error, Duration) + Send + Sync>;

/// Retries `get` (obtaining the response, not mid-body stream failures),
/// `head`, `list`, `delete` and `put` of bytes. `put_writer` is passed
/// through: a stream cannot be replayed, so callers retry whole shards.
///
/// A timed-out `put` may still have been applied; retrying it is harmless
/// for `Overwrite`, but a `Create`/`UpdateIfMatch` retry can then report
/// `PreconditionFailed` for a write that in fact succeeded. Callers using
/// conditional writes re-read to find out, as they must after any time-out.
pub struct RetryStore<S: ?Sized + ObjectStore = dyn ObjectStore> {
    inner: Arc<S>,
    policy: RetryPolicy,
    retries: Arc<AtomicU64>,
    on_retry: Option<RetryHook>,
}

impl<S: ?Sized + ObjectStore> std::fmt::Debug for RetryStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryStore")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

impl<S: ?Sized + ObjectStore> RetryStore<S> {
    pub fn new(inner: Arc<S>, policy: RetryPolicy) -> Self {
        Self {
            inner,
            policy,
            retries: Arc::default(),
            on_retry: None,
        }
    }

    /// Counts retries into a shared counter (one per zone, exported as
    /// `des_storage_retries_total{zone}`).
    pub fn with_counter(mut self, counter: Arc<AtomicU64>) -> Self {
        self.retries = counter;
        self
    }

    pub fn on_retry(mut self, hook: RetryHook) -> Self {
        self.on_retry = Some(hook);
        self
    }

    /// Retries made so far (not counting first attempts).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    pub fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.retries)
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Runs `call` under this store's policy: for requests the trait does
    /// not carry (e.g. [`crate::S3Store::list_timed`] on the inner store).
    pub async fn run<T, F, Fut>(&self, op: &'static str, key: &str, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T>> + Send,
        T: Send,
    {
        let deadline = self.policy.deadline.map(|d| Instant::now() + d);
        let mut retry = 0u32;
        loop {
            let err = match self.attempt(op, key, deadline, call()).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !err.is_retryable() || retry + 1 >= self.policy.max_attempts {
                return Err(err);
            }
            let delay = self.policy.delay_for(retry, &err, &mut rand::thread_rng());
            // Sleeping past the deadline would only delay the same failure.
            if deadline.is_some_and(|d| Instant::now() + delay >= d) {
                return Err(err);
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            if let Some(hook) = &self.on_retry {
                hook(op, &err, delay);
            }
            tokio::time::sleep(delay).await;
            retry += 1;
        }
    }

    /// One attempt, bounded by the attempt time-out and what is left of the
    /// deadline, whichever is sooner.
    async fn attempt<T>(
        &self,
        op: &'static str,
        key: &str,
        deadline: Option<Instant>,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let (limit, what) = match (self.policy.attempt_timeout, remaining) {
            (Some(a), Some(r)) if r < a => (r, "the retry deadline"),
            (Some(a), _) => (a, "the attempt time-out"),
            (None, Some(r)) => (r, "the retry deadline"),
            (None, None) => return fut.await,
        };
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(format!(
                "{}: {op} {key}: no response within {what} ({limit:?})",
                self.inner.describe()
            ))),
        }
    }
}

#[async_trait]
impl<S: ?Sized + ObjectStore> ObjectStore for RetryStore<S> {
    // Not retried: a stream cannot be replayed, and a sweep that failed
    // half-way is redone by the next run.
    crate::forward_methods!(inner => describe, capabilities, put_writer, sweep_leftovers);

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        self.run("get", key, || self.inner.get(key, opts.clone()))
            .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.run("head", key, || self.inner.head(key)).await
    }

    async fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<PutResult> {
        self.run("put", key, || {
            self.inner.put(key, data.clone(), opts.clone())
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.run("delete", key, || self.inner.delete(key)).await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<ListPage> {
        self.run("list", prefix, || self.inner.list(prefix, start_after))
            .await
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::error::ErrorKind;

    fn throttled(after: Option<Duration>) -> Error {
        Error::Throttled {
            msg: "slow down".into(),
            retry_after: after,
        }
    }

    #[test]
    fn backoff_cap_doubles_up_to_max() {
        let p = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        let caps: Vec<u128> = (0..6).map(|r| p.backoff_cap(r).as_millis()).collect();
        assert_eq!(caps, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            p.backoff_cap(200),
            Duration::from_millis(1000),
            "no overflow"
        );
    }

    #[test]
    fn jitter_spans_zero_to_cap() {
        let p = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(7);
        let err = Error::Timeout("t".into());
        let cap = p.backoff_cap(3);
        let draws: Vec<Duration> = (0..2000).map(|_| p.delay_for(3, &err, &mut rng)).collect();
        assert!(draws.iter().all(|d| *d <= cap));
        // Full jitter: both halves of the interval are used.
        assert!(draws.iter().any(|d| *d < cap / 4));
        assert!(draws.iter().any(|d| *d > cap * 3 / 4));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let p = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(1);
        let err = throttled(Some(Duration::from_secs(7)));
        for _ in 0..100 {
            assert_eq!(p.delay_for(0, &err, &mut rng), Duration::from_secs(7));
        }
        assert!(p.delay_for(0, &throttled(None), &mut rng) <= p.base_delay);
    }

    #[test]
    fn policy_parses_with_defaults_and_rejects_nonsense() {
        let p: RetryPolicy =
            serde_json::from_str(r#"{"max_attempts": 2, "deadline_ms": 0}"#).unwrap();
        assert_eq!(p.max_attempts, 2);
        assert_eq!(p.deadline, None);
        assert_eq!(p.base_delay, RetryPolicy::default().base_delay);
        assert!(serde_json::from_str::<RetryPolicy>(r#"{"max_atempts": 2}"#).is_err());
        let zero = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert_eq!(zero.validate().unwrap_err().kind(), ErrorKind::Invalid);
    }
}
