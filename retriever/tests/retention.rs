//! Retention rules stored in the store: 410 with `reason: retention_expired`
//! for files a rule expired (no tombstone, no storage request), 200 for held
//! files and exempt prefixes, the UTC day boundary, rule changes picked up
//! by the poll, and expired bytes dropped from the hot payload cache.
// Helpers outside #[test] fns unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::Method;
use actix_web::test::{TestRequest, init_service};
use actix_web::web;
use common::*;
use des_format::Timestamp;
use des_storage::holds::Hold;
use des_storage::retention::{self, RetentionRules};
use des_storage::{DesStore, LocalStore, ObjectStore, PutOptions};

fn spec(uid: &str, created_at: &str) -> Spec {
    Spec {
        created_at: created_at.into(),
        ..Spec::new(uid, text(300 + uid.len()))
    }
}

/// The store's files: every kind of rule outcome, on a few days.
fn files() -> Vec<Spec> {
    vec![
        spec("logs/old", CREATED),
        spec("logs/audit/exempt", CREATED),
        spec("logs/case42/held", CREATED),
        spec("img/norule", CREATED),
        spec("short/new-year", "2023-12-31T23:59:59.999999Z"),
        spec("leap/day", "2024-02-29T00:00:00Z"),
    ]
}

const RULES: &str = r#"
[[rule]]
uid_prefix = "logs/"
max_age_days = 30
[[rule]]
uid_prefix = "logs/audit/"
[[rule]]
uid_prefix = "short/"
max_age_days = 1
[[rule]]
uid_prefix = "leap/"
max_age_days = 365
"#;

async fn des(root: &Path) -> DesStore {
    let local: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(root).unwrap());
    DesStore::open(local).await.unwrap()
}

async fn set_rules(root: &Path, text: &str) -> u64 {
    let rules = RetentionRules::from_toml(text).unwrap();
    retention::set(&des(root).await, &rules, "test")
        .await
        .unwrap()
        .version
}

async fn hold(root: &Path, prefix: &str) {
    let store = des(root).await;
    des_repack::holds::place(&store, &Hold::new("case42", prefix, "legal"))
        .await
        .unwrap();
}

fn get(uid: &str, at: &str) -> actix_web::test::TestRequest {
    TestRequest::get().uri(&file_uri(uid, at))
}

