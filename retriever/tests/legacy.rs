//! Python-DES (legacy layout) stores: the checked-in fixture store, several
//! parts per shard, and big files under `_bigFiles/`.
// Helpers outside #[test] fns unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use actix_web::test::{TestRequest, init_service};
use actix_web::web;
use common::*;
use des_retriever::Counts;

fn legacy_settings(root: &Path) -> des_retriever::Settings {
    let mut s = settings(root);
    s.layout = des_storage::Layout::Legacy;
    s.n_bits = Some(4);
    s
}

macro_rules! app {
    ($root:expr) => {{
        let (r, counts) = counted($root, &legacy_settings($root)).await;
        (
            init_service(des_retriever::server::app(web::Data::new(r))).await,
            counts,
        )
    }};
}

#[actix_web::test]
async fn serves_every_file_of_the_fixture_store() {
    let fixture = workspace_root().join("testdata/legacy-des/store");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("expected.json")).unwrap()).unwrap();
    assert_eq!(expected["n_bits"], 4);
    let files = expected["files"].as_array().unwrap();
    assert!(files.len() > 20);
    let root = fixture.join("shards");
    let (app, counts) = app!(&root);
    for f in files {
        let (uid, at) = (
            f["uid"].as_str().unwrap(),
            f["created_at"].as_str().unwrap(),
        );
        let r = call(
            &app,
            TestRequest::get().uri(&file_uri(uid, at)).to_request(),
        )
        .await;
        assert_eq!(r.status, 200, "{uid}");
        assert_eq!(r.bytes().len() as u64, f["size"].as_u64().unwrap(), "{uid}");
        assert_eq!(
            sha256_hex(r.bytes()),
            f["sha256"].as_str().unwrap(),
            "{uid}"
        );
        // Inline legacy entries have no digest, so no validator and no date.
        assert_eq!(r.header("etag"), None, "{uid}");
        assert_eq!(r.header("last-modified"), None, "{uid}");
        assert_eq!(r.header("cache-control"), Some("public, max-age=3600"));
    }
    assert_eq!(counts.counts().write, 0);

    // Warm: every shard's parts and index are cached, so one read per file.
    let before = counts.counts();
    for f in files {
        let (uid, at) = (
            f["uid"].as_str().unwrap(),
            f["created_at"].as_str().unwrap(),
        );
        let r = call(
            &app,
            TestRequest::get().uri(&file_uri(uid, at)).to_request(),
        )
        .await;
        assert_eq!(
            sha256_hex(r.bytes()),
            f["sha256"].as_str().unwrap(),
            "{uid}"
        );
    }
    let after = counts.counts();
    assert_eq!(
        (after.get - before.get, after.list - before.list),
        (files.len() as u64, 0)
    );

    // Unknown uid on a day with shards, and a day without any.
    let r = call(
        &app,
        TestRequest::get()
            .uri(&file_uri("no-such-file", "2025-03-01T00:00:00Z"))
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 404);
    let c0 = counts.counts();
    for _ in 0..3 {
        let r = call(
            &app,
            TestRequest::get()
                .uri(&file_uri("x", "2001-01-01T00:00:00Z"))
                .to_request(),
        )
        .await;
        assert_eq!(r.status, 404);
    }
    assert_eq!(
        counts.counts().total() - c0.total(),
        1,
        "one list, then the negative cache"
    );

    assert_eq!(
        call(&app, TestRequest::get().uri("/ready").to_request())
            .await
            .status,
        200
    );
}

struct FormatEntry {
    uid: String,
    sha256: String,
    size: u64,
}

fn format_entries(shard_file: &str) -> Vec<FormatEntry> {
    let path = workspace_root().join("testdata/legacy-des/format/expected.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let shard = v["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["file"] == shard_file)
        .unwrap();
    shard["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| FormatEntry {
            uid: e["uid"].as_str().unwrap().into(),
            sha256: e["sha256"].as_str().unwrap().into(),
            size: e["size"].as_u64().unwrap(),
        })
        .collect()
}

