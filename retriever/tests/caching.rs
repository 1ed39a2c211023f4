//! Storage request budgets, coalescing, negative caching, stale and corrupt
//! shards, and streamed big files.
// Helpers outside #[test] fns unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_web::test::{TestRequest, init_service};
use actix_web::web;
use common::*;
use des_format::routing::shard_index;
use des_retriever::Counts;

const N_BITS: u8 = 4;

fn shard_path(root: &Path, uid: &str) -> std::path::PathBuf {
    let i = shard_index(uid, N_BITS).unwrap();
    root.join(format!(
        "20240517/{}.des",
        des_format::routing::shard_hex(i, N_BITS)
    ))
}

fn delta(after: Counts, before: Counts) -> (u64, u64, u64) {
    (
        after.get - before.get,
        after.suffix_get - before.suffix_get,
        after.total() - before.total(),
    )
}

macro_rules! app {
    ($root:expr, $settings:expr) => {{
        let (r, counts) = counted($root, &$settings).await;
        (
            init_service(des_retriever::server::app(web::Data::new(r))).await,
            counts,
        )
    }};
}

#[actix_web::test]
async fn cold_costs_two_requests_warm_one() {
    let dir = tempfile::tempdir().unwrap();
    let mates = same_shard(N_BITS, "a.txt", 2);
    let files = [
        Spec::new("a.txt", text(500)),
        Spec::new(&mates[0], text(600)),
        Spec::new(&mates[1], text(700)),
    ];
    pack(dir.path(), &files, N_BITS, 10 << 20);
    let (app, counts) = app!(dir.path(), settings(dir.path()));

    let c0 = counts.counts();
    let r = call(
        &app,
        TestRequest::get()
            .uri(&file_uri("a.txt", CREATED))
            .to_request(),
    )
    .await;
    assert_eq!(r.bytes(), &text(500)[..]);
    let c1 = counts.counts();
    assert_eq!(delta(c1, c0), (2, 1, 2), "cold: suffix read + payload read");

    let r = call(
        &app,
        TestRequest::get()
            .uri(&file_uri("a.txt", CREATED))
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 200);
    let c2 = counts.counts();
    assert_eq!(delta(c2, c1), (1, 0, 1), "warm: payload read only");

    // Another file of the cached shard is warm too.
    let r = call(
        &app,
        TestRequest::get()
            .uri(&file_uri(&mates[0], CREATED))
            .to_request(),
    )
    .await;
    assert_eq!(r.bytes(), &text(600)[..]);
    let c3 = counts.counts();
    assert_eq!(delta(c3, c2), (1, 0, 1));

    // HEAD, 304, 416 and unknown uids of a cached shard need no storage at all.
    let uri = file_uri(&mates[1], CREATED);
    let head = call(
        &app,
        TestRequest::default()
            .method(actix_web::http::Method::HEAD)
            .uri(&uri)
            .to_request(),
    )
    .await;
    let etag = head.header("etag").unwrap().to_string();
    let r = call(
        &app,
        TestRequest::get()
            .uri(&uri)
            .insert_header(("if-none-match", etag))
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 304);
    let r = call(
        &app,
        TestRequest::get()
            .uri(&uri)
            .insert_header(("range", "bytes=700-"))
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 416);
    assert_eq!(counts.counts().total(), c3.total());
    assert_eq!(counts.counts().write, 0, "the retriever never writes");
}

