//! S3-only checks shared by the test binaries for each real server
//! (`conformance_garage.rs`, `conformance_s3s.rs`). Each binary starts one
//! server, shared by all its tests; every test works under its own random
//! prefix, so they run in parallel without seeing each other.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use des_storage::testing::S3Server;
use des_storage::{
    ByteRange, ErrorKind, GetOptions, ObjectStore, ObjectStoreExt, PutOptions, S3Config, S3Store,
};

/// The binary's server, started on first use. A failed start is remembered
/// and reported by every test, with the reason (such as the install command).
pub fn shared(
    cell: &'static OnceLock<Result<S3Server, String>>,
    start: fn() -> des_storage::Result<S3Server>,
) -> &'static S3Server {
    let server = cell.get_or_init(|| {
        let t = Instant::now();
        let s = start().map_err(|e| e.to_string());
        if let Ok(s) = &s {
            eprintln!(
                "{:?} at {} ready in {:?}",
                s.kind(),
                s.endpoint(),
                t.elapsed()
            );
        }
        s
    });
    match server {
        Ok(s) => s,
        Err(e) => panic!("could not start the S3 server: {e}"),
    }
}

pub fn random_prefix() -> String {
    format!("t-{:016x}", rand::random::<u64>())
}

/// A config for a fresh prefix with the smallest part size, so multipart
/// paths run with little data.
pub fn config(server: &S3Server) -> S3Config {
    let mut cfg = server.config().with_prefix(random_prefix());
    cfg.part_size = des_storage::s3::MIN_PART_SIZE;
    cfg
}

pub async fn conformance_store(server: &S3Server) -> Arc<dyn ObjectStore> {
    Arc::new(S3Store::connect(config(server)).await.unwrap())
}

/// The same store with every GET through the SDK, as on HTTPS and AWS
/// endpoints (on plain-http test servers GETs take the lean path otherwise).
pub async fn conformance_store_sdk_get(server: &S3Server) -> Arc<dyn ObjectStore> {
    let mut cfg = config(server);
    cfg.lean_get = false;
    Arc::new(S3Store::connect(cfg).await.unwrap())
}

async fn write(s: &S3Store, key: &str, len: usize) -> Box<dyn des_storage::ObjectWriter> {
    let mut w = s.put_writer(key, PutOptions::default()).await.unwrap();
    w.write(Bytes::from(vec![5u8; len])).await.unwrap();
    w
}