/// Three format fixtures laid out as parts 0..=2 of one (date, shard), with the
/// big file of the zstd shard in `_bigFiles/`.
fn multi_part_store(dir: &Path) -> (String, [&'static str; 3]) {
    let src = workspace_root().join("testdata/legacy-des/format");
    let big_uid = "f-3d7aa88693b5fe2b.txt";
    let i = des_format::routing::shard_index(big_uid, 4).unwrap();
    let hex = des_format::routing::shard_hex(i, 4);
    let parts = [
        "20240517_NONE_0000.des",
        "20240517_ZSTD_0000.des",
        "20240517_LZ4_0000.des",
    ];
    for (n, part) in parts.iter().enumerate() {
        std::fs::copy(
            src.join(part),
            dir.join(format!("20240517_{hex}_{n:04}.des")),
        )
        .unwrap();
    }
    std::fs::create_dir_all(dir.join("_bigFiles")).unwrap();
    let sha = "28db2ebda2f387e937ea4164ff68dff8fd96eacc8f81395878cb30954100b328";
    std::fs::copy(
        src.join("_bigFiles").join(sha),
        dir.join("_bigFiles").join(sha),
    )
    .unwrap();
    (hex, parts)
}

#[actix_web::test]
async fn parts_and_big_files() {
    let dir = tempfile::tempdir().unwrap();
    let (hex, parts) = multi_part_store(dir.path());
    let (app, counts) = app!(dir.path());
    let at = "2024-05-17T12:00:00Z";
    // Every uid of each part that routes to this shard is served from its part.
    let mut served = 0;
    for part in parts {
        for e in format_entries(part) {
            let i = des_format::routing::shard_index(&e.uid, 4).unwrap();
            if des_format::routing::shard_hex(i, 4) != hex {
                continue;
            }
            let r = call(
                &app,
                TestRequest::get().uri(&file_uri(&e.uid, at)).to_request(),
            )
            .await;
            assert_eq!(r.status, 200, "{}", e.uid);
            assert_eq!(r.bytes().len() as u64, e.size);
            assert_eq!(sha256_hex(r.bytes()), e.sha256, "{}", e.uid);
            served += 1;
        }
    }
    assert!(
        served >= 3,
        "the fixture has uids of this shard in every part"
    );
    assert_eq!(counts.counts().list, 1, "the part list is cached");

    let big = "f-3d7aa88693b5fe2b.txt";
    let sha = "28db2ebda2f387e937ea4164ff68dff8fd96eacc8f81395878cb30954100b328";
    let c0 = counts.counts();
    let r = call(
        &app,
        TestRequest::get().uri(&file_uri(big, at)).to_request(),
    )
    .await;
    assert_eq!(
        r.header("etag"),
        Some(format!("\"{sha}\"").as_str()),
        "legacy big files are named by their sha256"
    );
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(sha256_hex(r.bytes()), sha);
    assert_eq!(
        counts.counts().total() - c0.total(),
        1,
        "warm big file: one read"
    );
    let r = call(
        &app,
        TestRequest::get()
            .uri(&file_uri(big, at))
            .insert_header(("range", "bytes=-10"))
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.bytes().len(), 10);

    // A damaged big file is never completed.
    let path = dir.path().join("_bigFiles").join(sha);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let r = call(
        &app,
        TestRequest::get().uri(&file_uri(big, at)).to_request(),
    )
    .await;
    assert!(r.body.is_err());
}

#[actix_web::test]
async fn cold_legacy_lookup_budget() {
    let dir = tempfile::tempdir().unwrap();
    multi_part_store(dir.path());
    let (app, counts) = app!(dir.path());
    // A uid in the highest part: list, one index, one payload.
    let uid = format_entries("20240517_LZ4_0000.des")
        .into_iter()
        .map(|e| e.uid)
        .find(|u| {
            des_format::routing::shard_index(u, 4).unwrap()
                == des_format::routing::shard_index("f-3d7aa88693b5fe2b.txt", 4).unwrap()
        })
        .unwrap();
    let r = call(
        &app,
        TestRequest::get()
            .uri(&file_uri(&uid, "2024-05-17T00:00:00Z"))
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 200);
    let c = counts.counts();
    assert_eq!((c.list, c.suffix_get, c.get, c.total()), (1, 1, 2, 3));
    assert_eq!(
        c,
        Counts {
            list: 1,
            suffix_get: 1,
            get: 2,
            head: 0,
            write: 0,
            bytes: c.bytes,
        }
    );
}

/// Legacy stores can gain a newer part holding a newer version of a uid, so
/// the hot payload cache there answers only for the entry the index lookup
/// found (v3 stores answer before the lookup): a second pass over the
/// fixture reads no payload, but still consults the index.
#[actix_web::test]
async fn hot_cache_on_a_legacy_store_serves_the_located_entry() {
    let fixture = workspace_root().join("testdata/legacy-des/store");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("expected.json")).unwrap()).unwrap();
    let files = expected["files"].as_array().unwrap();
    let root = fixture.join("shards");
    let s = des_retriever::Settings {
        payload_cache_bytes: 16 << 20,
        ..legacy_settings(&root)
    };
    let (r, counts) = counted(&root, &s).await;
    let state = web::Data::new(r);
    let app = init_service(des_retriever::server::app(state.clone())).await;
    let get_all = || async {
        let mut bodies = Vec::new();
        for f in files {
            let uri = file_uri(
                f["uid"].as_str().unwrap(),
                f["created_at"].as_str().unwrap(),
            );
            let r = call(&app, TestRequest::get().uri(&uri).to_request()).await;
            assert_eq!(r.status, 200);
            bodies.push(r.bytes().to_vec());
        }
        bodies
    };
    let first = get_all().await;
    let before = counts.counts();
    let hits_before = state.retriever.metrics().payload_cache_hits.get();
    let second = get_all().await;
    assert_eq!(first, second);
    // The fixture store has no big files: every payload comes from memory.
    assert_eq!(counts.counts().get, before.get, "no payload read again");
    let hits = state.retriever.metrics().payload_cache_hits.get() - hits_before;
    assert_eq!(hits, files.len() as u64);
}

