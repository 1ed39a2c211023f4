//! The hot payload cache: warm GETs of small files without storage reads,
//! its byte bound and entry limit, ranges from cached bytes, and deletes
//! (here and on another replica) dropping cached bytes.
// Helpers outside #[test] fns unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::Method;
use actix_web::test::{TestRequest, init_service};
use actix_web::web;
use common::*;
use des_format::Timestamp;
use des_retriever::hot::{Joined, Slot};
use des_retriever::representation::Representation;
use des_retriever::{AppState, Hit, Settings};

const N_BITS: u8 = 4;

fn hot_settings(root: &Path, bytes: u64, max_entry: u64) -> Settings {
    Settings {
        payload_cache_bytes: bytes,
        payload_cache_max_entry_bytes: max_entry,
        ..settings(root)
    }
}

/// Every file inline (big-file threshold far above the test files).
fn pack_small(dir: &Path, files: &[Spec]) {
    pack(dir, files, N_BITS, 10 << 20);
}

fn created() -> Timestamp {
    Timestamp::parse_rfc3339(CREATED).unwrap()
}

/// The app plus its state (for metrics and the cache) and storage counts.
macro_rules! app {
    ($root:expr, $settings:expr) => {{
        let (state, counts) = counted($root, &$settings).await;
        let state = web::Data::new(state);
        (
            init_service(des_retriever::server::app(state.clone())).await,
            state,
            counts,
        )
    }};
}

fn get(uid: &str) -> TestRequest {
    TestRequest::get().uri(&file_uri(uid, CREATED))
}

fn cached(state: &AppState, uid: &str) -> bool {
    state
        .retriever
        .hot()
        .expect("cache on")
        .contains(uid, created())
}

fn hits(state: &AppState) -> (u64, u64) {
    let m = state.retriever.metrics();
    (m.payload_cache_hits.get(), m.payload_cache_misses.get())
}

#[actix_web::test]
async fn second_get_is_served_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    // Compressible text is stored zstd-encoded, noise raw: both paths are cached.
    let files = [
        Spec::new("a.txt", text(5000)),
        Spec::new("b.bin", noise(3000, 7)),
    ];
    pack_small(dir.path(), &files);
    let (app, state, counts) = app!(dir.path(), hot_settings(dir.path(), 1 << 20, 64 << 10));

    for (uid, want) in [("a.txt", text(5000)), ("b.bin", noise(3000, 7))] {
        let c0 = counts.counts();
        let first = call(&app, get(uid).to_request()).await;
        assert_eq!((first.status, first.bytes()), (200, &want[..]), "{uid}");
        assert!(counts.counts().get > c0.get, "{uid}: the first GET reads");
        assert!(cached(&state, uid), "{uid}");

        let c1 = counts.counts();
        let second = call(&app, get(uid).to_request()).await;
        assert_eq!((second.status, second.bytes()), (200, &want[..]), "{uid}");
        assert_eq!(counts.counts(), c1, "{uid}: no storage request for a hit");
        assert_eq!(first.header("etag"), second.header("etag"));
        assert_eq!(first.header("content-type"), second.header("content-type"));
    }
    assert_eq!(hits(&state), (2, 2));

    let r = call(&app, TestRequest::get().uri("/metrics").to_request()).await;
    let text = String::from_utf8(r.bytes().to_vec()).unwrap();
    for series in [
        "des_payload_cache_hits_total 2",
        "des_payload_cache_misses_total 2",
        // One payload read per file: the hits read nothing.
        "des_s3_range_calls_total{backend=\"local\",type=\"payload\"} 2",
    ] {
        assert!(text.contains(series), "{series} in\n{text}");
    }
    let held = state.retriever.payload_cache_bytes();
    assert!(held >= 8000, "both payloads are held: {held}");
    assert!(
        text.contains(&format!("des_payload_cache_bytes {held}\n")),
        "{text}"
    );
}