#[actix_web::test]
async fn concurrent_cold_misses_load_the_index_once() {
    let dir = tempfile::tempdir().unwrap();
    let mates = same_shard(N_BITS, "x.txt", 4);
    let mut files: Vec<Spec> = mates.iter().map(|u| Spec::new(u, u.repeat(40))).collect();
    files.push(Spec::new("x.txt", text(100)));
    pack(dir.path(), &files, N_BITS, 10 << 20);
    let (app, counts) = app!(dir.path(), settings(dir.path()));
    let c0 = counts.counts();

    let uids: Vec<String> = (0..50)
        .map(|i| {
            if i % 5 == 0 {
                "x.txt".to_string()
            } else {
                mates[i % 4].clone()
            }
        })
        .collect();
    let calls = uids.iter().map(|u| {
        call(
            &app,
            TestRequest::get().uri(&file_uri(u, CREATED)).to_request(),
        )
    });
    let results = futures::future::join_all(calls).await;
    for (uid, r) in uids.iter().zip(&results) {
        assert_eq!(r.status, 200, "{uid}");
        let want = if uid == "x.txt" {
            text(100)
        } else {
            uid.repeat(40).into_bytes()
        };
        assert_eq!(r.bytes(), &want[..], "{uid}");
    }
    let (get, suffix, _) = delta(counts.counts(), c0);
    assert_eq!(suffix, 1, "one index fetch for 50 concurrent cold requests");
    assert_eq!(get, 51, "plus one payload read each");
}

#[actix_web::test]
async fn missing_shards_are_remembered_briefly() {
    let dir = tempfile::tempdir().unwrap();
    pack(
        dir.path(),
        &[Spec::new("a.txt", text(10))],
        N_BITS,
        10 << 20,
    );
    let mut s = settings(dir.path());
    s.negative_ttl = Duration::from_secs(1);
    let (app, counts) = app!(dir.path(), s);
    let uri = file_uri("a.txt", "2020-01-01T00:00:00Z");

    let c0 = counts.counts();
    for _ in 0..5 {
        assert_eq!(
            call(&app, TestRequest::get().uri(&uri).to_request())
                .await
                .status,
            404
        );
    }
    let flood = (0..20).map(|_| call(&app, TestRequest::get().uri(&uri).to_request()));
    assert!(
        futures::future::join_all(flood)
            .await
            .iter()
            .all(|r| r.status == 404)
    );
    assert_eq!(
        delta(counts.counts(), c0),
        (1, 1, 1),
        "25 requests for a missing shard, one storage request"
    );

    // The memory is brief: after the TTL the shard is looked for again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        call(&app, TestRequest::get().uri(&uri).to_request())
            .await
            .status,
        404
    );
    assert_eq!(delta(counts.counts(), c0), (2, 2, 2));
}

#[actix_web::test]
async fn replaced_shard_is_reloaded_never_misread() {
    let dir = tempfile::tempdir().unwrap();
    let mates = same_shard(N_BITS, "keep.txt", 2);
    pack(
        dir.path(),
        &[
            Spec::new("keep.txt", text(2000)),
            Spec::new(&mates[0], noise(3000, 1)),
        ],
        N_BITS,
        10 << 20,
    );
    let mut s = settings(dir.path());
    s.negative_ttl = Duration::from_millis(300);
    let (app, counts) = app!(dir.path(), s);
    let keep = file_uri("keep.txt", CREATED);
    assert_eq!(
        call(&app, TestRequest::get().uri(&keep).to_request())
            .await
            .bytes(),
        &text(2000)[..]
    );
    let old_etag = std::fs::metadata(shard_path(dir.path(), "keep.txt"))
        .unwrap()
        .len();

    // Another pack adds a file to the same shard: a new object replaces the old.
    pack(
        dir.path(),
        &[Spec::new(&mates[1], noise(4000, 2))],
        N_BITS,
        10 << 20,
    );
    assert_ne!(
        std::fs::metadata(shard_path(dir.path(), "keep.txt"))
            .unwrap()
            .len(),
        old_etag
    );

    // The local store may still read the old version through the handle it
    // keeps open (consistently: the cached index describes that version) ...
    let c0 = counts.counts();
    let r = call(&app, TestRequest::get().uri(&keep).to_request()).await;
    assert_eq!((r.status, r.bytes()), (200, &text(2000)[..]));
    let d = delta(counts.counts(), c0);
    assert!(d == (1, 0, 1) || d == (3, 1, 3), "{d:?}");
    // ... but for a second at most; then the replacement is noticed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let c0 = counts.counts();
    let r = call(&app, TestRequest::get().uri(&keep).to_request()).await;
    assert_eq!((r.status, r.bytes()), (200, &text(2000)[..]));
    if d == (1, 0, 1) {
        assert_eq!(
            delta(counts.counts(), c0),
            (3, 1, 3),
            "failed If-Match read, index reload, payload read"
        );
    }
    let r = call(
        &app,
        TestRequest::get()
            .uri(&file_uri(&mates[0], CREATED))
            .to_request(),
    )
    .await;
    assert_eq!(r.bytes(), &noise(3000, 1)[..]);
    let r = call(
        &app,
        TestRequest::get()
            .uri(&file_uri(&mates[1], CREATED))
            .to_request(),
    )
    .await;
    assert_eq!(
        r.bytes(),
        &noise(4000, 2)[..],
        "the reloaded index has the new file"
    );
}

