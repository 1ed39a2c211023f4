//! Status codes, headers and ranges of `/files/{uid}`, `/health` and `/ready`
//! against a store packed by the real packer.
// Helpers outside #[test] fns unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use actix_web::test::{TestRequest, init_service};
use actix_web::web;
use common::*;
use des_storage::{LocalStore, ObjectStore};

fn files() -> Vec<Spec> {
    vec![
        Spec::new("std/index.html", text(3000)),
        Spec::new("notes.txt", text(1000)),
        Spec::new("raw.bin", noise(5000, 7)),
        Spec::new("noext", noise(100, 8)),
        Spec::new("a b+c.txt", b"spaces and plus".to_vec()),
        Spec::new("custom.dat", b"{\"x\": 1}".to_vec()).typed("application/vnd.des+json"),
        Spec {
            created_at: "2024-05-18T23:30:00+02:00".into(),
            ..Spec::new("late.txt", text(200))
        },
    ]
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    pack(&root, &files(), 4, 10 << 20);
    Fixture { _dir: dir, root }
}

macro_rules! app {
    ($root:expr) => {{
        let (r, _) = counted($root, &settings($root)).await;
        init_service(des_retriever::server::app(web::Data::new(r))).await
    }};
}

#[actix_web::test]
async fn serves_every_file_with_headers() {
    let f = fixture();
    let app = app!(&f.root);
    for spec in files() {
        let r = call(
            &app,
            TestRequest::get()
                .uri(&file_uri(&spec.uid, &spec.created_at))
                .to_request(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", spec.uid);
        assert_eq!(r.bytes(), &spec.data[..], "{}", spec.uid);
        assert_eq!(r.header("accept-ranges"), Some("bytes"));
        assert_eq!(r.header("cache-control"), Some("public, max-age=3600"));
        let etag = r.header("etag").unwrap();
        assert!(
            etag.starts_with('"') && etag.ends_with('"') && etag.len() == 66,
            "{etag}"
        );
        assert!(r.header("last-modified").is_some());
    }
    let ct = |uid: &str| {
        let uid = uid.to_string();
        let app = &app;
        async move {
            let r = call(
                app,
                TestRequest::get()
                    .uri(&file_uri(&uid, CREATED))
                    .to_request(),
            )
            .await;
            r.header("content-type").unwrap().to_string()
        }
    };
    assert_eq!(ct("std/index.html").await, "text/html");
    assert_eq!(ct("notes.txt").await, "text/plain");
    assert_eq!(ct("noext").await, "application/octet-stream");
    assert_eq!(ct("raw.bin").await, "application/octet-stream");
    assert_eq!(
        ct("custom.dat").await,
        "application/vnd.des+json",
        "stored type wins over the guess"
    );
    let r = call(
        &app,
        TestRequest::get()
            .uri(&file_uri("notes.txt", CREATED))
            .to_request(),
    )
    .await;
    assert_eq!(
        r.header("last-modified"),
        Some("Fri, 17 May 2024 10:00:00 GMT")
    );
}

#[actix_web::test]
async fn uid_and_created_at_decoding() {
    let f = fixture();
    let app = app!(&f.root);
    // `/` inside the uid, encoded or not.
    for uri in [
        "/files/std/index.html?created_at=2024-05-17T10:00:00Z",
        "/files/std%2Findex.html?created_at=2024-05-17T10:00:00Z",
        "/files/a%20b%2Bc.txt?created_at=2024-05-17T10%3A00%3A00Z",
    ] {
        assert_eq!(
            call(&app, TestRequest::get().uri(uri).to_request())
                .await
                .status,
            200,
            "{uri}"
        );
    }
    // An offset with an unencoded `+` (form decoding turns it into a space) still routes.
    let r = call(
        &app,
        TestRequest::get()
            .uri("/files/late.txt?created_at=2024-05-18T23:30:00+02:00")
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 200);
    // Any time on the same UTC day routes to the same shard.
    let r = call(
        &app,
        TestRequest::get()
            .uri("/files/late.txt?created_at=2024-05-18T21:00:00Z")
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[actix_web::test]
async fn error_statuses_are_json() {
    let f = fixture();
    let app = app!(&f.root);
    let cases = [
        ("/files/notes.txt", 400, "bad_request"),
        ("/files/notes.txt?created_at=", 400, "bad_request"),
        ("/files/notes.txt?created_at=yesterday", 400, "bad_request"),
        (
            "/files/notes.txt?created_at=2024-05-17T10:00:00",
            400,
            "bad_request",
        ),
        (
            "/files/?created_at=2024-05-17T10:00:00Z",
            400,
            "bad_request",
        ),
        // Shard exists (same day), uid does not.
        (
            "/files/nope.txt?created_at=2024-05-17T10:00:00Z",
            404,
            "not_found",
        ),
        // No shard at all on that day.
        (
            "/files/notes.txt?created_at=2023-01-01T00:00:00Z",
            404,
            "not_found",
        ),
        ("/elsewhere", 404, "not_found"),
        ("/files", 404, "not_found"),
        (
            "/filesnotes.txt?created_at=2024-05-17T10:00:00Z",
            404,
            "not_found",
        ),
    ];
    for (uri, status, code) in cases {
        let r = call(&app, TestRequest::get().uri(uri).to_request()).await;
        assert_eq!(r.status, status, "{uri}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{uri}");
        assert_eq!(r.json()["error"], code, "{uri}");
        assert!(
            r.json()["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{uri}"
        );
        assert_eq!(r.header("cache-control"), Some("no-store"), "{uri}");
    }
}

#[actix_web::test]
async fn other_methods_on_files_are_not_allowed() {
    let f = fixture();
    let app = app!(&f.root);
    for req in [
        TestRequest::post(),
        TestRequest::put(),
        TestRequest::patch(),
    ] {
        let r = call(&app, req.uri(&file_uri("notes.txt", CREATED)).to_request()).await;
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET, HEAD, DELETE"));
        assert_eq!(r.json()["error"], "method_not_allowed", "errors are JSON");
    }
    // The operator's paths are known too: 405, not 404.
    for path in ["/health", "/ready", "/metrics"] {
        let r = call(&app, TestRequest::post().uri(path).to_request()).await;
        assert_eq!((r.status, r.header("allow")), (405, Some("GET")), "{path}");
        assert_eq!(r.json()["error"], "method_not_allowed", "{path}");
    }
}

#[actix_web::test]
async fn ranges() {
    let f = fixture();
    let app = app!(&f.root);
    let data = text(1000);
    let uri = file_uri("notes.txt", CREATED);
    let get = |range: &'static str| {
        let uri = uri.clone();
        let app = &app;
        async move {
            call(
                app,
                TestRequest::get()
                    .uri(&uri)
                    .insert_header(("range", range))
                    .to_request(),
            )
            .await
        }
    };
    let cases: [(&str, std::ops::Range<usize>); 6] = [
        ("bytes=0-0", 0..1),
        ("bytes=999-999", 999..1000),
        ("bytes=-5", 995..1000),
        ("bytes=10-", 10..1000),
        ("bytes=990-5000", 990..1000),
        ("bytes=100-199", 100..200),
    ];
    for (range, want) in cases {
        let r = get(range).await;
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.bytes(), &data[want.clone()], "{range}");
        let cr = format!("bytes {}-{}/1000", want.start, want.end - 1);
        assert_eq!(r.header("content-range"), Some(cr.as_str()), "{range}");
        assert!(r.header("etag").is_some());
    }
    for range in ["bytes=1000-", "bytes=1000-1001", "bytes=-0"] {
        let r = get(range).await;
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(r.header("content-range"), Some("bytes */1000"), "{range}");
        assert_eq!(r.json()["error"], "range_not_satisfiable");
    }
    // Several ranges: the whole file with 200 is a correct answer.
    let r = get("bytes=0-1,5-6").await;
    assert_eq!((r.status, r.bytes()), (200, &data[..]));
    // Nonsense is ignored.
    assert_eq!(get("bytes=9-3").await.status, 200);
    // If-Range with another validator: the whole (current) file.
    let r = call(
        &app,
        TestRequest::get()
            .uri(&uri)
            .insert_header(("range", "bytes=0-0"))
            .insert_header(("if-range", "\"other\""))
            .to_request(),
    )
    .await;
    assert_eq!((r.status, r.bytes().len()), (200, 1000));
}

#[actix_web::test]
async fn head_and_conditional() {
    let f = fixture();
    let app = app!(&f.root);
    let uri = file_uri("std/index.html", CREATED);
    let full = call(&app, TestRequest::get().uri(&uri).to_request()).await;
    let etag = full.header("etag").unwrap().to_string();

    let head = call(
        &app,
        TestRequest::default()
            .method(actix_web::http::Method::HEAD)
            .uri(&uri)
            .to_request(),
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("3000"));
    assert_eq!(head.bytes().len(), 0);
    for h in [
        "etag",
        "content-type",
        "last-modified",
        "cache-control",
        "accept-ranges",
    ] {
        assert_eq!(head.header(h), full.header(h), "{h}");
    }

    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"x\", {etag}"),
        "*".into(),
    ] {
        let r = call(
            &app,
            TestRequest::get()
                .uri(&uri)
                .insert_header(("if-none-match", inm.as_str()))
                .to_request(),
        )
        .await;
        assert_eq!(r.status, 304, "{inm}");
        assert_eq!(r.bytes().len(), 0);
        assert_eq!(r.header("etag"), Some(etag.as_str()));
    }
    let r = call(
        &app,
        TestRequest::get()
            .uri(&uri)
            .insert_header(("if-none-match", "\"other\""))
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[actix_web::test]
async fn request_ids() {
    let f = fixture();
    let app = app!(&f.root);
    let r = call(
        &app,
        TestRequest::get()
            .uri("/health")
            .insert_header(("x-request-id", "abc-123"))
            .to_request(),
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    let a = call(&app, TestRequest::get().uri("/health").to_request()).await;
    let b = call(&app, TestRequest::get().uri("/files/x").to_request()).await;
    let (a, b) = (
        a.header("x-request-id").unwrap(),
        b.header("x-request-id").unwrap(),
    );
    assert!(a.len() == 16 && b.len() == 16 && a != b);
    // An id unsafe to log is replaced, not echoed.
    let r = call(
        &app,
        TestRequest::get()
            .uri("/health")
            .insert_header(("x-request-id", "a b\"c"))
            .to_request(),
    )
    .await;
    assert_ne!(r.header("x-request-id"), Some("a b\"c"));
}

#[actix_web::test]
async fn health_and_ready() {
    let f = fixture();
    let (mut r, counts) = counted(&f.root, &settings(&f.root)).await;
    // Every call probes (the shared probe is tested in hardening.rs).
    r.readiness = des_retriever::ready::Readiness::fresh_for(std::time::Duration::ZERO);
    let data = web::Data::new(r);
    let app = init_service(des_retriever::server::app(data.clone())).await;
    let admin = init_service(des_retriever::server::admin_app(data)).await;
    let before = counts.counts();
    assert_eq!(
        call(&app, TestRequest::get().uri("/health").to_request())
            .await
            .status,
        200
    );
    assert_eq!(counts.counts(), before, "health does no I/O");
    assert_eq!(
        call(&app, TestRequest::get().uri("/ready").to_request())
            .await
            .status,
        200
    );
    assert_eq!(
        counts.counts().total(),
        before.total() + 1,
        "ready costs one request"
    );
    std::fs::remove_file(f.root.join("_des/store.json")).unwrap();
    let r = call(&app, TestRequest::get().uri("/ready").to_request()).await;
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        r.json(),
        serde_json::json!({"status": "unavailable"}),
        "no store names or errors on the public port"
    );
    let r = call(&admin, TestRequest::get().uri("/ready").to_request()).await;
    assert_eq!(r.status, 503);
    let body = r.json();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["backends"][0]["backend"], "local");
    assert_eq!(body["backends"][0]["ok"], false);
    assert!(
        body["backends"][0]["error"]
            .as_str()
            .unwrap()
            .contains("store.json")
    );
    assert!(r.header("retry-after").is_some());
}

#[actix_web::test]
async fn storage_outage_and_throttling() {
    let f = fixture();
    let faulty = Faulty::new(Arc::new(LocalStore::new(&f.root).unwrap()) as Arc<dyn ObjectStore>);
    let r = state_on(Arc::new(faulty.clone()), &settings(&f.root)).await;
    let app = init_service(des_retriever::server::app(web::Data::new(r))).await;
    let uri = file_uri("notes.txt", CREATED);

    faulty.set(UNAVAILABLE);
    let r = call(&app, TestRequest::get().uri(&uri).to_request()).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (503, Some("unavailable"))
    );
    assert_eq!(
        r.header("retry-after"),
        Some("3"),
        "the backend's hint is passed on"
    );
    // The storage error's text (buckets, endpoints, keys) is for the log.
    let message = r.json()["message"].as_str().unwrap().to_string();
    assert_eq!(message, "storage unavailable; retry later");
    assert_eq!(
        call(&app, TestRequest::get().uri("/ready").to_request())
            .await
            .status,
        503
    );
    assert_eq!(
        call(&app, TestRequest::get().uri("/health").to_request())
            .await
            .status,
        200
    );

    faulty.set(THROTTLED);
    let r = call(&app, TestRequest::get().uri(&uri).to_request()).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (429, Some("throttled"))
    );
    assert_eq!(r.header("retry-after"), Some("1"));

    // Failures are not cached: the store recovers, so does the service.
    faulty.set(HEALTHY);
    let r = call(&app, TestRequest::get().uri(&uri).to_request()).await;
    assert_eq!((r.status, r.bytes()), (200, &text(1000)[..]));

    // Index cached, payload read fails: still 503, never a 200 with no body.
    faulty.set(UNAVAILABLE);
    let r = call(&app, TestRequest::get().uri(&uri).to_request()).await;
    assert_eq!(r.status, 503);
}
