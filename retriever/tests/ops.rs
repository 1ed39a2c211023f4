//! The running binary as operators see it: key reloads on SIGHUP, the
//! `hash-key` helper, draining downloads on SIGTERM, and a `/metrics` scrape
//! that `promtool check metrics` accepts.
// Helpers outside #[test] fns unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{BIN, Server, status_of};
use common::*;

const GET_A: &str = "GET /files/a.txt?created_at=2024-05-17T10:00:00Z HTTP/1.1";

/// `des-retriever hash-key`: (the key, the keys-file entry).
fn hash_key(name: &str) -> (String, String) {
    let out = Command::new(BIN)
        .args(["hash-key", "--name", name, "--scope", "read"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let key = String::from_utf8(out.stderr)
        .unwrap()
        .lines()
        .find_map(|l| l.split("not stored): ").nth(1))
        .unwrap()
        .to_string();
    // What `>> keys.toml` appends: the entry, with the key's hash only.
    let entry = String::from_utf8(out.stdout).unwrap();
    assert!(!entry.contains(&key), "the plaintext key is in the entry");
    assert!(entry.contains(&sha256_hex(key.as_bytes())), "{entry}");
    (key, entry)
}

fn status_with_key(server: &Server, key: &str) -> u16 {
    let (head, _) = server.request(&format!("{GET_A}\r\nAuthorization: Bearer {key}"));
    status_of(&head)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn keys_reload_on_sighup_and_a_bad_file_keeps_the_old_keys() {
    let store = tempfile::tempdir().unwrap();
    pack(store.path(), &[Spec::new("a.txt", text(10))], 4, 1 << 20);
    let (key_a, entry_a) = hash_key("a");
    let (key_b, entry_b) = hash_key("b");
    // The helper's standard output is a valid keys file as it stands.
    let keys = store.path().join("keys.toml");
    std::fs::write(&keys, &entry_a).unwrap();
    let server = Server::start(
        &[
            "--store",
            store.path().to_str().unwrap(),
            "--api-keys",
            keys.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(status_with_key(&server, &key_a), 200);
    assert_eq!(status_with_key(&server, &key_b), 401);

    std::fs::write(&keys, &entry_b).unwrap();
    server.signal("HUP");
    wait_for("key b to be accepted", || {
        status_with_key(&server, &key_b) == 200
    });
    assert_eq!(status_with_key(&server, &key_a), 401, "key a was revoked");

    std::fs::write(&keys, "[[keys]]\nname = \"broken\"\n").unwrap();
    server.signal("HUP");
    // The reload happened and failed; then b must still work.
    server.wait_log("API keys not reloaded", 0);
    assert_eq!(status_with_key(&server, &key_b), 200, "old keys kept");
    assert_eq!(server.terminate(), 0);
}

/// A Kubernetes Secret volume is updated in place: the file is a symlink
/// through `..data`, which is swapped atomically to a new directory, and the
/// image has no `kill` to send SIGHUP. The retriever notices the change by
/// itself; a broken update keeps the old keys.
#[test]
fn keys_reload_when_a_secret_volume_is_swapped() {
    let store = tempfile::tempdir().unwrap();
    pack(store.path(), &[Spec::new("a.txt", text(10))], 4, 1 << 20);
    let (key_a, entry_a) = hash_key("a");
    let (key_b, entry_b) = hash_key("b");
    let volume = store.path().join("secret");
    std::fs::create_dir_all(&volume).unwrap();
    // What the kubelet does on each update: a new timestamped directory, a
    // new `..data` link made beside the old one and renamed over it.
    let publish = |version: &str, content: &str| {
        let dir = volume.join(format!("..{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("keys.toml"), content).unwrap();
        let tmp = volume.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
        std::fs::rename(&tmp, volume.join("..data")).unwrap();
    };
    publish("v1", &entry_a);
    std::os::unix::fs::symlink("..data/keys.toml", volume.join("keys.toml")).unwrap();
    let keys = volume.join("keys.toml");
    let server = Server::start(
        &[
            "--store",
            store.path().to_str().unwrap(),
            "--api-keys",
            keys.to_str().unwrap(),
            "--keys-poll-interval-secs",
            "1",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(status_with_key(&server, &key_a), 200);
    assert_eq!(status_with_key(&server, &key_b), 401);

    publish("v2", &entry_b);
    let reloads = server.wait_log("API keys reloaded (file changed)", 0);
    assert_eq!(status_with_key(&server, &key_b), 200);
    assert_eq!(status_with_key(&server, &key_a), 401, "key a was revoked");

    publish("v3", "[[keys]]\nname = \"broken\"\n");
    server.wait_log("API keys not reloaded", 0);
    assert_eq!(status_with_key(&server, &key_b), 200, "old keys kept");
    assert_eq!(reloads, 1);
    assert_eq!(server.terminate(), 0);
}

#[test]
fn hash_key_from_stdin_matches_sha256sum() {
    let mut child = Command::new(BIN)
        .args(["hash-key", "--name", "ci", "--stdin", "--scope", "delete"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!("sha256 = \"{}\"", sha256_hex(b"s3cret"))),
        "{text}"
    );
    assert!(text.contains("scopes = [\"delete\"]"), "{text}");
    assert!(!text.contains("s3cret"), "the key itself is not echoed");
}

/// Reads the rest of a response slowly (a client on a thin line), after `raw`.
fn read_slowly(mut s: TcpStream, mut raw: Vec<u8>) -> Vec<u8> {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return raw,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read after {} bytes: {e}", raw.len()),
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn sigterm_lets_a_slow_download_finish() {
    let store = tempfile::tempdir().unwrap();
    let big = noise(24 << 20, 11);
    pack(
        store.path(),
        &[Spec::new("big.bin", big.clone())],
        4,
        1 << 20,
    );
    let mut server = Server::start(
        &[
            "--store",
            store.path().to_str().unwrap(),
            "--no-auth",
            "--listen",
            "127.0.0.1:0",
            "--shutdown-timeout-secs",
            "30",
        ],
        &[],
    );
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /files/big.bin?created_at=2024-05-17T10:00:00Z HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 4096];
    s.read_exact(&mut first).unwrap();
    server.signal("TERM");
    // Shutdown has begun once new connections are refused.
    wait_for("the listener to close after SIGTERM", || {
        TcpStream::connect(&server.addr).is_err()
    });
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "exited with a download in flight"
    );
    let raw = read_slowly(s, first.to_vec());
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let got = &raw[split + 4..];
    assert_eq!(got.len(), big.len(), "download cut short by shutdown");
    assert!(got == &big[..], "wrong bytes");
    assert_eq!(server.wait(), 0, "clean exit once drained");
}

fn scrape(server: &Server) -> String {
    let (head, body) = server.request("GET /metrics HTTP/1.1");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    String::from_utf8(body).unwrap()
}

fn promtool_check(text: &str, dir: &Path) {
    let file = dir.join("scrape.prom");
    std::fs::write(&file, text).unwrap();
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap_or_else(|e| panic!("promtool not runnable ({e}): apt-get install -y prometheus"));
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- scrape ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn live_scrape_passes_promtool() {
    let store = tempfile::tempdir().unwrap();
    pack(
        store.path(),
        &[
            Spec::new("a.txt", text(10)),
            Spec::new("big.bin", noise(300_000, 2)),
        ],
        4,
        100_000,
    );
    let server = Server::start(
        &[
            "--store",
            store.path().to_str().unwrap(),
            "--no-auth",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    server.request(GET_A);
    server.request(GET_A);
    server.request("GET /files/big.bin?created_at=2024-05-17T10:00:00Z HTTP/1.1");
    server.request("GET /files/none?created_at=2024-05-17T10:00:00Z HTTP/1.1");
    server.request("GET /no/route HTTP/1.1");
    server.request("GET /ready HTTP/1.1");
    let text = scrape(&server);
    for name in [
        "des_retrievals_total",
        "des_retrieval_seconds_bucket",
        "des_s3_range_calls_total{backend=\"local\",type=\"big\"} 1",
        "des_index_cache_bytes",
        "des_index_cache_hits_total",
        // On by default: the second GET of a.txt is served from memory.
        "des_payload_cache_hits_total 1",
        "des_payload_cache_misses_total 1",
        "des_payload_cache_bytes",
        "des_s3_range_calls_total{backend=\"local\",type=\"payload\"} 1",
        "http_requests_total{route=\"/ready\",status=\"200\"} 1",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    promtool_check(&text, store.path());
    // The container HEALTHCHECK helper, against this server and a closed port.
    let health = |url: &str| {
        Command::new(BIN)
            .args(["healthcheck", "--url", url, "--timeout-secs", "2"])
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(health(&format!("http://{}/health", server.addr)), Some(0));
    assert_eq!(health(&format!("http://{}/nope", server.addr)), Some(1));
    let addr = server.addr.clone();
    assert_eq!(server.terminate(), 0);
    assert_eq!(health(&format!("http://{addr}/health")), Some(1));
}
