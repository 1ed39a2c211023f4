//! What a hostile or merely crowded client may take from a pod, and what a
//! shared cache may keep: caching headers with and without keys, the admin
//! port, readiness probes shared, the bounds on big-file streams and payload
//! bytes (503 with Retry-After once reached), and big-file reads that stop
//! when the client goes away.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::test::{TestRequest, call_service, init_service};
use actix_web::web;
use common::*;
use des_retriever::config::{AuthSetting, HttpCaching, Settings};

const BIG: usize = 8 << 20;

/// `small.txt` (600 bytes, inline) and `big.bin` (8 MiB, external).
fn store(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("store");
    let files = [
        Spec::new("small.txt", noise(600, 1)),
        Spec::new("big.bin", noise(BIG, 2)),
    ];
    pack(&root, &files, 4, 1 << 20);
    root
}

macro_rules! app {
    ($root:expr, $settings:expr) => {{
        let (state, counts) = counted($root, &$settings).await;
        let data = web::Data::new(state);
        (
            init_service(des_retriever::server::app(data.clone())).await,
            counts,
            data,
        )
    }};
}

fn get(uid: &str) -> TestRequest {
    TestRequest::get().uri(&file_uri(uid, CREATED))
}

#[actix_web::test]
async fn caching_headers_follow_auth_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let root = store(dir.path());
    // Auth off, defaults: shared caches may keep it, for an hour at most.
    let (app, _, _) = app!(&root, settings(&root));
    let r = call(&app, get("small.txt").to_request()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("public, max-age=3600"));
    assert_eq!(r.header("vary"), None);

    // Configured: another max-age, and immutable only when asked for.
    let mut s = settings(&root);
    s.guards.caching = HttpCaching {
        max_age: Duration::from_secs(60),
        immutable: true,
    };
    let (app, _, _) = app!(&root, s);
    let r = call(&app, get("big.bin").to_request()).await;
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=60, immutable")
    );

    // Keys on: private to the caller, and varying with the key.
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\nname = \"r\"\nsha256 = \"{}\"\nscopes = [\"read\"]\n",
            sha256_hex(b"k")
        ),
    )
    .unwrap();
    let mut s = settings(&root);
    s.auth = AuthSetting::Keys(keys);
    let (app, _, _) = app!(&root, s);
    for req in [
        get("small.txt"),
        TestRequest::default()
            .method(actix_web::http::Method::HEAD)
            .uri(&file_uri("big.bin", CREATED)),
    ] {
        let r = call(
            &app,
            req.insert_header(("authorization", "Bearer k"))
                .to_request(),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("cache-control"), Some("private, max-age=3600"));
        assert_eq!(r.header("vary"), Some("Authorization"));
    }
    // Refusals are never cached.
    let r = call(&app, get("small.txt").to_request()).await;
    assert_eq!(
        (r.status, r.header("cache-control")),
        (401, Some("no-store"))
    );
}

#[actix_web::test]
async fn admin_port_takes_metrics_and_details_off_the_public_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = store(dir.path());
    let mut s = settings(&root);
    s.guards.admin_listen = Some("127.0.0.1:0".into());
    let (app, _, data) = app!(&root, s);
    let r = call(&app, TestRequest::get().uri("/metrics").to_request()).await;
    assert_eq!(r.status, 404);
    let r = call(&app, TestRequest::get().uri("/ready").to_request()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"status": "ready"}));

    let admin = init_service(des_retriever::server::admin_app(data)).await;
    let r = call(&admin, TestRequest::get().uri("/metrics").to_request()).await;
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(r.bytes()).contains("des_overload_rejections_total"));
    let r = call(&admin, TestRequest::get().uri("/ready").to_request()).await;
    assert_eq!(r.json()["backends"][0]["ok"], true, "{:?}", r.json());
    let r = call(&admin, get("small.txt").to_request()).await;
    assert_eq!(r.status, 404, "the admin port serves no files");
}

#[actix_web::test]
async fn readiness_probes_are_shared() {
    let dir = tempfile::tempdir().unwrap();
    let root = store(dir.path());
    let (app, counts, _) = app!(&root, settings(&root));
    let before = counts.counts().total();
    let calls = (0..20).map(|_| call(&app, TestRequest::get().uri("/ready").to_request()));
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.status, 200);
    }
    let probes = counts.counts().total() - before;
    assert!(
        (1..=2).contains(&probes),
        "20 concurrent /ready calls sent {probes} storage requests"
    );
}

fn assert_overloaded(r: &Resp) {
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"], "unavailable", "{:?}", r.json());
}

#[actix_web::test]
async fn big_streams_are_bounded_and_released() {
    let dir = tempfile::tempdir().unwrap();
    let root = store(dir.path());
    let mut s: Settings = settings(&root);
    s.guards.max_big_streams = 1;
    let (app, counts, data) = app!(&root, s);
    // A response not yet read holds its stream, like a slow client.
    let first = call_service(&app, get("big.bin").to_request()).await;
    assert_eq!(first.status(), 200);
    assert_eq!(metric(&data, "des_big_streams_active"), 1.0);
    let reads = counts.counts().get;
    let r = call(&app, get("big.bin").to_request()).await;
    assert_overloaded(&r);
    assert_eq!(
        counts.counts().get,
        reads,
        "refused before any payload read"
    );
    assert_eq!(
        metric(
            &data,
            "des_overload_rejections_total{resource=\"big_streams\"}"
        ),
        1.0
    );
    // Small files are not held up by big ones.
    assert_eq!(call(&app, get("small.txt").to_request()).await.status, 200);
    drop(first);
    assert_eq!(metric(&data, "des_big_streams_active"), 0.0);
    let r = call(&app, get("big.bin").to_request()).await;
    assert_eq!((r.status, r.bytes()), (200, &noise(BIG, 2)[..]));
}