#[actix_web::test]
async fn a_zero_sized_cache_reads_every_time() {
    let dir = tempfile::tempdir().unwrap();
    pack_small(dir.path(), &[Spec::new("a.txt", text(500))]);
    let (app, state, counts) = app!(dir.path(), hot_settings(dir.path(), 0, 64 << 10));
    assert!(state.retriever.hot().is_none(), "no cache at all");
    assert_eq!(call(&app, get("a.txt").to_request()).await.status, 200);
    for _ in 0..3 {
        let c0 = counts.counts();
        let r = call(&app, get("a.txt").to_request()).await;
        assert_eq!(r.bytes(), &text(500)[..]);
        let c1 = counts.counts();
        assert_eq!(
            (c1.get - c0.get, c1.total() - c0.total()),
            (1, 1),
            "one payload read per GET"
        );
    }
    assert_eq!(hits(&state), (0, 0));
    assert_eq!(state.retriever.payload_cache_bytes(), 0);
}

#[actix_web::test]
async fn deleted_files_are_410_and_dropped_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        Spec::new("gone.txt", text(300)),
        Spec::new("kept.txt", text(200)),
    ];
    pack_small(dir.path(), &files);
    let s = hot_settings(dir.path(), 1 << 20, 64 << 10);
    let (app, state, counts) = app!(dir.path(), s.clone());
    // Another replica over the same store, which learns of the delete by polling.
    let (other_app, other, _) = app!(dir.path(), s);
    for uid in ["gone.txt", "kept.txt"] {
        for app in [&app, &other_app] {
            assert_eq!(call(app, get(uid).to_request()).await.status, 200);
            assert_eq!(call(app, get(uid).to_request()).await.status, 200);
        }
        assert!(cached(&state, uid) && cached(&other, uid), "{uid}");
    }

    let q = format!("created_at={CREATED}&reason=gdpr");
    let r = call(
        &app,
        TestRequest::delete()
            .uri(&format!("/files/gone.txt?{q}"))
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert!(!cached(&state, "gone.txt"), "dropped by the DELETE");
    assert!(cached(&state, "kept.txt"), "only the deleted file");
    let c0 = counts.counts();
    let r = call(&app, get("gone.txt").to_request()).await;
    assert_eq!((r.status, r.json()["error"].as_str()), (410, Some("gone")));
    assert_eq!(counts.counts(), c0, "410 before any lookup");
    assert!(!cached(&state, "gone.txt"), "a 410 caches nothing");
    let r = call(&app, get("kept.txt").to_request()).await;
    assert_eq!(r.bytes(), &text(200)[..]);

    // The other replica: tombstones are checked before the cache, so it
    // stops serving the file at its poll, and drops the bytes then too.
    assert!(cached(&other, "gone.txt"));
    assert_eq!(other.deleted.as_ref().unwrap().poll().await.unwrap(), 1);
    assert!(!cached(&other, "gone.txt"), "dropped by the poll");
    assert_eq!(
        call(&other_app, get("gone.txt").to_request()).await.status,
        410
    );
    assert!(cached(&other, "kept.txt"));
}

#[actix_web::test]
async fn a_delete_racing_a_read_leaves_nothing_cached() {
    let dir = tempfile::tempdir().unwrap();
    let (state, hit, bytes) = one_located_file(dir.path()).await;
    let r = &state.retriever;
    let hot = r.hot().unwrap();

    // A delete lands after the request's tombstone check (its ticket) but
    // before its insert: the insert must not stick.
    let ticket = r.payload_ticket().unwrap();
    hot.invalidate("a.txt", created().date_number());
    let rep = || Arc::new(Representation::of(&hit.located));
    slot(hot.join(created(), &hit).await).fill(&hit, &bytes, rep(), ticket);
    assert!(!hot.contains("a.txt", created()));

    // Without a delete in between, the same insert sticks.
    let ticket = r.payload_ticket().unwrap();
    slot(hot.join(created(), &hit).await).fill(&hit, &bytes, rep(), ticket);
    assert!(hot.contains("a.txt", created()));
}

/// "a.txt" packed and located by a retriever with the hot cache on, and its bytes.
async fn one_located_file(dir: &Path) -> (web::Data<AppState>, Hit, bytes::Bytes) {
    pack_small(dir, &[Spec::new("a.txt", text(100))]);
    let (_app, state, _) = app!(dir, hot_settings(dir, 1 << 20, 64 << 10));
    let hit = state.retriever.locate("a.txt", created()).await.unwrap();
    (state, hit, bytes::Bytes::from(text(100)))
}

