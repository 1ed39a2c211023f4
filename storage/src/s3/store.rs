//! [`S3Store`]: the object-store trait over S3's REST API.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use des_format::Timestamp;
use rand::Rng;

use super::config::S3Config;
use super::error::map_sdk_error;
use super::lean::LeanGet;
use super::read::{
    RangeRequest, Response, body_stream, parse_content_range, range_request, sdk_stream,
};
use super::writer::S3Writer;
use crate::error::{Error, ErrorKind, Result};
use crate::object::{
    ByteRange, Capabilities, GetOptions, GetResult, LIST_PAGE, ListPage, ObjectMeta, ObjectStore,
    ObjectWriter, PutMode, PutOptions, PutResult, check_key,
};

/// An S3 bucket (or a prefix of one) as an [`ObjectStore`]. Cheap to clone.
#[derive(Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: S3Config,
    /// Built on first use: loading the AWS configuration is async, and
    /// `open_location` is not.
    clients: tokio::sync::OnceCell<(Client, Option<LeanGet>)>,
    /// Result of the last successful conditional-write probe.
    probed_conditional_put: OnceLock<bool>,
}

/// A multipart upload that was started but neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// Store key (without the store prefix).
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<SystemTime>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("url", &self.inner.cfg.url())
            .field("endpoint", &self.inner.cfg.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// [`ObjectStore::list`] with each object's `LastModified` (what a
    /// packer of loose objects may take as their creation time).
    pub async fn list_timed(&self, prefix: &str, start_after: Option<&str>) -> Result<TimedPage> {
        let full_prefix = self.full_key(prefix);
        let client = self.client().await;
        let mut token: Option<String> = None;
        loop {
            let resp = client
                .list_objects_v2()
                .bucket(self.bucket())
                .prefix(&full_prefix)
                .set_start_after(start_after.map(|a| self.full_key(a)))
                .set_continuation_token(token.clone())
                .max_keys(LIST_PAGE as i32)
                .send()
                .await
                .map_err(|e| map_sdk_error(&format!("listing {prefix:?}"), e))?;
            let objects: Vec<(ObjectMeta, Option<Timestamp>)> = resp
                .contents()
                .iter()
                .filter_map(|o| {
                    let key = self.strip_prefix(o.key()?)?;
                    let meta = ObjectMeta {
                        key: key.to_string(),
                        size: o.size().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                        etag: o.e_tag().map(str::to_string),
                    };
                    Some((meta, o.last_modified().and_then(timestamp_of)))
                })
                .collect();
            let truncated = resp.is_truncated().unwrap_or(false);
            match resp.next_continuation_token() {
                // A truncated page with nothing we can use (possible with
                // foreign keys outside our prefix): fetch on instead of
                // reporting a premature end.
                Some(t) if truncated && objects.is_empty() => token = Some(t.to_string()),
                _ => {
                    let next_start_after = if truncated {
                        objects.last().map(|(o, _)| o.key.clone())
                    } else {
                        None
                    };
                    return Ok(TimedPage {
                        objects,
                        next_start_after,
                    });
                }
            }
        }
    }

    /// A store whose client is built on first use. Makes no request, so
    /// [`capabilities`](ObjectStore::capabilities) reports conditional writes
    /// as unsupported until [`S3Store::probe_conditional_put`] has run, unless
    /// the configuration says otherwise.
    pub fn new(mut cfg: S3Config) -> Result<Self> {
        cfg.prefix = cfg.prefix.trim_matches('/').to_string();
        cfg.validate()?;
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                clients: tokio::sync::OnceCell::new(),
                probed_conditional_put: OnceLock::new(),
            }),
        })
    }

    /// Builds the client now and, unless `cfg.conditional_put` is set, probes
    /// whether the server enforces conditional writes. Needs write access.
    pub async fn connect(cfg: S3Config) -> Result<Self> {
        let store = Self::new(cfg)?;
        store.client().await;
        if store.inner.cfg.conditional_put.is_none() {
            store.probe_conditional_put().await?;
        }
        Ok(store)
    }

    pub fn config(&self) -> &S3Config {
        &self.inner.cfg
    }

    async fn clients(&self) -> &(Client, Option<LeanGet>) {
        self.inner
            .clients
            .get_or_init(|| self.inner.cfg.build_client())
            .await
    }

    pub(crate) async fn client(&self) -> &Client {
        &self.clients().await.0
    }

    /// The client, if it has been built (for `Drop` paths that cannot await).
    pub(crate) fn client_now(&self) -> Option<&Client> {
        self.inner.clients.get().map(|c| &c.0)
    }

    /// Whether conditional writes are known not to work (probed or configured
    /// `false`); unknown counts as "may work", so conditions are still sent.
    pub(crate) fn conditional_put_known_unsupported(&self) -> bool {
        self.inner
            .cfg
            .conditional_put
            .or_else(|| self.inner.probed_conditional_put.get().copied())
            == Some(false)
    }

    pub(crate) fn bucket(&self) -> &str {
        &self.inner.cfg.bucket
    }

    /// The bucket key for a store key.
    pub(crate) fn full_key(&self, key: &str) -> String {
        let prefix = &self.inner.cfg.prefix;
        if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}/{key}")
        }
    }

    /// The store key for a bucket key, if it lies under the store prefix.
    fn strip_prefix<'a>(&self, full: &'a str) -> Option<&'a str> {
        let prefix = &self.inner.cfg.prefix;
        if prefix.is_empty() {
            Some(full)
        } else {
            full.strip_prefix(prefix.as_str())?.strip_prefix('/')
        }
    }

    /// Finds out, with a throw-away object under `_des/`, whether the server
    /// enforces `If-None-Match: *` and `If-Match` on PUT (Garage accepts and
    /// ignores both). The answer is cached for [`ObjectStore::capabilities`].
    pub async fn probe_conditional_put(&self) -> Result<bool> {
        let tag: u64 = rand::thread_rng().r#gen();
        let key = crate::keys::StoreKey::Probe {
            tag: format!("{tag:016x}"),
        }
        .to_string();
        let result = self.run_probe(&key).await;
        // Best effort: a leftover probe object is harmless, the probe result is not.
        let _ = self.delete(&key).await;
        let supported = result?;
        // Several probes may race; they all observe the same server.
        let _ = self.inner.probed_conditional_put.set(supported);
        Ok(supported)
    }

    async fn run_probe(&self, key: &str) -> Result<bool> {
        let put = |mode: PutMode| self.put(key, Bytes::from_static(b"probe"), PutOptions { mode });
        /// `Ok(true)`: condition enforced; `Ok(false)`: ignored or rejected as unsupported.
        fn enforced(r: Result<PutResult>) -> Result<bool> {
            match r {
                Ok(_) => Ok(false),
                Err(e) if e.kind() == ErrorKind::PreconditionFailed => Ok(true),
                // 400/501: the server refuses the header itself.
                Err(e) if matches!(e.kind(), ErrorKind::Other | ErrorKind::Invalid) => Ok(false),
                Err(e) => Err(e),
            }
        }
        match put(PutMode::Create).await {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::Other | ErrorKind::Invalid) => {
                // Not even a create of a fresh key works with the header: say so,
                // and let the unconditional delete clean up.
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        let create = enforced(put(PutMode::Create).await)?;
        // An ETag that cannot be the current one.
        let stale = PutMode::UpdateIfMatch("\"00000000000000000000000000000000\"".into());
        let update = enforced(put(stale).await)?;
        Ok(create && update)
    }

    /// In-progress multipart uploads under `prefix` (store keys).
    pub async fn list_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let client = self.client().await;
        // `prefix/` for the whole store, as `full_key("")` gives.
        let full_prefix = self.full_key(prefix);
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let resp = client
                .list_multipart_uploads()
                .bucket(self.bucket())
                .prefix(&full_prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| map_sdk_error(&format!("multipart uploads under {prefix:?}"), e))?;
            for u in resp.uploads() {
                let (Some(full), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                let Some(key) = self.strip_prefix(full) else {
                    continue;
                };
                out.push(PendingUpload {
                    key: key.to_string(),
                    upload_id: id.to_string(),
                    initiated: u.initiated().and_then(|t| SystemTime::try_from(*t).ok()),
                });
            }
            let next = (resp.next_key_marker(), resp.next_upload_id_marker());
            match (resp.is_truncated().unwrap_or(false), next) {
                (true, (Some(k), id))
                    if Some(k) != key_marker.as_deref() || id != id_marker.as_deref() =>
                {
                    key_marker = Some(k.to_string());
                    id_marker = id.map(str::to_string);
                }
                _ => return Ok(out),
            }
        }
    }

    /// Aborts multipart uploads under `prefix` started more than `older_than`
    /// ago: writers that crashed leave their parts billed and invisible.
    /// Uploads of unknown age are aborted only when `older_than` is zero.
    /// Returns how many were aborted.
    pub async fn abort_stale_uploads(&self, prefix: &str, older_than: Duration) -> Result<usize> {
        self.abort_stale_uploads_where(prefix, older_than, |_| true)
            .await
    }

    /// As [`S3Store::abort_stale_uploads`], only for uploads whose store key
    /// passes `ours`: a store at the root of a shared bucket must not abort
    /// other applications' uploads.
    pub async fn abort_stale_uploads_where(
        &self,
        prefix: &str,
        older_than: Duration,
        ours: impl Fn(&str) -> bool,
    ) -> Result<usize> {
        let now = SystemTime::now();
        let mut aborted = 0;
        for u in self.list_uploads(prefix).await? {
            if !ours(&u.key) {
                continue;
            }
            let old = match u.initiated {
                Some(t) => now.duration_since(t).unwrap_or_default() >= older_than,
                None => older_than.is_zero(),
            };
            if old {
                abort_upload(
                    self.client().await,
                    self.bucket(),
                    &self.full_key(&u.key),
                    &u.upload_id,
                )
                .await?;
                aborted += 1;
            }
        }
        Ok(aborted)
    }

    /// One PutObject with the mode's conditional header.
    pub(crate) async fn put_object(
        &self,
        key: &str,
        data: Bytes,
        mode: &PutMode,
    ) -> Result<PutResult> {
        let size = data.len() as u64;
        let mut req = self
            .client()
            .await
            .put_object()
            .bucket(self.bucket())
            .key(self.full_key(key))
            .content_length(i64::try_from(size).unwrap_or(i64::MAX))
            .body(ByteStream::from(data));
        req = match mode {
            PutMode::Overwrite => req,
            PutMode::Create => req.if_none_match("*"),
            PutMode::UpdateIfMatch(etag) => req.if_match(etag),
        };
        let out = req.send().await.map_err(|e| map_sdk_error(key, e))?;
        Ok(PutResult {
            etag: out.e_tag().map(str::to_string),
            size,
        })
    }

    async fn head_with(&self, key: &str, if_match: Option<String>) -> Result<ObjectMeta> {
        let out = self
            .client()
            .await
            .head_object()
            .bucket(self.bucket())
            .key(self.full_key(key))
            .set_if_match(if_match)
            .send()
            .await
            .map_err(|e| map_sdk_error(key, e))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: out
                .content_length()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
            etag: out.e_tag().map(str::to_string),
        })
    }

    /// Answers a range read that needs no body: servers differ on ranges of
    /// empty objects (416 or 200) and `bytes=-0` has no valid form, so the
    /// size from HEAD decides, exactly as the other backends resolve it.
    async fn get_without_body(&self, key: &str, opts: &GetOptions) -> Result<GetResult> {
        let meta = self.head_with(key, opts.if_match.clone()).await?;
        check_if_match(key, opts.if_match.as_deref(), meta.etag.as_deref())?;
        let range = opts
            .range
            .unwrap_or(ByteRange::All)
            .resolve(meta.size)
            .filter(|r| r.is_empty())
            .ok_or_else(|| Error::Invalid(format!("{key}: range not satisfiable")))?;
        Ok(GetResult {
            meta,
            range,
            body: Box::pin(futures::stream::empty()),
        })
    }
}

