//! The `des-retriever` binary as a child process, and raw HTTP/1.1 to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_des-retriever");

pub struct Server {
    pub child: Child,
    pub addr: String,
    /// Every log line the server wrote after it started listening.
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .unwrap();
            // Text logs say `addr=…`, JSON logs `"addr":"…"`.
            if let Some(rest) = line.split("addr=").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
            if let Some(rest) = line.split("\"addr\":\"").nth(1) {
                break rest.split('"').next().unwrap().to_string();
            }
        };
        // Keep draining the logs so the server never blocks on a full pipe,
        // and keep them, so a test can wait for an event instead of a delay.
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        Self { child, addr, logs }
    }

    /// Waits (at most 10 s) until the server has logged a line containing
    /// `needle` more than `seen` times; returns the new count.
    pub fn wait_log(&self, needle: &str, seen: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(needle))
                .count();
            if n > seen {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "the server never logged {needle:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn request(&self, head: &str) -> (String, Vec<u8>) {
        request_at(&self.addr, head)
    }

    /// The address in the first log line containing `needle` (e.g. a
    /// second listener's), waiting for it as [`Self::wait_log`] does.
    pub fn logged_addr(&self, needle: &str) -> String {
        self.wait_log(needle, 0);
        let logs = self.logs.lock().unwrap();
        let line = logs.iter().find(|l| l.contains(needle)).unwrap();
        let rest = line.split("addr=").nth(1).unwrap();
        rest.split_whitespace().next().unwrap().to_string()
    }

    /// Sends `signal` (a `kill` name such as `HUP`).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal}");
    }

    /// SIGTERM, then the exit code (waiting up to 20 s).
    pub fn terminate(mut self) -> i32 {
        self.signal("TERM");
        self.wait()
    }

    pub fn wait(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    /// A failed test must not leave a server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request on a fresh connection to `addr`: the lowercased head and the body.
pub fn request_at(addr: &str, head: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "{head}\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    // A reset after an aborted body still leaves what was received.
    let _ = s.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (
        String::from_utf8_lossy(&raw[..split]).to_lowercase(),
        raw[split + 4..].to_vec(),
    )
}

pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

/// The status code of a response head.
pub fn status_of(head: &str) -> u16 {
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}
