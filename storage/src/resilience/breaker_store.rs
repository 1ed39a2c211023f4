//! [`BreakerStore`]: an object store behind a [`CircuitBreaker`].
//!
//! Sits outside [`super::RetryStore`], so one logical request (all its
//! retries) is one outcome for the breaker, and an open breaker spends no
//! retries at all.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::breaker::CircuitBreaker;
use crate::error::Result;
use crate::object::{
    GetOptions, GetResult, ListPage, ObjectMeta, ObjectStore, ObjectWriter, PutOptions, PutResult,
};

#[derive(Debug)]
pub struct BreakerStore<S: ?Sized + ObjectStore = dyn ObjectStore> {
    inner: Arc<S>,
    breaker: Arc<CircuitBreaker>,
}

impl<S: ?Sized + ObjectStore> BreakerStore<S> {
    pub fn new(inner: Arc<S>, breaker: Arc<CircuitBreaker>) -> Self {
        Self { inner, breaker }
    }

    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    /// The call is only made (the future only created) once admitted, so an
    /// open breaker never touches the inner store.
    async fn guarded<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let permit = self.breaker.acquire()?;
        let result = call().await;
        permit.record(self.breaker.health(&result));
        result
    }
}

#[async_trait]
impl<S: ?Sized + ObjectStore> ObjectStore for BreakerStore<S> {
    crate::forward_methods!(inner => describe, capabilities);

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        self.guarded(|| self.inner.get(key, opts)).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.guarded(|| self.inner.head(key)).await
    }

    async fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<PutResult> {
        self.guarded(|| self.inner.put(key, data, opts)).await
    }

    async fn put_writer(&self, key: &str, opts: PutOptions) -> Result<Box<dyn ObjectWriter>> {
        let inner = self.guarded(|| self.inner.put_writer(key, opts)).await?;
        Ok(Box::new(BreakerWriter {
            inner,
            breaker: Arc::clone(&self.breaker),
        }))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.guarded(|| self.inner.delete(key)).await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<ListPage> {
        self.guarded(|| self.inner.list(prefix, start_after)).await
    }

    async fn sweep_leftovers(&self, older_than: Duration) -> Result<u64> {
        self.guarded(|| self.inner.sweep_leftovers(older_than))
            .await
    }
}

/// A streaming upload outlives any sensible probe slot, so it holds no
/// permit; its chunk and completion failures still count while closed
/// (a backend that fails every multipart part is unhealthy).
struct BreakerWriter {
    inner: Box<dyn ObjectWriter>,
    breaker: Arc<CircuitBreaker>,
}

#[async_trait]
impl ObjectWriter for BreakerWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let result = self.inner.write(chunk).await;
        if result.is_err() {
            self.breaker.observe(self.breaker.health(&result));
        }
        result
    }

    async fn finish(self: Box<Self>) -> Result<PutResult> {
        let result = self.inner.finish().await;
        self.breaker.observe(self.breaker.health(&result));
        result
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.inner.abort().await
    }
}
