//! HTTP/1.1 load generator: N keep-alive connections GET paths picked at
//! random (fixed seed) from a list, for a warm-up then a measured period.
//!
//! - Closed loop (default): each connection sends its next request as soon
//!   as the previous answer is in; this finds the saturation rate.
//! - Open loop (`rate`): request i of the run is due at start + i / rate,
//!   spread round-robin over the connections. When a request is due while
//!   its connection still waits for the previous answer, its latency is
//!   counted from when it was due, not from when it could be sent: a server
//!   that stalls is charged for every request that should have gone out
//!   during the stall (the coordinated-omission correction wrk2 makes; a
//!   closed loop hides those, because a stalled connection stops asking).
//!   When the connection was free at the due time, the request is timed
//!   from its send: the gap is then only the client's timer, which wakes up
//!   to 1 ms late and would otherwise add ≈ 0.5 ms to every latency.
//!
//! Every answer is checked: a status outside 2xx, a connection error or a
//! timeout is an error, and a body that differs from its `--verify` file is
//! a mismatch. Either fails the run. They are counted in the warm-up too:
//! correctness has no warm-up.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, sleep_until, timeout};

/// Failures kept, with their reason, for the report.
const KEPT_FAILURES: usize = 5;

/// One request to make: a path (with query) and an optional Range header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub path: String,
    pub range: Option<String>,
}

