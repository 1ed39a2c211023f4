//! The retriever on real S3 (single-node Garage servers): one `s3://` store
//! through the binary, request budgets, replaced and corrupt shards, and two
//! zones with one of them going down.
//!
//! Needs `garage` 2.5.0 (`scripts/garage.sh install`); run with
//! `cargo test -p des-retriever --features garage-tests --test garage`.
//! A missing binary fails these tests, it does not skip them.
// Helpers outside #[test] fns unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_web::test::{TestRequest, init_service};
use actix_web::web;
use common::process::{Server, header, status_of};
use common::*;
use des_format::routing::shard_index;
use des_retriever::{AppState, CountingStore, Settings, Storage};
use des_storage::resilience::BreakerState;
use des_storage::store::shard_index_of_key;
use des_storage::testing::S3Server;
use des_storage::zones::{S3Location, Zones, ZonesFile};
use des_storage::{ObjectStore, S3Store};

const N_BITS: u8 = 4;

fn garage() -> S3Server {
    S3Server::garage().unwrap_or_else(|e| panic!("cannot start garage: {e}"))
}

fn s3(server: &S3Server, prefix: &str) -> Arc<dyn ObjectStore> {
    Arc::new(S3Store::new(server.config().with_prefix(prefix)).unwrap())
}

