//! The actors' half of every store operation.
//!
//! Each actor gets its own [`SimStore`]. An operation on it is *parked*: it
//! is handed to the [`Hub`] and waits until the engine grants it, runs it
//! against the one shared [`des_storage::MemoryStore`] and sends the answer
//! back. The engine only picks an operation when no live actor is *running*
//! (answered or started, and not yet parked again or finished), so exactly
//! one actor makes progress at a time and the order of everything that
//! touches the store is a function of the seed alone.
//!
//! That is only exact if an actor never has two operations parked at once:
//! the engine could not tell whether a second one is still coming. Libraries
//! do issue operations concurrently (the repacker marks tombstones applied
//! with `buffer_unordered(16)`, big-file candidates one by one),
//! so each actor's operations pass one at a time through a FIFO lock
//! (`turn`): the others wait on the lock, not on the engine, and the order in
//! which they queued is the order in which the library polled them, which is
//! deterministic. An actor is thus quiescent exactly when it has one
//! operation parked, with no real-time quiet period anywhere.

use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use des_storage::{
    ByteRange, Capabilities, Error, ErrorKind, GetOptions, GetResult, ListPage, ObjectMeta,
    ObjectStore, ObjectWriter, PutMode, PutOptions, PutResult, Result,
};
use tokio::sync::oneshot;

use crate::actors::Outcome;

pub type ActorId = usize;

/// One store operation, as parked by an actor.
#[derive(Debug, Clone)]
pub enum Op {
    Get {
        key: String,
        opts: GetOptions,
    },
    Head {
        key: String,
    },
    Put {
        key: String,
        data: Bytes,
        mode: PutMode,
    },
    PutWriter {
        key: String,
        mode: PutMode,
    },
    /// `ObjectWriter::write`: the chunk stays with the writer until `finish`.
    Write {
        key: String,
        len: usize,
    },
    /// `ObjectWriter::finish`: the whole object becomes visible at once.
    Finish {
        key: String,
        data: Bytes,
        mode: PutMode,
    },
    Abort {
        key: String,
    },
    Delete {
        key: String,
    },
    List {
        prefix: String,
        start_after: Option<String>,
    },
}

fn mode_text(mode: &PutMode) -> String {
    match mode {
        PutMode::Overwrite => "overwrite".into(),
        PutMode::Create => "create".into(),
        PutMode::UpdateIfMatch(e) => format!("if-match {e}"),
    }
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Self::Get { key, .. }
            | Self::Head { key }
            | Self::Put { key, .. }
            | Self::PutWriter { key, .. }
            | Self::Write { key, .. }
            | Self::Finish { key, .. }
            | Self::Abort { key }
            | Self::Delete { key } => key,
            Self::List { prefix, .. } => prefix,
        }
    }

    /// Whether running it can change the store.
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            Self::Put { .. } | Self::Finish { .. } | Self::Delete { .. }
        )
    }

    /// `get 20240517/3.des [suffix 65536]`, as in the trace.
    pub fn describe(&self) -> String {
        match self {
            Self::Get { key, opts } => {
                let range = match opts.range {
                    None | Some(ByteRange::All) => String::new(),
                    Some(ByteRange::Suffix(n)) => format!(" [last {n}]"),
                    Some(ByteRange::Offset(s)) => format!(" [{s}..]"),
                    Some(ByteRange::Bounded { start, end }) => format!(" [{start}..{end}]"),
                };
                let cond = opts
                    .if_match
                    .as_ref()
                    .map(|e| format!(" if-match {e}"))
                    .unwrap_or_default();
                format!("get {key}{range}{cond}")
            }
            Self::Head { key } => format!("head {key}"),
            Self::Put { key, data, mode } => {
                format!("put {key} ({} B, {})", data.len(), mode_text(mode))
            }
            Self::PutWriter { key, mode } => format!("put_writer {key} ({})", mode_text(mode)),
            Self::Write { key, len } => format!("write {key} ({len} B)"),
            Self::Finish { key, data, mode } => {
                format!("finish {key} ({} B, {})", data.len(), mode_text(mode))
            }
            Self::Abort { key } => format!("abort {key}"),
            Self::Delete { key } => format!("delete {key}"),
            Self::List {
                prefix,
                start_after,
            } => match start_after {
                Some(a) => format!("list {prefix:?} after {a}"),
                None => format!("list {prefix:?}"),
            },
        }
    }
}

/// The answer to an [`Op`].
#[derive(Debug)]
pub enum Reply {
    Get(ObjectMeta, Range<u64>, Bytes),
    Meta(ObjectMeta),
    Put(PutResult),
    Unit,
    List(ListPage),
    Err(Error),
}

impl Reply {
    fn into_err(self) -> Error {
        match self {
            Self::Err(e) => e,
            other => Error::Invalid(format!("sim: unexpected reply {other:?}")),
        }
    }