impl Target {
    /// A line of a paths file: `PATH` or `PATH<TAB>RANGE` (e.g.
    /// `bytes=0-99`, the format bench/random_paths.lua reads).
    pub fn parse(line: &str) -> Self {
        match line.split_once('\t') {
            Some((path, range)) => Self {
                path: path.to_owned(),
                range: Some(range.to_owned()),
            },
            None => Self {
                path: line.to_owned(),
                range: None,
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port` to connect to (resolved once, before the run).
    pub authority: String,
    /// Prepended to every path (the base URL's own path, without a trailing `/`).
    pub prefix: String,
    /// The Host header; `None`: the authority (a web endpoint that picks
    /// its site by name, like Garage's, needs another).
    pub host: Option<String>,
    pub targets: Vec<Target>,
    /// Expected bodies by request path (with query, without prefix).
    pub verify: HashMap<String, Bytes>,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Requests per second over all connections; `None`: closed loop.
    pub rate: Option<f64>,
    pub seed: u64,
    /// Longest wait for one answer (then it is an error and the connection
    /// is replaced).
    pub timeout: Duration,
}

impl Config {
    /// A closed-loop configuration for `base` (`http://host[:port][/prefix]`).
    pub fn new(base: &str, targets: Vec<Target>) -> anyhow::Result<Self> {
        let rest = base
            .strip_prefix("http://")
            .with_context(|| format!("--base {base:?}: only http://HOST[:PORT][/PREFIX]"))?;
        let (host_port, prefix) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if host_port.is_empty() {
            bail!("--base {base:?} has no host");
        }
        let authority = if host_port.ends_with(']') || !host_port.contains(':') {
            format!("{host_port}:80")
        } else {
            host_port.to_owned()
        };
        Ok(Self {
            authority,
            prefix: prefix.trim_end_matches('/').to_owned(),
            host: None,
            targets,
            verify: HashMap::new(),
            connections: 32,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(15),
            rate: None,
            seed: 1,
            timeout: Duration::from_secs(10),
        })
    }

    /// The request bytes of each target, built once: the loop only writes them.
    fn requests(&self) -> Vec<Bytes> {
        self.targets
            .iter()
            .map(|t| {
                let mut r = format!(
                    "GET {}{} HTTP/1.1\r\nHost: {}\r\n",
                    self.prefix,
                    t.path,
                    self.host.as_deref().unwrap_or(&self.authority)
                );
                if let Some(range) = &t.range {
                    let _ = write!(r, "Range: {range}\r\n");
                }
                r.push_str("\r\n");
                Bytes::from(r)
            })
            .collect()
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    /// Answered requests due in the measured period (after the warm-up).
    pub requests: u64,
    pub seconds: f64,
    /// Errors and mismatches over the whole run, warm-up included.
    pub errors: u64,
    pub mismatches: u64,
    /// Bodies compared with their `--verify` file (warm-up included).
    pub verified: u64,
    /// Body bytes received in the measured period.
    pub bytes: u64,
    pub connections: usize,
    pub target_rps: Option<f64>,
    /// Latency in microseconds (open loop: from the due time when the
    /// request had to wait for its connection).
    pub latency: Histogram<u64>,
    /// The first few failures, with their reasons.
    pub failures: Vec<String>,
    /// `--verify` was given, so `verified` must not be zero.
    pub verifying: bool,
    /// Time the generator was ready to run but waited for a CPU (Linux
    /// schedstat, all its threads), in microseconds: other work on its core
    /// delayed it. `None` where the kernel does not tell.
    pub client_wait_us: Option<u64>,
}

impl Report {
    pub fn rps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// No error, no mismatch, and if bodies were to be verified some were.
    pub fn ok(&self) -> bool {
        self.errors == 0 && self.mismatches == 0 && (!self.verifying || self.verified > 0)
    }

    fn pct(&self, q: f64) -> u64 {
        self.latency.value_at_quantile(q)
    }

    pub fn human(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        let mut s = format!(
            "{} requests in {:.1} s: {:.0} req/s",
            self.requests,
            self.seconds,
            self.rps()
        );
        if let Some(t) = self.target_rps {
            let _ = write!(s, " (target {t:.0}: {:.2} of it)", self.rps() / t);
        }
        let _ = write!(
            s,
            ", latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}; \
             errors {} mismatches {} verified {}",
            ms(self.pct(0.5)),
            ms(self.pct(0.9)),
            ms(self.pct(0.99)),
            ms(self.pct(0.999)),
            ms(self.latency.max()),
            self.errors,
            self.mismatches,
            self.verified
        );
        s
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "ok": self.ok(),
            "requests": self.requests,
            "seconds": self.seconds,
            "rps": self.rps(),
            "target_rps": self.target_rps,
            "achieved_ratio": self.target_rps.map(|t| self.rps() / t),
            "connections": self.connections,
            "errors": self.errors,
            "mismatches": self.mismatches,
            "verified": self.verified,
            "bytes": self.bytes,
            "p50_us": self.pct(0.5),
            "p90_us": self.pct(0.9),
            "p99_us": self.pct(0.99),
            "p999_us": self.pct(0.999),
            "max_us": self.latency.max(),
            "client_wait_us": self.client_wait_us,
            "failures": self.failures,
        })
    }
}

/// One connection's tallies, merged into the [`Report`].
struct Tally {
    requests: u64,
    errors: u64,
    mismatches: u64,
    verified: u64,
    bytes: u64,
    latency: Histogram<u64>,
    failures: Vec<String>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            requests: 0,
            errors: 0,
            mismatches: 0,
            verified: 0,
            bytes: 0,
            // Three significant digits, auto-resizing: any latency fits.
            latency: Histogram::new(3)?,
            failures: Vec::new(),
        })
    }

    fn fail(&mut self, what: String) {
        if self.failures.len() < KEPT_FAILURES {
            self.failures.push(what);
        }
    }
}

/// The run's clock: requests due before `measure_from` are warm-up, none
/// is sent at or after `end`.
#[derive(Clone, Copy)]
struct Clock {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

/// Runs the load (on the current Tokio runtime) and reports. Errors only
/// if the run could not start (no address, no first connection); failures
/// during the run are in the report.
pub async fn run(config: Config) -> anyhow::Result<Report> {
    if config.targets.is_empty() {
        bail!("no request paths");
    }
    if config.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if config.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be above zero");
    }
    let addr = tokio::net::lookup_host(&config.authority)
        .await
        .with_context(|| format!("resolving {}", config.authority))?
        .next()
        .with_context(|| format!("{} has no address", config.authority))?;
    // Every connection is open before the clock starts, so connection
    // set-up is not charged to the first requests.
    let mut conns = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        conns.push(
            Conn::open(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?,
        );
    }
    let wait_before = run_delay_us();
    let start = Instant::now();
    let clock = Clock {
        start,
        measure_from: start + config.warmup,
        end: start + config.warmup + config.duration,
    };
    let requests = Arc::new(config.requests());
    let config = Arc::new(config);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(k, conn)| {
            let (config, requests) = (config.clone(), requests.clone());
            tokio::spawn(connection(k, conn, addr, config, requests, clock))
        })
        .collect();
    let mut total = Tally::new()?;
    for task in tasks {
        let t = task.await.context("a connection task panicked")??;
        total.requests += t.requests;
        total.errors += t.errors;
        total.mismatches += t.mismatches;
        total.verified += t.verified;
        total.bytes += t.bytes;
        total.latency.add(&t.latency)?;
        for f in t.failures {
            total.fail(f);
        }
    }
    Ok(Report {
        requests: total.requests,
        seconds: config.duration.as_secs_f64(),
        errors: total.errors,
        mismatches: total.mismatches,
        verified: total.verified,
        bytes: total.bytes,
        connections: config.connections,
        target_rps: config.rate,
        latency: total.latency,
        failures: total.failures,
        verifying: !config.verify.is_empty(),
        client_wait_us: run_delay_us()
            .zip(wait_before)
            .map(|(after, before)| after.saturating_sub(before)),
    })
}

