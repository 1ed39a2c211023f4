//! des-loadgen against an in-process actix-web server (the stack
//! des-retriever serves with). Counts use loose bounds both ways; timing
//! only lower bounds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use bytes::Bytes;
use des_bench_tools::loadgen::{self, Config, Target};

fn body_of(name: &str) -> Vec<u8> {
    format!("the bytes of {name}\n").repeat(100).into_bytes()
}

/// One server for every test, on its own thread and actix runtime:
/// `/files/{name}` answers body_of(name), `/wrong/{name}` a different body,
/// `/chunked/{name}` body_of(name) chunked, `/close/{name}` body_of(name)
/// then closes the connection, `/slow` "slow" after 200 ms, `/status/{code}`
/// that status.
fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(|| {
                    App::new()
                        .route(
                            "/files/{name}",
                            web::get().to(|name: web::Path<String>| async move {
                                HttpResponse::Ok().body(body_of(&name))
                            }),
                        )
                        .route(
                            "/wrong/{name}",
                            web::get().to(|name: web::Path<String>| async move {
                                let mut b = body_of(&name);
                                b[10] ^= 1;
                                HttpResponse::Ok().body(b)
                            }),
                        )
                        .route(
                            "/chunked/{name}",
                            web::get().to(|name: web::Path<String>| async move {
                                // Unknown length: actix sends it chunked.
                                let b = Bytes::from(body_of(&name));
                                let parts = [b.slice(..7), b.slice(7..1000), b.slice(1000..)];
                                HttpResponse::Ok().streaming(futures::stream::iter(
                                    parts.map(Ok::<_, actix_web::Error>),
                                ))
                            }),
                        )
                        .route(
                            "/close/{name}",
                            web::get().to(|name: web::Path<String>| async move {
                                HttpResponse::Ok().force_close().body(body_of(&name))
                            }),
                        )
                        .route(
                            "/slow",
                            web::get().to(|| async {
                                actix_web::rt::time::sleep(Duration::from_millis(200)).await;
                                HttpResponse::Ok().body("slow")
                            }),
                        )
                        .route(
                            "/status/{code}",
                            web::get().to(|code: web::Path<u16>| async move {
                                HttpResponse::build(
                                    actix_web::http::StatusCode::from_u16(*code).unwrap(),
                                )
                                .body("status")
                            }),
                        )
                })
                .workers(1)
                .bind("127.0.0.1:0")
                .unwrap();
                tx.send(server.addrs()[0]).unwrap();
                server.run().await.unwrap();
            });
        });
        rx.recv().unwrap()
    })
}

fn config(paths: &[&str]) -> Config {
    let targets = paths.iter().map(|p| Target::parse(p)).collect();
    let mut c = Config::new(&format!("http://{}", server()), targets).unwrap();
    c.connections = 4;
    c.duration = Duration::from_millis(500);
    c
}

fn expect(path: &str, name: &str) -> (String, Bytes) {
    (path.to_owned(), Bytes::from(body_of(name)))
}

#[tokio::test]
async fn matching_bodies_pass() {
    let mut c = config(&["/files/a", "/files/b", "/files/c"]);
    c.verify = [expect("/files/a", "a"), expect("/files/b", "b")].into();
    let r = loadgen::run(c).await.unwrap();
    assert!(r.ok(), "{}", r.human());
    assert!(r.requests > 0 && r.verified > 0);
    assert_eq!((r.errors, r.mismatches), (0, 0));
    assert_eq!(r.bytes, r.requests * body_of("a").len() as u64);
}

#[tokio::test]
async fn chunked_bodies_and_closed_connections_are_read_right() {
    let mut c = config(&["/chunked/a", "/close/b", "/files/c"]);
    c.verify = [
        expect("/chunked/a", "a"),
        expect("/close/b", "b"),
        expect("/files/c", "c"),
    ]
    .into();
    let r = loadgen::run(c).await.unwrap();
    assert!(r.ok(), "{} {:?}", r.human(), r.failures);
    assert!(r.verified > 30, "{}", r.human());
}

#[tokio::test]
async fn a_wrong_body_fails_the_run() {
    let mut c = config(&["/files/a", "/wrong/b"]);
    c.verify = [expect("/files/a", "a"), expect("/wrong/b", "b")].into();
    let r = loadgen::run(c).await.unwrap();
    assert!(!r.ok());
    assert!(r.mismatches > 0, "{}", r.human());
    assert_eq!(r.errors, 0);
    assert!(r.failures[0].contains("/wrong/b"), "{:?}", r.failures);
}