fn slot(joined: Joined<'_>) -> Slot<'_> {
    match joined {
        Joined::Slot(s) => s,
        Joined::Cached(_) => panic!("expected a miss"),
    }
}

/// A waiter that is never woken fails the test instead of hanging it.
async fn within_5s<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("woken within 5 s")
}

/// Requests that miss a file while another reads it wait for those bytes;
/// if the reader gives up, the next waiter reads instead of failing.
#[actix_web::test]
async fn concurrent_misses_wait_for_one_read() {
    let dir = tempfile::tempdir().unwrap();
    let (state, hit, bytes) = one_located_file(dir.path()).await;
    let r = &state.retriever;
    let hot = r.hot().unwrap();
    let rep = Arc::new(Representation::of(&hit.located));

    let reader = slot(hot.join(created(), &hit).await);
    let given_up = async {
        tokio::task::yield_now().await;
        drop(reader);
    };
    let (_, next) = futures::join!(given_up, within_5s(hot.join(created(), &hit)));
    let next = slot(next);
    let ticket = r.payload_ticket().unwrap();
    let filled = async {
        tokio::task::yield_now().await;
        next.fill(&hit, &bytes, rep, ticket);
    };
    let (_, waiter) = futures::join!(filled, within_5s(hot.join(created(), &hit)));
    match waiter {
        Joined::Cached(found) => assert_eq!(found.bytes, bytes),
        Joined::Slot(_) => panic!("the waiter read again"),
    }
}

#[actix_web::test]
async fn large_and_external_payloads_are_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        Spec::new("small.bin", noise(1000, 1)),
        Spec::new("large.bin", noise(3000, 2)),
        // Above the big-file threshold: an external object, streamed.
        Spec::new("big.bin", noise(80_000, 3)),
    ];
    pack(dir.path(), &files, N_BITS, 64 << 10);
    let (app, state, counts) = app!(dir.path(), hot_settings(dir.path(), 1 << 20, 2000));
    for (uid, want) in [("large.bin", noise(3000, 2)), ("big.bin", noise(80_000, 3))] {
        assert_eq!(call(&app, get(uid).to_request()).await.bytes(), &want[..]);
        let c0 = counts.counts();
        let r = call(&app, get(uid).to_request()).await;
        assert_eq!(r.bytes(), &want[..], "{uid}");
        assert_eq!(counts.counts().get - c0.get, 1, "{uid}: read every time");
        assert!(!cached(&state, uid), "{uid}");
    }
    assert_eq!(hits(&state), (0, 0), "not even looked up");
    assert_eq!(state.retriever.payload_cache_bytes(), 0);

    // The limit is inclusive of files below it.
    call(&app, get("small.bin").to_request()).await;
    let c0 = counts.counts();
    let r = call(&app, get("small.bin").to_request()).await;
    assert_eq!(r.bytes(), &noise(1000, 1)[..]);
    assert_eq!(counts.counts(), c0);
    assert!(cached(&state, "small.bin"));
}

#[actix_web::test]
async fn the_byte_bound_holds() {
    const BOUND: u64 = 64 << 10;
    const SIZE: usize = 8 << 10;
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<Spec> = (0..40)
        .map(|i| Spec::new(&format!("f{i}.bin"), noise(SIZE, i)))
        .collect();
    pack_small(dir.path(), &files);
    let (app, state, _) = app!(dir.path(), hot_settings(dir.path(), BOUND, 16 << 10));
    for round in 0..3 {
        for (i, f) in files.iter().enumerate() {
            let r = call(&app, get(&f.uid).to_request()).await;
            assert_eq!(r.bytes(), &f.data[..], "{} round {round}", f.uid);
            if i % 10 == 9 {
                let held = state.retriever.payload_cache_bytes();
                assert!(held <= BOUND, "{held} > {BOUND}");
            }
        }
    }
    let hot = state.retriever.hot().unwrap();
    let (held, entries) = (hot.weighted_size(), hot.entry_count());
    assert!(held <= BOUND, "{held} > {BOUND}");
    assert!(entries > 0, "the cache is used");
    assert!(entries < 8, "40 × 8 KiB do not fit in 64 KiB: {entries}");
    // The weigher counts at least the payloads, so the bound is one on bytes.
    assert!(
        held >= entries * SIZE as u64,
        "{held} for {entries} entries"
    );
}

