//! [`ScriptedStore`]: a [`MemoryStore`] that fails and stalls on cue, for
//! testing the resilience wrappers (and anything built on them) without a
//! network. Delays use `tokio::time::sleep`, so tests under paused time run
//! instantly and measure exact virtual durations.
//!
//! Each call takes the first queued [`Step`] meant for its operation (or for
//! any), waits `latency + step.delay`, then fails as the step says, or as
//! the store-wide `down` setting says, or else runs against the memory store.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::memory::MemoryStore;
use crate::object::{
    GetOptions, GetResult, ListPage, ObjectMeta, ObjectStore, ObjectWriter, PutOptions, PutResult,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Get,
    Head,
    Put,
    PutWriter,
    /// `ObjectWriter::write` on a writer from this store.
    Write,
    /// `ObjectWriter::finish` on a writer from this store.
    Finish,
    Delete,
    List,
}

/// One scripted call outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Only calls of this operation take the step (`None`: any call).
    pub op: Option<Op>,
    pub delay: Duration,
    pub fail: Option<ErrorKind>,
    /// For `Throttled`/`Unavailable` failures.
    pub retry_after: Option<Duration>,
}

impl Step {
    /// Succeed normally (consumes a slot in the script).
    pub fn pass() -> Self {
        Self {
            op: None,
            delay: Duration::ZERO,
            fail: None,
            retry_after: None,
        }
    }

    pub fn fail(kind: ErrorKind) -> Self {
        Self {
            fail: Some(kind),
            ..Self::pass()
        }
    }

    pub fn delay(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::pass()
        }
    }

    pub fn on(self, op: Op) -> Self {
        Self {
            op: Some(op),
            ..self
        }
    }

    pub fn after(self, delay: Duration) -> Self {
        Self { delay, ..self }
    }

    pub fn retry_after(self, after: Duration) -> Self {
        Self {
            retry_after: Some(after),
            ..self
        }
    }
}

/// A recorded call, timestamped when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub op: Op,
    pub key: String,
    pub at: Instant,
}

#[derive(Debug, Clone)]
pub struct ScriptedStore {
    memory: MemoryStore,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    name: String,
    script: Mutex<Script>,
    calls: Mutex<Vec<Call>>,
    aborts: AtomicU64,
}

#[derive(Debug, Default)]
struct Script {
    steps: VecDeque<Step>,
    latency: Duration,
    down: Option<ErrorKind>,
}

impl Default for ScriptedStore {
    fn default() -> Self {
        Self::new("scripted")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Test scaffolding: a panic elsewhere must not hide the script.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ScriptedStore {
    /// `name` shows in `describe()` (`scripted://name`) and error messages.
    pub fn new(name: &str) -> Self {
        Self::over(name, MemoryStore::new())
    }

    pub fn over(name: &str, memory: MemoryStore) -> Self {
        Self {
            memory,
            shared: Arc::new(Shared {
                name: name.into(),
                ..Shared::default()
            }),
        }
    }

    /// The data underneath, for seeding and checking without the script.
    pub fn memory(&self) -> &MemoryStore {
        &self.memory
    }

    pub fn push(&self, step: Step) {
        lock(&self.shared.script).steps.push_back(step);
    }

    /// The next `n` calls (of any operation) fail with `kind`.
    pub fn fail_next(&self, n: usize, kind: ErrorKind) {
        for _ in 0..n {
            self.push(Step::fail(kind));
        }
    }

    /// Added to every call.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.shared.script).latency = latency;
    }

    /// While set, every call without a failing step fails with this kind.
    pub fn set_down(&self, kind: Option<ErrorKind>) {
        lock(&self.shared.script).down = kind;
    }

    pub fn steps_left(&self) -> usize {
        lock(&self.shared.script).steps.len()
    }

    pub fn calls(&self, op: Op) -> usize {
        lock(&self.shared.calls)
            .iter()
            .filter(|c| c.op == op)
            .count()
    }

    pub fn total_calls(&self) -> usize {
        lock(&self.shared.calls).len()
    }

    pub fn call_log(&self) -> Vec<Call> {
        lock(&self.shared.calls).clone()
    }

    /// Start times of the calls of `op`, in order.
    pub fn call_times(&self, op: Op) -> Vec<Instant> {
        lock(&self.shared.calls)
            .iter()
            .filter(|c| c.op == op)
            .map(|c| c.at)
            .collect()
    }

    /// `ObjectWriter::abort` calls on writers from this store.
    pub fn aborts(&self) -> u64 {
        self.shared.aborts.load(Ordering::Relaxed)
    }

    async fn enter(&self, op: Op, key: &str) -> Result<()> {
        self.shared.enter(op, key).await
    }
}

impl Shared {
    async fn enter(&self, op: Op, key: &str) -> Result<()> {
        lock(&self.calls).push(Call {
            op,
            key: key.into(),
            at: Instant::now(),
        });
        let (step, latency, down) = {
            let mut script = lock(&self.script);
            let pos = script
                .steps
                .iter()
                .position(|s| s.op.is_none_or(|o| o == op));
            let step = pos.and_then(|i| script.steps.remove(i));
            (step, script.latency, script.down)
        };
        let step = step.unwrap_or_else(Step::pass);
        let wait = latency + step.delay;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        match step.fail.or(down) {
            Some(kind) => Err(self.error(kind, key, step.retry_after)),
            None => Ok(()),
        }
    }