#[tokio::test]
async fn a_500_fails_the_run() {
    let r = loadgen::run(config(&["/files/a", "/status/500"]))
        .await
        .unwrap();
    assert!(!r.ok());
    assert!(r.errors > 0, "{}", r.human());
    assert!(r.failures[0].contains("500"), "{:?}", r.failures);
}

#[tokio::test]
async fn a_404_fails_the_run() {
    let r = loadgen::run(config(&["/status/404"])).await.unwrap();
    assert!(!r.ok() && r.errors > 0);
}

#[tokio::test]
async fn verify_given_but_nothing_verified_fails() {
    let mut c = config(&["/files/a"]);
    c.verify = [expect("/files/zzz", "zzz")].into();
    let r = loadgen::run(c).await.unwrap();
    assert_eq!(r.verified, 0);
    assert!(!r.ok());
}

#[tokio::test]
async fn open_loop_sends_about_rate_times_duration() {
    let mut c = config(&["/files/a"]);
    c.rate = Some(200.0);
    c.duration = Duration::from_secs(2);
    c.warmup = Duration::from_millis(500);
    let t = Instant::now();
    let r = loadgen::run(c).await.unwrap();
    assert!(r.ok(), "{}", r.human());
    // 400 due in the measured 2 s; loose bounds both ways.
    assert!((200..=600).contains(&r.requests), "{}", r.human());
    // The last request is due just before the end (2.5 s after the start).
    assert!(t.elapsed() >= Duration::from_millis(2300));
    let json = r.json();
    assert_eq!(json["target_rps"], 200.0);
    assert!(json["p99_us"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn closed_loop_reports_latency_percentiles() {
    let r = loadgen::run(config(&["/files/a"])).await.unwrap();
    let j = r.json();
    let (p50, p99, max) = (
        j["p50_us"].as_u64().unwrap(),
        j["p99_us"].as_u64().unwrap(),
        j["max_us"].as_u64().unwrap(),
    );
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{j}");
    assert!(j["target_rps"].is_null());
}

#[test]
fn binary_exit_codes() {
    let bin = env!("CARGO_BIN_EXE_des-loadgen");
    let dir = std::env::temp_dir().join(format!("des-loadgen-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let paths = dir.join("paths");
    let verify = dir.join("verify");
    let local = dir.join("a.bin");
    std::fs::write(&local, body_of("a")).unwrap();
    std::fs::write(&paths, "/files/a\n/files/b\n").unwrap();
    std::fs::write(&verify, format!("/files/a\t{}\n", local.display())).unwrap();
    let base = format!("http://{}", server());
    let run = |extra: &[&str]| {
        Command::new(bin)
            .args(["--base", &base, "--connections", "2", "--duration", "300ms"])
            .args(extra)
            .output()
            .unwrap()
    };
    let p = paths.to_str().unwrap();
    let ok = run(&["--paths", p, "--verify", verify.to_str().unwrap(), "--json"]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert!(json["verified"].as_u64().unwrap() > 0);
    std::fs::write(&verify, format!("/files/b\t{}\n", local.display())).unwrap();
    let mismatch = run(&["--paths", p, "--verify", verify.to_str().unwrap()]);
    assert_eq!(mismatch.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&mismatch.stderr).contains("FAILED GET /files/b"));
    assert_eq!(run(&["--paths", p, "--rate", "x"]).status.code(), Some(2));
    assert_eq!(run(&["--paths", "/nonexistent"]).status.code(), Some(2));
    let help = Command::new(bin).arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit codes"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn open_loop_charges_a_slow_server_for_the_requests_it_held_up() {
    // One connection, a request due every 10 ms, each answered in 200 ms:
    // the fifth is sent about 800 ms after it was due. A closed loop would
    // report about 200 ms for every request.
    let mut c = config(&["/slow"]);
    c.connections = 1;
    c.rate = Some(100.0);
    c.duration = Duration::from_secs(1);
    let r = loadgen::run(c).await.unwrap();
    assert!(r.ok(), "{}", r.human());
    assert!(r.latency.max() >= 500_000, "{}", r.human());
    assert!(r.requests >= 3, "{}", r.human());
}