fn ts(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

#[actix_web::test]
async fn expired_files_are_410_without_a_storage_request_held_and_exempt_ones_are_served() {
    let dir = tempfile::tempdir().unwrap();
    pack(dir.path(), &files(), 4, 10 << 20);
    assert_eq!(set_rules(dir.path(), RULES).await, 1);
    hold(dir.path(), "logs/case42/").await;
    let (state, counts) = counted(dir.path(), &settings(dir.path())).await;
    let app = init_service(des_retriever::server::app(web::Data::new(state))).await;

    let before = counts.counts();
    let r = call(&app, get("logs/old", CREATED).to_request()).await;
    assert_eq!(r.status, 410, "{:?}", r.body);
    let body = r.json();
    assert_eq!(body["error"], "gone");
    assert_eq!(body["reason"], "retention_expired");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("\"logs/\"")
            && message.contains("30 days")
            && message.contains("20240617"),
        "{message}"
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // Any time of the same UTC day is the same file; HEAD too.
    let r = call(&app, get("logs/old", "2024-05-17T23:59:59Z").to_request()).await;
    assert_eq!(r.status, 410);
    let head = TestRequest::default()
        .method(Method::HEAD)
        .uri(&file_uri("logs/old", CREATED))
        .to_request();
    assert_eq!(call(&app, head).await.status, 410);
    assert_eq!(counts.counts(), before, "410 costs no storage request");

    for (uid, at) in [
        ("logs/audit/exempt", CREATED),
        ("logs/case42/held", CREATED),
        ("img/norule", CREATED),
    ] {
        let r = call(&app, get(uid, at).to_request()).await;
        assert_eq!(r.status, 200, "{uid}: {:?}", r.body);
    }
    // A tombstone's 410 keeps its old shape: no reason field.
    let q = format!("created_at={CREATED}&reason=gdpr");
    let d = TestRequest::delete()
        .uri(&format!("/files/img/norule?{q}"))
        .to_request();
    assert_eq!(call(&app, d).await.status, 202);
    let r = call(&app, get("img/norule", CREATED).to_request()).await;
    assert_eq!(r.status, 410);
    assert!(r.json().get("reason").is_none(), "{:?}", r.body);

    let r = call(&app, TestRequest::get().uri("/metrics").to_request()).await;
    let text = String::from_utf8(r.bytes().to_vec()).unwrap();
    assert!(text.contains("des_retention_rules_version 1"), "{text}");
}

#[actix_web::test]
async fn a_file_expires_at_midnight_utc_after_its_last_full_day() {
    let dir = tempfile::tempdir().unwrap();
    pack(dir.path(), &files(), 4, 10 << 20);
    set_rules(dir.path(), RULES).await;
    let state = counted(dir.path(), &settings(dir.path())).await.0;
    let rules = Arc::clone(state.retention.as_ref().unwrap());
    let app = init_service(des_retriever::server::app(web::Data::new(state))).await;
    // (uid, created_at, last instant served, first instant expired)
    let cases = [
        // 20240517 + 30 days: served through June 16th.
        (
            "logs/old",
            CREATED,
            "2024-06-16T23:59:59.999999Z",
            "2024-06-17T00:00:00Z",
        ),
        // Over a year end: 20231231 + 1 day.
        (
            "short/new-year",
            "2023-12-31T23:59:59.999999Z",
            "2024-01-01T23:59:59.999999Z",
            "2024-01-02T00:00:00Z",
        ),
        // A leap day plus 365 days: 20250228, then March 1st.
        (
            "leap/day",
            "2024-02-29T00:00:00Z",
            "2025-02-28T23:59:59.999999Z",
            "2025-03-01T00:00:00Z",
        ),
    ];
    for (uid, at, served, expired) in cases {
        rules.pin_clock(Some(ts(served)));
        let r = call(&app, get(uid, at).to_request()).await;
        assert_eq!(r.status, 200, "{uid} at {served}: {:?}", r.body);
        rules.pin_clock(Some(ts(expired)));
        let r = call(&app, get(uid, at).to_request()).await;
        assert_eq!(r.status, 410, "{uid} at {expired}");
        // Back a microsecond: served again (the day, not the request, decides).
        rules.pin_clock(Some(ts(served)));
        assert_eq!(call(&app, get(uid, at).to_request()).await.status, 200);
    }
    rules.pin_clock(None);
}

#[actix_web::test]
async fn rule_changes_are_picked_up_by_the_poll() {
    let dir = tempfile::tempdir().unwrap();
    pack(dir.path(), &files(), 4, 10 << 20);
    let state = counted(dir.path(), &settings(dir.path())).await.0;
    let deleted = Arc::clone(state.deleted.as_ref().unwrap());
    let rules = Arc::clone(state.retention.as_ref().unwrap());
    assert_eq!(rules.rules_version(), 0, "no rules yet");
    let app = init_service(des_retriever::server::app(web::Data::new(state))).await;
    let status = async |uid: &str| call(&app, get(uid, CREATED).to_request()).await.status;
    assert_eq!(status("logs/old").await, 200);

    assert_eq!(set_rules(dir.path(), RULES).await, 1);
    assert_eq!(status("logs/old").await, 200, "not polled yet");
    des_retriever::tombstones::spawn_polling(deleted, Duration::from_millis(50));
    let wait_for = async |want: u16| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while status("logs/old").await != want {
            assert!(Instant::now() < deadline, "never answered {want}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_for(410).await;
    assert_eq!(rules.rules_version(), 1);

    // Loosened: served again after the next poll (the bytes are still there).
    let loose = "[[rule]]\nuid_prefix = \"logs/\"\nmax_age_days = 36500\n";
    assert_eq!(set_rules(dir.path(), loose).await, 2);
    wait_for(200).await;
    assert_eq!(rules.rules_version(), 2);
    // A hold placed later wins over a tightened rule.
    set_rules(dir.path(), RULES).await;
    wait_for(410).await;
    hold(dir.path(), "logs/").await;
    wait_for(200).await;
}

#[actix_web::test]
async fn expired_files_leave_the_hot_cache_at_the_poll() {
    let dir = tempfile::tempdir().unwrap();
    pack(dir.path(), &files(), 4, 10 << 20);
    let s = des_retriever::Settings {
        payload_cache_bytes: 1 << 20,
        payload_cache_max_entry_bytes: 64 << 10,
        ..settings(dir.path())
    };
    let state = web::Data::new(counted(dir.path(), &s).await.0);
    let app = init_service(des_retriever::server::app(state.clone())).await;
    let cached = |uid: &str| state.retriever.hot().unwrap().contains(uid, ts(CREATED));
    for uid in ["logs/old", "img/norule"] {
        assert_eq!(call(&app, get(uid, CREATED).to_request()).await.status, 200);
        assert_eq!(call(&app, get(uid, CREATED).to_request()).await.status, 200);
        assert!(cached(uid), "{uid}");
    }
    set_rules(dir.path(), RULES).await;
    assert!(state.retention.as_ref().unwrap().poll().await.unwrap());
    assert!(!cached("logs/old"), "expired: dropped by the poll");
    assert!(cached("img/norule"), "no rule: kept");
    let r = call(&app, get("logs/old", CREATED).to_request()).await;
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (410, Some("retention_expired"))
    );
    assert!(!cached("logs/old"), "a 410 caches nothing");
}

#[actix_web::test]
async fn unreadable_rules_fail_start_up() {
    let dir = tempfile::tempdir().unwrap();
    pack(dir.path(), &files(), 4, 10 << 20);
    let local = LocalStore::new(dir.path()).unwrap();
    local
        .put(
            "_des/retention.toml",
            bytes::Bytes::from_static(b"[[rule]]\nuid_prefix = \"\"\nmax_age_days = 0\n"),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let objects: Arc<dyn ObjectStore> = Arc::new(local);
    let s = settings(dir.path());
    let opened =
        des_retriever::AppState::open(&des_retriever::Storage::single(objects, "local"), &s).await;
    let e = opened.expect_err("start-up must fail").to_string();
    assert!(e.contains("_des/retention.toml"), "{e}");
}
