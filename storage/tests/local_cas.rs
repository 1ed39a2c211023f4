#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Compare-and-swap on the local store between writers that share nothing
//! but the directory: separate `LocalStore`s (each with its own kept
//! handles) on threads of this process, and a second process (this test
//! binary run again, see `counter_worker_process`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use des_storage::{ByteRange, ErrorKind, GetOptions, LocalStore, ObjectStore, PutMode, PutOptions};

const KEY: &str = "20240517/5C.des";
/// Set (to the test's directory) in the second process.
const CHILD_ENV: &str = "DES_LOCAL_CAS_CHILD_ROOT";
const ATTEMPTS: usize = 400;

fn if_match(etag: &str) -> PutOptions {
    PutOptions {
        mode: PutMode::UpdateIfMatch(etag.to_string()),
    }
}

/// Fixed width, so every version has the same length and only the
/// inode/mtime part of the ETag tells versions apart.
fn counter_bytes(n: u64) -> Bytes {
    Bytes::from(format!("{n:020}"))
}

/// A ranged read of at most 64 KiB: the path that goes through kept handles.
async fn read_small(s: &LocalStore, key: &str) -> (String, Bytes) {
    let got = s
        .get(
            key,
            GetOptions::range(ByteRange::Bounded { start: 0, end: 64 }),
        )
        .await
        .unwrap();
    let etag = got.meta.etag.clone().unwrap();
    (etag, got.bytes().await.unwrap())
}

/// An unbounded read, which opens the file afresh.
async fn read_whole(s: &LocalStore, key: &str) -> (String, Bytes) {
    let got = s.get(key, GetOptions::default()).await.unwrap();
    let etag = got.meta.etag.clone().unwrap();
    (etag, got.bytes().await.unwrap())
}

fn wait_for(path: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(std::time::Instant::now() < deadline, "no {path:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Read-ETag then `UpdateIfMatch` of the counter, `ATTEMPTS` times, once
/// `<dir>/go` exists; the store is `<dir>/store`. Returns (successful
/// updates, precondition failures); anything else fails the test.
fn counter_worker(dir: &Path) -> (u64, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = LocalStore::new(dir.join("store")).unwrap();
    wait_for(&dir.join("go"));
    rt.block_on(async {
        let (mut won, mut lost) = (0, 0);
        for i in 0..ATTEMPTS {
            // Every other read through a kept handle: after a lost update it
            // must not serve the version that lost.
            let (etag, body) = if i % 2 == 0 {
                read_whole(&store, KEY).await
            } else {
                read_small(&store, KEY).await
            };
            let n: u64 = std::str::from_utf8(&body).unwrap().parse().unwrap();
            match store.put(KEY, counter_bytes(n + 1), if_match(&etag)).await {
                Ok(_) => won += 1,
                Err(e) if e.kind() == ErrorKind::PreconditionFailed => lost += 1,
                Err(e) => panic!("update: {e}"),
            }
        }
        (won, lost)
    })
}

/// Not a test of its own: the body of the second process started by
/// `concurrent_compare_and_swap_loses_no_update`; does nothing otherwise.
#[test]
fn counter_worker_process() {
    let Ok(root) = std::env::var(CHILD_ENV) else {
        return;
    };
    std::fs::write(Path::new(&root).join("child-ready"), b"").unwrap();
    let (won, lost) = counter_worker(Path::new(&root));
    println!("CHILD won={won} lost={lost}");
}

#[test]
fn concurrent_compare_and_swap_loses_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let init = LocalStore::new(root.join("store")).unwrap();
    rt.block_on(init.put(
        KEY,
        counter_bytes(0),
        PutOptions {
            mode: PutMode::Create,
        },
    ))
    .unwrap();

    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "counter_worker_process", "--nocapture"])
        .env(CHILD_ENV, &root)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let root = root.clone();
            std::thread::spawn(move || counter_worker(&root))
        })
        .collect();
    // All three start together, once the second process is up.
    wait_for(&root.join("child-ready"));
    std::fs::write(root.join("go"), b"").unwrap();
    let (mut won, mut lost) = (0, 0);
    for t in threads {
        let (w, l) = t.join().unwrap();
        won += w;
        lost += l;
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the second process failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CHILD "))
        .unwrap_or_else(|| panic!("no result from the second process:\n{stdout}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .unwrap()
            .parse()
            .unwrap()
    };
    println!("second process: {line}");
    won += field("won");
    lost += field("lost");

    let (_, body) = rt.block_on(read_small(&init, KEY));
    let counter: u64 = std::str::from_utf8(&body).unwrap().parse().unwrap();
    println!("updates won {won}, lost {lost}, counter {counter}");
    assert_eq!(won + lost, 3 * ATTEMPTS as u64);
    assert!(won > 0);
    assert_eq!(
        counter,
        won,
        "{} successful conditional updates were lost",
        won.saturating_sub(counter)
    );
}

/// A writer that loses a compare-and-swap re-reads at once to rebuild on the
/// winner's version; its kept handle of the old file must not answer that
/// read.
#[tokio::test]
async fn a_cas_loser_rereads_the_winners_version() {
    let dir = tempfile::tempdir().unwrap();
    let loser = LocalStore::new(dir.path()).unwrap();
    let winner = LocalStore::new(dir.path()).unwrap();
    let v1 = loser
        .put(
            KEY,
            Bytes::from_static(b"version one"),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let (etag1, body) = read_small(&loser, KEY).await;
    assert_eq!(
        (Some(&etag1), &body[..]),
        (v1.etag.as_ref(), &b"version one"[..])
    );

    let v2 = winner
        .put(
            KEY,
            Bytes::from_static(b"version two, longer"),
            if_match(&etag1),
        )
        .await
        .unwrap();
    let err = loser
        .put(KEY, Bytes::from_static(b"version 1+1"), if_match(&etag1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PreconditionFailed);

    let (etag, body) = read_small(&loser, KEY).await;
    assert_eq!(&body[..], b"version two, longer");
    assert_eq!(Some(etag), v2.etag);
}

/// The same when the conflict shows up on a large read with `If-Match` (the
/// packer copying the old generation's data) instead of on the commit.
#[tokio::test]
async fn a_failed_if_match_read_drops_the_stale_handle() {
    let dir = tempfile::tempdir().unwrap();
    let reader = LocalStore::new(dir.path()).unwrap();
    let writer = LocalStore::new(dir.path()).unwrap();
    let big = |b: u8| Bytes::from(vec![b; 200_000]);
    reader
        .put(KEY, big(1), PutOptions::default())
        .await
        .unwrap();
    let (etag1, _) = read_small(&reader, KEY).await;
    let v2 = writer.put(KEY, big(2), if_match(&etag1)).await.unwrap();

    let whole = GetOptions {
        range: None,
        if_match: Some(etag1),
    };
    let err = reader.get(KEY, whole).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PreconditionFailed);
    let (etag, body) = read_small(&reader, KEY).await;
    assert_eq!((Some(etag), body[0]), (v2.etag, 2));
}

fn temp_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(des_storage::local::TEMP_PREFIX)
            {
                found.push(p);
            }
        }
    }
    found
}

