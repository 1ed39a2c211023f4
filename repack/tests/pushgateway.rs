//! `--pushgateway` / `DES_PUSHGATEWAY_URL` of `des-repack` and `des-verify`
//! against a real Prometheus Pushgateway (Debian's `prometheus-pushgateway`,
//! installed by scripts/deps.sh). Like the promtool checks, these tests fail
//! rather than skip when the binary is missing: it is an apt package, not a
//! long build like Garage's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const PUSHGATEWAY: &str = "/usr/bin/prometheus-pushgateway";

/// A Pushgateway on a free local port, killed on drop.
struct Gateway {
    child: Child,
    addr: SocketAddr,
    log: tempfile::NamedTempFile,
}

impl Gateway {
    fn start() -> Self {
        assert!(
            Path::new(PUSHGATEWAY).exists(),
            "{PUSHGATEWAY} is missing: run scripts/deps.sh (apt package prometheus-pushgateway)"
        );
        // Another process may take the free port between our probe and the
        // Pushgateway's bind: try a few ports.
        let mut last_log = String::new();
        for _ in 0..3 {
            let addr = free_addr();
            let log = tempfile::NamedTempFile::new().unwrap();
            let child = Command::new(PUSHGATEWAY)
                .arg(format!("--web.listen-address={addr}"))
                // In memory only: nothing written to /var/lib, nothing
                // carried between tests.
                .arg("--persistence.file=")
                .stdin(Stdio::null())
                .stdout(log.reopen().unwrap())
                .stderr(log.reopen().unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {PUSHGATEWAY}: {e}"));
            let mut gw = Gateway { child, addr, log };
            if gw.wait_ready() {
                return gw;
            }
            last_log = gw.log();
        }
        panic!("the Pushgateway did not come up; its log:\n{last_log}");
    }

    /// Until `/-/ready` answers 200; false when the process exited or 10 s passed.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if http(self.addr, "GET", "/-/ready", "").is_some_and(|(status, _)| status == 200) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// What Prometheus would scrape.
    fn metrics(&self) -> String {
        let (status, body) = http(self.addr, "GET", "/metrics", "").expect("GET /metrics");
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A local port nothing listens on (right now).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A minimal HTTP/1.0 exchange: (status, body), `None` when nothing answers.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: text/plain; version=0.0.4\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_string()))
}

/// The value of the sample of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(series, _)| {
            series
                .strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
                && labels.iter().all(|l| series.contains(l))
        })
        .and_then(|(_, v)| v.parse().ok())
}