#[actix_web::test]
async fn ranges_of_cached_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = text(10_000);
    pack_small(dir.path(), &[Spec::new("r.txt", data.clone())]);
    let (app, state, counts) = app!(dir.path(), hot_settings(dir.path(), 1 << 20, 64 << 10));
    let full = call(&app, get("r.txt").to_request()).await;
    assert_eq!(full.bytes(), &data[..]);
    assert!(cached(&state, "r.txt"));
    let etag = full.header("etag").unwrap().to_string();

    let c0 = counts.counts();
    for (h, want) in [
        ("bytes=100-199", 100..200),
        ("bytes=-10", 9_990..10_000),
        ("bytes=9000-", 9_000..10_000),
        ("bytes=0-0", 0..1),
    ] {
        let r = call(&app, get("r.txt").insert_header(("range", h)).to_request()).await;
        assert_eq!(r.status, 206, "{h}");
        assert_eq!(r.bytes(), &data[want.clone()], "{h}");
        let range = format!("bytes {}-{}/10000", want.start, want.end - 1);
        assert_eq!(r.header("content-range"), Some(range.as_str()), "{h}");
    }
    // If-Range with the current ETag honours the range; a stale one gets it all.
    let r = call(
        &app,
        get("r.txt")
            .insert_header(("range", "bytes=5-9"))
            .insert_header(("if-range", etag.as_str()))
            .to_request(),
    )
    .await;
    assert_eq!((r.status, r.bytes()), (206, &data[5..10]));
    let r = call(
        &app,
        get("r.txt")
            .insert_header(("range", "bytes=5-9"))
            .insert_header(("if-range", "\"other\""))
            .to_request(),
    )
    .await;
    assert_eq!((r.status, r.bytes()), (200, &data[..]));
    assert_eq!(
        call(
            &app,
            get("r.txt")
                .insert_header(("range", "bytes=10000-"))
                .to_request()
        )
        .await
        .status,
        416
    );
    let head = TestRequest::default()
        .method(Method::HEAD)
        .uri(&file_uri("r.txt", CREATED));
    let r = call(&app, head.to_request()).await;
    assert_eq!((r.status, r.header("content-length")), (200, Some("10000")));
    assert_eq!(counts.counts(), c0, "all from the cache and the index");
}

#[actix_web::test]
async fn a_replaced_v3_shard_keeps_serving_the_same_bytes_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mates = same_shard(N_BITS, "keep.txt", 1);
    pack_small(dir.path(), &[Spec::new("keep.txt", text(2000))]);
    let mut s = hot_settings(dir.path(), 1 << 20, 64 << 10);
    s.negative_ttl = Duration::from_millis(300);
    let (app, state, counts) = app!(dir.path(), s);
    let first = call(&app, get("keep.txt").to_request()).await;
    assert_eq!(first.bytes(), &text(2000)[..]);
    // A new generation of the shard: keep.txt moves to the new object.
    pack_small(dir.path(), &[Spec::new(&mates[0], noise(4000, 5))]);
    // Past the local store's kept file handles and the negative TTL, so the
    // new file's GET reloads the index.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = call(&app, get(&mates[0]).to_request()).await;
    assert_eq!(r.bytes(), &noise(4000, 5)[..]);

    // A v3 file's bytes never change, so the copy read from the old object
    // is still right: no storage request, no index lookup, same headers.
    let c0 = counts.counts();
    let r = call(&app, get("keep.txt").to_request()).await;
    assert_eq!(r.bytes(), &text(2000)[..]);
    assert_eq!(r.header("etag"), first.header("etag"));
    assert_eq!(r.header("content-type"), first.header("content-type"));
    assert_eq!(counts.counts(), c0, "served from memory");
    // HEAD and a conditional GET are answered from the cached headers.
    let etag = first.header("etag").unwrap().to_string();
    let r = call(
        &app,
        get("keep.txt")
            .insert_header(("if-none-match", etag))
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 304);
    let r = call(&app, get("keep.txt").method(Method::HEAD).to_request()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("2000"));
    assert_eq!(counts.counts(), c0, "still nothing read");
    let hot = state.retriever.hot().unwrap();
    assert_eq!(hot.entry_count(), 2, "one copy per file");
}