/// This process's run-queue wait so far (second field of every thread's
/// /proc/self/task/*/schedstat, in ns), in microseconds.
fn run_delay_us() -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let text = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += text.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(total / 1000)
}

/// One connection's loop. Request number `i` of connection `k` is the
/// run's request `i * connections + k`, which in open loop is due at
/// `start + (i * connections + k) / rate`.
async fn connection(
    k: usize,
    conn: Conn,
    addr: SocketAddr,
    config: Arc<Config>,
    requests: Arc<Vec<Bytes>>,
    clock: Clock,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let mut rng = StdRng::seed_from_u64(config.seed.wrapping_add(k as u64));
    let mut conn = Some(conn);
    let n = config.connections as u64;
    // When the connection's last answer was complete.
    let mut free_at = clock.start;
    for i in 0u64.. {
        let due = match config.rate {
            Some(rate) => clock.start + Duration::from_secs_f64((i * n + k as u64) as f64 / rate),
            None => Instant::now(),
        };
        if due >= clock.end {
            break;
        }
        // Only when ahead of schedule: even an elapsed sleep waits for the
        // timer's next 1 ms tick.
        if due > Instant::now() {
            sleep_until(due).await;
        }
        // Behind schedule at the end: what is still due is not sent (the
        // shortfall shows as achieved rate below the target).
        if Instant::now() >= clock.end {
            break;
        }
        let pick = rng.gen_range(0..config.targets.len());
        let target = &config.targets[pick];
        let measured = due >= clock.measure_from;
        // See the module docs: from the due time if the server kept the
        // connection busy past it, else from now.
        let from = if free_at > due { due } else { Instant::now() };
        let result = timeout(config.timeout, get(&mut conn, addr, &requests[pick])).await;
        free_at = Instant::now();
        let micros = u64::try_from(free_at.duration_since(from).as_micros()).unwrap_or(u64::MAX);
        let body = match result {
            Ok(Ok((status, body))) if (200..300).contains(&status) => body,
            Ok(Ok((status, _))) => {
                tally.errors += 1;
                tally.fail(format!("GET {}: status {status}", target.path));
                continue;
            }
            Ok(Err(e)) => {
                tally.errors += 1;
                tally.fail(format!("GET {}: {e:#}", target.path));
                // A fresh connection for the next request; if the server
                // is down, do not spin on connect errors.
                conn = None;
                sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(_) => {
                tally.errors += 1;
                tally.fail(format!(
                    "GET {}: no answer in {:?}",
                    target.path, config.timeout
                ));
                conn = None;
                continue;
            }
        };
        if let Some(want) = config.verify.get(&target.path) {
            tally.verified += 1;
            if body != *want {
                tally.mismatches += 1;
                tally.fail(format!(
                    "GET {}: body of {} bytes differs from the {} expected",
                    target.path,
                    body.len(),
                    want.len()
                ));
            }
        }
        if measured {
            tally.requests += 1;
            tally.bytes += body.len() as u64;
            tally.latency.record(micros.max(1))?;
        }
    }
    Ok(tally)
}

/// One GET: opens the connection if there is none (first use, after an
/// error, after the server asked to close), then status and body.
async fn get(
    conn: &mut Option<Conn>,
    addr: SocketAddr,
    request: &[u8],
) -> anyhow::Result<(u16, Bytes)> {
    let c = match conn {
        Some(c) => c,
        None => conn.insert(Conn::open(addr).await.context("connecting")?),
    };
    let answer = c.get(request).await?;
    if !answer.keep_alive {
        *conn = None;
    }
    Ok((answer.status, answer.body))
}

/// A keep-alive HTTP/1.1 client connection, written for this loop rather
/// than taken from hyper: one task, one prebuilt write and usually one read
/// per request, no allocation per request but the body's. On a two-core
/// machine the client's CPU per request is close to the server's, so it
/// must be small or it sets the rate it is there to measure: pinned to one
/// core against nginx, user CPU per request was ≈ 5.5 µs with hyper's
/// client, ≈ 2.3 µs with this one, ≈ 2.9 µs for wrk (system time, ≈ 9 µs,
/// is the kernel's TCP work and the same for all three).
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    /// The server did not ask to close the connection.
    pub keep_alive: bool,
}

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

