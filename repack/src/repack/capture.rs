//! A pass-through writer that keeps a copy of what is written after a mark:
//! the new generation's index and trailer, so they can be checked before
//! the upload is committed (nothing is visible until then).

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use des_storage::bridge::SyncObjectWriter;

#[derive(Debug, Default)]
struct State {
    capturing: bool,
    buf: Vec<u8>,
}

/// Handle to start capturing and take the captured bytes; shared with the
/// writer, which the shard writer owns until it finishes.
#[derive(Debug, Clone, Default)]
pub struct Captured(Arc<Mutex<State>>);

impl Captured {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock still holds plain bytes; nothing to repair.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything written from now on is kept.
    pub fn start(&self) {
        self.lock().capturing = true;
    }

    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.lock().buf)
    }
}

pub struct CapturingWriter {
    inner: SyncObjectWriter,
    captured: Captured,
}

impl CapturingWriter {
    pub fn new(inner: SyncObjectWriter) -> (Self, Captured) {
        let captured = Captured::default();
        (
            Self {
                inner,
                captured: captured.clone(),
            },
            captured,
        )
    }

    pub fn into_inner(self) -> SyncObjectWriter {
        self.inner
    }
}

impl Write for CapturingWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        let mut state = self.captured.lock();
        if state.capturing {
            state
                .buf
                .extend_from_slice(data.get(..n).unwrap_or_default());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
