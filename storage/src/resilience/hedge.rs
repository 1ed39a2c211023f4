//! Hedged reads: when a `get`/`head` has not answered after `hedge_after`,
//! send the same request again and take whichever answers first. Cuts the
//! tail latency of object stores, where a few requests in a thousand stall
//! on a slow node; reads are idempotent, so the duplicate is harmless.
//! Writes, deletes and lists pass straight through.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::{Either, select};

use crate::error::Result;
use crate::object::{GetOptions, GetResult, ObjectMeta, ObjectStore};

#[derive(Debug)]
pub struct HedgedStore<S: ?Sized + ObjectStore = dyn ObjectStore> {
    inner: Arc<S>,
    hedge_after: Option<Duration>,
    hedges: Arc<AtomicU64>,
    /// Hedges whose second request gave the answer, and those whose first
    /// did (counted when the call ends, so a hedge in flight is in neither).
    won: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
}

impl<S: ?Sized + ObjectStore> HedgedStore<S> {
    /// `hedge_after: None` disables hedging (a plain pass-through).
    pub fn new(inner: Arc<S>, hedge_after: Option<Duration>) -> Self {
        Self {
            inner,
            hedge_after,
            hedges: Arc::default(),
            won: Arc::default(),
            lost: Arc::default(),
        }
    }

    /// Counts hedges into a shared counter (one per zone, for metrics).
    pub fn with_counter(mut self, counter: Arc<AtomicU64>) -> Self {
        self.hedges = counter;
        self
    }

    /// Counts the hedges whose second request gave the answer (`won`) and
    /// those whose first did (`lost`): the share says whether `hedge_after`
    /// pays.
    pub fn with_outcome_counters(mut self, won: Arc<AtomicU64>, lost: Arc<AtomicU64>) -> Self {
        self.won = won;
        self.lost = lost;
        self
    }

    /// Hedges whose second request gave the answer.
    pub fn hedges_won(&self) -> u64 {
        self.won.load(Ordering::Relaxed)
    }

    /// Hedges whose first request gave the answer after all.
    pub fn hedges_lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Second requests started so far.
    pub fn hedges(&self) -> u64 {
        self.hedges.load(Ordering::Relaxed)
    }

    pub fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.hedges)
    }

    /// Both requests are polled in this task, so dropping the loser cancels
    /// it (its connection is dropped) without a spawned task to clean up.
    async fn hedged<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let Some(after) = self.hedge_after else {
            return call().await;
        };
        let first = call();
        tokio::pin!(first);
        tokio::select! {
            biased;
            r = &mut first => return r,
            () = tokio::time::sleep(after) => {}
        }
        self.hedges.fetch_add(1, Ordering::Relaxed);
        let second = call();
        tokio::pin!(second);
        let (result, other, second_first) = match select(first, second).await {
            Either::Left((r, other)) => (r, other, false),
            Either::Right((r, other)) => (r, other, true),
        };
        // A transient failure of one copy is no answer while the other may
        // still succeed. Anything else (data, NotFound, ...) is.
        let (answer, by_second) = match result {
            Err(e) if e.is_retryable() => (other.await, !second_first),
            answer => (answer, second_first),
        };
        let outcome = if by_second { &self.won } else { &self.lost };
        outcome.fetch_add(1, Ordering::Relaxed);
        answer
    }
}

#[async_trait]
impl<S: ?Sized + ObjectStore> ObjectStore for HedgedStore<S> {
    crate::forward_methods!(inner =>
        describe, capabilities, put, put_writer, delete, list, sweep_leftovers);

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        self.hedged(|| self.inner.get(key, opts.clone())).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.hedged(|| self.inner.head(key)).await
    }
}
