//! Running a server process under a guard that dies with the test process.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The guard: starts the server in the background, records its pid, then
/// blocks reading stdin (a pipe from the test process). A line `keep` means
/// "stop, keep the data" (restartable); end-of-file without it (the test
/// process dropped the server or exited) also removes the data directory.
/// The server is killed outright: SIGTERM makes Garage wait for idle
/// keep-alive connections from still-living clients, and an abrupt stop is
/// what outage tests want to see anyway (both servers recover from it).
const GUARD: &str = r#"
"$@" &
pid=$!
echo "$pid" > "$DES_GUARD_DIR/server.pid"
keep=
read -r keep
kill -KILL "$pid" 2>/dev/null
wait "$pid"
[ "$keep" = keep ] || rm -rf "$DES_GUARD_DIR"
"#;

/// A readiness condition, polled until it holds.
#[derive(Debug, Clone)]
pub(super) enum Ready {
    /// `GET path` answers 200.
    Http { addr: SocketAddr, path: String },
    /// A TCP connection is accepted.
    Tcp(SocketAddr),
}

/// Everything needed to (re)start the same server.
#[derive(Debug, Clone)]
pub(super) struct Launch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub ready: Vec<Ready>,
    pub log: PathBuf,
}

/// A running guard and its server.
#[derive(Debug)]
pub(super) struct Guarded {
    guard: Child,
    stdin: Option<ChildStdin>,
}

impl Launch {
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Spawns the server under the guard and waits until it is ready.
    pub fn spawn(&self, dir: &Path) -> Result<Guarded> {
        let io = |what: &str, e: std::io::Error| {
            Error::other(format!("{what} for {}", self.program.display()), e)
        };
        let pid_file = dir.join("server.pid");
        let _ = std::fs::remove_file(&pid_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| io("opening the log", e))?;
        let log2 = log.try_clone().map_err(|e| io("opening the log", e))?;
        let mut guard = Command::new("sh")
            .arg("-c")
            .arg(GUARD)
            .arg("des-s3-guard")
            .arg(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("DES_GUARD_DIR", dir)
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| io("spawning sh", e))?;
        let stdin = guard.stdin.take();
        let mut running = Guarded { guard, stdin };
        match self.wait_ready(&pid_file) {
            Ok(()) => Ok(running),
            Err(e) => {
                // Keep the data: this may be a restart of a server with state.
                let _ = running.stop_mut(true);
                Err(e)
            }
        }
    }

    fn wait_ready(&self, pid_file: &Path) -> Result<()> {
        let deadline = Instant::now() + super::READY_TIMEOUT;
        let mut pid: Option<u32> = None;
        loop {
            if pid.is_none() {
                pid = std::fs::read_to_string(pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
            }
            if let Some(p) = pid {
                if !alive(p) {
                    return Err(Error::Unavailable {
                        msg: format!(
                            "{} exited during startup; log:\n{}",
                            self.program.display(),
                            self.log_tail()
                        ),
                        retry_after: None,
                    });
                }
                if self.ready.iter().all(check) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "{} not ready after {:?}; log:\n{}",
                    self.program.display(),
                    super::READY_TIMEOUT,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Guarded {
    /// Stops the server and waits for it; `keep` preserves its data directory.
    pub fn stop(mut self, keep: bool) -> Result<()> {
        self.stop_mut(keep)
    }

    fn stop_mut(&mut self, keep: bool) -> Result<()> {
        if let Some(mut stdin) = self.stdin.take() {
            if keep {
                // If the guard is already gone, there is nothing left to keep alive.
                let _ = stdin.write_all(b"keep\n");
            }
            // Closing the pipe is what tells the guard to stop.
            drop(stdin);
        }
        self.guard
            .wait()
            .map_err(|e| Error::other("waiting for the server guard", e))?;
        Ok(())
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.stop_mut(false);
    }
}

/// Whether `pid` is running (not gone, not a zombie awaiting its guard).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S ...`: the state follows the last `)`, comm may hold anything.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z' | 'X'))
}

fn check(r: &Ready) -> bool {
    match r {
        Ready::Tcp(addr) => TcpStream::connect_timeout(addr, Duration::from_millis(500)).is_ok(),
        Ready::Http { addr, path } => http_status(addr, path) == Some(200),
    }
}

fn http_status(addr: &SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).ok()?;
    let line = std::str::from_utf8(head.get(..n)?).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}