impl Conn {
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        // Requests are one small write each; Nagle would only hold them.
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
        })
    }

    /// Sends `request` (a whole GET) and reads its answer.
    pub async fn get(&mut self, request: &[u8]) -> anyhow::Result<Answer> {
        if !self.buf.is_empty() {
            bail!(
                "{} bytes arrived before the request was sent",
                self.buf.len()
            );
        }
        self.stream.write_all(request).await?;
        // The head: status, headers.
        let (head_len, status, length, chunked, keep_alive) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf)? {
                httparse::Status::Complete(head_len) => {
                    let status = response.code.context("no status")?;
                    let mut length = None;
                    let mut chunked = false;
                    let mut keep_alive = response.version == Some(1);
                    for h in response.headers.iter() {
                        let value = std::str::from_utf8(h.value).unwrap_or("");
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = Some(value.trim().parse::<usize>().context("Content-Length")?);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = value.to_ascii_lowercase().contains("chunked");
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            let v = value.to_ascii_lowercase();
                            keep_alive = if v.contains("close") {
                                false
                            } else {
                                keep_alive || v.contains("keep-alive")
                            };
                        }
                    }
                    break (head_len, status, length, chunked, keep_alive);
                }
                httparse::Status::Partial if self.buf.len() > MAX_HEAD => {
                    bail!("response head over {MAX_HEAD} bytes")
                }
                httparse::Status::Partial => self.fill().await?,
            }
        };
        self.buf.advance(head_len);
        // 1xx, 204 and 304 have no body whatever the headers say (RFC 9112 §6.3).
        if (100..200).contains(&status) {
            bail!("unexpected interim status {status}");
        }
        let body = if status == 204 || status == 304 {
            Bytes::new()
        } else if chunked {
            self.chunked().await?
        } else if let Some(n) = length {
            while self.buf.len() < n {
                self.fill().await?;
            }
            self.buf.split_to(n).freeze()
        } else {
            // No length: the body ends with the connection.
            while self.stream.read_buf(&mut self.buf).await? > 0 {}
            return Ok(Answer {
                status,
                body: self.buf.split().freeze(),
                keep_alive: false,
            });
        };
        Ok(Answer {
            status,
            body,
            keep_alive,
        })
    }

    /// Reads more of the answer; the connection ending here is an error.
    async fn fill(&mut self) -> anyhow::Result<()> {
        self.buf.reserve(64 * 1024);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            bail!("connection closed in the middle of an answer");
        }
        Ok(())
    }

    /// A chunked body (RFC 9112 §7.1), trailers skipped.
    async fn chunked(&mut self) -> anyhow::Result<Bytes> {
        let mut body = BytesMut::new();
        loop {
            let (skip, size) = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete(c)) => break c,
                    Ok(httparse::Status::Partial) => self.fill().await?,
                    Err(_) => bail!("bad chunk size line"),
                }
            };
            self.buf.advance(skip);
            let size = usize::try_from(size).context("chunk too large")?;
            if size == 0 {
                // Trailer fields, then an empty line.
                loop {
                    match self.buf.windows(2).position(|w| w == b"\r\n") {
                        Some(0) => {
                            self.buf.advance(2);
                            return Ok(body.freeze());
                        }
                        Some(i) => self.buf.advance(i + 2),
                        None => self.fill().await?,
                    }
                }
            }
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[..size]);
            if &self.buf[size..size + 2] != b"\r\n" {
                bail!("chunk not followed by CRLF");
            }
            self.buf.advance(size + 2);
        }
    }
}
