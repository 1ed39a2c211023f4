//! One behaviour suite for every backend. Each backend's test file calls
//! `conformance_tests!(factory)`, where `factory` returns a fresh, empty store
//! (`conformance_tests!(async factory)` when it must be awaited, as for S3).
//! Assertions on conditional writes follow the store's `capabilities()`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use des_storage::{
    ByteRange, ErrorKind, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
};

pub type Store = Arc<dyn ObjectStore>;

/// Known deviations of a server under test from S3's behaviour, declared by
/// its test binary (see `conformance_s3s.rs`). The affected assertions are
/// skipped with a printed reason; everything else still runs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quirks {
    /// `bytes=-n` with `n` larger than the object fails instead of returning
    /// the whole object (s3s-fs 0.14.1 answers 500: it seeks before the start).
    pub suffix_longer_than_object_fails: bool,
}

static QUIRKS: OnceLock<Quirks> = OnceLock::new();

/// Declares the quirks of this test binary's backend; the first call wins.
#[allow(dead_code)] // Only some backends have quirks.
pub fn declare_quirks(q: Quirks) {
    let _ = QUIRKS.set(q);
}

fn quirks() -> Quirks {
    QUIRKS.get().copied().unwrap_or_default()
}

fn skip(s: &Store, what: &str, why: &str) {
    eprintln!("SKIPPED assertion ({what}) on {}: {why}", s.describe());
}

/// A `bytes=-n` read longer than the object, unless the backend is known to fail it.
async fn long_suffix(s: &Store, key: &str, n: u64) -> Option<des_storage::GetResult> {
    if quirks().suffix_longer_than_object_fails {
        skip(
            s,
            &format!("Suffix({n}) of {key}"),
            "the server fails suffixes longer than the object",
        );
        return None;
    }
    Some(
        s.get(key, GetOptions::range(ByteRange::Suffix(n)))
            .await
            .unwrap(),
    )
}

async fn put(s: &Store, key: &str, data: &[u8]) {
    s.put(key, Bytes::copy_from_slice(data), PutOptions::default())
        .await
        .unwrap();
}

async fn range(s: &Store, key: &str, r: ByteRange) -> Vec<u8> {
    s.get_range(key, r).await.unwrap().1.to_vec()
}

/// Deterministic, position-dependent bytes, so a misplaced chunk shows.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// Streams `data` through `put_writer` in `chunk`-sized writes.
async fn write_all(
    s: &Store,
    key: &str,
    data: &[u8],
    opts: PutOptions,
    chunk: usize,
) -> des_storage::Result<des_storage::PutResult> {
    let mut w = s.put_writer(key, opts).await?;
    for c in data.chunks(chunk) {
        w.write(Bytes::copy_from_slice(c)).await?;
    }
    w.finish().await
}

pub async fn ranges(s: Store) {
    put(&s, "r/obj", b"0123456789").await;
    assert_eq!(range(&s, "r/obj", ByteRange::All).await, b"0123456789");
    assert_eq!(range(&s, "r/obj", ByteRange::Suffix(3)).await, b"789");
    if let Some(r) = long_suffix(&s, "r/obj", 100).await {
        assert_eq!(r.bytes().await.unwrap().as_ref(), b"0123456789");
    }
    assert_eq!(
        range(&s, "r/obj", ByteRange::Bounded { start: 9, end: 10 }).await,
        b"9"
    );
    assert_eq!(
        range(&s, "r/obj", ByteRange::Bounded { start: 2, end: 5 }).await,
        b"234"
    );
    assert_eq!(
        range(&s, "r/obj", ByteRange::Bounded { start: 8, end: 50 }).await,
        b"89"
    );
    assert_eq!(range(&s, "r/obj", ByteRange::Offset(7)).await, b"789");
    let (meta, _) = s.get_range("r/obj", ByteRange::Suffix(3)).await.unwrap();
    assert_eq!(meta.size, 10);
    let past = s
        .get(
            "r/obj",
            GetOptions::range(ByteRange::Bounded { start: 10, end: 12 }),
        )
        .await;
    assert!(
        past.is_err(),
        "a range starting at the end is unsatisfiable"
    );
}