    /// `ok 123 B "m4"`, `err not_found`, as in the trace.
    pub fn describe(&self) -> String {
        let etag = |e: &Option<String>| e.clone().unwrap_or_default();
        match self {
            Self::Get(meta, range, _) => {
                format!("ok {} B {}", range.end - range.start, etag(&meta.etag))
            }
            Self::Meta(meta) => format!("ok {} B {}", meta.size, etag(&meta.etag)),
            Self::Put(p) => format!("ok {}", etag(&p.etag)),
            Self::Unit => "ok".into(),
            Self::List(page) => format!("ok {} keys", page.objects.len()),
            Self::Err(e) => format!("err {}", kind_name(e.kind())),
        }
    }

    /// `ok` or the error kind: what the determinism check compares.
    pub fn skeleton(&self) -> String {
        match self {
            Self::Err(e) => kind_name(e.kind()).into(),
            _ => "ok".into(),
        }
    }
}

pub fn kind_name(k: ErrorKind) -> &'static str {
    match k {
        ErrorKind::NotFound => "not_found",
        ErrorKind::PreconditionFailed => "precondition_failed",
        ErrorKind::Unauthorized => "unauthorized",
        ErrorKind::Throttled => "throttled",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Corrupt => "corrupt",
        ErrorKind::Invalid => "invalid",
        ErrorKind::Other => "other",
    }
}

/// What a crashed actor's operations get: not retryable, so it stops soon.
pub fn crashed_error() -> Error {
    Error::Invalid("simulated crash: this actor is dead".into())
}

/// An operation waiting for the engine.
#[derive(Debug)]
pub struct Parked {
    pub op: Op,
    seq: u64,
    tx: oneshot::Sender<Reply>,
}

impl Parked {
    /// Hands the answer to the actor (which may have been dropped: ignored).
    pub fn answer(self, reply: Reply) {
        let _ = self.tx.send(reply);
    }
}

#[derive(Debug)]
pub enum Status {
    Running,
    Waiting(Parked),
    Finished,
    /// Dead: none of its operations reach the store any more.
    Crashed,
}

#[derive(Debug)]
pub struct Slot {
    pub name: String,
    pub status: Status,
}

#[derive(Debug, Default)]
pub struct HubState {
    pub slots: Vec<Slot>,
    /// Outcomes of actors that finished (not crashed), in finishing order.
    pub done: Vec<(ActorId, Outcome)>,
    next_seq: u64,
    /// Parked operations whose future was dropped before the engine took
    /// them (they never ran); the engine reports them, since an actor
    /// running while it looked parked would make a schedule inexact.
    pub cancelled: Vec<(ActorId, String)>,
}

/// Where actors park operations and report their end; the engine waits on it.
#[derive(Debug, Default)]
pub struct Hub {
    state: Mutex<HubState>,
    cv: Condvar,
}

impl Hub {
    pub fn lock(&self) -> MutexGuard<'_, HubState> {
        // Every update is a single field assignment: a poisoned state is consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add_actor(&self, name: &str) -> ActorId {
        let mut st = self.lock();
        st.slots.push(Slot {
            name: name.to_string(),
            status: Status::Running,
        });
        st.slots.len() - 1
    }

    fn submit(&self, actor: ActorId, op: Op) -> std::result::Result<(u64, Receiver), Reply> {
        let mut st = self.lock();
        st.next_seq += 1;
        let seq = st.next_seq;
        let Some(slot) = st.slots.get_mut(actor) else {
            return Err(Reply::Err(Error::Invalid(format!("sim: no actor {actor}"))));
        };
        if matches!(slot.status, Status::Crashed) {
            return Err(Reply::Err(crashed_error()));
        }
        let (tx, rx) = oneshot::channel();
        slot.status = Status::Waiting(Parked { op, seq, tx });
        self.cv.notify_all();
        Ok((seq, rx))
    }

    /// The future of parked operation `seq` was dropped: if the engine has
    /// not taken it yet, it never runs and the actor counts as running.
    fn cancel(&self, actor: ActorId, seq: u64) {
        let mut st = self.lock();
        let Some(slot) = st.slots.get_mut(actor) else {
            return;
        };
        if let Status::Waiting(p) = &slot.status
            && p.seq == seq
        {
            let what = p.op.describe();
            slot.status = Status::Running;
            st.cancelled.push((actor, what));
        }
    }

    /// The actor's job returned. A crashed actor's outcome is discarded.
    pub fn finish(&self, actor: ActorId, outcome: Outcome) {
        let mut st = self.lock();
        let Some(slot) = st.slots.get_mut(actor) else {
            return;
        };
        if matches!(slot.status, Status::Crashed) {
            return;
        }
        slot.status = Status::Finished;
        st.done.push((actor, outcome));
        self.cv.notify_all();
    }

    /// Waits until no live actor is running. `Err` names the actors still
    /// running after `limit` (a hang: an actor blocked on something that is
    /// not a store operation).
    pub fn wait_quiescent(
        &self,
        limit: Duration,
    ) -> std::result::Result<MutexGuard<'_, HubState>, String> {
        let deadline = Instant::now() + limit;
        let mut st = self.lock();
        loop {
            let running: Vec<&str> = st
                .slots
                .iter()
                .filter(|s| matches!(s.status, Status::Running))
                .map(|s| s.name.as_str())
                .collect();
            if running.is_empty() {
                return Ok(st);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(running.join(", "));
            }
            st = self
                .cv
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

type Receiver = oneshot::Receiver<Reply>;

/// Takes a parked operation back if its future is dropped before it is answered.
struct ParkGuard<'a> {
    hub: &'a Hub,
    actor: ActorId,
    seq: u64,
    armed: bool,
}

