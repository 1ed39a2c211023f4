//! A TCP proxy in front of a test server that can be taken down, as a
//! stopped or restarting server would be: while down, every new connection
//! is closed at once (and counted), and going down cuts the open ones. A
//! tool pointed at the proxy sees a real outage in the middle of its run,
//! at a moment the test chooses, with the server itself left running.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

#[derive(Default)]
struct Shared {
    down: AtomicBool,
    /// Connections still to refuse before forwarding again.
    refuse_budget: AtomicU64,
    stop: AtomicBool,
    refused: AtomicU64,
    forwarded: AtomicU64,
    /// Both ends of every connection being forwarded, to cut them.
    open: Mutex<Vec<TcpStream>>,
}

impl Shared {
    fn cut_all(&self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for s in open.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

pub struct OutageProxy {
    port: u16,
    shared: Arc<Shared>,
}

impl OutageProxy {
    /// Forwards `127.0.0.1:<port>` to `target` (`host:port`).
    pub fn start(target: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::other("binding the proxy's port", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::other("the proxy's port", e))?
            .port();
        let shared = Arc::new(Shared::default());
        let (s, target) = (Arc::clone(&shared), target.to_string());
        std::thread::spawn(move || accept_loop(&listener, &s, &target));
        Ok(Self { port, shared })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Down: open connections are cut and new ones closed until up again.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            self.shared.cut_all();
        }
    }

    /// A brief outage of a known size: open connections are cut, and the
    /// next `n` connections refused; then forwarding resumes by itself.
    pub fn refuse_next(&self, n: u64) {
        self.shared.refuse_budget.store(n, Ordering::SeqCst);
        self.shared.cut_all();
    }

    /// Connections closed because the proxy was down.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Connections forwarded to the target.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for OutageProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.cut_all();
        // Wakes the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, target: &str) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let budgeted = shared
            .refuse_budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if budgeted || shared.down.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        // A target that is not there is an outage too: close the client.
        let Ok(server) = TcpStream::connect(target) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        shared.forwarded.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = forward(client, server, shared) {
            eprintln!("outage proxy: {e}");
        }
    }
}

fn forward(client: TcpStream, server: TcpStream, shared: &Shared) -> io::Result<()> {
    {
        let mut open = shared.open.lock().unwrap_or_else(|p| p.into_inner());
        open.push(client.try_clone()?);
        open.push(server.try_clone()?);
    }
    let pipe = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    };
    pipe(client.try_clone()?, server.try_clone()?);
    pipe(server, client);
    Ok(())
}