pub async fn empty_objects(s: Store) {
    put(&s, "e/empty", b"").await;
    assert_eq!(s.head("e/empty").await.unwrap().size, 0);
    assert_eq!(range(&s, "e/empty", ByteRange::All).await, b"");
    // S3 servers disagree here (416 or 200 for `bytes=-5` on an empty object):
    // every backend must answer with an empty body and range 0..0.
    for r in [
        ByteRange::Suffix(5),
        ByteRange::Suffix(0),
        ByteRange::Offset(0),
    ] {
        let got = match r {
            ByteRange::Suffix(n @ 1..) => match long_suffix(&s, "e/empty", n).await {
                Some(got) => got,
                None => continue,
            },
            _ => s.get("e/empty", GetOptions::range(r)).await.unwrap(),
        };
        assert_eq!((got.range.clone(), got.meta.size), (0..0, 0), "{r:?}");
        assert!(got.bytes().await.unwrap().is_empty(), "{r:?}");
    }
    for r in [
        ByteRange::Bounded { start: 0, end: 1 },
        ByteRange::Offset(1),
    ] {
        let e = s.get("e/empty", GetOptions::range(r)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{r:?}");
    }
    s.put_writer("e/streamed", PutOptions::default())
        .await
        .unwrap()
        .finish()
        .await
        .unwrap();
    assert_eq!(s.head("e/streamed").await.unwrap().size, 0);
}

pub async fn edge_ranges(s: Store) {
    put(&s, "x/obj", b"0123456789").await;
    let get = |r: ByteRange| {
        let s = s.clone();
        async move { s.get("x/obj", GetOptions::range(r)).await }
    };
    // The last byte, three ways.
    for r in [
        ByteRange::Suffix(1),
        ByteRange::Offset(9),
        ByteRange::Bounded { start: 9, end: 10 },
    ] {
        let got = get(r).await.unwrap();
        assert_eq!((got.range.clone(), got.meta.size), (9..10, 10), "{r:?}");
        assert_eq!(got.bytes().await.unwrap().as_ref(), b"9", "{r:?}");
    }
    // `bytes=-n` past the start returns the whole object.
    if let Some(got) = long_suffix(&s, "x/obj", 11).await {
        assert_eq!(got.range, 0..10);
        assert_eq!(got.bytes().await.unwrap().as_ref(), b"0123456789");
    }
    // Reading from exactly the end is empty, not an error (as `resolve` says).
    let got = get(ByteRange::Offset(10)).await.unwrap();
    assert_eq!(got.range, 10..10);
    assert!(got.bytes().await.unwrap().is_empty());
    assert_eq!(get(ByteRange::Suffix(0)).await.unwrap().range, 10..10);
    for r in [
        ByteRange::Offset(11),
        ByteRange::Bounded { start: 10, end: 11 },
        ByteRange::Bounded { start: 50, end: 60 },
        ByteRange::Bounded { start: 3, end: 3 },
    ] {
        assert_eq!(
            get(r).await.unwrap_err().kind(),
            ErrorKind::Invalid,
            "{r:?}"
        );
    }
    let got = get(ByteRange::Bounded { start: 0, end: 1 }).await.unwrap();
    assert_eq!(got.meta.etag, s.head("x/obj").await.unwrap().etag);
}

pub async fn not_found(s: Store) {
    let e = s.get("nope/x", GetOptions::default()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let e = s
        .get("nope/x", GetOptions::range(ByteRange::Suffix(4)))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let e = s
        .get("nope/x", GetOptions::range(ByteRange::Suffix(0)))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(
        s.head("nope/x").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    s.delete("nope/x").await.unwrap();
    assert!(s.list("nope/", None).await.unwrap().objects.is_empty());
    assert!(
        s.list("nope/", Some("nope/a"))
            .await
            .unwrap()
            .next_start_after
            .is_none()
    );
}

pub async fn overwrite_and_conditions(s: Store) {
    put(&s, "c/a", b"one").await;
    let m1 = s.head("c/a").await.unwrap();
    put(&s, "c/a", b"second").await;
    let m2 = s.head("c/a").await.unwrap();
    assert_ne!(m1.etag, m2.etag);
    assert_eq!(range(&s, "c/a", ByteRange::All).await, b"second");
    let stale = GetOptions {
        range: None,
        if_match: m1.etag.clone(),
    };
    assert_eq!(
        s.get("c/a", stale).await.unwrap_err().kind(),
        ErrorKind::PreconditionFailed
    );
    let stale_range = GetOptions {
        range: Some(ByteRange::Suffix(2)),
        if_match: m1.etag.clone(),
    };
    assert_eq!(
        s.get("c/a", stale_range).await.unwrap_err().kind(),
        ErrorKind::PreconditionFailed
    );
    let fresh = GetOptions {
        range: None,
        if_match: m2.etag.clone(),
    };
    assert!(s.get("c/a", fresh).await.is_ok());
    let enforced = s.capabilities().conditional_put;
    let create = PutOptions {
        mode: PutMode::Create,
    };
    let dup = s.put("c/a", Bytes::from_static(b"x"), create.clone()).await;
    if enforced {
        assert_eq!(dup.unwrap_err().kind(), ErrorKind::PreconditionFailed);
    } else {
        skip_conditional(&s, "create over an existing key");
        put(&s, "c/a", b"second").await;
    }
    // Creating a fresh key works whether or not conditions are enforced.
    s.put("c/new", Bytes::from_static(b"x"), create)
        .await
        .unwrap();
    assert_eq!(range(&s, "c/new", ByteRange::All).await, b"x");
    let current = s.head("c/a").await.unwrap().etag.unwrap();
    let update = |etag: &str| PutOptions {
        mode: PutMode::UpdateIfMatch(etag.to_string()),
    };
    let lost = s
        .put(
            "c/a",
            Bytes::from_static(b"lost"),
            update(m1.etag.as_deref().unwrap()),
        )
        .await;
    if enforced {
        assert_eq!(lost.unwrap_err().kind(), ErrorKind::PreconditionFailed);
        assert_eq!(range(&s, "c/a", ByteRange::All).await, b"second");
    } else {
        skip_conditional(&s, "update with a stale etag");
    }
    let current = if enforced {
        current
    } else {
        s.head("c/a").await.unwrap().etag.unwrap()
    };
    let won = s
        .put("c/a", Bytes::from_static(b"third"), update(&current))
        .await
        .unwrap();
    assert_eq!(range(&s, "c/a", ByteRange::All).await, b"third");
    assert_eq!(won.etag, s.head("c/a").await.unwrap().etag);
    s.delete("c/a").await.unwrap();
    assert_eq!(s.head("c/a").await.unwrap_err().kind(), ErrorKind::NotFound);
}

fn skip_conditional(s: &Store, what: &str) {
    skip(
        s,
        what,
        "conditional PUT is not enforced (capabilities().conditional_put = false)",
    );
}

/// Conditional modes through `put_writer`, both for small objects (one PUT
/// on S3) and ones spanning several parts (multipart complete on S3).
pub async fn conditional_streaming_writes(s: Store) {
    let enforced = s.capabilities().conditional_put;
    for (key, len) in [("cw/small", 1000usize), ("cw/large", 6 << 20)] {
        let data = pattern(len, 3);
        let create = PutOptions {
            mode: PutMode::Create,
        };
        let first = write_all(&s, key, &data, create.clone(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(first.size, len as u64);
        let again = write_all(&s, key, b"other", create, 1 << 20).await;
        if enforced {
            assert_eq!(
                again.unwrap_err().kind(),
                ErrorKind::PreconditionFailed,
                "{key}"
            );
            assert_eq!(range(&s, key, ByteRange::All).await, data, "{key}");
        } else {
            skip_conditional(&s, "streamed create over an existing key");
            write_all(&s, key, &data, PutOptions::default(), 1 << 20)
                .await
                .unwrap();
        }
        let etag = s.head(key).await.unwrap().etag.unwrap();
        let update = PutOptions {
            mode: PutMode::UpdateIfMatch(etag),
        };
        let next = pattern(len, 4);
        write_all(&s, key, &next, update, 1 << 20).await.unwrap();
        assert_eq!(range(&s, key, ByteRange::All).await, next, "{key}");
    }
    let listed = s.list_all("cw/").await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
}

/// ~12 MiB in uneven writes: on S3 with 5 MiB parts, three parts of which
/// the last is short, and ranges across part boundaries.
pub async fn multipart_round_trip(s: Store) {
    let data = pattern((12 << 20) + 12345, 7);
    let res = write_all(&s, "m/big", &data, PutOptions::default(), (1 << 20) + 7)
        .await
        .unwrap();
    assert_eq!(res.size, data.len() as u64);
    let meta = s.head("m/big").await.unwrap();
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(res.etag, meta.etag);
    let whole = s.get_range("m/big", ByteRange::All).await.unwrap().1;
    assert!(
        whole == data,
        "multipart object differs from what was written"
    );
    let boundary = 5u64 << 20;
    let r = ByteRange::Bounded {
        start: boundary - 3,
        end: boundary + 3,
    };
    let (_, got) = s.get_range("m/big", r).await.unwrap();
    assert_eq!(
        got.as_ref(),
        &data[(boundary - 3) as usize..(boundary + 3) as usize]
    );
    let (_, tail) = s.get_range("m/big", ByteRange::Suffix(100)).await.unwrap();
    assert_eq!(tail.as_ref(), &data[data.len() - 100..]);
    assert_eq!(s.list_all("m/").await.unwrap().len(), 1);
}

/// Aborted or dropped writers, before and after a first part was sent,
/// leave nothing visible.
pub async fn abandoned_writes(s: Store) {
    for (i, len) in [10usize, 6 << 20].into_iter().enumerate() {
        let key = format!("a/aborted-{i}");
        let mut w = s.put_writer(&key, PutOptions::default()).await.unwrap();
        w.write(Bytes::from(pattern(len, 1))).await.unwrap();
        w.abort().await.unwrap();
        assert_eq!(
            s.head(&key).await.unwrap_err().kind(),
            ErrorKind::NotFound,
            "{key}"
        );
        let key = format!("a/dropped-{i}");
        let mut w = s.put_writer(&key, PutOptions::default()).await.unwrap();
        w.write(Bytes::from(pattern(len, 2))).await.unwrap();
        drop(w);
        assert_eq!(
            s.head(&key).await.unwrap_err().kind(),
            ErrorKind::NotFound,
            "{key}"
        );
    }
    assert!(s.list_all("a/").await.unwrap().is_empty());
}

/// Whatever a backend reports about conditional writes is what it does.
pub async fn capability_matches_behaviour(s: Store) {
    let enforced = s.capabilities().conditional_put;
    eprintln!("{}: conditional_put = {enforced}", s.describe());
    let create = PutOptions {
        mode: PutMode::Create,
    };
    s.put("cap/k", Bytes::from_static(b"first"), create.clone())
        .await
        .unwrap();
    let second = s.put("cap/k", Bytes::from_static(b"second"), create).await;
    if enforced {
        assert_eq!(second.unwrap_err().kind(), ErrorKind::PreconditionFailed);
        assert_eq!(range(&s, "cap/k", ByteRange::All).await, b"first");
    } else {
        // Reported as unenforced: the server overwrote, as the probe saw.
        second.unwrap();
        assert_eq!(range(&s, "cap/k", ByteRange::All).await, b"second");
    }
}

pub async fn streaming_writes(s: Store) {
    put(&s, "w/obj", b"old").await;
    let mut w = s.put_writer("w/obj", PutOptions::default()).await.unwrap();
    let chunk = Bytes::from(vec![7u8; 3 << 20]);
    for _ in 0..3 {
        w.write(chunk.clone()).await.unwrap();
    }
    // Not visible before finish.
    assert_eq!(range(&s, "w/obj", ByteRange::All).await, b"old");
    w.finish().await.unwrap();
    assert_eq!(s.head("w/obj").await.unwrap().size, 9 << 20);
    let mut w = s.put_writer("w/obj", PutOptions::default()).await.unwrap();
    w.write(Bytes::from_static(b"never")).await.unwrap();
    w.abort().await.unwrap();
    assert_eq!(s.head("w/obj").await.unwrap().size, 9 << 20);
    let listed = s.list_all("w/").await.unwrap();
    assert_eq!(
        listed.len(),
        1,
        "aborted uploads leave nothing behind: {listed:?}"
    );
}

pub async fn pagination(s: Store) {
    let mut want = Vec::new();
    for i in 0..1205u32 {
        let key = format!("p/{:02}/{i:05}", i % 7);
        put(&s, &key, &i.to_le_bytes()).await;
        want.push(key);
    }
    put(&s, "q/outside", b"x").await;
    want.sort();
    let first = s.list("p/", None).await.unwrap();
    assert_eq!(first.objects.len(), 1000);
    assert!(first.next_start_after.is_some());
    let all: Vec<String> = s
        .list_all("p/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(all, want);
    let after: Vec<String> = s
        .list("p/03/", Some("p/03/00500"))
        .await
        .unwrap()
        .objects
        .into_iter()
        .map(|m| m.key)
        .collect();
    let expect_after: Vec<String> = want
        .iter()
        .filter(|k| k.starts_with("p/03/") && k.as_str() > "p/03/00500")
        .cloned()
        .collect();
    assert_eq!(after, expect_after);
    let partial: Vec<String> = s
        .list_all("p/0")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(partial, want);
}

pub async fn bad_keys(s: Store) {
    for key in ["../escape", "/abs", "a//b", ""] {
        assert_eq!(
            s.head(key).await.unwrap_err().kind(),
            ErrorKind::Invalid,
            "{key:?}"
        );
    }
}

/// `conformance_tests!(factory())` for a synchronous factory,
/// `conformance_tests!(async factory())` for one that must be awaited.
#[macro_export]
macro_rules! conformance_tests {
    (async $factory:expr) => {
        #[tokio::test]
        async fn ranges() {
            conformance::ranges($factory.await).await;
        }
        #[tokio::test]
        async fn edge_ranges() {
            conformance::edge_ranges($factory.await).await;
        }
        #[tokio::test]
        async fn empty_objects() {
            conformance::empty_objects($factory.await).await;
        }
        #[tokio::test]
        async fn not_found() {
            conformance::not_found($factory.await).await;
        }
        #[tokio::test]
        async fn overwrite_and_conditions() {
            conformance::overwrite_and_conditions($factory.await).await;
        }
        #[tokio::test]
        async fn conditional_streaming_writes() {
            conformance::conditional_streaming_writes($factory.await).await;
        }
        #[tokio::test]
        async fn capability_matches_behaviour() {
            conformance::capability_matches_behaviour($factory.await).await;
        }
        #[tokio::test]
        async fn streaming_writes() {
            conformance::streaming_writes($factory.await).await;
        }
        #[tokio::test]
        async fn multipart_round_trip() {
            conformance::multipart_round_trip($factory.await).await;
        }
        #[tokio::test]
        async fn abandoned_writes() {
            conformance::abandoned_writes($factory.await).await;
        }
        #[tokio::test]
        async fn pagination() {
            conformance::pagination($factory.await).await;
        }
        #[tokio::test]
        async fn bad_keys() {
            conformance::bad_keys($factory.await).await;
        }
    };
    ($factory:expr) => {
        #[tokio::test]
        async fn ranges() {
            conformance::ranges($factory).await;
        }
        #[tokio::test]
        async fn edge_ranges() {
            conformance::edge_ranges($factory).await;
        }
        #[tokio::test]
        async fn empty_objects() {
            conformance::empty_objects($factory).await;
        }
        #[tokio::test]
        async fn not_found() {
            conformance::not_found($factory).await;
        }
        #[tokio::test]
        async fn overwrite_and_conditions() {
            conformance::overwrite_and_conditions($factory).await;
        }
        #[tokio::test]
        async fn conditional_streaming_writes() {
            conformance::conditional_streaming_writes($factory).await;
        }
        #[tokio::test]
        async fn capability_matches_behaviour() {
            conformance::capability_matches_behaviour($factory).await;
        }
        #[tokio::test]
        async fn streaming_writes() {
            conformance::streaming_writes($factory).await;
        }
        #[tokio::test]
        async fn multipart_round_trip() {
            conformance::multipart_round_trip($factory).await;
        }
        #[tokio::test]
        async fn abandoned_writes() {
            conformance::abandoned_writes($factory).await;
        }
        #[tokio::test]
        async fn pagination() {
            conformance::pagination($factory).await;
        }
        #[tokio::test]
        async fn bad_keys() {
            conformance::bad_keys($factory).await;
        }
    };
}

/// Reports what the trait's defaults would not: conditional writes not
/// enforced, and leftovers to sweep. A wrapper that answers with a default
/// instead of forwarding to its inner store shows.
#[allow(dead_code)] // Only the wrapper suites use it.
#[derive(Debug, Default)]
pub struct Unusual {
    memory: des_storage::MemoryStore,
}

pub const UNUSUAL_LEFTOVERS: u64 = 3;

#[async_trait::async_trait]
impl des_storage::ObjectStore for Unusual {
    des_storage::forward_methods!(memory => describe, get, head, put, put_writer, delete, list);

    fn capabilities(&self) -> des_storage::Capabilities {
        des_storage::Capabilities {
            conditional_put: false,
        }
    }

    async fn sweep_leftovers(&self, _older_than: std::time::Duration) -> des_storage::Result<u64> {
        Ok(UNUSUAL_LEFTOVERS)
    }
}
