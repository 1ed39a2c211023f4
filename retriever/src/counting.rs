//! An [`ObjectStore`] wrapper that counts requests. The request budget of a
//! lookup (cold 2, warm 1) is a property of the service worth asserting, and
//! the same counters can feed metrics later.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use des_storage::{
    ByteRange, GetOptions, GetResult, ListPage, ObjectMeta, ObjectStore, ObjectWriter, PutOptions,
    PutResult, Result,
};
use futures::StreamExt;

#[derive(Debug, Default)]
struct Counters {
    get: AtomicU64,
    suffix_get: AtomicU64,
    head: AtomicU64,
    list: AtomicU64,
    write: AtomicU64,
    bytes: AtomicU64,
}

/// Request counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every `get`, ranged or not, including those that failed.
    pub get: u64,
    /// `get`s for a suffix: with the default layout, one per index load.
    pub suffix_get: u64,
    pub head: u64,
    pub list: u64,
    /// `put`, `put_writer` and `delete`; the retriever should never make one.
    pub write: u64,
    /// Body bytes delivered by `get`s so far (as they are pulled, so a
    /// read stopped early counts only what it took).
    pub bytes: u64,
}

impl Counts {
    /// Requests that reached storage.
    pub fn total(&self) -> u64 {
        self.get + self.head + self.list + self.write
    }
}

#[derive(Debug, Clone)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    counters: Arc<Counters>,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            counters: Arc::default(),
        }
    }

    pub fn counts(&self) -> Counts {
        let c = &self.counters;
        Counts {
            get: c.get.load(Ordering::Relaxed),
            suffix_get: c.suffix_get.load(Ordering::Relaxed),
            head: c.head.load(Ordering::Relaxed),
            list: c.list.load(Ordering::Relaxed),
            write: c.write.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[async_trait]
impl ObjectStore for CountingStore {
    des_storage::forward_methods!(inner => describe, capabilities, sweep_leftovers);

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        bump(&self.counters.get);
        if matches!(opts.range, Some(ByteRange::Suffix(_))) {
            bump(&self.counters.suffix_get);
        }
        let mut got = self.inner.get(key, opts).await?;
        let counters = Arc::clone(&self.counters);
        got.body = got
            .body
            .inspect(move |chunk| {
                if let Ok(b) = chunk {
                    counters.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
            })
            .boxed();
        Ok(got)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        bump(&self.counters.head);
        self.inner.head(key).await
    }

    async fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<PutResult> {
        bump(&self.counters.write);
        self.inner.put(key, data, opts).await
    }

    async fn put_writer(&self, key: &str, opts: PutOptions) -> Result<Box<dyn ObjectWriter>> {
        bump(&self.counters.write);
        self.inner.put_writer(key, opts).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        bump(&self.counters.write);
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<ListPage> {
        bump(&self.counters.list);
        self.inner.list(prefix, start_after).await
    }
}
