//! Adapters between the sync format code (`Read`/`Write`) and async object
//! stores. Only for use on blocking threads (`spawn_blocking`, std threads):
//! they park the thread on the runtime, which must not happen on a worker.

use std::io::{self, Read, Write};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::runtime::Handle;

use crate::error::{Error, Result};
use crate::object::{ObjectWriter, PutResult};

fn to_io(e: Error) -> io::Error {
    io::Error::other(e)
}

/// `Write` over an [`ObjectWriter`], handing it chunks of `chunk_size` bytes.
pub struct SyncObjectWriter {
    handle: Handle,
    inner: Option<Box<dyn ObjectWriter>>,
    buf: BytesMut,
    chunk_size: usize,
    written: u64,
}

impl SyncObjectWriter {
    pub fn new(handle: Handle, inner: Box<dyn ObjectWriter>, chunk_size: usize) -> Self {
        Self {
            handle,
            inner: Some(inner),
            buf: BytesMut::with_capacity(chunk_size),
            chunk_size,
            written: 0,
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    fn push(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        let w = self
            .inner
            .as_mut()
            .ok_or_else(|| io::Error::other("writer already closed"))?;
        self.handle.block_on(w.write(chunk)).map_err(to_io)
    }

    /// Flushes and commits the object.
    pub fn finish(mut self) -> Result<PutResult> {
        self.push().map_err(|e| Error::other("upload failed", e))?;
        let w = self
            .inner
            .take()
            .ok_or_else(|| Error::Invalid("writer already closed".into()))?;
        self.handle.block_on(w.finish())
    }

    /// Discards everything written; the old object (if any) stays.
    pub fn abort(mut self) -> Result<()> {
        match self.inner.take() {
            Some(w) => self.handle.block_on(w.abort()),
            None => Ok(()),
        }
    }
}

impl Drop for SyncObjectWriter {
    fn drop(&mut self) {
        // Dropped without finish/abort (an error path): release the upload.
        if let Some(w) = self.inner.take() {
            let _ = self.handle.block_on(w.abort());
        }
    }
}

impl Write for SyncObjectWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.written += data.len() as u64;
        if self.buf.len() >= self.chunk_size {
            self.push()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Chunks are pushed at `finish`; flushing early would only make more, smaller parts.
        Ok(())
    }
}

/// `Read` over an async body stream.
pub struct BlockingStreamReader {
    handle: Handle,
    stream: BoxStream<'static, Result<Bytes>>,
    current: Bytes,
    /// The stream has ended. `Read` may be called again after returning 0
    /// (`io::copy` after a decoder stopped), but many streams (`unfold`,
    /// the S3 body) panic when polled after their end.
    ended: bool,
}

impl BlockingStreamReader {
    pub fn new(handle: Handle, stream: BoxStream<'static, Result<Bytes>>) -> Self {
        Self {
            handle,
            stream,
            current: Bytes::new(),
            ended: false,
        }
    }
}

impl Read for BlockingStreamReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.handle.block_on(self.stream.next()) {
                None => {
                    self.ended = true;
                    return Ok(0);
                }
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(to_io(e)),
            }
        }
        let n = out.len().min(self.current.len());
        let chunk = self.current.split_to(n);
        if let Some(dst) = out.get_mut(..n) {
            dst.copy_from_slice(&chunk);
        }
        Ok(n)
    }
}
