//! Streams an external payload stored raw (codec none, as DES writes every
//! big file) without a blocking thread: the object's body is pulled on the
//! connection's own task, checked as it passes (length, CRC32C, content
//! digest), and the bytes of the requested window are sent without a copy.
//!
//! As in [`crate::stream`], the last window bytes are held back until every
//! check passed, so a failed check ends the response short of its
//! `Content-Length` (a failed transfer), never with wrong bytes complete.
//! When the client goes away the stream is dropped, and with it the read.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;

use bytes::Bytes;
use des_format::digest::Digester;
use des_format::shard::Located;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use crate::admission::Held;
use crate::payload::External;
use crate::stream::{check_totals, hasher_for};

/// Largest piece handed to the connection, and so the most held back
/// until the checks pass: a failed check then ends the transfer short even
/// when the whole object arrived in one chunk.
const PIECE: usize = 256 * 1024;

struct Raw {
    key: String,
    located: Located,
    body: BoxStream<'static, des_storage::Result<Bytes>>,
    window: Range<u64>,
    crc: u32,
    len: u64,
    hasher: Option<Digester>,
    /// The latest window bytes, released once the next arrive or the checks pass.
    held: Option<Bytes>,
    /// Window bytes ready to send, in order.
    ready: VecDeque<Bytes>,
    corruption: prometheus::IntCounter,
    done: bool,
    /// The stream's share of `max_big_streams`, given back when it is dropped.
    _slot: Option<Held>,
}

/// The bytes `window` of `ext`, which must be stored raw.
pub fn verified(
    ext: Box<External>,
    window: Range<u64>,
    corruption: prometheus::IntCounter,
    slot: Option<Held>,
) -> impl Stream<Item = io::Result<Bytes>> + 'static {
    let External {
        key,
        located,
        object,
    } = *ext;
    let state = Raw {
        hasher: hasher_for(&located.check),
        key,
        located,
        body: object.body,
        window,
        crc: 0,
        len: 0,
        held: None,
        ready: VecDeque::new(),
        corruption,
        done: false,
        _slot: slot,
    };
    futures::stream::unfold(state, Raw::next)
}

impl Raw {
    async fn next(mut self) -> Option<(io::Result<Bytes>, Self)> {
        while !self.done {
            if let Some(piece) = self.ready.pop_front() {
                return Some((Ok(piece), self));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    if let Err(detail) = self.take(chunk) {
                        return self.fail(detail, true);
                    }
                }
                Some(Err(e)) => return self.fail(format!("read: {e}"), false),
                None => {
                    self.done = true;
                    let digest = self.hasher.take().map(Digester::finalize);
                    if let Err(detail) = check_totals(&self.located, self.len, self.crc, digest) {
                        return self.fail(detail, true);
                    }
                    return self.held.take().map(|last| (Ok(last), self));
                }
            }
        }
        None
    }

    /// Accounts for `chunk` (at offset `self.len`) and queues its window
    /// part, in pieces of at most [`PIECE`] bytes, all but the last of which
    /// (and what was held before) may be sent now. An error if the object
    /// is longer than the index says.
    fn take(&mut self, chunk: Bytes) -> Result<(), String> {
        let pos = self.len;
        self.len += chunk.len() as u64;
        if self.len > self.located.stored_len {
            return Err(format!(
                "object longer than the {} bytes the index says",
                self.located.stored_len
            ));
        }
        self.crc = crc32c::crc32c_append(self.crc, &chunk);
        if let Some(h) = self.hasher.as_mut() {
            h.update(&chunk);
        }
        let (lo, hi) = (self.window.start.max(pos), self.window.end.min(self.len));
        if lo >= hi {
            return Ok(());
        }
        let at = |n: u64| usize::try_from(n - pos).unwrap_or(chunk.len());
        let mut rest = chunk.slice(at(lo)..at(hi));
        while !rest.is_empty() {
            let piece = rest.split_to(rest.len().min(PIECE));
            if let Some(previous) = self.held.replace(piece) {
                self.ready.push_back(previous);
            }
        }
        Ok(())
    }

    /// Ends the response with an error: the client sees a short transfer.
    fn fail(mut self, detail: String, corrupt: bool) -> Option<(io::Result<Bytes>, Self)> {
        self.done = true;
        self.held = None;
        // Storage failing to deliver is an outage, not corruption.
        if corrupt {
            self.corruption.inc();
        }
        tracing::error!(object = %self.key, uid = %self.located.uid, %detail, "external payload failed its check; aborting response");
        let err = io::Error::other(format!("{}: {detail}", self.located.uid));
        Some((Err(err), self))
    }
}