#[actix_web::test]
async fn single_s3_store_through_the_binary() {
    let server = garage();
    let dir = tempfile::tempdir().unwrap();
    let big = noise(400_000, 3);
    let files = [
        Spec::new("page.html", text(5000)),
        Spec::new("big.bin", big.clone()),
    ];
    pack(dir.path(), &files, N_BITS, 100_000);
    upload(dir.path(), &*s3(&server, "single"), |_| true).await;
    let location = format!("s3://{}/single", server.bucket());
    let retriever = Server::start(
        &["--store", &location, "--no-auth", "--listen", "127.0.0.1:0"],
        &[
            ("AWS_ACCESS_KEY_ID", server.access_key()),
            ("AWS_SECRET_ACCESS_KEY", server.secret_key()),
            ("AWS_REGION", server.region()),
            ("AWS_ENDPOINT_URL", server.endpoint()),
        ],
    );
    let page = "/files/page.html?created_at=2024-05-17T10:00:00Z";
    let (head, body) = retriever.request(&format!("GET {page} HTTP/1.1"));
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(body, text(5000));
    let etag = header(&head, "etag").unwrap().to_string();

    // (extra header, status, Content-Range, body)
    type Case<'a> = (&'a str, u16, Option<&'a str>, Option<Vec<u8>>);
    let cases: [Case; 6] = [
        (
            "Range: bytes=0-0",
            206,
            Some("bytes 0-0/5000"),
            Some(text(5000)[..1].to_vec()),
        ),
        (
            "Range: bytes=-5",
            206,
            Some("bytes 4995-4999/5000"),
            Some(text(5000)[4995..].to_vec()),
        ),
        (
            "Range: bytes=4990-99999",
            206,
            Some("bytes 4990-4999/5000"),
            Some(text(5000)[4990..].to_vec()),
        ),
        ("Range: bytes=5000-", 416, Some("bytes */5000"), None),
        ("Range: bytes=9-3", 200, None, Some(text(5000))),
        ("Range: bytes=0-1,5-6", 200, None, Some(text(5000))),
    ];
    for (extra, status, range, want) in cases {
        let (head, body) = retriever.request(&format!("GET {page} HTTP/1.1\r\n{extra}"));
        assert_eq!(status_of(&head), status, "{extra}: {head}");
        assert_eq!(header(&head, "content-range"), range, "{extra}");
        if let Some(want) = want {
            assert_eq!(body, want, "{extra}");
        }
    }
    let (head, body) = retriever.request(&format!("GET {page} HTTP/1.1\r\nIf-None-Match: {etag}"));
    assert_eq!((status_of(&head), body.len()), (304, 0));
    let (head, body) = retriever.request(&format!("HEAD {page} HTTP/1.1"));
    assert_eq!(status_of(&head), 200);
    assert_eq!(header(&head, "content-length"), Some("5000"));
    assert!(body.is_empty());
    let (head, body) =
        retriever.request("GET /files/big.bin?created_at=2024-05-17T10:00:00Z HTTP/1.1");
    assert_eq!(status_of(&head), 200);
    assert_eq!(body.len(), big.len(), "{head}");
    assert!(body == big, "big file streamed from S3");
    let (head, _) = retriever.request("GET /files/nope?created_at=2024-05-17T10:00:00Z HTTP/1.1");
    assert_eq!(status_of(&head), 404);
    let (head, _) = retriever.request("GET /files/page.html HTTP/1.1");
    assert_eq!(status_of(&head), 400);
    let (head, body) = retriever
        .request("DELETE /files/page.html?created_at=2024-05-17T10:00:00Z&reason=gdpr HTTP/1.1");
    assert_eq!(status_of(&head), 202, "{}", String::from_utf8_lossy(&body));
    let (head, _) = retriever.request(&format!("GET {page} HTTP/1.1"));
    assert_eq!(status_of(&head), 410, "deleted on S3");
    let (head, _) = retriever.request("GET /ready HTTP/1.1");
    assert_eq!(status_of(&head), 200);
    let (_, metrics) = retriever.request("GET /metrics HTTP/1.1");
    let metrics = String::from_utf8(metrics).unwrap();
    for series in [
        "des_s3_range_calls_total{backend=\"s3\",type=\"index\"} 2",
        "des_s3_range_calls_total{backend=\"s3\",type=\"big\"} 1",
        "des_retrievals_total{backend=\"s3\",status=\"206\"} 3",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    assert_eq!(retriever.terminate(), 0);
}

macro_rules! app_on {
    ($objects:expr) => {{ app_on!($objects, settings(Path::new("/unused"))) }};
    ($objects:expr, $settings:expr) => {{
        let dir_settings = $settings;
        let state = state_on($objects, &dir_settings).await;
        init_service(des_retriever::server::app(web::Data::new(state))).await
    }};
}

#[actix_web::test]
async fn request_budget_and_single_flight_on_s3() {
    let server = garage();
    let dir = tempfile::tempdir().unwrap();
    let want = shard_index("x.txt", N_BITS).unwrap();
    let mates: Vec<String> = (0..)
        .map(|i| format!("m{i}"))
        .filter(|u| shard_index(u, N_BITS).unwrap() == want)
        .take(3)
        .collect();
    // y: in another shard, so warming it leaves x's shard cold.
    let y = (0..)
        .map(|i| format!("y{i}"))
        .find(|u| shard_index(u, N_BITS).unwrap() != want)
        .unwrap();
    let mut files: Vec<Spec> = mates.iter().map(|u| Spec::new(u, u.repeat(50))).collect();
    files.push(Spec::new("x.txt", text(700)));
    files.push(Spec::new(&y, text(900)));
    pack(dir.path(), &files, N_BITS, 10 << 20);
    upload(dir.path(), &*s3(&server, "budget"), |_| true).await;
    let counting = CountingStore::new(s3(&server, "budget"));
    let app = app_on!(Arc::new(counting.clone()));
    let c0 = counting.counts();
    let r = call(
        &app,
        TestRequest::get().uri(&file_uri(&y, CREATED)).to_request(),
    )
    .await;
    assert_eq!((r.status, r.bytes()), (200, &text(900)[..]));
    let c1 = counting.counts();
    assert_eq!(c1.total() - c0.total(), 2, "cold: suffix + payload");
    let r = call(
        &app,
        TestRequest::get().uri(&file_uri(&y, CREATED)).to_request(),
    )
    .await;
    assert_eq!(r.status, 200);
    let c2 = counting.counts();
    assert_eq!(c2.total() - c1.total(), 1, "warm: payload only");

    let uids: Vec<&str> = (0..100)
        .map(|i| {
            if i % 4 == 3 {
                "x.txt"
            } else {
                mates[i % 4].as_str()
            }
        })
        .collect();
    let calls = uids.iter().map(|u| {
        call(
            &app,
            TestRequest::get().uri(&file_uri(u, CREATED)).to_request(),
        )
    });
    for (uid, r) in uids.iter().zip(futures::future::join_all(calls).await) {
        assert_eq!(r.status, 200, "{uid}");
    }
    let c3 = counting.counts();
    assert_eq!(
        c3.suffix_get - c2.suffix_get,
        1,
        "100 concurrent cold requests, one index read"
    );
    assert_eq!(c3.get - c2.get, 101);
}

/// With the hot payload cache, 100 concurrent requests for 4 uncached files
/// make one read per file: the others wait for its bytes.
#[actix_web::test]
async fn concurrent_misses_make_one_read_per_file_on_s3() {
    let server = garage();
    let dir = tempfile::tempdir().unwrap();
    let uids = ["a.txt", "b.txt", "c.txt", "d.txt"];
    let files: Vec<Spec> = uids.iter().map(|u| Spec::new(u, u.repeat(300))).collect();
    pack(dir.path(), &files, N_BITS, 10 << 20);
    upload(dir.path(), &*s3(&server, "flight"), |_| true).await;
    let counting = CountingStore::new(s3(&server, "flight"));
    let hot = Settings {
        payload_cache_bytes: 1 << 20,
        ..settings(Path::new("/unused"))
    };
    let app = app_on!(Arc::new(counting.clone()), hot);
    let c0 = counting.counts();
    let calls = (0..100).map(|i| {
        let uid = uids[i % 4];
        call(
            &app,
            TestRequest::get().uri(&file_uri(uid, CREATED)).to_request(),
        )
    });
    for (i, r) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            (r.status, r.bytes()),
            (200, uids[i % 4].repeat(300).as_bytes())
        );
    }
    let c1 = counting.counts();
    let indexes = c1.suffix_get - c0.suffix_get;
    assert_eq!(c1.get - c0.get - indexes, 4, "one payload read per file");
}