#[actix_web::test]
async fn payload_bytes_in_flight_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let root = store(dir.path());
    let mut s = settings(&root);
    s.guards.max_payload_bytes_in_flight = 1000;
    let (app, _, data) = app!(&root, s);
    let first = call_service(&app, get("small.txt").to_request()).await;
    assert_eq!(first.status(), 200);
    assert_eq!(metric(&data, "des_payload_bytes_in_flight"), 600.0);
    assert_overloaded(&call(&app, get("small.txt").to_request()).await);
    let Ok(body) = actix_web::body::to_bytes(first.into_body()).await else {
        panic!("body failed")
    };
    assert_eq!(&body[..], &noise(600, 1)[..]);
    assert_eq!(metric(&data, "des_payload_bytes_in_flight"), 0.0);
    assert_eq!(call(&app, get("small.txt").to_request()).await.status, 200);
}

#[actix_web::test]
async fn a_client_that_goes_away_stops_the_big_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = store(dir.path());
    let (app, counts, data) = app!(&root, settings(&root));
    let res = call_service(&app, get("big.bin").to_request()).await;
    let before = counts.counts().bytes;
    let mut body = Box::pin(res.into_body());
    let first = futures::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await;
    assert!(first.unwrap().is_ok());
    drop(body);
    // Give anything still running a chance to read on.
    tokio::task::yield_now().await;
    actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    let read = counts.counts().bytes - before;
    assert!(
        read < BIG as u64 / 2,
        "{read} of {BIG} bytes read after the client left"
    );
    assert_eq!(metric(&data, "des_big_streams_active"), 0.0);
}

/// The `_big/` object of `big.bin` in `root`, and its chunk table's path.
fn big_paths(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let key =
        des_format::v3::external_key(&des_format::DigestAlgorithm::Blake3.digest(&noise(BIG, 2)));
    let table = des_format::v3::chunk_table_key(&key);
    (root.join(key), root.join(table))
}

fn range(uid: &str, spec: &str) -> TestRequest {
    get(uid).insert_header(("range", format!("bytes={spec}")))
}

#[actix_web::test]
async fn a_range_of_a_big_file_reads_only_its_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let root = store(dir.path());
    let (_, table) = big_paths(&root);
    assert!(table.exists(), "the packer writes a chunk table");
    let (app, counts, _) = app!(&root, settings(&root));
    let want = noise(BIG, 2);
    // Warm the index, so what follows is the payload's cost alone.
    assert_eq!(
        call(&app, range("big.bin", "0-0").to_request())
            .await
            .status,
        206
    );
    for (spec, lo, hi) in [
        ("0-0", 0, 1),
        ("3145728-3146000", 3 << 20, 3_146_001),
        ("8388600-", BIG - 8, BIG),
    ] {
        let before = counts.counts();
        let r = call(&app, range("big.bin", spec).to_request()).await;
        assert_eq!((r.status, r.bytes()), (206, &want[lo..hi]), "{spec}");
        let after = counts.counts();
        assert_eq!(after.get - before.get, 2, "{spec}: table + chunks");
        let read = after.bytes - before.bytes;
        assert!(
            read <= (1 << 20) + 4096,
            "{spec}: {read} bytes read for {} bytes",
            hi - lo
        );
    }
}

#[actix_web::test]
async fn chunk_checks_catch_what_the_range_covers() {
    let dir = tempfile::tempdir().unwrap();
    let root = store(dir.path());
    let (big, _) = big_paths(&root);
    let mut bytes = std::fs::read(&big).unwrap();
    bytes[(5 << 20) + 7] ^= 0x01;
    std::fs::write(&big, &bytes).unwrap();
    let (app, _, data) = app!(&root, settings(&root));
    let r = call(&app, range("big.bin", "0-99").to_request()).await;
    assert_eq!(
        (r.status, r.bytes()),
        (206, &noise(BIG, 2)[..100]),
        "chunk 0 is intact"
    );
    let r = call(&app, range("big.bin", "5242880-5242999").to_request()).await;
    assert_eq!(
        r.status, 206,
        "the status line goes out before the bytes are read"
    );
    assert!(r.body.is_err(), "a corrupt chunk must never be sent");
    assert_eq!(metric(&data, "des_corruption_detected_total"), 1.0);
}

#[actix_web::test]
async fn ranges_without_a_usable_table_read_the_whole_object() {
    let dir = tempfile::tempdir().unwrap();
    let root = store(dir.path());
    let (_, table) = big_paths(&root);
    let want = noise(BIG, 2);
    // Damaged: it no longer binds to the index; counted, then not used.
    let mut t = std::fs::read(&table).unwrap();
    let last = t.len() - 5;
    t[last] ^= 0x40;
    std::fs::write(&table, &t).unwrap();
    let (app, counts, data) = app!(&root, settings(&root));
    let before = counts.counts().bytes;
    let r = call(&app, range("big.bin", "10-19").to_request()).await;
    assert_eq!((r.status, r.bytes()), (206, &want[10..20]));
    assert!(
        counts.counts().bytes - before >= BIG as u64,
        "whole object read and checked"
    );
    assert_eq!(metric(&data, "des_corruption_detected_total"), 1.0);
    // Missing (packed before tables existed): the same path, not corruption.
    std::fs::remove_file(&table).unwrap();
    let r = call(&app, range("big.bin", "10-19").to_request()).await;
    assert_eq!((r.status, r.bytes()), (206, &want[10..20]));
    assert_eq!(metric(&data, "des_corruption_detected_total"), 1.0);
}