impl Drop for ParkGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.hub.cancel(self.actor, self.seq);
        }
    }
}

struct Inner {
    hub: Arc<Hub>,
    actor: ActorId,
    garage: bool,
    /// One operation of this actor at a time, in the order they asked (FIFO).
    turn: tokio::sync::Mutex<()>,
}

/// An actor's handle on the store: every call is parked until the engine grants it.
#[derive(Clone)]
pub struct SimStore(Arc<Inner>);

impl std::fmt::Debug for SimStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimStore")
            .field("actor", &self.0.actor)
            .field("garage", &self.0.garage)
            .finish()
    }
}

impl SimStore {
    pub fn new(hub: Arc<Hub>, actor: ActorId, garage: bool) -> Self {
        Self(Arc::new(Inner {
            hub,
            actor,
            garage,
            turn: tokio::sync::Mutex::new(()),
        }))
    }

    async fn call(&self, op: Op) -> Reply {
        let _turn = self.0.turn.lock().await;
        let (seq, rx) = match self.0.hub.submit(self.0.actor, op) {
            Ok(parked) => parked,
            Err(reply) => return reply,
        };
        let mut guard = ParkGuard {
            hub: &self.0.hub,
            actor: self.0.actor,
            seq,
            armed: true,
        };
        let reply = rx.await.unwrap_or_else(|_| Reply::Err(crashed_error()));
        guard.armed = false;
        reply
    }
}

#[async_trait]
impl ObjectStore for SimStore {
    fn describe(&self) -> String {
        "sim://".into()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            conditional_put: !self.0.garage,
        }
    }

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        let op = Op::Get {
            key: key.into(),
            opts,
        };
        match self.call(op).await {
            Reply::Get(meta, range, body) => Ok(GetResult {
                meta,
                range,
                body: Box::pin(futures::stream::iter([Ok(body)])),
            }),
            other => Err(other.into_err()),
        }
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        match self.call(Op::Head { key: key.into() }).await {
            Reply::Meta(m) => Ok(m),
            other => Err(other.into_err()),
        }
    }

    async fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<PutResult> {
        let op = Op::Put {
            key: key.into(),
            data,
            mode: opts.mode,
        };
        match self.call(op).await {
            Reply::Put(p) => Ok(p),
            other => Err(other.into_err()),
        }
    }

    async fn put_writer(&self, key: &str, opts: PutOptions) -> Result<Box<dyn ObjectWriter>> {
        let op = Op::PutWriter {
            key: key.into(),
            mode: opts.mode.clone(),
        };
        match self.call(op).await {
            Reply::Unit => Ok(Box::new(SimWriter {
                store: self.clone(),
                key: key.into(),
                mode: opts.mode,
                buf: BytesMut::new(),
            })),
            other => Err(other.into_err()),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self.call(Op::Delete { key: key.into() }).await {
            Reply::Unit => Ok(()),
            other => Err(other.into_err()),
        }
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<ListPage> {
        let op = Op::List {
            prefix: prefix.into(),
            start_after: start_after.map(str::to_string),
        };
        match self.call(op).await {
            Reply::List(page) => Ok(page),
            other => Err(other.into_err()),
        }
    }
}

/// A streaming upload: chunks stay here (like S3 parts, invisible) until
/// `finish` publishes the whole object in one granted operation.
struct SimWriter {
    store: SimStore,
    key: String,
    mode: PutMode,
    buf: BytesMut,
}

#[async_trait]
impl ObjectWriter for SimWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let op = Op::Write {
            key: self.key.clone(),
            len: chunk.len(),
        };
        match self.store.call(op).await {
            Reply::Unit => {
                self.buf.extend_from_slice(&chunk);
                Ok(())
            }
            other => Err(other.into_err()),
        }
    }

    async fn finish(self: Box<Self>) -> Result<PutResult> {
        let Self {
            store,
            key,
            mode,
            buf,
        } = *self;
        let op = Op::Finish {
            key,
            data: buf.freeze(),
            mode,
        };
        match store.call(op).await {
            Reply::Put(p) => Ok(p),
            other => Err(other.into_err()),
        }
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        let Self { store, key, .. } = *self;
        match store.call(Op::Abort { key }).await {
            Reply::Unit => Ok(()),
            other => Err(other.into_err()),
        }
    }
}