fn with_gateway(cmd: &mut Command, url: &str) -> Output {
    cmd.env("DES_PUSHGATEWAY_URL", url)
        .env_remove("DES_METRICS_FILE")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn repack_and_verify_push_their_metrics() {
    let gw = Gateway::start();
    let s = Local::build(standard_specs());
    let root = s.root_str();

    // Left by an "earlier run": the tools' PUT must replace the whole group.
    for job in ["des-repack", "des-verify"] {
        let (status, body) = http(
            gw.addr,
            "PUT",
            &format!("/metrics/job/{job}"),
            "# TYPE des_stale_metric gauge\ndes_stale_metric 7\n",
        )
        .unwrap();
        assert!((200..300).contains(&status), "{status} {body}");
    }
    assert!(gw.metrics().contains("des_stale_metric"));

    let repacked = with_gateway(
        bin("des-repack").args(["--store", &root, "--json"]),
        &gw.url(),
    );
    let verified = with_gateway(bin("des-verify").args([&root, "--json"]), &gw.url());
    for out in [&repacked, &verified] {
        assert_eq!(out.status.code(), Some(0), "{}", describe(out));
        assert!(!stderr(out).contains("warning"), "{}", describe(out));
    }

    let text = gw.metrics();
    let repack = ["job=\"des-repack\""];
    let verify = ["job=\"des-verify\""];
    assert!(!text.contains("des_stale_metric"), "{text}");
    assert_eq!(
        sample(
            &text,
            "des_repack_jobs_total",
            &["job=\"des-repack\"", "status=\"success\""]
        ),
        Some(1.0),
        "{text}"
    );
    for name in [
        "des_repack_space_saved_bytes",
        "des_repack_shards_rewritten_total",
        "des_tombstones_pending",
        "des_tombstones_oldest_pending_age_seconds",
        "des_repack_last_success_timestamp_seconds",
    ] {
        assert!(sample(&text, name, &repack).is_some(), "{name}:\n{text}");
    }
    assert_eq!(
        sample(&text, "des_verify_corrupt_entries_total", &verify),
        Some(0.0),
        "{text}"
    );
    let ran_at = sample(&text, "des_verify_last_run_timestamp_seconds", &verify).unwrap();
    assert!((now() - ran_at).abs() < 600.0, "{ran_at}\n{text}");
    // Grouped by job alone (see src/push.rs): one group per tool, replaced
    // by each run.
    for job in ["des-repack", "des-verify"] {
        assert!(
            text.contains(&format!("push_time_seconds{{instance=\"\",job=\"{job}\"}}")),
            "{text}"
        );
    }
    assert!(
        sample(&text, "des_repack_jobs_total", &["job=\"des-verify\""]).is_none(),
        "{text}"
    );

    // With a metrics file too, the counters it carries between runs are
    // what is pushed.
    let file = s.aux("repack.prom");
    for _ in 0..2 {
        let out = with_gateway(
            bin("des-repack")
                .args(["--store", &root, "--json", "--metrics-file"])
                .arg(&file),
            &gw.url(),
        );
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    }
    let text = gw.metrics();
    let pushed = sample(
        &text,
        "des_repack_jobs_total",
        &["job=\"des-repack\"", "status=\"success\""],
    );
    assert_eq!(pushed, Some(2.0), "{text}");
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(
        written.contains("des_repack_jobs_total{status=\"success\"} 2"),
        "{written}"
    );
}

#[test]
fn a_store_that_cannot_be_opened_pushes_a_failed_run() {
    let gw = Gateway::start();
    let dir = tempfile::tempdir().unwrap();
    let not_a_store = dir.path().join("plain-file");
    std::fs::write(&not_a_store, b"not a store").unwrap();
    let out = with_gateway(
        bin("des-repack").arg("--store").arg(&not_a_store),
        &gw.url(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let text = gw.metrics();
    assert_eq!(
        sample(
            &text,
            "des_repack_jobs_total",
            &["job=\"des-repack\"", "status=\"failed\""]
        ),
        Some(1.0),
        "{}\n{text}",
        describe(&out)
    );
}

/// Flips a payload byte of `uid` in its shard (codec none: the file's
/// bytes are in the shard as they are).
fn corrupt(s: &Local, uid: &str) {
    let path = s.root().join(&s.shard_of[uid]);
    let mut bytes = std::fs::read(&path).unwrap();
    let n = needle(s.spec(uid));
    let at = bytes
        .windows(n.len())
        .position(|w| w == n.as_slice())
        .unwrap();
    bytes[at + 10] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn an_unreachable_pushgateway_changes_no_exit_status() {
    let s = Local::build(standard_specs());
    let root = s.root_str();
    // Nothing listens there: connection refused, on both attempts.
    let url = format!("http://{}", free_addr());
    let metrics = s.aux("repack.prom");

    let out = with_gateway(
        bin("des-repack")
            .args(["--store", &root, "--json", "--metrics-file"])
            .arg(&metrics),
        &url,
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("des-repack: warning: pushing the metrics to the Pushgateway")
            && err.contains(&url)
            && err.contains("exit status is not affected"),
        "{}",
        describe(&out)
    );
    assert!(metrics.exists(), "the metrics file is still written");
    let _ = json(&out);

    let out = with_gateway(bin("des-verify").args([&root, "--json"]), &url);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stderr(&out).contains("des-verify: warning: pushing the metrics to the Pushgateway"),
        "{}",
        describe(&out)
    );

    // Corruption keeps its own status (1), push or no push.
    corrupt(&s, "file-03");
    let out = with_gateway(bin("des-verify").args([&root, "--json"]), &url);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("warning: pushing the metrics"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_bad_pushgateway_url_is_a_usage_error_before_any_work() {
    let s = Local::build(standard_specs());
    let root = s.root_str();
    let metrics = s.aux("repack.prom");
    for (url, why) in [
        ("pushgateway.monitoring.svc:9091", "http:// or https://"),
        ("ftp://gw:21", "http:// or https://"),
        ("http://gw:9091/?job=x", "query"),
    ] {
        // From the environment, as the Kubernetes manifests set it.
        let out = with_gateway(
            bin("des-repack")
                .args(["--store", &root, "--metrics-file"])
                .arg(&metrics),
            url,
        );
        assert_eq!(out.status.code(), Some(2), "{url}: {}", describe(&out));
        assert!(
            stderr(&out).contains(why) && out.stdout.is_empty(),
            "{url}: {}",
            describe(&out)
        );
        assert!(!metrics.exists(), "{url}: no run, no metrics");

        let out = bin("des-verify")
            .args([&root, "--json", "--pushgateway", url])
            .env_remove("DES_PUSHGATEWAY_URL")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{url}: {}", describe(&out));
        assert!(
            stderr(&out).contains(why) && out.stdout.is_empty(),
            "{url}: {}",
            describe(&out)
        );
    }
}

#[test]
fn des_pack_pushes_its_metrics() {
    let gw = Gateway::start();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    for i in 0..3 {
        std::fs::write(src.path().join(format!("f{i}.txt")), format!("file {i}")).unwrap();
    }
    let packed = with_gateway(
        des_pack().args([
            "--dir",
            src.path().to_str().unwrap(),
            "--created-at",
            "2024-05-17T10:00:00Z",
            "--out",
            out.path().to_str().unwrap(),
            "-q",
        ]),
        &gw.url(),
    );
    assert_eq!(packed.status.code(), Some(0), "{}", describe(&packed));
    assert!(
        !stderr(&packed).contains("warning"),
        "{}",
        describe(&packed)
    );
    let text = gw.metrics();
    let job = "job=\"des-pack\"";
    assert_eq!(
        sample(&text, "des_pack_files_packed_total", &[job]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "des_pack_runs_total", &[job, "status=\"success\""]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "des_pack_files_failed_total",
            &[job, "reason=\"source_missing\""]
        ),
        Some(0.0),
        "{text}"
    );
    let ran = sample(&text, "des_pack_last_success_timestamp_seconds", &[job]).unwrap();
    assert!((now() - ran).abs() < 600.0, "{ran}");
}
