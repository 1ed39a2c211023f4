//! Shared fixtures: stores packed with the real packer, a request-counting
//! backend, a backend that fails on demand, and small HTTP helpers.
// Not every test crate uses every helper; helpers unwrap as tests do.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod process;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::header::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;
use des_retriever::{AppState, CountingStore, Settings, Storage};
use des_storage::{
    GetOptions, GetResult, ListPage, LocalStore, ObjectMeta, ObjectStore, ObjectWriter, PutOptions,
    PutResult,
};
use futures::StreamExt;

pub const CREATED: &str = "2024-05-17T10:00:00Z";

/// `n` uids that route to the same shard as `first` in a store of `n_bits`.
pub fn same_shard(n_bits: u8, first: &str, n: usize) -> Vec<String> {
    use des_format::routing::shard_index;
    let want = shard_index(first, n_bits).unwrap();
    (0..)
        .map(|i| format!("mate-{i}.txt"))
        .filter(|u| shard_index(u, n_bits).unwrap() == want)
        .take(n)
        .collect()
}

/// One file to pack.
pub struct Spec {
    pub uid: String,
    pub created_at: String,
    pub data: Vec<u8>,
    pub content_type: Option<String>,
}

impl Spec {
    pub fn new(uid: &str, data: impl Into<Vec<u8>>) -> Self {
        Self {
            uid: uid.into(),
            created_at: CREATED.into(),
            data: data.into(),
            content_type: None,
        }
    }

    pub fn typed(mut self, ct: &str) -> Self {
        self.content_type = Some(ct.into());
        self
    }
}

/// Deterministic incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Compressible text of exactly `len` bytes.
pub fn text(len: usize) -> Vec<u8> {
    let line = b"The quick brown fox jumps over the lazy dog. 0123456789\n";
    line.iter().copied().cycle().take(len).collect()
}

/// Packs `files` into the store at `out` with the real packer (a separate
/// runtime on its own thread, since `pack` blocks).
pub fn pack(out: &Path, files: &[Spec], n_bits: u8, big_file_threshold: u64) {
    pack_with(out, files, |o| {
        o.n_bits = Some(n_bits);
        o.big_file_threshold = big_file_threshold;
    });
}

/// [`pack`] with options set by `tweak` (one job, into `out`, by default).
pub fn pack_with(out: &Path, files: &[Spec], tweak: impl FnOnce(&mut des_packer::PackOptions)) {
    let src = tempfile::tempdir().unwrap();
    let mut manifest = String::new();
    for (i, f) in files.iter().enumerate() {
        let name = format!("f{i}");
        std::fs::write(src.path().join(&name), &f.data).unwrap();
        let mut rec = serde_json::json!({
            "uid": f.uid, "created_at": f.created_at, "source_path": name,
        });
        if let Some(ct) = &f.content_type {
            rec["content_type"] = ct.clone().into();
        }
        manifest.push_str(&rec.to_string());
        manifest.push('\n');
    }
    let manifest_path = src.path().join("manifest.jsonl");
    std::fs::write(&manifest_path, manifest).unwrap();
    let mut opts = des_packer::PackOptions {
        store: des_storage::cli::StoreArgs::at(out.display().to_string()),
        jobs: 1,
        ..Default::default()
    };
    tweak(&mut opts);
    let report = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        des_packer::pack(
            &des_packer::Input::Manifest(manifest_path),
            &opts,
            rt.handle(),
            false,
        )
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(report.files_failed, 0, "{report:?}");
}

/// Settings for tests of the storage path: the hot payload cache is off, so
/// every GET reads (and checks) its payload and request budgets, stale shards,
/// corruption and outages are seen. Tests of that cache turn it on.
pub fn settings(store: &Path) -> Settings {
    Settings {
        listen: "127.0.0.1:0".into(),
        cache_bytes: 64 << 20,
        payload_cache_bytes: 0,
        workers: Some(1),
        shutdown_timeout: std::time::Duration::from_secs(5),
        ..Settings::for_location(store.display().to_string())
    }
}

/// The service state over any backend (wrapped as the test likes).
pub async fn state_on(objects: Arc<dyn ObjectStore>, settings: &Settings) -> AppState {
    AppState::open(&Storage::single(objects, "local"), settings)
        .await
        .unwrap()
}

/// A service over `root` whose storage requests are counted.
pub async fn counted(root: &Path, settings: &Settings) -> (AppState, CountingStore) {
    let local: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(root).unwrap());
    let counting = CountingStore::new(local);
    (
        state_on(Arc::new(counting.clone()), settings).await,
        counting,
    )
}

pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    /// `Err` if the body stream failed (the server would abort the connection).
    pub body: Result<Bytes, String>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn bytes(&self) -> &[u8] {
        self.body.as_ref().unwrap()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.bytes()).unwrap()
    }
}

pub async fn call<S, R, B>(app: &S, req: R) -> Resp
where
    S: Service<R, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let res = actix_web::test::call_service(app, req).await;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = actix_web::body::to_bytes(res.into_body())
        .await
        .map_err(|e| e.into().to_string());
    Resp {
        status,
        headers,
        body,
    }
}

pub fn file_uri(uid: &str, created_at: &str) -> String {
    format!("/files/{}?created_at={}", encode(uid), encode(created_at))
}

/// Percent-encodes everything but unreserved characters and `/`.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// What [`Faulty`] does to reads.
pub const HEALTHY: u8 = 0;
pub const UNAVAILABLE: u8 = 1;
pub const THROTTLED: u8 = 2;
/// Big-file (`_big/`) bodies break off halfway with an outage, as a reset
/// connection would; everything else passes.
pub const BODY_CUT: u8 = 3;

/// Passes everything through until told to fail reads.
#[derive(Debug, Clone)]
pub struct Faulty {
    pub inner: Arc<dyn ObjectStore>,
    pub mode: Arc<AtomicU8>,
}

impl Faulty {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            mode: Arc::default(),
        }
    }

    pub fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn check(&self) -> des_storage::Result<()> {
        match self.mode.load(Ordering::SeqCst) {
            UNAVAILABLE => Err(des_storage::Error::Unavailable {
                msg: "injected outage".into(),
                retry_after: Some(std::time::Duration::from_secs(3)),
            }),
            THROTTLED => Err(des_storage::Error::Throttled {
                msg: "injected slow down".into(),
                retry_after: None,
            }),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn capabilities(&self) -> des_storage::Capabilities {
        self.inner.capabilities()
    }
    async fn get(&self, key: &str, opts: GetOptions) -> des_storage::Result<GetResult> {
        self.check()?;
        let mut got = self.inner.get(key, opts).await?;
        if self.mode.load(Ordering::SeqCst) == BODY_CUT && key.starts_with("_big/") {
            let half = (got.range.end - got.range.start) / 2;
            let body = std::mem::replace(&mut got.body, futures::stream::empty().boxed());
            got.body = cut_after(body, half);
        }
        Ok(got)
    }
    async fn head(&self, key: &str) -> des_storage::Result<ObjectMeta> {
        self.check()?;
        self.inner.head(key).await
    }
    async fn put(
        &self,
        key: &str,
        data: Bytes,
        opts: PutOptions,
    ) -> des_storage::Result<PutResult> {
        self.inner.put(key, data, opts).await
    }
    async fn put_writer(
        &self,
        key: &str,
        opts: PutOptions,
    ) -> des_storage::Result<Box<dyn ObjectWriter>> {
        self.inner.put_writer(key, opts).await
    }
    async fn delete(&self, key: &str) -> des_storage::Result<()> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str, start_after: Option<&str>) -> des_storage::Result<ListPage> {
        self.check()?;
        self.inner.list(prefix, start_after).await
    }
}

/// `body`'s first `at` bytes, then an outage.
fn cut_after(
    body: futures::stream::BoxStream<'static, des_storage::Result<Bytes>>,
    at: u64,
) -> futures::stream::BoxStream<'static, des_storage::Result<Bytes>> {
    futures::stream::unfold((body, at, false), |(mut body, left, done)| async move {
        if done {
            return None;
        }
        if left == 0 {
            let reset = des_storage::Error::Unavailable {
                msg: "injected: connection reset mid-body".into(),
                retry_after: None,
            };
            return Some((Err(reset), (body, 0, true)));
        }
        match body.next().await? {
            Ok(mut b) => {
                b.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                let left = left - b.len() as u64;
                Some((Ok(b), (body, left, false)))
            }
            Err(e) => Some((Err(e), (body, left, true))),
        }
    })
    .boxed()
}

/// Uploads every file under `root` whose key `keep` accepts.
pub async fn upload(root: &Path, to: &dyn ObjectStore, keep: impl Fn(&str) -> bool) {
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let key = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            if keep(&key) {
                let body = bytes::Bytes::from(std::fs::read(&path).unwrap());
                to.put(&key, body, PutOptions::default()).await.unwrap();
            }
        }
    }
}

/// The value of the sample `name` (the first line starting with it) in the
/// state's metrics; a missing one fails the test.
pub fn metric(data: &actix_web::web::Data<AppState>, name: &str) -> f64 {
    let text = data
        .retriever
        .metrics()
        .render(Default::default(), None)
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}
