//! API keys, rate limits, the DELETE route's checks, and the metrics the
//! service exports, against a local store packed by the real packer.
// Helpers outside #[test] fns unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix_web::test::{TestRequest, init_service};
use actix_web::web;
use common::*;
use des_retriever::config::{AuthSetting, Rate, RateLimits};
use des_retriever::limits::Limits;
use governor::clock::FakeRelativeClock;

fn files() -> Vec<Spec> {
    vec![
        Spec::new("pub/a.txt", text(300)),
        Spec::new("pub/secret/b.txt", text(200)),
        Spec::new("priv/c.txt", text(100)),
    ]
}

fn sha(key: &str) -> String {
    sha256_hex(key.as_bytes())
}

/// Keys: reader (read, pub/ but not pub/secret/), admin (read+delete),
/// expired (read, expired), deleter (delete only: may not read).
fn keys_file(dir: &Path) -> PathBuf {
    let p = dir.join("keys.toml");
    std::fs::write(
        &p,
        format!(
            "[[keys]]\nname = \"reader\"\nsha256 = \"{}\"\nscopes = [\"read\"]\n\
             allow_prefixes = [\"pub/\"]\ndeny_prefixes = [\"pub/secret/\"]\n\n\
             [[keys]]\nname = \"admin\"\nsha256 = \"{}\"\nscopes = [\"read\", \"delete\"]\n\n\
             [[keys]]\nname = \"expired\"\nsha256 = \"{}\"\nscopes = [\"read\"]\n\
             expires_at = \"2021-06-01T00:00:00Z\"\n\n\
             [[keys]]\nname = \"deleter\"\nsha256 = \"{}\"\nscopes = [\"delete\"]\n\n\
             [[keys]]\nname = \"prometheus\"\nsha256 = \"{}\"\nscopes = [\"metrics\"]\n",
            sha("k-reader"),
            sha("k-admin"),
            sha("k-expired"),
            sha("k-deleter"),
            sha("k-metrics")
        ),
    )
    .unwrap();
    p
}

struct Fixture {
    dir: tempfile::TempDir,
    root: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    pack(&root, &files(), 4, 10 << 20);
    Fixture { dir, root }
}

macro_rules! app {
    ($settings:expr) => {{
        let s = $settings;
        let root = match &s.source {
            des_retriever::config::Source::Location(l) => PathBuf::from(l),
            other => panic!("{other:?}"),
        };
        let (state, counts) = counted(&root, &s).await;
        (
            init_service(des_retriever::server::app(web::Data::new(state))).await,
            counts,
        )
    }};
}

fn get(uid: &str, key: Option<&str>) -> TestRequest {
    let mut r = TestRequest::get().uri(&file_uri(uid, CREATED));
    if let Some(k) = key {
        r = r.insert_header(("authorization", format!("Bearer {k}")));
    }
    r
}

fn delete(query: &str, key: Option<&str>) -> TestRequest {
    let mut r = TestRequest::delete().uri(&format!("/files/pub/a.txt?{query}"));
    if let Some(k) = key {
        r = r.insert_header(("authorization", format!("Bearer {k}")));
    }
    r
}