/// Aborted, dropped and crashed multipart writers leave no in-progress
/// upload behind (the last one after `abort_stale_uploads`). `lists_uploads`:
/// whether the server implements ListMultipartUploads at all.
pub async fn multipart_uploads_cleaned(server: &S3Server, lists_uploads: bool) {
    let s = S3Store::connect(config(server)).await.unwrap();
    let six_mib = 6 << 20;
    if !lists_uploads {
        let e = s.list_uploads("").await.unwrap_err();
        eprintln!(
            "SKIPPED upload-listing checks: {:?} cannot list multipart uploads: {e}",
            server.kind()
        );
        write(&s, "up/aborted", six_mib)
            .await
            .abort()
            .await
            .unwrap();
        assert_eq!(
            s.head("up/aborted").await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        return;
    }
    write(&s, "up/aborted", six_mib)
        .await
        .abort()
        .await
        .unwrap();
    assert!(
        s.list_uploads("").await.unwrap().is_empty(),
        "abort() left an upload"
    );

    drop(write(&s, "up/dropped", six_mib).await);
    // Drop aborts in a background task.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.list_uploads("").await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "drop did not abort the upload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A crashed writer: neither finish, abort nor drop ever runs.
    std::mem::forget(write(&s, "up/crashed", six_mib).await);
    let pending = s.list_uploads("up/").await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].key, "up/crashed");
    assert!(s.list_uploads("other/").await.unwrap().is_empty());
    assert_eq!(
        s.abort_stale_uploads("", Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(s.abort_stale_uploads("", Duration::ZERO).await.unwrap(), 1);
    assert!(s.list_uploads("").await.unwrap().is_empty());
    assert!(
        s.list_all("").await.unwrap().is_empty(),
        "nothing became visible"
    );
}

/// The probe reports what this server does (`expected`), consistently, and
/// an explicit setting overrides it without any request.
pub async fn conditional_put_probe(server: &S3Server, expected: bool) {
    let s = S3Store::connect(config(server)).await.unwrap();
    let reported = s.capabilities().conditional_put;
    eprintln!("{:?}: conditional PUT enforced = {reported}", server.kind());
    assert_eq!(
        reported,
        expected,
        "{:?} changed its conditional-PUT behaviour",
        server.kind()
    );
    assert_eq!(s.probe_conditional_put().await.unwrap(), expected);
    assert!(
        s.list_all("").await.unwrap().is_empty(),
        "the probe cleans up after itself"
    );
    let mut cfg = config(server);
    cfg.conditional_put = Some(!expected);
    let overridden = S3Store::new(cfg).unwrap();
    assert_eq!(overridden.capabilities().conditional_put, !expected);
    let unprobed = S3Store::new(config(server)).unwrap();
    assert!(
        !unprobed.capabilities().conditional_put,
        "unknown counts as unsupported"
    );
}

/// Store prefixes partition one bucket.
pub async fn prefixes_are_isolated(server: &S3Server) {
    let base = random_prefix();
    let a = S3Store::new(server.config().with_prefix(format!("{base}/a"))).unwrap();
    let b = S3Store::new(server.config().with_prefix(format!("{base}/b"))).unwrap();
    let whole = S3Store::new(server.config()).unwrap();
    a.put("k", Bytes::from_static(b"in a"), PutOptions::default())
        .await
        .unwrap();
    b.put("k", Bytes::from_static(b"in b"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(
        a.get_range("k", ByteRange::All).await.unwrap().1.as_ref(),
        b"in a"
    );
    let keys: Vec<String> = a
        .list_all("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, ["k"]);
    let keys: Vec<String> = whole
        .list_all(&format!("{base}/"))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, [format!("{base}/a/k"), format!("{base}/b/k")]);
    a.delete("k").await.unwrap();
    assert_eq!(b.head("k").await.unwrap().size, 4);
}

/// Bad credentials and a missing bucket map to their kinds.
/// `put_checks_bucket`: whether a PUT into a missing bucket fails (s3s-fs
/// creates the bucket directory instead).
pub async fn errors_are_mapped(server: &S3Server, put_checks_bucket: bool) {
    for lean_get in [true, false] {
        errors_on_get(server, lean_get).await;
    }
    let mut cfg = config(server);
    if let Some(c) = cfg.credentials.as_mut() {
        c.secret_access_key = "not-the-secret-key-at-all".into();
    }
    let s = S3Store::new(cfg).unwrap();
    assert_eq!(
        s.head("k").await.unwrap_err().kind(),
        ErrorKind::Unauthorized
    );
    let e = s
        .put("k", Bytes::from_static(b"x"), PutOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized);
    let mut cfg = config(server);
    cfg.bucket = "no-such-bucket-here".into();
    let s = S3Store::new(cfg).unwrap();
    assert_eq!(
        s.list("", None).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(s.head("k").await.unwrap_err().kind(), ErrorKind::NotFound);
    if put_checks_bucket {
        let e = s
            .put("k", Bytes::from_static(b"x"), PutOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    } else {
        eprintln!(
            "SKIPPED assertion (PUT into a missing bucket): {:?} creates the bucket",
            server.kind()
        );
    }
}

/// GET errors come out as the same kinds on the lean and the SDK path: a
/// wrong secret, a missing bucket, a missing key, a changed ETag, a range past
/// the end. Keys that need encoding are read back under their own name.
async fn errors_on_get(server: &S3Server, lean_get: bool) {
    let mut cfg = config(server);
    cfg.lean_get = lean_get;
    let good = S3Store::new(cfg.clone()).unwrap();
    let odd = "dir/a b+c%d~é=1&x";
    good.put(
        odd,
        Bytes::from_static(b"0123456789"),
        PutOptions::default(),
    )
    .await
    .unwrap();
    let got = good
        .get_range(odd, ByteRange::Bounded { start: 2, end: 5 })
        .await;
    assert_eq!(got.unwrap().1.as_ref(), b"234", "lean_get={lean_get}");
    let kind = |r: des_storage::Result<_>| r.map(|_| ()).unwrap_err().kind();
    assert_eq!(
        kind(good.get_range("missing", ByteRange::All).await),
        ErrorKind::NotFound
    );
    let stale = GetOptions {
        if_match: Some("\"0123456789abcdef0123456789abcdef\"".into()),
        ..GetOptions::range(ByteRange::All)
    };
    assert_eq!(
        good.get(odd, stale).await.map(|_| ()).unwrap_err().kind(),
        ErrorKind::PreconditionFailed
    );
    let past = ByteRange::Bounded { start: 20, end: 30 };
    assert_eq!(kind(good.get_range(odd, past).await), ErrorKind::Invalid);

    let mut wrong = cfg.clone();
    if let Some(c) = wrong.credentials.as_mut() {
        c.secret_access_key = "not-the-secret-key-at-all".into();
    }
    let s = S3Store::new(wrong).unwrap();
    assert_eq!(
        kind(s.get_range(odd, ByteRange::All).await),
        ErrorKind::Unauthorized
    );
    let mut nobucket = cfg;
    nobucket.bucket = "no-such-bucket-here".into();
    let s = S3Store::new(nobucket).unwrap();
    assert_eq!(
        kind(s.get_range(odd, ByteRange::All).await),
        ErrorKind::NotFound
    );
}

/// A stopped server is a retryable error, and a restart on the same data
/// serves it again. Needs a server of its own.
pub async fn outage_and_restart(mut server: S3Server) {
    let s = S3Store::connect(config(&server)).await.unwrap();
    s.put("o/k", Bytes::from_static(b"durable"), PutOptions::default())
        .await
        .unwrap();
    let t = Instant::now();
    server.stop().unwrap();
    eprintln!("{:?} stopped in {:?}", server.kind(), t.elapsed());
    let e = s.head("o/k").await.unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    let e = s.get_range("o/k", ByteRange::All).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    let t = Instant::now();
    server.start().unwrap();
    eprintln!("{:?} restarted in {:?}", server.kind(), t.elapsed());
    assert_eq!(
        s.get_range("o/k", ByteRange::All).await.unwrap().1.as_ref(),
        b"durable"
    );
}

/// `open_location("s3://…")` configured only through the environment, the
/// way the CLIs use it (`eval "$(scripts/garage.sh start)"`). Environment
/// variables are process-wide, so the check runs in a child process: this
/// same test binary, re-run on test `name` with the variables set.
pub async fn open_location_from_env(name: &str, server: impl FnOnce() -> &'static S3Server) {
    if std::env::var_os("DES_S3_ENV_CHILD").is_some() {
        let url = std::env::var("DES_S3_ENV_URL").unwrap();
        let s = des_storage::open_location(&url).unwrap();
        assert_eq!(s.describe(), url);
        s.put(
            "env/k",
            Bytes::from_static(b"via env"),
            PutOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            s.get_range("env/k", ByteRange::All)
                .await
                .unwrap()
                .1
                .as_ref(),
            b"via env"
        );
        return;
    }
    let server = server();
    let url = format!("s3://{}/{}", server.bucket(), random_prefix());
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("DES_S3_ENV_CHILD", "1")
        .env("DES_S3_ENV_URL", &url)
        .env("AWS_ENDPOINT_URL", server.endpoint())
        .env("AWS_ACCESS_KEY_ID", server.access_key())
        .env("AWS_SECRET_ACCESS_KEY", server.secret_key())
        .env("AWS_REGION", server.region())
        // Nothing may wander off to instance metadata or profiles.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_ENDPOINT_URL_S3")
        .env_remove("AWS_PROFILE")
        .env_remove("DES_S3_FORCE_PATH_STYLE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
    let s = S3Store::new(server.config().with_prefix(url.rsplit('/').next().unwrap())).unwrap();
    assert_eq!(
        s.get_range("env/k", ByteRange::All)
            .await
            .unwrap()
            .1
            .as_ref(),
        b"via env"
    );
}
