//! The object-store trait: a handful of operations every backend (memory,
//! local directory, S3) implements identically, proven by one conformance suite.

use std::fmt;
use std::ops::Range;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::error::{Error, Result};

/// Which bytes of an object to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    All,
    /// `start..end`, end exclusive; clipped to the object's size like HTTP.
    Bounded {
        start: u64,
        end: u64,
    },
    /// The last `n` bytes (the whole object if it is shorter).
    Suffix(u64),
    /// From `start` to the end.
    Offset(u64),
}

impl ByteRange {
    /// Resolves against an object size. `None` means unsatisfiable (HTTP 416).
    pub fn resolve(self, size: u64) -> Option<Range<u64>> {
        match self {
            Self::All => Some(0..size),
            Self::Suffix(n) => Some(size.saturating_sub(n)..size),
            Self::Offset(s) => (s <= size).then_some(s..size),
            Self::Bounded { start, end } => {
                (start < end && start < size).then(|| start..end.min(size))
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetOptions {
    pub range: Option<ByteRange>,
    /// Fail with `PreconditionFailed` unless the object's ETag matches.
    pub if_match: Option<String>,
}

impl GetOptions {
    pub fn range(range: ByteRange) -> Self {
        Self {
            range: Some(range),
            if_match: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
}

pub struct GetResult {
    pub meta: ObjectMeta,
    /// The byte range actually returned.
    pub range: Range<u64>,
    pub body: BoxStream<'static, Result<Bytes>>,
}

impl fmt::Debug for GetResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetResult")
            .field("meta", &self.meta)
            .field("range", &self.range)
            .finish()
    }
}

impl GetResult {
    /// Collects the body; callers only do this for ranges they sized themselves.
    pub async fn bytes(mut self) -> Result<Bytes> {
        let expected = self.range.end - self.range.start;
        let mut buf = BytesMut::with_capacity(usize::try_from(expected).unwrap_or(0).min(64 << 20));
        while let Some(chunk) = self.body.next().await {
            buf.extend_from_slice(&chunk?);
        }
        if buf.len() as u64 != expected {
            return Err(Error::Unavailable {
                msg: format!(
                    "{}: body ended after {} of {expected} bytes",
                    self.meta.key,
                    buf.len()
                ),
                retry_after: None,
            });
        }
        Ok(buf.freeze())
    }
}

/// Conditional write modes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PutMode {
    #[default]
    Overwrite,
    /// Fail with `PreconditionFailed` if the key exists.
    Create,
    /// Fail with `PreconditionFailed` unless the current ETag matches.
    UpdateIfMatch(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    pub mode: PutMode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    pub etag: Option<String>,
    pub size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    pub objects: Vec<ObjectMeta>,
    /// Pass as `start_after` to get the next page; `None` at the end.
    pub next_start_after: Option<String>,
}

/// A streaming upload. Nothing is visible under the key until `finish`
/// succeeds; `abort` (or dropping without `finish`) leaves the old object, if
/// any, untouched.
#[async_trait]
pub trait ObjectWriter: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<()>;
    async fn finish(self: Box<Self>) -> Result<PutResult>;
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// Page size for `list`, as S3's ListObjectsV2.
pub const LIST_PAGE: usize = 1000;

/// What a backend guarantees beyond the basic operations. Some S3 servers
/// (Garage) accept `PutMode::Create`/`UpdateIfMatch` but silently ignore the
/// condition, so callers that rely on atomic create/compare-and-swap must check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `PutMode::Create` and `PutMode::UpdateIfMatch` are enforced atomically by the server.
    pub conditional_put: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            conditional_put: true,
        }
    }
}

#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug + 'static {
    /// A short description for logs and errors (`file:///data`, `s3://b/p`).
    fn describe(&self) -> String;

    /// Guarantees of this backend; wrappers should forward their inner store's.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult>;

    async fn head(&self, key: &str) -> Result<ObjectMeta>;

    /// Small whole-object writes (manifests, tombstones, leases).
    async fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<PutResult>;

    /// Streaming write for shards and big files; memory bounded by the backend's part size.
    async fn put_writer(&self, key: &str, opts: PutOptions) -> Result<Box<dyn ObjectWriter>>;

    /// Deleting a missing key succeeds (as in S3).
    async fn delete(&self, key: &str) -> Result<()>;

    /// Keys starting with `prefix`, in byte order, strictly after `start_after`,
    /// at most [`LIST_PAGE`] per call.
    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<ListPage>;

    /// Removes temporary objects left by crashed writers that have not been
    /// modified for `older_than`, and says how many. Removing one that a
    /// slow writer still uses makes that writer's write fail; it never
    /// touches a committed object. Backends without such leftovers return 0
    /// (S3's, unfinished multipart uploads, are aborted by
    /// `S3Store::abort_stale_uploads`); wrappers forward to every store
    /// they hold.
    async fn sweep_leftovers(&self, older_than: std::time::Duration) -> Result<u64> {
        let _ = older_than;
        Ok(0)
    }
}

/// Convenience reads on any store.
#[async_trait]
pub trait ObjectStoreExt: ObjectStore {
    async fn get_range(&self, key: &str, range: ByteRange) -> Result<(ObjectMeta, Bytes)> {
        let r = self.get(key, GetOptions::range(range)).await?;
        let meta = r.meta.clone();
        Ok((meta, r.bytes().await?))
    }

    /// Every key under `prefix`, following pagination.
    async fn list_all(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.list(prefix, after.as_deref()).await?;
            out.extend(page.objects);
            match page.next_start_after {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    }
}

impl<T: ObjectStore + ?Sized> ObjectStoreExt for T {}

/// Deletes `keys` (16 at a time); one already gone is fine (a re-run after
/// a crash, or another run's clean-up).
pub async fn delete_all(
    objects: &dyn ObjectStore,
    keys: impl Iterator<Item = String>,
) -> Result<()> {
    let results = futures::stream::iter(keys)
        .map(|k| async move {
            match objects.delete(&k).await {
                Err(e) if e.kind() == crate::error::ErrorKind::NotFound => Ok(()),
                r => r,
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect()
}

/// Keys are `/`-separated relative paths with no empty, `.` or `..` segments,
/// so every backend maps them the same way and none can escape its root.
pub fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 1024
        && !key.contains('\0')
        && !key.contains('\\')
        && key
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("invalid object key {key:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_like_http() {
        assert_eq!(ByteRange::Suffix(10).resolve(4), Some(0..4));
        assert_eq!(ByteRange::Suffix(0).resolve(4), Some(4..4));
        assert_eq!(
            ByteRange::Bounded { start: 3, end: 100 }.resolve(4),
            Some(3..4)
        );
        assert_eq!(ByteRange::Bounded { start: 4, end: 5 }.resolve(4), None);
        assert_eq!(ByteRange::Offset(4).resolve(4), Some(4..4));
        assert_eq!(ByteRange::Offset(5).resolve(4), None);
        assert_eq!(ByteRange::All.resolve(0), Some(0..0));
    }

    #[test]
    fn keys() {
        assert!(check_key("20240101/0A.des").is_ok());
        for bad in ["", "/a", "a/", "a//b", "../a", "a/./b", "a\\b"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }
}