#[actix_web::test]
async fn replaced_and_corrupt_shards_on_s3() {
    let server = garage();
    let objects = s3(&server, "replace");
    let want = shard_index("x.bin", N_BITS).unwrap();
    let other = (0..)
        .map(|i| format!("o{i}"))
        .find(|u| shard_index(u, N_BITS).unwrap() == want)
        .unwrap();
    let x = noise(60_000, 5);
    let v1 = tempfile::tempdir().unwrap();
    pack(
        v1.path(),
        &[Spec::new("x.bin", x.clone())],
        N_BITS,
        10 << 20,
    );
    upload(v1.path(), &*objects, |_| true).await;
    let app = app_on!(Arc::clone(&objects));
    let uri = file_uri("x.bin", CREATED);
    let r = call(&app, TestRequest::get().uri(&uri).to_request()).await;
    assert!(r.status == 200 && r.bytes() == &x[..]);

    // Same file, another shard version: x moves within the shard.
    let v2 = tempfile::tempdir().unwrap();
    let files = [
        Spec::new(&other, noise(30_000, 6)),
        Spec::new("x.bin", x.clone()),
    ];
    pack(v2.path(), &files, N_BITS, 10 << 20);
    upload(v2.path(), &*objects, |k| k.ends_with(".des")).await;
    let r = call(&app, TestRequest::get().uri(&uri).to_request()).await;
    assert_eq!(r.status, 200);
    assert!(
        r.bytes() == &x[..],
        "stale cached index must not misread the new shard"
    );

    // One flipped byte in the middle of the shard (inside a payload).
    let shard = std::fs::read_dir(v2.path().join("20240517"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            shard_index_of_key(&format!(
                "20240517/{}",
                p.file_name().unwrap().to_str().unwrap()
            ))
            .ok()
                == Some(want)
        })
        .unwrap();
    let mut bytes = std::fs::read(&shard).unwrap();
    for at in [10_000, 50_000] {
        bytes[at] ^= 0x55;
    }
    std::fs::write(&shard, bytes).unwrap();
    upload(v2.path(), &*objects, |k| k.ends_with(".des")).await;
    for uid in ["x.bin", other.as_str()] {
        let r = call(
            &app,
            TestRequest::get().uri(&file_uri(uid, CREATED)).to_request(),
        )
        .await;
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (500, Some("corrupt")),
            "{uid}"
        );
    }
    let r = call(&app, TestRequest::get().uri("/metrics").to_request()).await;
    let text = String::from_utf8(r.bytes().to_vec()).unwrap();
    assert!(!text.contains("des_corruption_detected_total 0"), "{text}");
}

/// Two zones (shards 0-7 on `a`, 8-15 on `b`), each its own Garage.
fn zones_file(a: &S3Server, b: &S3Server) -> ZonesFile {
    let yaml = format!(
        "n_bits: {N_BITS}\n\
         retry: {{max_attempts: 1}}\n\
         breaker: {{consecutive_failures: 3, cool_down_ms: 60000}}\n\
         zones:\n\
         - name: a\n  range: {{start: 0, end: 7}}\n  s3: {{bucket: {}, prefix: za, endpoint_url: \"{}\"}}\n\
         - name: b\n  range: {{start: 8, end: 15}}\n  s3: {{bucket: {}, prefix: zb, endpoint_url: \"{}\"}}\n",
        a.bucket(),
        a.endpoint(),
        b.bucket(),
        b.endpoint()
    );
    ZonesFile::from_yaml_str(&yaml).unwrap()
}

fn zone_of(uid: &str) -> char {
    if shard_index(uid, N_BITS).unwrap() < 8 {
        'a'
    } else {
        'b'
    }
}