    fn error(&self, kind: ErrorKind, key: &str, retry_after: Option<Duration>) -> Error {
        let msg = format!("scripted://{}: {key}: scripted {kind:?}", self.name);
        match kind {
            ErrorKind::NotFound => Error::not_found(key),
            ErrorKind::PreconditionFailed => Error::PreconditionFailed { key: key.into() },
            ErrorKind::Unauthorized => Error::Unauthorized(msg),
            ErrorKind::Throttled => Error::Throttled { msg, retry_after },
            ErrorKind::Unavailable => Error::Unavailable { msg, retry_after },
            ErrorKind::Timeout => Error::Timeout(msg),
            ErrorKind::Corrupt => Error::corrupt(key, "scripted"),
            ErrorKind::Invalid => Error::Invalid(msg),
            ErrorKind::Other => Error::other(msg, std::io::Error::other("scripted")),
        }
    }
}

#[async_trait]
impl ObjectStore for ScriptedStore {
    // Never scripted: the memory store underneath answers these.
    crate::forward_methods!(memory => capabilities, sweep_leftovers);

    fn describe(&self) -> String {
        format!("scripted://{}", self.shared.name)
    }

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        self.enter(Op::Get, key).await?;
        self.memory.get(key, opts).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.enter(Op::Head, key).await?;
        self.memory.head(key).await
    }

    async fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<PutResult> {
        self.enter(Op::Put, key).await?;
        self.memory.put(key, data, opts).await
    }

    async fn put_writer(&self, key: &str, opts: PutOptions) -> Result<Box<dyn ObjectWriter>> {
        self.enter(Op::PutWriter, key).await?;
        let inner = self.memory.put_writer(key, opts).await?;
        Ok(Box::new(ScriptedWriter {
            inner,
            shared: Arc::clone(&self.shared),
            key: key.into(),
        }))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.enter(Op::Delete, key).await?;
        self.memory.delete(key).await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<ListPage> {
        self.enter(Op::List, prefix).await?;
        self.memory.list(prefix, start_after).await
    }
}

struct ScriptedWriter {
    inner: Box<dyn ObjectWriter>,
    shared: Arc<Shared>,
    key: String,
}

#[async_trait]
impl ObjectWriter for ScriptedWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.shared.enter(Op::Write, &self.key).await?;
        self.inner.write(chunk).await
    }

    async fn finish(self: Box<Self>) -> Result<PutResult> {
        self.shared.enter(Op::Finish, &self.key).await?;
        self.inner.finish().await
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.shared.aborts.fetch_add(1, Ordering::Relaxed);
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::ObjectStoreExt;

    #[tokio::test(start_paused = true)]
    async fn follows_the_script() {
        let s = ScriptedStore::new("t");
        s.put("a", Bytes::from_static(b"x"), PutOptions::default())
            .await
            .unwrap();
        s.push(Step::fail(ErrorKind::Timeout).on(Op::Head));
        s.push(Step::delay(Duration::from_secs(3)));
        let start = Instant::now();
        // The head-only step is skipped by the get, which takes the delay.
        assert_eq!(
            s.get_range("a", crate::ByteRange::All).await.unwrap().1,
            "x"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(s.head("a").await.unwrap_err().kind(), ErrorKind::Timeout);
        assert!(s.head("a").await.is_ok());
        s.set_down(Some(ErrorKind::Unavailable));
        assert_eq!(
            s.delete("a").await.unwrap_err().kind(),
            ErrorKind::Unavailable
        );
        assert_eq!(
            (s.calls(Op::Head), s.calls(Op::Get), s.total_calls()),
            (2, 1, 5)
        );
        assert_eq!(s.steps_left(), 0);
    }
}
