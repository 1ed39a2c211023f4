//! The deletion benchmark's object-store wrapper: counts every request by
//! kind (and the bytes written).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use des_storage::{
    GetOptions, GetResult, ListPage, ObjectMeta, ObjectStore, ObjectWriter, PutOptions, PutResult,
    Result,
};
use serde::Serialize;

#[derive(Debug, Default)]
struct Counters {
    put: AtomicU64,
    put_writer: AtomicU64,
    delete: AtomicU64,
    get: AtomicU64,
    head: AtomicU64,
    list: AtomicU64,
    bytes_written: AtomicU64,
    /// Requests by "operation key-class" (see [`key_class`]).
    by_class: Mutex<BTreeMap<String, u64>>,
}

/// Where a key belongs, for the breakdown: a shard (`<date>/shard`), a
/// store-wide key of `_des/` itself (`_des/repack.lease`), or the first two
/// segments of a deeper key (`_des/checked`, `_tombstones/segments`), a
/// segment starting with a digit spelled `<n>`.
pub fn key_class(key: &str) -> String {
    if key.is_empty() {
        return "(root)".into();
    }
    if key.starts_with(|c: char| c.is_ascii_digit()) {
        return "<date>/shard".into();
    }
    let parts: Vec<&str> = key.split('/').collect();
    let first = parts.first().copied().unwrap_or_default();
    let second = parts.get(1).copied().unwrap_or_default();
    let second = if second.starts_with(|c: char| c.is_ascii_digit()) {
        "<n>"
    } else {
        second
    };
    if second.is_empty() || (parts.len() == 2 && first != "_des") {
        first.to_string()
    } else {
        format!("{first}/{second}")
    }
}

#[cfg(test)]
mod tests {
    use super::key_class;

    #[test]
    fn key_classes() {
        assert_eq!(key_class("20261206/0.des"), "<date>/shard");
        assert_eq!(key_class("_des/repack.lease"), "_des/repack.lease");
        assert_eq!(key_class("_des/checked/20261206/0.json"), "_des/checked");
        assert_eq!(key_class("_tombstones/"), "_tombstones");
        assert_eq!(key_class("_tombstones/20261206T1-x.json"), "_tombstones");
        assert_eq!(
            key_class("_tombstones/segments/a.seg"),
            "_tombstones/segments"
        );
        assert_eq!(
            key_class("_tombstones_applied/20261206/0.des/1.json"),
            "_tombstones_applied/<n>"
        );
    }
}

/// Requests counted up to one moment (or between two, see [`Counts::since`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub put: u64,
    pub put_writer: u64,
    pub delete: u64,
    /// Every `get`, ranged or not.
    pub get: u64,
    pub head: u64,
    /// LIST pages (at most 1,000 keys each).
    pub list: u64,
    /// Body bytes of `put`s and of streamed writes.
    pub bytes_written: u64,
}

impl Counts {
    /// Objects written: `put`s and streamed writes.
    pub fn objects_written(&self) -> u64 {
        self.put + self.put_writer
    }

    /// Every request that reached the store.
    pub fn requests(&self) -> u64 {
        self.put + self.put_writer + self.delete + self.get + self.head + self.list
    }

    /// What happened between `before` and `self`.
    pub fn since(&self, before: &Counts) -> Counts {
        Counts {
            put: self.put - before.put,
            put_writer: self.put_writer - before.put_writer,
            delete: self.delete - before.delete,
            get: self.get - before.get,
            head: self.head - before.head,
            list: self.list - before.list,
            bytes_written: self.bytes_written - before.bytes_written,
        }
    }

    pub fn add(&mut self, o: &Counts) {
        self.put += o.put;
        self.put_writer += o.put_writer;
        self.delete += o.delete;
        self.get += o.get;
        self.head += o.head;
        self.list += o.list;
        self.bytes_written += o.bytes_written;
    }
}

/// Delegates every call to `inner` and counts it.
#[derive(Debug, Clone)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    counters: Arc<Counters>,
    /// Print every request (`REQ <op> <key>`) on stderr.
    trace: bool,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            counters: Arc::default(),
            trace: false,
        }
    }

    /// Also prints every request on stderr.
    pub fn traced(mut self, on: bool) -> Self {
        self.trace = on;
        self
    }

    /// Requests so far by "operation key-class".
    pub fn by_class(&self) -> BTreeMap<String, u64> {
        self.counters
            .by_class
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    fn note(&self, op: &str, key: &str) {
        // For finding where requests go: every request, in order, on stderr.
        if self.trace {
            eprintln!("REQ {op} {key}");
        }
        if let Ok(mut m) = self.counters.by_class.lock() {
            *m.entry(format!("{op} {}", key_class(key))).or_default() += 1;
        }
    }

    pub fn counts(&self) -> Counts {
        let c = &self.counters;
        Counts {
            put: c.put.load(Ordering::Relaxed),
            put_writer: c.put_writer.load(Ordering::Relaxed),
            delete: c.delete.load(Ordering::Relaxed),
            get: c.get.load(Ordering::Relaxed),
            head: c.head.load(Ordering::Relaxed),
            list: c.list.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
        }
    }
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

#[async_trait]
impl ObjectStore for CountingStore {
    des_storage::forward_methods!(inner => describe, capabilities, sweep_leftovers);

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        bump(&self.counters.get, 1);
        self.note("GET", key);
        self.inner.get(key, opts).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        bump(&self.counters.head, 1);
        self.note("HEAD", key);
        self.inner.head(key).await
    }

    async fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<PutResult> {
        bump(&self.counters.put, 1);
        self.note("PUT", key);
        bump(&self.counters.bytes_written, data.len() as u64);
        self.inner.put(key, data, opts).await
    }

    async fn put_writer(&self, key: &str, opts: PutOptions) -> Result<Box<dyn ObjectWriter>> {
        bump(&self.counters.put_writer, 1);
        self.note("PUT_WRITER", key);
        let inner = self.inner.put_writer(key, opts).await?;
        Ok(Box::new(CountingWriter {
            inner,
            counters: Arc::clone(&self.counters),
        }))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        bump(&self.counters.delete, 1);
        self.note("DELETE", key);
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<ListPage> {
        bump(&self.counters.list, 1);
        self.note("LIST", prefix);
        self.inner.list(prefix, start_after).await
    }
}

/// Counts the bytes of a streamed write as they are handed over.
struct CountingWriter {
    inner: Box<dyn ObjectWriter>,
    counters: Arc<Counters>,
}

#[async_trait]
impl ObjectWriter for CountingWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        bump(&self.counters.bytes_written, chunk.len() as u64);
        self.inner.write(chunk).await
    }

    async fn finish(self: Box<Self>) -> Result<PutResult> {
        self.inner.finish().await
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.inner.abort().await
    }
}