#[actix_web::test]
async fn two_zones_and_a_zone_outage() {
    let a = garage();
    let mut b = garage();
    let dir = tempfile::tempdir().unwrap();
    let uids: Vec<String> = (0..40).map(|i| format!("z{i}.txt")).collect();
    let files: Vec<Spec> = uids.iter().map(|u| Spec::new(u, u.repeat(30))).collect();
    pack(dir.path(), &files, N_BITS, 10 << 20);
    // Shards go to their zone; store settings (and big files) to both.
    let in_zone = |zone: u32| {
        move |key: &str| match shard_index_of_key(key) {
            Ok(i) => (i < 8) == (zone == 0),
            Err(_) => true,
        }
    };
    upload(dir.path(), &*s3(&a, "za"), in_zone(0)).await;
    upload(dir.path(), &*s3(&b, "zb"), in_zone(1)).await;
    let servers = [
        (a.endpoint().to_string(), a.config()),
        (b.endpoint().to_string(), b.config()),
    ];
    let zones = Zones::build(&zones_file(&a, &b), |loc: &S3Location| {
        let (_, cfg) = servers
            .iter()
            .find(|(e, _)| Some(e) == loc.endpoint_url.as_ref())
            .unwrap();
        Ok(Arc::new(S3Store::new(cfg.clone().with_prefix(&loc.prefix))?) as Arc<dyn ObjectStore>)
    })
    .unwrap();
    let zones = Arc::new(zones);
    let mut state = AppState::open(
        &Storage::zones(Arc::clone(&zones)),
        &settings(Path::new("/unused")),
    )
    .await
    .unwrap();
    // Each /ready call probes: the shared probe is hardening.rs's subject.
    state.readiness = des_retriever::ready::Readiness::fresh_for(Duration::ZERO);
    let data = web::Data::new(state);
    let app = init_service(des_retriever::server::app(data.clone())).await;
    let admin = init_service(des_retriever::server::admin_app(data)).await;
    for uid in &uids {
        let r = call(
            &app,
            TestRequest::get().uri(&file_uri(uid, CREATED)).to_request(),
        )
        .await;
        assert_eq!(
            (r.status, r.bytes()),
            (200, uid.repeat(30).as_bytes()),
            "{uid}"
        );
    }
    let r = call(&app, TestRequest::get().uri("/ready").to_request()).await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("ready"))
    );

    b.stop().unwrap();
    let in_b: Vec<&String> = uids.iter().filter(|u| zone_of(u) == 'b').collect();
    let in_a: Vec<&String> = uids.iter().filter(|u| zone_of(u) == 'a').collect();
    assert!(in_a.len() >= 5 && in_b.len() >= 5);
    // Failures open b's breaker; from then on b's files are refused by the
    // breaker itself (open before the request and after it: no probe went
    // out), with no timing threshold a loaded machine could miss.
    let b_open = || zones.get("b").unwrap().breakers[0].1.state() == BreakerState::Open;
    let mut refused_by_breaker = 0;
    for uid in in_b.iter().cycle().take(20) {
        let open_before = b_open();
        let r = call(
            &app,
            TestRequest::get().uri(&file_uri(uid, CREATED)).to_request(),
        )
        .await;
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (503, Some("unavailable")),
            "{uid}"
        );
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(retry >= 1);
        if open_before && b_open() {
            refused_by_breaker += 1;
        }
    }
    assert!(
        refused_by_breaker >= 15,
        "the breaker did not open: {refused_by_breaker} of 20 refused by it"
    );
    for uid in &in_a {
        let r = call(
            &app,
            TestRequest::get().uri(&file_uri(uid, CREATED)).to_request(),
        )
        .await;
        assert_eq!(r.status, 200, "zone a still serves {uid}");
    }
    let r = call(&admin, TestRequest::get().uri("/ready").to_request()).await;
    let body = r.json();
    assert_eq!(
        (r.status, body["status"].as_str()),
        (200, Some("degraded")),
        "{body}"
    );
    let zone_b = &body["backends"][1];
    assert_eq!(
        (zone_b["backend"].as_str(), zone_b["ok"].as_bool()),
        (Some("b"), Some(false))
    );
    assert_eq!(zone_b["breakers"][0]["state"], "open", "{body}");

    let r = call(&app, TestRequest::get().uri("/metrics").to_request()).await;
    let text = String::from_utf8(r.bytes().to_vec()).unwrap();
    let gauge = |zone: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("des_circuit_breaker_state{location=")
                    && l.contains(&format!("zone=\"{zone}\""))
            })
            .unwrap_or_else(|| panic!("no breaker gauge for {zone}:\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!((gauge("a").as_str(), gauge("b").as_str()), ("0", "1"));
    for series in [
        "des_s3_range_calls_total{backend=\"a\",type=\"index\"}",
        "des_s3_range_calls_total{backend=\"b\",type=\"index\"}",
        "des_retrievals_total{backend=\"b\",status=\"503\"} 20",
        "des_storage_retries_total{zone=\"b\"}",
    ] {
        assert!(text.contains(series), "{series} in\n{text}");
    }
}