/// A newer legacy part that holds a cached uid: the cached bytes came from
/// the older part's entry, so they are not served for it; the newer entry is
/// read once and replaces them (one copy), then served from memory again.
#[actix_web::test]
async fn hot_cache_follows_a_newer_legacy_part() {
    use des_format::Timestamp;
    use des_format::routing::locate;
    use des_retriever::metrics::Metrics;
    use des_retriever::payload::Payload;
    use des_retriever::representation::Representation;
    use des_retriever::{CacheConfig, CountingStore, Retriever, Storage};
    use des_storage::{DesStore, LocalStore, ObjectStore};
    use std::sync::Arc;
    use std::time::Duration;

    let fixture = workspace_root().join("testdata/legacy-des/store");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("expected.json")).unwrap()).unwrap();
    let file = &expected["files"][0];
    let (uid, at) = (
        file["uid"].as_str().unwrap(),
        file["created_at"].as_str().unwrap(),
    );
    let loc = locate(uid, at, 4).unwrap();
    let part = |n: u32| format!("{}_{}_{n:04}.des", loc.date_dir, loc.shard_hex);
    let dir = tempfile::tempdir().unwrap();
    let src = fixture.join("shards").join(part(0));
    std::fs::copy(&src, dir.path().join(part(0))).unwrap();

    let objects: Arc<dyn ObjectStore> = Arc::new(CountingStore::new(Arc::new(
        LocalStore::new(dir.path()).unwrap(),
    )));
    let cfg = CacheConfig {
        // New parts are noticed at once instead of after a minute.
        parts_ttl: Duration::from_millis(1),
        payload_bytes: 1 << 20,
        ..CacheConfig::default()
    };
    let r = Retriever::new(
        DesStore::legacy(Arc::clone(&objects), 4).unwrap(),
        Storage::single(objects, "local").backends,
        Arc::new(Metrics::new().unwrap()),
        &cfg,
    );
    let at = Timestamp::parse_rfc3339(at).unwrap();
    let get = || async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let hit = r.locate(uid, at).await.unwrap();
        let rep = Arc::new(Representation::of(&hit.located));
        let (hit, payload, _) = r
            .fetch(uid, at, hit, rep, r.payload_ticket())
            .await
            .unwrap();
        let Payload::Inline(bytes) = payload else {
            panic!("a small file is inline");
        };
        let m = r.metrics();
        let counts = (m.payload_cache_hits.get(), m.payload_cache_misses.get());
        (hit.loaded.key.clone(), bytes, counts)
    };
    let (key, bytes, counts) = get().await;
    assert_eq!((key, counts), (part(0), (0, 1)));
    assert_eq!(bytes.len() as u64, file["size"].as_u64().unwrap());
    assert_eq!(get().await.2, (1, 1), "served from memory");

    std::fs::copy(&src, dir.path().join(part(1))).unwrap();
    let (key, again, counts) = get().await;
    assert_eq!(
        (key, counts),
        (part(1), (1, 2)),
        "the newer part's entry is read"
    );
    assert_eq!(again, bytes);
    assert_eq!(get().await.2, (2, 2), "and then served from memory");
    assert_eq!(r.hot().unwrap().entry_count(), 1);
}