#[actix_web::test]
async fn new_file_in_a_cached_shard_appears_after_the_negative_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let mates = same_shard(N_BITS, "first.txt", 1);
    pack(
        dir.path(),
        &[Spec::new("first.txt", text(100))],
        N_BITS,
        10 << 20,
    );
    let mut s = settings(dir.path());
    s.negative_ttl = Duration::from_secs(1);
    let (app, counts) = app!(dir.path(), s);
    let late = file_uri(&mates[0], CREATED);
    assert_eq!(
        call(
            &app,
            TestRequest::get()
                .uri(&file_uri("first.txt", CREATED))
                .to_request()
        )
        .await
        .status,
        200
    );
    pack(
        dir.path(),
        &[Spec::new(&mates[0], text(50))],
        N_BITS,
        10 << 20,
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let c0 = counts.counts();
    let r = call(&app, TestRequest::get().uri(&late).to_request()).await;
    assert_eq!((r.status, r.bytes()), (200, &text(50)[..]));
    assert_eq!(
        delta(counts.counts(), c0),
        (2, 1, 2),
        "one index reload, one payload read"
    );
    // A uid that is really absent costs nothing more within the TTL.
    let c1 = counts.counts();
    for _ in 0..10 {
        assert_eq!(
            call(
                &app,
                TestRequest::get()
                    .uri(&file_uri("absent.txt", CREATED))
                    .to_request()
            )
            .await
            .status,
            404
        );
    }
    assert!(counts.counts().total() - c1.total() <= 1);
}

/// Flips one byte of `uid`'s stored bytes inside its shard.
async fn corrupt_inline(root: &Path, uid: &str) {
    let objects = des_storage::open_location(&root.display().to_string()).unwrap();
    let store = des_storage::DesStore::open(objects).await.unwrap();
    let key = shard_path(root, uid)
        .strip_prefix(root)
        .unwrap()
        .display()
        .to_string();
    let loaded = store.load_index(&key).await.unwrap().unwrap();
    let range = loaded.find(uid).unwrap().shard_range().unwrap();
    flip(
        &shard_path(root, uid),
        range.start + (range.end - range.start) / 2,
    );
}

fn flip(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0x5A;
    std::fs::write(path, bytes).unwrap();
}

#[actix_web::test]
async fn corrupt_entries_are_500_never_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mates = same_shard(N_BITS, "raw.bin", 2);
    let files = [
        Spec::new("raw.bin", noise(3000, 3)),
        Spec::new(&mates[0], text(4000)),
        Spec::new(&mates[1], text(10)),
    ];
    pack(dir.path(), &files, N_BITS, 10 << 20);
    let (app, counts) = app!(dir.path(), settings(dir.path()));
    // Cache the index first: the corruption then also changes the object under it.
    assert_eq!(
        call(
            &app,
            TestRequest::get()
                .uri(&file_uri(&mates[1], CREATED))
                .to_request()
        )
        .await
        .status,
        200
    );

    corrupt_inline(dir.path(), "raw.bin").await;
    corrupt_inline(dir.path(), &mates[0]).await;
    for (uid, data) in [("raw.bin", noise(3000, 3)), (mates[0].as_str(), text(4000))] {
        let c0 = counts.counts();
        let r = call(
            &app,
            TestRequest::get().uri(&file_uri(uid, CREATED)).to_request(),
        )
        .await;
        assert_eq!(r.status, 500, "{uid}");
        assert_eq!(r.json()["error"], "corrupt", "{uid}");
        assert!(
            !r.bytes()
                .windows(64)
                .any(|w| data.windows(64).any(|d| d == w)),
            "{uid}: no payload bytes"
        );
        // Exactly one reload and retry, whatever first failed (If-Match or the check).
        let (_, suffix, _) = delta(counts.counts(), c0);
        assert_eq!(suffix, 1, "{uid}: reloaded exactly once");
    }
    // Cold: load, read (bad), reload, read (bad): four requests, then 500.
    let (app, counts) = app!(dir.path(), settings(dir.path()));
    let c0 = counts.counts();
    let r = call(
        &app,
        TestRequest::get()
            .uri(&file_uri("raw.bin", CREATED))
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 500);
    assert_eq!(delta(counts.counts(), c0), (4, 2, 4));
    // The rest of the shard is fine.
    let r = call(
        &app,
        TestRequest::get()
            .uri(&file_uri(&mates[1], CREATED))
            .to_request(),
    )
    .await;
    assert_eq!((r.status, r.bytes()), (200, &text(10)[..]));
}

