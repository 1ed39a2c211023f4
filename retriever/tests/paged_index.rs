//! Storage requests and bytes per GET for shards with a paged index (SPEC
//! §5.10), at 10, 10,000 and 200,000 entries, counted at the store: a cold
//! GET reads at most 64 KiB besides the file in at most 3 requests; with the
//! directory cached, at most 8 KiB besides the file in at most 2; with the
//! page cached too, only the file. A flat (version 3) shard still reads, and
//! a damaged page is a 500 for its files only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;

use actix_web::test::{TestRequest, init_service};
use actix_web::web;
use common::*;
use des_format::codec::Codec;
use des_format::v3::{IndexLayout, NewEntry, ShardIdent, ShardWriter};
use des_format::{DigestAlgorithm, Timestamp, routing};
use des_retriever::Counts;
use des_storage::{CreateOptions, DesStore, LocalStore, ObjectStore};

const N_BITS: u8 = 4;
const FILE_LEN: usize = 200;

/// Numeric uids that are multiples of 16 route to shard 0 at n_bits 4 (SPEC
/// §3.1), so one shard gets all of them without hashing millions of names.
fn uid(i: usize) -> String {
    ((1_000_000_000 + i) * 16).to_string()
}

fn data(i: usize) -> Vec<u8> {
    noise(FILE_LEN, i as u64 + 1)
}

/// A store whose one shard (2024-05-17, shard 0) holds `n` files, written
/// directly with the shard writer in `layout`. Returns the shard's path.
async fn store_with(root: &Path, n: usize, layout: IndexLayout) -> std::path::PathBuf {
    let objects: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(root).unwrap());
    let opts = CreateOptions {
        n_bits: Some(N_BITS),
        digest: None,
    };
    DesStore::open_or_create(objects, opts).await.unwrap();
    let ts = Timestamp::parse_rfc3339(CREATED).unwrap();
    let loc = routing::locate_ts(&uid(0), ts, N_BITS).unwrap();
    assert_eq!(loc.shard_index, 0);
    let ident = ShardIdent {
        date: 20240517,
        shard_index: 0,
        n_bits: N_BITS,
        generation: 1,
        digest_alg: DigestAlgorithm::Blake3,
        written_at: ts,
    };
    let mut w = ShardWriter::with_layout(Vec::new(), ident, layout).unwrap();
    for i in 0..n {
        let bytes = data(i);
        let e = NewEntry {
            uid: uid(i),
            created_at: ts,
            content_type: (i % 3 == 0).then(|| "application/pdf".into()),
            meta: None,
            codec: Codec::None,
            orig_len: bytes.len() as u64,
            digest: DigestAlgorithm::Blake3.digest(&bytes),
        };
        w.add_inline(e, &bytes).unwrap();
    }
    let path = root.join(DesStore::shard_key(&loc));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, w.finish().unwrap().0).unwrap();
    path
}

/// (requests, bytes) between two counts.
fn cost(after: Counts, before: Counts) -> (u64, u64) {
    (after.total() - before.total(), after.bytes - before.bytes)
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

macro_rules! get {
    ($app:expr, $counts:expr, $i:expr) => {{
        let before = $counts.counts();
        let r = call(
            &$app,
            TestRequest::get()
                .uri(&file_uri(&uid($i), CREATED))
                .to_request(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", uid($i));
        assert_eq!(r.bytes(), &data($i)[..], "{}", uid($i));
        cost($counts.counts(), before)
    }};
}

const FILE: u64 = FILE_LEN as u64;

async fn budgets_hold(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), n, IndexLayout::Paged).await;
    let (app, counts) = app!(dir.path(), settings(dir.path()));
    let (far, near) = (n / 3, n / 3 + 1);

    let (requests, bytes) = get!(app, counts, far);
    if n <= 10 {
        assert_eq!(requests, 2, "{n} entries, cold: the suffix holds the index");
    } else {
        assert_eq!(requests, 3, "{n} entries, cold: suffix, page, payload");
    }
    assert!(
        bytes <= (64 << 10) + FILE,
        "{n} entries, cold: {bytes} bytes"
    );

    // Directory cached; the page of a file elsewhere in the shard is not.
    let other = n - 1;
    let (requests, bytes) = get!(app, counts, other);
    assert!(
        requests <= 2,
        "{n} entries, warm directory: {requests} requests"
    );
    assert!(
        bytes <= (8 << 10) + FILE,
        "{n} entries, warm directory: {bytes}"
    );

    // Its page cached too (a neighbour shares it, or the same file again).
    let (requests, bytes) = get!(app, counts, far);
    assert_eq!((requests, bytes), (1, FILE), "{n} entries, warm page");
    let (requests, _) = get!(app, counts, near);
    assert!(requests <= 2, "{n} entries, neighbour: {requests} requests");
}

#[actix_web::test]
async fn ten_entries() {
    budgets_hold(10).await;
}

#[actix_web::test]
async fn ten_thousand_entries() {
    budgets_hold(10_000).await;
}

#[actix_web::test]
async fn two_hundred_thousand_entries() {
    budgets_hold(200_000).await;
}

/// With every cache smaller than one directory or page, every GET is cold,
/// and still bounded: nothing larger than a cache's bound is kept.
#[actix_web::test]
async fn with_no_cache_every_get_is_cold_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 10_000, IndexLayout::Paged).await;
    let mut s = settings(dir.path());
    s.cache_bytes = 1;
    s.page_cache_bytes = 1;
    let (app, counts) = app!(dir.path(), s);
    for i in [0, 4_999, 9_999, 4_999] {
        let (requests, bytes) = get!(app, counts, i);
        assert_eq!(requests, 3, "uid {i}");
        assert!(bytes <= (64 << 10) + FILE, "uid {i}: {bytes}");
    }
}

/// A version-3 shard (flat index) is read as before: suffix, rest of the
/// index, payload; then warm with one request.
#[actix_web::test]
async fn a_flat_shard_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 10_000, IndexLayout::Flat).await;
    let (app, counts) = app!(dir.path(), settings(dir.path()));
    let (requests, bytes) = get!(app, counts, 1234);
    assert_eq!(requests, 3);
    assert!(bytes > 500_000, "the whole index: {bytes}");
    assert_eq!(get!(app, counts, 9_000), (1, FILE));
}

/// A damaged page fails the GETs of its files (500, counted as corruption)
/// and no other: the rest of the shard is served.
#[actix_web::test]
async fn a_damaged_page_fails_only_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with(dir.path(), 10_000, IndexLayout::Paged).await;
    let mut bytes = std::fs::read(&path).unwrap();
    let trailer = &bytes[bytes.len() - 64..];
    let index_offset = u64::from_le_bytes(trailer[..8].try_into().unwrap()) as usize;
    // Byte 100 of the first page: inside its first entries.
    bytes[index_offset + 100] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let (state, counts) = counted(dir.path(), &settings(dir.path())).await;
    let data = web::Data::new(state);
    let app = init_service(des_retriever::server::app(data.clone())).await;
    let r = call(
        &app,
        TestRequest::get()
            .uri(&file_uri(&uid(0), CREATED))
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 500, "{:?}", r.json());
    // Seen on the cached directory's read and again after reloading it.
    assert!(metric(&data, "des_corruption_detected_total") >= 1.0);
    // Files on other pages are still served.
    get!(app, counts, 9_999);
}
