//! One behaviour suite for every backend. Each backend's test file calls
//! `conformance_tests!(factory)`, where `factory` returns a fresh, empty store.

use std::sync::Arc;

use bytes::Bytes;
use des_storage::{
    ByteRange, ErrorKind, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
};

pub type Store = Arc<dyn ObjectStore>;

async fn put(s: &Store, key: &str, data: &[u8]) {
    s.put(key, Bytes::copy_from_slice(data), PutOptions::default()).await.unwrap();
}

async fn range(s: &Store, key: &str, r: ByteRange) -> Vec<u8> {
    s.get_range(key, r).await.unwrap().1.to_vec()
}

pub async fn ranges(s: Store) {
    put(&s, "r/obj", b"0123456789").await;
    assert_eq!(range(&s, "r/obj", ByteRange::All).await, b"0123456789");
    assert_eq!(range(&s, "r/obj", ByteRange::Suffix(3)).await, b"789");
    assert_eq!(range(&s, "r/obj", ByteRange::Suffix(100)).await, b"0123456789");
    assert_eq!(range(&s, "r/obj", ByteRange::Bounded { start: 9, end: 10 }).await, b"9");
    assert_eq!(range(&s, "r/obj", ByteRange::Bounded { start: 2, end: 5 }).await, b"234");
    assert_eq!(range(&s, "r/obj", ByteRange::Bounded { start: 8, end: 50 }).await, b"89");
    assert_eq!(range(&s, "r/obj", ByteRange::Offset(7)).await, b"789");
    let (meta, _) = s.get_range("r/obj", ByteRange::Suffix(3)).await.unwrap();
    assert_eq!(meta.size, 10);
    let past = s.get("r/obj", GetOptions::range(ByteRange::Bounded { start: 10, end: 12 })).await;
    assert!(past.is_err(), "a range starting at the end is unsatisfiable");
}

pub async fn empty_objects(s: Store) {
    put(&s, "e/empty", b"").await;
    assert_eq!(s.head("e/empty").await.unwrap().size, 0);
    assert_eq!(range(&s, "e/empty", ByteRange::All).await, b"");
}

pub async fn not_found(s: Store) {
    let e = s.get("nope/x", GetOptions::default()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(s.head("nope/x").await.unwrap_err().kind(), ErrorKind::NotFound);
    s.delete("nope/x").await.unwrap();
    assert!(s.list("nope/", None).await.unwrap().objects.is_empty());
}

pub async fn overwrite_and_conditions(s: Store) {
    put(&s, "c/a", b"one").await;
    let m1 = s.head("c/a").await.unwrap();
    put(&s, "c/a", b"second").await;
    let m2 = s.head("c/a").await.unwrap();
    assert_ne!(m1.etag, m2.etag);
    assert_eq!(range(&s, "c/a", ByteRange::All).await, b"second");
    let stale = GetOptions { range: None, if_match: m1.etag.clone() };
    assert_eq!(s.get("c/a", stale).await.unwrap_err().kind(), ErrorKind::PreconditionFailed);
    let fresh = GetOptions { range: None, if_match: m2.etag.clone() };
    assert!(s.get("c/a", fresh).await.is_ok());
    let create = PutOptions { mode: PutMode::Create };
    let e = s.put("c/a", Bytes::from_static(b"x"), create.clone()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PreconditionFailed);
    s.put("c/new", Bytes::from_static(b"x"), create).await.unwrap();
    s.delete("c/a").await.unwrap();
    assert_eq!(s.head("c/a").await.unwrap_err().kind(), ErrorKind::NotFound);
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
    assert_eq!(listed.len(), 1, "aborted uploads leave nothing behind: {listed:?}");
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
    let all: Vec<String> = s.list_all("p/").await.unwrap().into_iter().map(|m| m.key).collect();
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
    let partial: Vec<String> = s.list_all("p/0").await.unwrap().into_iter().map(|m| m.key).collect();
    assert_eq!(partial, want);
}

pub async fn bad_keys(s: Store) {
    for key in ["../escape", "/abs", "a//b", ""] {
        assert_eq!(s.head(key).await.unwrap_err().kind(), ErrorKind::Invalid, "{key:?}");
    }
}

#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        #[tokio::test]
        async fn ranges() {
            conformance::ranges($factory).await;
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
        async fn streaming_writes() {
            conformance::streaming_writes($factory).await;
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