#[actix_web::test]
async fn auth_matrix() {
    let f = fixture();
    let mut s = settings(&f.root);
    s.auth = AuthSetting::Keys(keys_file(f.dir.path()));
    let (app, counts) = app!(s);
    let before = counts.counts();
    let cases = [
        ("pub/a.txt", None, 401, "no key"),
        ("pub/a.txt", Some("wrong"), 401, "unknown key"),
        ("pub/a.txt", Some("k-expired"), 401, "expired key"),
        (
            "priv/c.txt",
            Some("k-reader"),
            403,
            "outside allow_prefixes",
        ),
        ("pub/secret/b.txt", Some("k-reader"), 403, "deny_prefixes"),
        (
            "pub/nothing.txt",
            Some("k-reader"),
            404,
            "allowed but absent",
        ),
        ("pub/a.txt", Some("k-deleter"), 403, "no read scope"),
    ];
    for (uid, key, status, why) in cases {
        let r = call(&app, get(uid, key).to_request()).await;
        assert_eq!(r.status, status, "{why}");
        if status == 401 {
            assert!(
                r.header("www-authenticate").unwrap().starts_with("Bearer"),
                "{why}"
            );
            assert_eq!(r.json()["error"], "unauthorized");
        }
        if status == 403 {
            assert_eq!(r.json()["error"], "forbidden");
            assert!(r.header("www-authenticate").is_none());
        }
    }
    assert_eq!(
        counts.counts().total() - before.total(),
        1,
        "only the allowed 404 read storage (its shard's index)"
    );
    let r = call(&app, get("pub/a.txt", Some("k-reader")).to_request()).await;
    assert_eq!((r.status, r.bytes()), (200, &text(300)[..]));
    let r = call(&app, get("priv/c.txt", Some("k-admin")).to_request()).await;
    assert_eq!(r.status, 200);
    // HEAD needs the read scope too.
    let r = call(
        &app,
        TestRequest::default()
            .method(actix_web::http::Method::HEAD)
            .uri(&file_uri("pub/a.txt", CREATED))
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 401);
    // Probes need no key; readiness says only its status to them.
    for path in ["/health", "/ready"] {
        let r = call(&app, TestRequest::get().uri(path).to_request()).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(r.json().get("backends").is_none(), "{path}: {:?}", r.json());
    }
    // Metrics, and readiness's detail, need a key with the metrics scope.
    let ops = |path: &str, key: Option<&str>| {
        let mut req = TestRequest::get().uri(path);
        if let Some(k) = key {
            req = req.insert_header(("authorization", format!("Bearer {k}")));
        }
        req.to_request()
    };
    assert_eq!(call(&app, ops("/metrics", None)).await.status, 401);
    assert_eq!(
        call(&app, ops("/metrics", Some("k-admin"))).await.status,
        403
    );
    let r = call(&app, ops("/metrics", Some("k-metrics"))).await;
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(r.bytes()).contains("des_retrievals_total"));
    let r = call(&app, ops("/ready", Some("k-metrics"))).await;
    assert!(r.json()["backends"].is_array(), "{:?}", r.json());
    let r = call(&app, ops("/ready", Some("k-reader"))).await;
    assert!(
        r.json().get("backends").is_none(),
        "a read key sees the status only"
    );
}

#[actix_web::test]
async fn delete_route_checks_scope_and_parameters() {
    let f = fixture();
    let mut s = settings(&f.root);
    s.auth = AuthSetting::Keys(keys_file(f.dir.path()));
    let (app, counts) = app!(s);
    let before = counts.counts();
    let ok = "created_at=2024-05-17T10:00:00Z&reason=gdpr&ticket_id=T-1&deleted_by=dpo";
    let cases = [
        (ok, None, 401, "unauthorized"),
        (ok, Some("k-reader"), 403, "forbidden"),
        (
            "created_at=2024-05-17T10:00:00Z",
            Some("k-admin"),
            400,
            "bad_request",
        ),
        (
            "created_at=2024-05-17T10:00:00Z&reason=because",
            Some("k-admin"),
            400,
            "bad_request",
        ),
        ("reason=gdpr", Some("k-admin"), 400, "bad_request"),
        (
            "created_at=yesterday&reason=gdpr",
            Some("k-admin"),
            400,
            "bad_request",
        ),
        (
            "created_at=2024-05-17T10:00:00Z&reason=gdpr&force=1",
            Some("k-admin"),
            400,
            "bad_request",
        ),
        (
            "created_at=2024-05-17T10:00:00Z&reason=gdpr&ticket_id=a%0Ab",
            Some("k-admin"),
            400,
            "bad_request",
        ),
    ];
    for (query, key, status, code) in cases {
        let r = call(&app, delete(query, key).to_request()).await;
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (status, Some(code)),
            "{query} {key:?}"
        );
    }
    assert_eq!(
        counts.counts().total(),
        before.total(),
        "refused before any I/O"
    );
    // Valid and authorised: logged (see tests/deletes.rs for the rest).
    let r = call(&app, delete(ok, Some("k-admin")).to_request()).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["deleted_by"], "dpo (key admin)");
    assert_eq!(counts.counts().write, 1, "one tombstone object");
}

fn rate(per_second: u32, burst: u32) -> Option<Rate> {
    Some(Rate {
        per_second: NonZeroU32::new(per_second).unwrap(),
        burst: NonZeroU32::new(burst).unwrap(),
    })
}

