//! [`ReplicatedStore`]: one logical store over an ordered list of copies,
//! the primary first.
//!
//! Reads go to the primary and move down the list only when a copy cannot
//! answer (`Unavailable`, `Timeout`, `Throttled`, including an open
//! breaker's fast failure). A `NotFound` is an answer: by default it is
//! returned as is, since consulting every replica for every miss would
//! multiply the cost of the misses the retriever serves; with
//! `fallback_on_not_found` the replicas are asked too (for a primary being
//! re-filled). Other errors (`PreconditionFailed`, `Invalid`, ...) are
//! returned at once: another copy would give the same answer, or a wrong one.
//! `list` pages continue from `start_after`, so a failover between pages
//! resumes where the last page ended (on a copy that may lag the primary).
//! A `get` with `if_match` that fails over meets the replica's own ETag and
//! reports `PreconditionFailed`, which the store's index loader treats as
//! "the object changed": it re-reads, then continues on the replica.
//!
//! Writes go to every copy, the replicas first and the primary last. The
//! primary is the commit point: if it holds a write, every replica held it
//! too when it was made, and the primary alone decides conditional writes
//! (`Create`, `UpdateIfMatch`: ETags differ between copies, so replicas are
//! written with `Overwrite`, as last-writer-wins copies). The condition is
//! checked on the primary before the replicas are touched, and enforced
//! atomically by the primary's own write.
//!
//! Failure and crash semantics: a failed or interrupted write can leave
//! replicas ahead of the primary (never behind it, short of a replica being
//! restored from backup). Readers see the primary, so they see the old state
//! until the write is redone; re-running the packer does that, because the
//! packer decides what to (re)write from what the primary holds, and it
//! rewrites the object on every copy. A conditional write that loses its
//! race can likewise leave its version on the replicas; the packer's
//! conflict handling rebuilds on the winner and writes again, which heals
//! them.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::join_all;

use crate::error::{Error, ErrorKind, Result};
use crate::object::{
    GetOptions, GetResult, ListPage, ObjectMeta, ObjectStore, ObjectWriter, PutMode, PutOptions,
    PutResult,
};

#[derive(Debug)]
pub struct ReplicatedStore {
    primary: Arc<dyn ObjectStore>,
    replicas: Vec<Arc<dyn ObjectStore>>,
    fallback_on_not_found: bool,
    failovers: Arc<AtomicU64>,
}

impl ReplicatedStore {
    /// `stores[0]` is the primary. Errors on an empty list.
    pub fn new(stores: Vec<Arc<dyn ObjectStore>>) -> Result<Self> {
        let mut it = stores.into_iter();
        let primary = it
            .next()
            .ok_or_else(|| Error::Invalid("a replicated store needs a store".into()))?;
        Ok(Self {
            primary,
            replicas: it.collect(),
            fallback_on_not_found: false,
            failovers: Arc::default(),
        })
    }

    /// Also ask the replicas when a copy says `NotFound`.
    pub fn fallback_on_not_found(mut self, on: bool) -> Self {
        self.fallback_on_not_found = on;
        self
    }

    /// Counts failovers into a shared counter (one per zone, for metrics).
    pub fn with_counter(mut self, counter: Arc<AtomicU64>) -> Self {
        self.failovers = counter;
        self
    }