fn big_key(root: &Path, data: &[u8]) -> std::path::PathBuf {
    root.join(des_format::v3::external_key(
        &des_format::DigestAlgorithm::Blake3.digest(data),
    ))
}

#[actix_web::test]
async fn big_files_stream_and_abort_on_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let big = noise(700_000, 9);
    pack(
        dir.path(),
        &[
            Spec::new("big.bin", big.clone()),
            Spec::new("small.txt", text(10)),
        ],
        N_BITS,
        64 << 10,
    );
    assert!(
        big_key(dir.path(), &big).exists(),
        "stored as an external object"
    );
    let (app, counts) = app!(dir.path(), settings(dir.path()));
    let uri = file_uri("big.bin", CREATED);

    let c0 = counts.counts();
    let r = call(&app, TestRequest::get().uri(&uri).to_request()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.bytes(), &big[..]);
    assert_eq!(r.header("etag").map(str::len), Some(66));
    assert_eq!(
        delta(counts.counts(), c0),
        (2, 1, 2),
        "cold: suffix read + external object"
    );
    let c1 = counts.counts();
    let range = |h: &'static str| {
        let app = &app;
        let uri = uri.clone();
        async move {
            call(
                app,
                TestRequest::get()
                    .uri(&uri)
                    .insert_header(("range", h))
                    .to_request(),
            )
            .await
        }
    };
    for (h, want) in [
        ("bytes=0-0", 0..1),
        ("bytes=-5", 699_995..700_000),
        ("bytes=300000-", 300_000..700_000),
        ("bytes=262140-262150", 262_140..262_151),
    ] {
        let r = range(h).await;
        assert_eq!(r.status, 206, "{h}");
        assert_eq!(r.bytes(), &big[want], "{h}");
    }
    assert_eq!(counts.counts().get - c1.get, 4, "warm: one read each");
    assert_eq!(range("bytes=700000-").await.status, 416);

    flip(&big_key(dir.path(), &big), 650_000);
    let r = call(&app, TestRequest::get().uri(&uri).to_request()).await;
    assert_eq!(
        r.status, 200,
        "the status went out before the end of the object was checked"
    );
    assert!(
        r.body.is_err(),
        "the body must fail, not complete with wrong bytes"
    );
    let r = range("bytes=0-9").await;
    assert!(
        r.body.is_err(),
        "even a range ending before the bad byte is not completed"
    );
}

