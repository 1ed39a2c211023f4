//! The whole deletion lifecycle on real S3 (single-node Garage): pack →
//! DELETE on one retriever replica → 410 on every replica within the poll
//! interval → repack → the deleted bytes are in no raw object any more →
//! every other file byte-identical through the retriever → verify clean.
//!
//! Needs `garage` 2.5.0 (`scripts/garage.sh install`); run with
//! `cargo test -p des-retriever --features garage-tests --test lifecycle_garage`.
// Helpers outside #[test] fns unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{Server, status_of};
use common::*;
use des_storage::testing::S3Server;
use des_storage::{ByteRange, DesStore, ObjectStore, ObjectStoreExt, S3Store};

const AT: &str = "2024-05-17T10:00:00Z";
const POLL_SECS: u64 = 1;

async fn raw_objects_contain(objects: &dyn ObjectStore, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for meta in objects.list_all("").await.unwrap() {
        let (_, body) = objects.get_range(&meta.key, ByteRange::All).await.unwrap();
        if body.windows(needle.len()).any(|w| w == needle) {
            hits.push(meta.key);
        }
    }
    hits
}

#[actix_web::test]
async fn delete_reaches_every_replica_and_repack_removes_the_bytes() {
    let server = S3Server::garage().unwrap_or_else(|e| panic!("cannot start garage: {e}"));
    let dir = tempfile::tempdir().unwrap();
    // (`noise` ORs the seed with 1, hence odd seeds.)
    // Incompressible payloads are stored raw, so searching the raw objects
    // for the deleted file's bytes is meaningful. Uids 0..15 fill 16 shards;
    // 16 shares the victim's shard (n_bits 4: numeric uids route by value).
    let files: Vec<Spec> = (0..24)
        .map(|i| Spec::new(&i.to_string(), noise(20_000, 1001 + 2 * i)))
        .collect();
    let victim_data = files[0].data.clone();
    pack(dir.path(), &files, 4, 10 << 20);
    let objects: Arc<dyn ObjectStore> =
        Arc::new(S3Store::new(server.config().with_prefix("lifecycle")).unwrap());
    upload(dir.path(), &*objects, |_| true).await;
    let needle = &victim_data[5_000..5_200];
    assert!(!raw_objects_contain(&*objects, needle).await.is_empty());

    let location = format!("s3://{}/lifecycle", server.bucket());
    let env = [
        ("AWS_ACCESS_KEY_ID", server.access_key()),
        ("AWS_SECRET_ACCESS_KEY", server.secret_key()),
        ("AWS_REGION", server.region()),
        ("AWS_ENDPOINT_URL", server.endpoint()),
    ];
    let poll = POLL_SECS.to_string();
    let args = [
        "--store",
        &location,
        "--no-auth",
        "--listen",
        "127.0.0.1:0",
        "--tombstone-poll-interval-secs",
        &poll,
    ];
    let replicas = [Server::start(&args, &env), Server::start(&args, &env)];
    let get = |uid: &str| format!("GET /files/{uid}?created_at={AT} HTTP/1.1");
    for r in &replicas {
        let (head, body) = r.request(&get("0"));
        assert_eq!(status_of(&head), 200, "{head}");
        assert!(body == victim_data);
    }

    let (head, body) = replicas[0].request(&format!(
        "DELETE /files/0?created_at={AT}&reason=gdpr&ticket_id=DPO-1 HTTP/1.1"
    ));
    assert_eq!(status_of(&head), 202, "{}", String::from_utf8_lossy(&body));
    let deleted = Instant::now();
    assert_eq!(status_of(&replicas[0].request(&get("0")).0), 410);
    // Any created_at on that day is the same (uid, date).
    let other_time = "GET /files/0?created_at=2024-05-17T23:59:59Z HTTP/1.1";
    assert_eq!(status_of(&replicas[0].request(other_time).0), 410);
    loop {
        if status_of(&replicas[1].request(&get("0")).0) == 410 {
            break;
        }
        assert!(
            deleted.elapsed() < Duration::from_secs(POLL_SECS + 4),
            "replica 1 still serves the file after {:?}",
            deleted.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let store = DesStore::open(Arc::clone(&objects)).await.unwrap();
    let mut opts = des_repack::repack::RepackOptions::default();
    opts.min_garbage_ratio = 0.0;
    let report = des_repack::repack::repack(&store, &opts, |_| {})
        .await
        .unwrap();
    assert_eq!(report.shards_rewritten, 1, "{report:?}");
    assert_eq!(report.shards_failed, 0, "{report:?}");
    assert_eq!(report.tombstones_pending, 0, "{report:?}");

    let hits = raw_objects_contain(&*objects, needle).await;
    assert!(hits.is_empty(), "deleted bytes still in {hits:?}");
    for r in &replicas {
        assert_eq!(status_of(&r.request(&get("0")).0), 410);
        for f in &files[1..] {
            let (head, body) = r.request(&get(&f.uid));
            assert_eq!(status_of(&head), 200, "{}: {head}", f.uid);
            assert!(body == f.data, "{} changed", f.uid);
        }
    }
    let verified = des_repack::verify::verify_store(
        &store,
        &des_repack::verify::VerifyOptions::default(),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(verified.exit_code(), 0, "{verified}");
    for r in replicas {
        assert_eq!(r.terminate(), 0);
    }
}