#[actix_web::test]
async fn rate_limits_per_key_and_per_ip() {
    let f = fixture();
    let mut s = settings(&f.root);
    s.auth = AuthSetting::Keys(keys_file(f.dir.path()));
    s.rate_limits = RateLimits {
        per_key: rate(1, 2),
        per_ip: rate(1, 4),
    };
    // Buckets refill as this clock is advanced, not while the test runs.
    let clock = FakeRelativeClock::default();
    let (mut state, _) = counted(&f.root, &s).await;
    state.limits = Limits::with_clock(&s.rate_limits, 64, &clock);
    let app = init_service(des_retriever::server::app(web::Data::new(state))).await;
    let from = |ip: [u8; 4]| SocketAddr::from((ip, 5000));
    let req = |key: &str, ip: [u8; 4]| get("pub/a.txt", Some(key)).peer_addr(from(ip));
    let status = |r: Resp| (r.status, r.json()["message"].as_str().map(String::from));
    // The reader's burst of 2, from two addresses: the key is what is limited.
    for ip in [[10, 0, 0, 1], [10, 0, 0, 2]] {
        let r = call(&app, req("k-reader", ip).to_request()).await;
        assert_eq!(r.status, 200);
    }
    let r = call(&app, req("k-reader", [10, 0, 0, 3]).to_request()).await;
    assert_eq!(r.header("retry-after"), Some("1"));
    let throttled = |what: &str| (429, Some(format!("rate limit per {what} exceeded")));
    assert_eq!(status(r), throttled("API key"));
    // One token a second: after one second, one more request and no other.
    clock.advance(Duration::from_secs(1));
    let r = call(&app, req("k-reader", [10, 0, 0, 3]).to_request()).await;
    assert_eq!(r.status, 200);
    let r = call(&app, req("k-reader", [10, 0, 0, 3]).to_request()).await;
    assert_eq!(status(r), throttled("API key"));
    // Another key is not affected...
    let r = call(&app, req("k-admin", [10, 0, 0, 4]).to_request()).await;
    assert_eq!(r.status, 200);
    // ...until its address runs out (4 per address: admin, then 3 bad keys).
    for _ in 0..3 {
        let r = call(&app, req("guess", [10, 0, 0, 4]).to_request()).await;
        assert_eq!(r.status, 401, "key guessing counts against the address");
    }
    let r = call(&app, req("k-admin", [10, 0, 0, 4]).to_request()).await;
    assert!(r.header("retry-after").is_some());
    assert_eq!(status(r), throttled("client address"));
    // Limits apply to files only.
    let r = call(
        &app,
        TestRequest::get()
            .uri("/health")
            .peer_addr(from([10, 0, 0, 4]))
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 200);
}

/// The value of the sample `name` (exact series text) in a scrape; a
/// series that is not there fails the test (it is not zero).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[actix_web::test]
async fn metrics_count_requests_reads_and_cache() {
    let f = fixture();
    let (app, _) = app!(settings(&f.root));
    for _ in 0..3 {
        let r = call(&app, get("pub/a.txt", None).to_request()).await;
        assert_eq!(r.status, 200);
    }
    // Another day: a shard that does not exist (one index read, remembered).
    let absent = file_uri("pub/a.txt", "2030-01-01T00:00:00Z");
    let r = call(&app, TestRequest::get().uri(&absent).to_request()).await;
    assert_eq!(r.status, 404);
    let r = call(&app, TestRequest::get().uri("/files/x").to_request()).await;
    assert_eq!(r.status, 400);
    let r = call(&app, TestRequest::get().uri("/nope/1").to_request()).await;
    assert_eq!(r.status, 404);
    let r = call(&app, TestRequest::get().uri("/metrics").to_request()).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = String::from_utf8(r.bytes().to_vec()).unwrap();
    let expect = [
        (
            "des_retrievals_total{backend=\"local\",status=\"200\"}",
            3.0,
        ),
        (
            "des_retrievals_total{backend=\"local\",status=\"404\"}",
            1.0,
        ),
        ("des_retrievals_total{backend=\"none\",status=\"400\"}", 1.0),
        ("des_retrieval_seconds_count", 5.0),
        (
            "des_s3_range_calls_total{backend=\"local\",type=\"index\"}",
            2.0,
        ),
        (
            "des_s3_range_calls_total{backend=\"local\",type=\"payload\"}",
            3.0,
        ),
        ("des_index_cache_misses_total", 2.0),
        ("des_index_cache_hits_total", 2.0),
        (
            "http_requests_total{route=\"/files/{uid}\",status=\"200\"}",
            3.0,
        ),
        (
            "http_requests_total{route=\"unmatched\",status=\"404\"}",
            1.0,
        ),
        ("des_corruption_detected_total", 0.0),
    ];
    for (series, want) in expect {
        assert_eq!(sample(&text, series), want, "{series} in\n{text}");
    }
    assert!(sample(&text, "des_index_cache_bytes") > 0.0, "{text}");
    assert!(
        !text.contains("pub/a.txt"),
        "raw paths must not become label values"
    );
}