/// Enforces `If-Match` on our side too: some servers (s3s-fs 0.14) ignore the
/// header on GET, and the ETag of what they sent tells whether it matched.
/// Costs nothing, and a server that did check never gets here with a mismatch.
fn check_if_match(key: &str, want: Option<&str>, got: Option<&str>) -> Result<()> {
    match (want, got) {
        (Some(w), Some(g)) if normalize_etag(w) != normalize_etag(g) => {
            Err(Error::PreconditionFailed {
                key: key.to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// `W/"abc"`, `"abc"` and `abc` name the same ETag for our purposes.
fn normalize_etag(e: &str) -> &str {
    let e = e.trim();
    let e = e.strip_prefix("W/").unwrap_or(e);
    e.trim_matches('"')
}

async fn sdk_get(
    client: &Client,
    bucket: &str,
    full_key: &str,
    key: &str,
    range: Option<&str>,
    if_match: Option<&str>,
) -> Result<Response> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(full_key)
        .set_range(range.map(str::to_string))
        .set_if_match(if_match.map(str::to_string))
        .send()
        .await
        .map_err(|e| map_sdk_error(key, e))?;
    Ok(Response {
        length: out
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0),
        content_range: out.content_range().map(str::to_string),
        etag: out.e_tag().map(str::to_string),
        body: sdk_stream(key, out.body),
    })
}

/// Turns what the server sent into the range that was asked for, or an error
/// when it sent less (or another object version) than that.
fn checked(key: &str, opts: &GetOptions, r: Response) -> Result<GetResult> {
    let length = r.length;
    let (got, size) = match r.content_range.as_deref().and_then(parse_content_range) {
        Some(range) => range,
        // 200: the whole object, whatever we asked for.
        None => (0..length, length),
    };
    let want = opts
        .range
        .unwrap_or(ByteRange::All)
        .resolve(size)
        .ok_or_else(|| Error::Invalid(format!("{key}: range not satisfiable")))?;
    if want.start < got.start || want.end > got.end || got.end - got.start != length {
        return Err(Error::Unavailable {
            msg: format!(
                "{key}: asked for bytes {want:?} of {size}, server sent {got:?} ({length} bytes)"
            ),
            retry_after: None,
        });
    }
    let meta = ObjectMeta {
        key: key.to_string(),
        size,
        etag: r.etag,
    };
    check_if_match(key, opts.if_match.as_deref(), meta.etag.as_deref())?;
    Ok(GetResult {
        meta,
        range: want.clone(),
        body: body_stream(r.body, got, want),
    })
}

pub(crate) async fn abort_upload(
    client: &Client,
    bucket: &str,
    full_key: &str,
    upload_id: &str,
) -> Result<()> {
    match client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(full_key)
        .upload_id(upload_id)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => match map_sdk_error(full_key, e) {
            // Already gone (completed, aborted, or expired by a lifecycle rule).
            e if e.kind() == ErrorKind::NotFound => Ok(()),
            e => Err(e),
        },
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        self.inner.cfg.url()
    }

    fn capabilities(&self) -> Capabilities {
        let known = self
            .inner
            .cfg
            .conditional_put
            .or_else(|| self.inner.probed_conditional_put.get().copied());
        Capabilities {
            conditional_put: known.unwrap_or(false),
        }
    }

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        check_key(key)?;
        let header = match range_request(key, opts.range)? {
            RangeRequest::HeadOnly => return self.get_without_body(key, &opts).await,
            RangeRequest::Whole => None,
            RangeRequest::Header(h) => Some(h),
        };
        let full = self.full_key(key);
        let (range, if_match) = (header.as_deref(), opts.if_match.as_deref());
        let sent = match self.clients().await {
            (_, Some(lean)) => lean.get(key, &full, range, if_match).await,
            (client, None) => sdk_get(client, self.bucket(), &full, key, range, if_match).await,
        };
        let response = match sent {
            Ok(r) => r,
            // 416: unsatisfiable for S3, but an empty range for us when the
            // object is empty or the offset is exactly its end.
            Err(e) if e.kind() == ErrorKind::Invalid => {
                return self.get_without_body(key, &opts).await;
            }
            Err(e) => return Err(e),
        };
        checked(key, &opts, response)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        check_key(key)?;
        self.head_with(key, None).await
    }

    async fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<PutResult> {
        check_key(key)?;
        self.put_object(key, data, &opts.mode).await
    }

    async fn put_writer(&self, key: &str, opts: PutOptions) -> Result<Box<dyn ObjectWriter>> {
        check_key(key)?;
        Ok(Box::new(S3Writer::new(self.clone(), key, opts.mode)))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        let sent = self
            .client()
            .await
            .delete_object()
            .bucket(self.bucket())
            .key(self.full_key(key))
            .send()
            .await;
        match sent.map_err(|e| map_sdk_error(key, e)) {
            Ok(_) => Ok(()),
            // S3 answers 204 for missing keys; some compatible servers say 404.
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<ListPage> {
        let page = self.list_timed(prefix, start_after).await?;
        Ok(ListPage {
            objects: page.objects.into_iter().map(|(meta, _)| meta).collect(),
            next_start_after: page.next_start_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_is_checked_against_the_returned_etag() {
        assert!(check_if_match("k", Some("\"a\""), Some("\"a\"")).is_ok());
        assert!(check_if_match("k", Some("a"), Some("W/\"a\"")).is_ok());
        assert!(check_if_match("k", None, Some("\"a\"")).is_ok());
        // No ETag in the response: nothing to compare, trust the server.
        assert!(check_if_match("k", Some("\"a\""), None).is_ok());
        let e = check_if_match("k", Some("\"a\""), Some("\"b\"")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PreconditionFailed);
    }

    #[test]
    fn keys_are_joined_with_the_prefix() {
        let s = S3Store::new(S3Config::new("bkt").with_prefix("p/q")).unwrap();
        assert_eq!(s.full_key("a/b"), "p/q/a/b");
        assert_eq!(s.full_key(""), "p/q/");
        assert_eq!(s.strip_prefix("p/q/a/b"), Some("a/b"));
        assert_eq!(s.strip_prefix("p/qa/b"), None);
        let s = S3Store::new(S3Config::new("bkt").with_prefix("/p/")).unwrap();
        assert_eq!(s.full_key("a"), "p/a");
        let s = S3Store::new(S3Config::new("bkt")).unwrap();
        assert_eq!(s.full_key("a/b"), "a/b");
        assert_eq!(s.strip_prefix("a/b"), Some("a/b"));
        assert_eq!(s.describe(), "s3://bkt");
    }
}

/// A page of [`S3Store::list_timed`].
#[derive(Debug, Default)]
pub struct TimedPage {
    pub objects: Vec<(ObjectMeta, Option<Timestamp>)>,
    /// The next page starts after this key; `None`: the listing is complete.
    pub next_start_after: Option<String>,
}

fn timestamp_of(t: &aws_sdk_s3::primitives::DateTime) -> Option<Timestamp> {
    let micros = t
        .secs()
        .checked_mul(1_000_000)?
        .checked_add(i64::from(t.subsec_nanos() / 1_000))?;
    Some(Timestamp::from_micros(micros))
}