/// A v3 store with a zstd-compressed external payload (the packer stores big
/// files raw, but the format allows any codec).
/// `corrupt`: a stored byte to flip (its CRC is computed before).
async fn compressed_external_store(root: &Path, data: &[u8], corrupt: Option<usize>) {
    use des_format::v3::{NewEntry, ShardIdent, ShardWriter};
    use des_storage::{DesStore, PutOptions};
    let objects = des_storage::open_location(&root.display().to_string()).unwrap();
    let (store, _) = DesStore::open_or_create(
        objects.clone(),
        des_storage::CreateOptions {
            n_bits: Some(N_BITS),
            digest: None,
        },
    )
    .await
    .unwrap();
    let digest = store.digest().digest(data);
    let mut stored = zstd::bulk::compress(data, 3).unwrap();
    let crc = crc32c::crc32c(&stored);
    if let Some(at) = corrupt {
        stored[at] ^= 1;
    }
    let created = des_format::Timestamp::parse_rfc3339(CREATED).unwrap();
    let shard = shard_index("z.txt", N_BITS).unwrap();
    let ident = ShardIdent {
        date: 20240517,
        shard_index: shard as u16,
        n_bits: N_BITS,
        generation: 1,
        digest_alg: store.digest(),
        written_at: created,
    };
    let mut w = ShardWriter::new(Vec::new(), ident).unwrap();
    let entry = NewEntry {
        uid: "z.txt".into(),
        created_at: created,
        content_type: None,
        meta: None,
        codec: des_format::Codec::Zstd,
        orig_len: data.len() as u64,
        digest,
    };
    w.add_external(entry, stored.len() as u64, crc).unwrap();
    let (shard_bytes, _) = w.finish().unwrap();
    let key = format!(
        "20240517/{}.des",
        des_format::routing::shard_hex(shard, N_BITS)
    );
    objects
        .put(&key, shard_bytes.into(), PutOptions::default())
        .await
        .unwrap();
    let big = des_format::v3::external_key(&digest);
    objects
        .put(&big, stored.into(), PutOptions::default())
        .await
        .unwrap();
}

#[actix_web::test]
async fn compressed_external_payloads_are_decoded_while_streaming() {
    let data = text(2_000_000);
    // Intact; a byte in the middle (decodes, the checks catch it); the
    // frame's magic (the decoder refuses it).
    let middle = zstd::bulk::compress(&data, 3).unwrap().len() / 2;
    for corrupt in [None, Some(middle), Some(0)] {
        let dir = tempfile::tempdir().unwrap();
        compressed_external_store(dir.path(), &data, corrupt).await;
        let (state, _) = counted(dir.path(), &settings(dir.path())).await;
        let state = web::Data::new(state);
        let app = init_service(des_retriever::server::app(state.clone())).await;
        let r = call(
            &app,
            TestRequest::get()
                .uri(&file_uri("z.txt", CREATED))
                .to_request(),
        )
        .await;
        assert_eq!(r.status, 200);
        if corrupt.is_some() {
            assert!(r.body.is_err());
            // The stored bytes are to blame, not the transfer: counted.
            assert_eq!(metric(&state, "des_corruption_detected_total"), 1.0);
        } else {
            assert_eq!(r.bytes(), &data[..]);
            let r = call(
                &app,
                TestRequest::get()
                    .uri(&file_uri("z.txt", CREATED))
                    .insert_header(("range", "bytes=1999990-"))
                    .to_request(),
            )
            .await;
            assert_eq!((r.status, r.bytes()), (206, &data[1_999_990..]));
        }
    }
}

/// Storage failing in the middle of a compressed big file is an outage, not
/// corruption: the response is cut short, and the corruption alert stays quiet.
#[actix_web::test]
async fn a_transfer_cut_short_is_not_corruption() {
    let data = noise(2_000_000, 5);
    let dir = tempfile::tempdir().unwrap();
    compressed_external_store(dir.path(), &data, None).await;
    let local: Arc<dyn des_storage::ObjectStore> =
        Arc::new(des_storage::LocalStore::new(dir.path()).unwrap());
    let faulty = Faulty::new(local);
    faulty.set(BODY_CUT);
    let state = web::Data::new(state_on(Arc::new(faulty), &settings(dir.path())).await);
    let app = init_service(des_retriever::server::app(state.clone())).await;
    let r = call(
        &app,
        TestRequest::get()
            .uri(&file_uri("z.txt", CREATED))
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.body.is_err(),
        "a cut transfer must not end like a whole one"
    );
    assert_eq!(metric(&state, "des_corruption_detected_total"), 0.0);
}
