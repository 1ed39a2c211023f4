//! des-latency-proxy against in-process servers. Timing is checked with
//! lower bounds only: a slow machine makes things later, never earlier.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use des_bench_tools::proxy::{self, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// An echo server: every connection gets back what it sends, and is
/// half-closed when the client half-closes.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A server that hands each accepted connection to the test.
async fn handing_server() -> (SocketAddr, mpsc::UnboundedReceiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tx.send(s).unwrap();
        }
    });
    (addr, rx)
}

async fn start_proxy(upstream: SocketAddr, delay: Duration, rate: Option<u64>) -> SocketAddr {
    let mut config = Config::new(upstream.to_string(), delay);
    config.rate = rate;
    proxy::spawn("127.0.0.1:0", config).await.unwrap().0
}

/// Deterministic bytes that are not periodic within a few MiB.
fn pattern(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn round_trip_takes_twice_the_delay() {
    let delay = Duration::from_millis(50);
    let proxy = start_proxy(echo_server().await, delay, None).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.set_nodelay(true).unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert!(
            t.elapsed() >= 2 * delay,
            "round trip took {:?}",
            t.elapsed()
        );
    }
}

// An upper bound on time, so not in CI runs (slow machines): run it with
// `cargo test -p des-bench-tools -- --ignored`.
#[tokio::test]
#[ignore = "timing upper bound"]
async fn delay_does_not_add_up_over_a_stream() {
    // 20 writes 10 ms apart through a 100 ms proxy: a proxy that slept per
    // chunk would need 20 × 200 ms; a queue needs about 200 ms + 200 ms.
    // Generous bound: the whole exchange under 3 s.
    let delay = Duration::from_millis(100);
    let proxy = start_proxy(echo_server().await, delay, None).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let (mut r, mut w) = s.split();
    let t = Instant::now();
    let writer = async {
        for i in 0..20u8 {
            w.write_all(&[i; 100]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let reader = async {
        let mut buf = vec![0u8; 2000];
        r.read_exact(&mut buf).await.unwrap();
        buf
    };
    let (_, got) = tokio::join!(writer, reader);
    let want: Vec<u8> = (0..20u8).flat_map(|i| [i; 100]).collect();
    assert_eq!(got, want);
    assert!(t.elapsed() >= 2 * delay);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn rate_cap_paces_the_transfer() {
    // A sink that answers with the number of bytes it got, once the client
    // half-closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        s.write_all(format!("{}", all.len()).as_bytes())
            .await
            .unwrap();
    });
    let rate = 1u64 << 20; // 1 MiB/s
    let n = 512 * 1024;
    let proxy = start_proxy(sink, Duration::from_millis(1), Some(rate)).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let t = Instant::now();
    s.write_all(&pattern(n)).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, n.to_string());
    let floor = Duration::from_secs_f64(n as f64 / rate as f64);
    assert!(
        t.elapsed() >= floor,
        "{n} bytes at 1 MiB/s took {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn bytes_pass_unchanged_both_ways() {
    let proxy = start_proxy(echo_server().await, Duration::from_millis(5), None).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let data = pattern(4 << 20);
    let (mut r, mut w) = s.split();
    let writer = async {
        // Uneven writes, so chunk boundaries move around.
        for part in data.chunks(7919) {
            w.write_all(part).await.unwrap();
        }
        w.shutdown().await.unwrap();
    };
    let reader = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        got
    };
    let (_, got) = tokio::join!(writer, reader);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echoed bytes differ");
}

#[tokio::test]
async fn closing_the_client_closes_the_upstream() {
    let (server, mut accepted) = handing_server().await;
    let delay = Duration::from_millis(20);
    let proxy = start_proxy(server, delay, None).await;
    let mut client = TcpStream::connect(proxy).await.unwrap();
    let mut upstream = accepted.recv().await.unwrap();
    client.write_all(b"bye").await.unwrap();
    let t = Instant::now();
    drop(client);
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), upstream.read_to_end(&mut got))
        .await
        .expect("upstream never saw the close")
        .unwrap();
    assert_eq!(got, b"bye");
    // The close travels with the delay too (lower bound only).
    assert!(t.elapsed() >= delay / 2);
}

#[tokio::test]
async fn closing_the_upstream_closes_the_client() {
    let (server, mut accepted) = handing_server().await;
    let proxy = start_proxy(server, Duration::from_millis(20), None).await;
    let mut client = TcpStream::connect(proxy).await.unwrap();
    let mut upstream = accepted.recv().await.unwrap();
    upstream.write_all(b"last words").await.unwrap();
    drop(upstream);
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got))
        .await
        .expect("client never saw the close")
        .unwrap();
    assert_eq!(got, b"last words");
}

#[tokio::test]
async fn unreachable_upstream_closes_the_client() {
    // A port that was free a moment ago: nothing listens there.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = gone.local_addr().unwrap();
    drop(gone);
    let proxy = start_proxy(addr, Duration::from_millis(1), None).await;
    let mut client = TcpStream::connect(proxy).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut buf))
        .await
        .expect("client left hanging");
    // EOF or reset, either way closed, and the proxy serves on.
    assert!(buf.is_empty() || read.is_err());
    assert!(TcpStream::connect(proxy).await.is_ok());
}

#[test]
fn binary_prints_its_address_and_exit_codes() {
    use std::io::BufRead;
    let bin = env!("CARGO_BIN_EXE_des-latency-proxy");
    let mut child = std::process::Command::new(bin)
        .args([
            "--upstream",
            "127.0.0.1:9",
            "--delay",
            "5ms",
            "--rate",
            "10MB/s",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let addr = line.trim().strip_prefix("listening ").unwrap();
    assert!(addr.parse::<SocketAddr>().is_ok(), "{line:?}");
    let usage = std::process::Command::new(bin)
        .args(["--upstream", "127.0.0.1:9", "--delay", "soon"])
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2));
    let help = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit codes"));
}
