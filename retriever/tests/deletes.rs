//! DELETE /files/{uid}: tombstones logged, 410 for deleted files at once on
//! this replica and after a log poll on another, 404/410 for deletes that
//! cannot apply.
// Helpers outside #[test] fns unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::Method;
use actix_web::test::{TestRequest, init_service};
use actix_web::web;
use common::*;
use des_storage::{LocalStore, ObjectStore, ObjectStoreExt};

fn files() -> Vec<Spec> {
    vec![
        Spec::new("gone.txt", text(300)),
        Spec::new("kept.txt", text(200)),
    ]
}

fn delete_uri(uid: &str, query: &str) -> String {
    format!("/files/{}?{query}", encode(uid))
}

#[actix_web::test]
async fn delete_logs_a_tombstone_and_reads_answer_410() {
    let dir = tempfile::tempdir().unwrap();
    pack(dir.path(), &files(), 4, 10 << 20);
    let (state, counts) = counted(dir.path(), &settings(dir.path())).await;
    let app = init_service(des_retriever::server::app(web::Data::new(state))).await;
    let get = |uid: &str, at: &str| TestRequest::get().uri(&file_uri(uid, at)).to_request();
    assert_eq!(call(&app, get("gone.txt", CREATED)).await.status, 200);

    let q = "created_at=2024-05-17T10:00:00Z&reason=gdpr&ticket_id=JIRA-7&deleted_by=alice";
    let r = call(
        &app,
        TestRequest::delete()
            .uri(&delete_uri("gone.txt", q))
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let record = r.json();
    assert_eq!(record["uid"], "gone.txt");
    assert_eq!(record["date"], "20240517");
    assert_eq!(record["reason"], "gdpr");
    assert_eq!(record["ticket_id"], "JIRA-7");
    assert_eq!(record["deleted_by"], "alice");
    assert!(record["deleted_at"].as_str().is_some());

    let before = counts.counts();
    let r = call(&app, get("gone.txt", CREATED)).await;
    assert_eq!((r.status, r.json()["error"].as_str()), (410, Some("gone")));
    // Any time on the same UTC day is the same file.
    let r = call(&app, get("gone.txt", "2024-05-17T23:59:59Z")).await;
    assert_eq!(r.status, 410);
    let head = TestRequest::default()
        .method(Method::HEAD)
        .uri(&file_uri("gone.txt", CREATED))
        .to_request();
    assert_eq!(call(&app, head).await.status, 410);
    assert_eq!(counts.counts(), before, "410 costs no storage request");
    assert_eq!(call(&app, get("kept.txt", CREATED)).await.status, 200);
    assert_eq!(
        call(&app, get("gone.txt", "2024-05-18T10:00:00Z"))
            .await
            .status,
        404,
        "another day is another file"
    );

    let again = call(
        &app,
        TestRequest::delete()
            .uri(&delete_uri("gone.txt", q))
            .to_request(),
    )
    .await;
    assert_eq!(again.status, 410, "already deleted");
    let unknown = call(
        &app,
        TestRequest::delete()
            .uri(&delete_uri(
                "never.txt",
                "created_at=2024-05-17T10:00:00Z&reason=user_request",
            ))
            .to_request(),
    )
    .await;
    assert_eq!(unknown.status, 404);

    // Exactly one record in the log, and it says what the response said.
    let local = LocalStore::new(dir.path()).unwrap();
    let logged = local.list_all("_tombstones/").await.unwrap();
    assert_eq!(logged.len(), 1, "{logged:?}");
    let (_, body) = local
        .get_range(&logged[0].key, des_storage::ByteRange::All)
        .await
        .unwrap();
    let stored: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(stored, record);

    let r = call(&app, TestRequest::get().uri("/metrics").to_request()).await;
    let text = String::from_utf8(r.bytes().to_vec()).unwrap();
    assert!(text.contains("des_tombstones_known 1"), "{text}");
    assert!(text.contains("des_tombstones_appended_total 1"), "{text}");
}

#[actix_web::test]
async fn another_replica_sees_the_delete_after_polling() {
    let dir = tempfile::tempdir().unwrap();
    pack(dir.path(), &files(), 4, 10 << 20);
    let s = settings(dir.path());
    let a = init_service(des_retriever::server::app(web::Data::new(
        counted(dir.path(), &s).await.0,
    )))
    .await;
    let b_state = counted(dir.path(), &s).await.0;
    let b_deleted = Arc::clone(b_state.deleted.as_ref().unwrap());
    let b = init_service(des_retriever::server::app(web::Data::new(b_state))).await;
    let get = || {
        TestRequest::get()
            .uri(&file_uri("gone.txt", CREATED))
            .to_request()
    };
    assert_eq!(call(&b, get()).await.status, 200);

    let q = "created_at=2024-05-17T10:00:00Z&reason=retention_expired";
    let r = call(
        &a,
        TestRequest::delete()
            .uri(&delete_uri("gone.txt", q))
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 202);
    assert_eq!(call(&a, get()).await.status, 410);
    assert_eq!(call(&b, get()).await.status, 200, "b has not polled yet");

    des_retriever::tombstones::spawn_polling(b_deleted, Duration::from_millis(50));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = call(&b, get()).await.status;
        if status == 410 {
            break;
        }
        assert_eq!(status, 200);
        assert!(Instant::now() < deadline, "b never saw the delete");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn a_restarted_replica_loads_existing_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    pack(dir.path(), &files(), 4, 10 << 20);
    let s = settings(dir.path());
    let first = init_service(des_retriever::server::app(web::Data::new(
        counted(dir.path(), &s).await.0,
    )))
    .await;
    let q = "created_at=2024-05-17T10:00:00Z&reason=user_request";
    let r = call(
        &first,
        TestRequest::delete()
            .uri(&delete_uri("gone.txt", q))
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 202);
    let local: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
    let restarted = init_service(des_retriever::server::app(web::Data::new(
        state_on(local, &s).await,
    )))
    .await;
    let r = call(
        &restarted,
        TestRequest::get()
            .uri(&file_uri("gone.txt", CREATED))
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 410);
}
