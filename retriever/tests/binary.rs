//! The `des-retriever` binary: exit codes, settings precedence, real HTTP on
//! a socket, and graceful shutdown on SIGTERM.
// Helpers outside #[test] fns unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};

use std::io::{Read, Write};

use common::process::{BIN, Server, header, request_at};
use common::*;

/// Exit code of the binary run with `args` and, unless `args` configure
/// auth, `--no-auth` (so each case fails for the reason it names).
fn exit_code(args: &[&str], env: &[(&str, &str)]) -> i32 {
    let mut args = args.to_vec();
    if !args
        .iter()
        .any(|a| a.starts_with("--api-keys") || *a == "--auth")
    {
        args.push("--no-auth");
    }
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("DES_RETRIEVER_STORE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    out.status.code().unwrap()
}

#[test]
fn exit_codes_for_bad_configuration() {
    let empty = tempfile::tempdir().unwrap();
    let e = empty.path().to_str().unwrap();
    assert_eq!(exit_code(&[], &[]), 2, "no store");
    assert_eq!(
        exit_code(&["--layout", "v9", "--store", e], &[]),
        2,
        "bad value"
    );
    assert_eq!(exit_code(&["--no-such-flag"], &[]), 2, "unknown flag");
    assert_eq!(exit_code(&["--store", e], &[]), 2, "not a DES store");
    assert_eq!(
        exit_code(&["--store", e, "--layout", "legacy"], &[]),
        2,
        "legacy without n_bits"
    );
    assert_eq!(
        exit_code(&["--store", e, "--config", "/nonexistent.toml"], &[]),
        2
    );
    assert_eq!(
        exit_code(&["--store", e], &[("DES_RETRIEVER_CACHE_BYTES", "many")]),
        2
    );
    let store = tempfile::tempdir().unwrap();
    pack(store.path(), &[Spec::new("a.txt", text(10))], 4, 1 << 20);
    let s = store.path().to_str().unwrap();
    assert_eq!(
        exit_code(&["--store", s, "--auth", "on"], &[]),
        2,
        "auth neither configured nor explicitly off"
    );
    let keys = store.path().join("no-such-keys.toml");
    assert_eq!(
        exit_code(&["--store", s, "--api-keys", keys.to_str().unwrap()], &[]),
        2,
        "keys file missing"
    );
    assert_eq!(
        exit_code(&["--store", s, "--listen", "256.1.1.1:80"], &[]),
        2,
        "listen address not usable"
    );
}

#[test]
fn serves_over_http_and_shuts_down_cleanly() {
    let store = tempfile::tempdir().unwrap();
    let big = noise(600_000, 4);
    let files = [
        Spec::new("docs/page.html", text(5000)),
        Spec::new("big.bin", big.clone()),
    ];
    pack(store.path(), &files, 4, 100_000);
    let conf = tempfile::tempdir().unwrap();
    let conf_file = conf.path().join("retriever.toml");
    // The file's listen address is unusable; the environment's must win over it.
    std::fs::write(
        &conf_file,
        "listen = \"256.0.0.1:1\"\nworkers = 1\nsuffix_bytes = 4096\nauth = \"off\"\n",
    )
    .unwrap();
    let server = Server::start(
        &[
            "--config",
            conf_file.to_str().unwrap(),
            "--shutdown-timeout-secs",
            "5",
        ],
        &[
            ("DES_RETRIEVER_LISTEN", "127.0.0.1:0"),
            ("DES_RETRIEVER_STORE", store.path().to_str().unwrap()),
        ],
    );

    let (head, body) = server.request("GET /files/docs/page.html?created_at=2024-05-17T10:00:00Z HTTP/1.1\r\nX-Request-Id: wire-1");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(header(&head, "content-length"), Some("5000"));
    assert_eq!(header(&head, "content-type"), Some("text/html"));
    assert_eq!(header(&head, "x-request-id"), Some("wire-1"));
    assert_eq!(body, text(5000));

    let (head, body) =
        server.request("HEAD /files/docs/page.html?created_at=2024-05-17T10:00:00Z HTTP/1.1");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(
        header(&head, "content-length"),
        Some("5000"),
        "HEAD announces the length"
    );
    assert!(body.is_empty());

    let (head, body) = server.request(
        "GET /files/big.bin?created_at=2024-05-17T10:00:00Z HTTP/1.1\r\nRange: bytes=100-199",
    );
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert_eq!(header(&head, "content-range"), Some("bytes 100-199/600000"));
    assert_eq!(body, &big[100..200]);

    let (head, body) =
        server.request("GET /files/big.bin?created_at=2024-05-17T10:00:00Z HTTP/1.1");
    assert_eq!(header(&head, "content-length"), Some("600000"));
    assert_eq!(body, big);

    // Damage the big file: the response starts, but the connection is cut short.
    let key = des_format::v3::external_key(&des_format::DigestAlgorithm::Blake3.digest(&big));
    let path = store.path().join(key);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[599_000] ^= 0xFF;
    std::fs::write(&path, bytes).unwrap();
    let (head, body) =
        server.request("GET /files/big.bin?created_at=2024-05-17T10:00:00Z HTTP/1.1");
    assert_eq!(header(&head, "content-length"), Some("600000"));
    assert!(
        body.len() < 600_000,
        "a response failing its check must not complete"
    );

    let (head, _) = server.request("GET /ready HTTP/1.1");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(server.terminate(), 0, "SIGTERM is a clean shutdown");
}

#[test]
fn legacy_layout_from_the_command_line() {
    let root = workspace_root().join("testdata/legacy-des/store/shards");
    let server = Server::start(
        &[
            "--store",
            root.to_str().unwrap(),
            "--layout",
            "legacy",
            "--n-bits",
            "4",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--no-auth",
        ],
        &[("DES_RETRIEVER_LISTEN", "127.0.0.1:1")],
    );
    let (head, body) =
        server.request("GET /files/637328188?created_at=2025-03-01T00:15:00Z HTTP/1.1");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(
        sha256_hex(&body),
        "b614d582759ec0a880fce92e224a8437a89693b8f74e70762015ecc825c7487e"
    );
    assert_eq!(server.terminate(), 0);
}

/// `--admin-listen` serves metrics and the detailed readiness on its own
/// address (the public port no longer does), and a client that never
/// finishes its request head is cut off after `--client-request-timeout-secs`.
#[test]
fn admin_port_and_slow_request_heads() {
    let store = tempfile::tempdir().unwrap();
    pack(store.path(), &[Spec::new("a.txt", text(100))], 4, 1 << 20);
    let server = Server::start(
        &[
            "--store",
            store.path().to_str().unwrap(),
            "--no-auth",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--client-request-timeout-secs",
            "1",
            "--workers",
            "1",
        ],
        &[],
    );
    let admin = server.logged_addr("admin listening");
    let (head, body) = request_at(&admin, "GET /metrics HTTP/1.1");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("des_overload_rejections_total"));
    let (head, body) = request_at(&admin, "GET /ready HTTP/1.1");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("\"backends\""));
    let (head, _) = server.request("GET /metrics HTTP/1.1");
    assert!(head.starts_with("http/1.1 404"), "{head}");

    // Half a request head, then silence: the server must not wait forever.
    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let started = std::time::Instant::now();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut answer = Vec::new();
    let read = s.read_to_end(&mut answer);
    assert!(read.is_ok(), "the connection was not closed: {read:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
    // Counted once the server has let the connection go (waited for, not slept).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, body) = request_at(&admin, "GET /metrics HTTP/1.1");
        let text = String::from_utf8(body).unwrap();
        if text.lines().any(|l| {
            l.starts_with("des_http_connections_without_request_total ") && !l.ends_with(" 0")
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never counted:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(server.terminate(), 0, "both listeners stop on SIGTERM");
}

/// `--max-connections`: a connection beyond the bound is not served until
/// one of the open ones closes.
#[test]
fn connections_beyond_the_bound_wait() {
    let store = tempfile::tempdir().unwrap();
    pack(store.path(), &[Spec::new("a.txt", text(100))], 4, 1 << 20);
    let server = Server::start(
        &[
            "--store",
            store.path().to_str().unwrap(),
            "--no-auth",
            "--listen",
            "127.0.0.1:0",
            "--max-connections",
            "1",
            "--workers",
            "1",
            "--keep-alive-secs",
            "60",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let admin = server.logged_addr("admin listening");
    let gauge = |name: &str| -> String {
        let (_, body) = request_at(&admin, "GET /metrics HTTP/1.1");
        let text = String::from_utf8(body).unwrap();
        let line = text.lines().find(|l| l.starts_with(&format!("{name} ")));
        line.unwrap_or_else(|| panic!("no {name}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(gauge("des_http_connections_max"), "1");
    assert_eq!(gauge("des_http_connections"), "0");
    // The one connection allowed, kept open (keep-alive) after its request.
    let mut first = std::net::TcpStream::connect(&server.addr).unwrap();
    first
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(first.read(&mut buf).unwrap() > 0, "first connection served");
    assert_eq!(
        gauge("des_http_connections"),
        "1",
        "the open connection is counted"
    );
    let addr = server.addr.clone();
    let second = std::thread::spawn(move || {
        let (head, _) = request_at(&addr, "GET /health HTTP/1.1");
        (head, std::time::Instant::now())
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let closed = std::time::Instant::now();
    drop(first);
    let (head, answered) = second.join().unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        answered >= closed,
        "the second connection was served while the first was open"
    );
}