/// Sweeping the temp file of a writer that is still running (a threshold
/// too short, or a stalled writer) makes that writer's commit fail, whatever
/// its mode, and leaves the object it meant to replace as it was.
#[tokio::test]
async fn sweeping_a_live_writers_temp_file_fails_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::new(dir.path()).unwrap();
    let old = s
        .put(KEY, Bytes::from_static(b"old"), PutOptions::default())
        .await
        .unwrap();
    let modes = [
        ("a/new.bin", PutMode::Create),
        (KEY, PutMode::UpdateIfMatch(old.etag.clone().unwrap())),
        (KEY, PutMode::Overwrite),
    ];
    for (key, mode) in modes {
        let mut w = s
            .put_writer(key, PutOptions { mode: mode.clone() })
            .await
            .unwrap();
        w.write(Bytes::from_static(b"new")).await.unwrap();
        assert_eq!(
            s.sweep_leftovers(Duration::from_secs(3600)).await.unwrap(),
            0,
            "a fresh temp file is not a leftover"
        );
        assert_eq!(s.sweep_leftovers(Duration::ZERO).await.unwrap(), 1);
        let err = w.finish().await.unwrap_err();
        assert_ne!(
            err.kind(),
            ErrorKind::NotFound,
            "{mode:?}: the object is not what went missing: {err}"
        );
        let key_state = match s.head(key).await {
            Ok(m) => Some(m.etag),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => panic!("{e}"),
        };
        let expected = (key == KEY).then(|| old.etag.clone());
        assert_eq!(
            key_state, expected,
            "{mode:?}: the commit changed the object"
        );
    }
    let (_, body) = read_small(&s, KEY).await;
    assert_eq!(&body[..], b"old");
    assert!(temp_files(dir.path()).is_empty());
}

/// The sweep reaches local stores through a zone's whole wrapper stack
/// (rate limit, retries, breaker, hedging) and every copy of a replicated
/// store.
#[tokio::test]
async fn sweeps_reach_every_copy_through_the_wrappers() {
    use std::sync::Arc;

    use des_storage::resilience::{
        BreakerConfig, BreakerStore, CircuitBreaker, HedgedStore, RateLimit, RateLimitedStore,
        RateLimiter, ReplicatedStore, RetryPolicy, RetryStore,
    };

    let stack = |root: &Path| -> Arc<dyn ObjectStore> {
        let local = Arc::new(LocalStore::new(root).unwrap());
        let limiter = Arc::new(RateLimiter::new("t", &RateLimit::per_second(100)).unwrap());
        let limited = Arc::new(RateLimitedStore::new(local, limiter));
        let retried = Arc::new(RetryStore::new(limited, RetryPolicy::default()));
        let breaker = Arc::new(CircuitBreaker::new("t", BreakerConfig::default()));
        let guarded = Arc::new(BreakerStore::new(retried, breaker));
        Arc::new(HedgedStore::new(guarded, None))
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [a.path(), b.path()] {
        std::fs::create_dir_all(dir.join("20240517")).unwrap();
        let name = format!("{}5C.des-0", des_storage::local::TEMP_PREFIX);
        std::fs::write(dir.join("20240517").join(name), b"partial").unwrap();
    }
    let replicated = ReplicatedStore::new(vec![stack(a.path()), stack(b.path())]).unwrap();
    assert_eq!(
        replicated
            .sweep_leftovers(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(replicated.sweep_leftovers(Duration::ZERO).await.unwrap(), 2);
    assert!(temp_files(a.path()).is_empty() && temp_files(b.path()).is_empty());
}
