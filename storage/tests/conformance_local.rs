#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod conformance;

use std::sync::Arc;

fn store() -> conformance::Store {
    // The directory is leaked on purpose so it outlives the async test body.
    let dir = tempfile::tempdir().unwrap().keep();
    Arc::new(des_storage::LocalStore::new(dir).unwrap())
}

conformance_tests!(store());

#[tokio::test]
async fn local_temp_files_are_hidden_and_swept() {
    let dir = tempfile::tempdir().unwrap();
    let s = des_storage::LocalStore::new(dir.path()).unwrap();
    std::fs::create_dir_all(dir.path().join("d")).unwrap();
    std::fs::write(dir.path().join("d/.des-tmp-0000-x.des"), b"partial").unwrap();
    use des_storage::ObjectStoreExt;
    assert!(s.list_all("").await.unwrap().is_empty());
    assert_eq!(s.sweep_temp_files(std::time::Duration::ZERO).unwrap(), 1);
}

/// Small reads keep the file open between requests. A file replaced by
/// another writer (another process: here another store over the same
/// directory) must still be read consistently: the old version under its own
/// etag until the handle expires, the new one as soon as it is asked for by
/// etag, and never a precondition failure for the version that is current.
#[tokio::test]
async fn kept_handles_follow_a_file_replaced_elsewhere() {
    use bytes::Bytes;
    use des_storage::{ByteRange, GetOptions, ObjectStore, PutOptions};
    let dir = tempfile::tempdir().unwrap();
    let reader = des_storage::LocalStore::new(dir.path()).unwrap();
    let writer = des_storage::LocalStore::new(dir.path()).unwrap();
    let range = |if_match: Option<String>| GetOptions {
        if_match,
        ..GetOptions::range(ByteRange::Bounded { start: 0, end: 3 })
    };
    let read = |opts: GetOptions| {
        let reader = reader.clone();
        async move {
            let got = reader.get("k", opts).await?;
            let etag = got.meta.etag.clone();
            let bytes = got.bytes().await?;
            Ok::<_, des_storage::Error>((bytes, etag))
        }
    };
    let put =
        |data: &'static [u8]| writer.put("k", Bytes::from_static(data), PutOptions::default());
    put(b"old-version").await.unwrap();
    let (bytes, old_etag) = read(range(None)).await.unwrap();
    assert_eq!(&bytes[..], b"old");

    put(b"new-version").await.unwrap();
    let new_etag = writer.head("k").await.unwrap().etag;
    assert_ne!(old_etag, new_etag);
    // The kept handle may still serve the old version, but only under its own etag.
    let (bytes, etag) = read(range(None)).await.unwrap();
    assert!(
        (&bytes[..] == b"old" && etag == old_etag) || (&bytes[..] == b"new" && etag == new_etag),
        "bytes and etag of one version: {bytes:?} {etag:?}"
    );
    // Asking for the current version by etag reopens instead of failing.
    let (bytes, etag) = read(range(new_etag.clone())).await.unwrap();
    assert_eq!((&bytes[..], etag), (&b"new"[..], new_etag.clone()));
    // The replaced version is gone for good.
    let stale = reader.get("k", range(old_etag)).await;
    assert_eq!(
        stale.err().map(|e| e.kind()),
        Some(des_storage::ErrorKind::PreconditionFailed)
    );
    // Deleted elsewhere: the kept handle expires within a second.
    std::fs::remove_file(dir.path().join("k")).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let gone = reader.get("k", range(None)).await;
    assert_eq!(
        gone.err().map(|e| e.kind()),
        Some(des_storage::ErrorKind::NotFound)
    );
}

/// A small read whose pages are partly out of the page cache: the cached
/// head is read on the calling task, the rest on the blocking pool, and the
/// two parts must join into the right bytes.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn small_reads_join_cached_and_uncached_parts() {
    use bytes::Bytes;
    use des_storage::{ByteRange, GetOptions, ObjectStore, PutOptions};
    use rustix::fs::{Advice, fadvise};
    let dir = tempfile::tempdir().unwrap();
    let s = des_storage::LocalStore::new(dir.path()).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
    s.put("k", Bytes::from(data.clone()), PutOptions::default())
        .await
        .unwrap();
    let read = |start: u64, end: u64| {
        let s = s.clone();
        async move {
            let got = s
                .get("k", GetOptions::range(ByteRange::Bounded { start, end }))
                .await
                .unwrap();
            got.bytes().await.unwrap()
        }
    };
    let file = std::fs::File::open(dir.path().join("k")).unwrap();
    for (start, end) in [(8192, 60_000), (100_000, 100_001), (150_000, 200_000)] {
        // The store fsyncs what it writes, so its pages are clean and can go.
        fadvise(&file, 0, None, Advice::DontNeed).unwrap();
        assert_eq!(
            read(start, start + 4096).await,
            data[start as usize..][..4096]
        );
        let got: Bytes = read(start, end).await;
        assert_eq!(got, data[start as usize..end as usize], "{start}..{end}");
    }
}

/// Packers and the repacker publish with a real compare-and-swap only where
/// the store says it enforces one: this store must say so (and the
/// conformance suite proves it does).
#[test]
fn conditional_writes_are_reported_as_enforced() {
    assert!(store().capabilities().conditional_put);
}