    /// Reads that moved on to a later copy, counted once per move.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    pub fn failover_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.failovers)
    }

    fn stores(&self) -> impl Iterator<Item = &Arc<dyn ObjectStore>> {
        std::iter::once(&self.primary).chain(&self.replicas)
    }

    async fn read<'a, T, F, Fut>(&'a self, call: F) -> Result<T>
    where
        F: Fn(&'a Arc<dyn ObjectStore>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut not_found = None;
        let mut last = None;
        for (i, store) in self.stores().enumerate() {
            if i > 0 {
                self.failovers.fetch_add(1, Ordering::Relaxed);
            }
            match call(store).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() => last = Some(e),
                Err(e) if e.kind() == ErrorKind::NotFound && self.fallback_on_not_found => {
                    not_found.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        // A copy that said "not found" answered; one that timed out did not.
        match not_found.or(last) {
            Some(e) => Err(e),
            None => Err(Error::Invalid("replicated store without stores".into())),
        }
    }
}

/// Fails like the primary's conditional write would, before any replica is
/// touched; the primary's own write re-checks atomically.
async fn precheck(primary: &dyn ObjectStore, key: &str, mode: &PutMode) -> Result<()> {
    if *mode == PutMode::Overwrite {
        return Ok(());
    }
    let current = match primary.head(key).await {
        Ok(meta) => Some(meta.etag),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let ok = match (mode, current) {
        (PutMode::Overwrite, _) | (PutMode::Create, None) => true,
        (PutMode::Create, Some(_)) | (PutMode::UpdateIfMatch(_), None) => false,
        (PutMode::UpdateIfMatch(want), Some(etag)) => etag.as_deref() == Some(want.as_str()),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::PreconditionFailed { key: key.into() })
    }
}

fn replica_opts() -> PutOptions {
    PutOptions {
        mode: PutMode::Overwrite,
    }
}

/// The first error, if any, after every future has finished.
fn first_error<T>(results: Vec<Result<T>>) -> Result<Vec<T>> {
    results.into_iter().collect()
}

async fn abort_all(writers: Vec<Box<dyn ObjectWriter>>) {
    // Best effort: the write has already failed, and an unfinished upload
    // leaves the old object in place whether or not its abort succeeds.
    join_all(writers.into_iter().map(|w| w.abort())).await;
}

#[async_trait]
impl ObjectStore for ReplicatedStore {
    fn describe(&self) -> String {
        let all: Vec<String> = self.stores().map(|s| s.describe()).collect();
        format!("replicated[{}]", all.join(", "))
    }

    // Conditional writes are decided by the primary alone.
    crate::forward_methods!(primary => capabilities);

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        self.read(|s| s.get(key, opts.clone())).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.read(|s| s.head(key)).await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<ListPage> {
        self.read(|s| s.list(prefix, start_after)).await
    }

    /// Every copy has its own leftovers.
    async fn sweep_leftovers(&self, older_than: Duration) -> Result<u64> {
        let swept = join_all(self.stores().map(|s| s.sweep_leftovers(older_than))).await;
        Ok(first_error(swept)?.into_iter().sum())
    }

    async fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<PutResult> {
        if self.replicas.is_empty() {
            return self.primary.put(key, data, opts).await;
        }
        precheck(self.primary.as_ref(), key, &opts.mode).await?;
        let replicas = self
            .replicas
            .iter()
            .map(|s| s.put(key, data.clone(), replica_opts()));
        first_error(join_all(replicas).await)?;
        self.primary.put(key, data, opts).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        first_error(join_all(self.replicas.iter().map(|s| s.delete(key))).await)?;
        self.primary.delete(key).await
    }

    async fn put_writer(&self, key: &str, opts: PutOptions) -> Result<Box<dyn ObjectWriter>> {
        if self.replicas.is_empty() {
            return self.primary.put_writer(key, opts).await;
        }
        let started = join_all(
            std::iter::once(self.primary.put_writer(key, opts.clone())).chain(
                self.replicas
                    .iter()
                    .map(|s| s.put_writer(key, replica_opts())),
            ),
        )
        .await;
        let mut writers = Vec::with_capacity(started.len());
        let mut failure = None;
        for r in started {
            match r {
                Ok(w) => writers.push(w),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            abort_all(writers).await;
            return Err(e);
        }
        Ok(Box::new(ReplicatedWriter {
            writers,
            primary: Arc::clone(&self.primary),
            key: key.into(),
            mode: opts.mode,
        }))
    }
}

/// Fans chunks out to one writer per copy; `writers[0]` is the primary's.
struct ReplicatedWriter {
    writers: Vec<Box<dyn ObjectWriter>>,
    primary: Arc<dyn ObjectStore>,
    key: String,
    mode: PutMode,
}

impl ReplicatedWriter {
    fn failed(&self) -> Error {
        Error::Invalid(format!("{}: replicated upload already failed", self.key))
    }
}

#[async_trait]
impl ObjectWriter for ReplicatedWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if self.writers.is_empty() {
            return Err(self.failed());
        }
        let results = join_all(self.writers.iter_mut().map(|w| w.write(chunk.clone()))).await;
        if let Err(e) = first_error(results) {
            abort_all(std::mem::take(&mut self.writers)).await;
            return Err(e);
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<PutResult> {
        if self.writers.is_empty() {
            return Err(self.failed());
        }
        let primary = self.writers.remove(0);
        let replicas = std::mem::take(&mut self.writers);
        if let Err(e) = precheck(self.primary.as_ref(), &self.key, &self.mode).await {
            abort_all(replicas).await;
            abort_all(vec![primary]).await;
            return Err(e);
        }
        if let Err(e) = first_error(join_all(replicas.into_iter().map(|w| w.finish())).await) {
            abort_all(vec![primary]).await;
            return Err(e);
        }
        primary.finish().await
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        let results = join_all(self.writers.into_iter().map(|w| w.abort())).await;
        first_error(results).map(|_| ())
    }
}
