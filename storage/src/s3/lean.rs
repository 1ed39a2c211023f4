//! Object GETs signed with SigV4 and sent on our own hyper client, without
//! the SDK's orchestrator.
//!
//! A retriever that misses its payload cache makes one ranged GET per file,
//! so the per-GET CPU is its capacity. The SDK spent about 38 % of the
//! retriever's CPU on such a GET (interceptors, endpoint rules, identity and
//! config plumbing, response deserialisation) for a request that is a URL,
//! two optional headers and a signature. Used for plain-`http://` path-style
//! endpoints (S3-compatible servers next to the service, where that CPU is
//! the whole cost); AWS and HTTPS endpoints keep the SDK.
//!
//! Unlike the SDK there is no clock-skew correction: a server that rejects
//! our clock answers `RequestTimeTooSkewed`, which maps to `Unauthorized`.

use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use futures::stream::BoxStream;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::http::{self, HeaderMap};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::error::{classify, parse_retry_after};
use super::quickack::{self, Connector};
use super::read::Response;
use crate::error::{Error, Result};

/// Credentials this close to expiring are refreshed before use, so a
/// request is never signed with a key that expires in flight.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// Error bodies are small XML documents; more than this is not one.
const ERROR_BODY_MAX: usize = 64 << 10;

pub(crate) struct LeanGet {
    client: Client<Connector, Empty<Bytes>>,
    /// `http://host:port[/path]/bucket`: the object URL is this, `/`, the key.
    base: String,
    region: String,
    credentials: CredentialCache,
    read_timeout: Duration,
}

impl LeanGet {
    pub(crate) fn new(
        endpoint: &str,
        bucket: &str,
        region: String,
        credentials: SharedCredentialsProvider,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .build(quickack::connector(connect_timeout));
        Self {
            client,
            base: format!("{}/{bucket}", endpoint.trim_end_matches('/')),
            region,
            credentials: CredentialCache::new(credentials),
            read_timeout,
        }
    }

    /// GETs bucket key `full_key` (`key` names it in errors).
    pub(crate) async fn get(
        &self,
        key: &str,
        full_key: &str,
        range: Option<&str>,
        if_match: Option<&str>,
    ) -> Result<Response> {
        let request = self.signed(key, full_key, range, if_match).await?;
        let limit = self.read_timeout;
        let response = tokio::time::timeout(limit, self.client.request(request))
            .await
            .map_err(|_| Error::Timeout(format!("{key}: no response in {limit:?}")))?
            .map_err(|e| unavailable(key, &e))?;
        let (parts, body) = response.into_parts();
        let status = parts.status.as_u16();
        if !parts.status.is_success() {
            return Err(self.error(key, status, &parts.headers, body).await);
        }
        let header = |name| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Ok(Response {
            length: header(http::header::CONTENT_LENGTH)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            content_range: header(http::header::CONTENT_RANGE),
            etag: header(http::header::ETAG),
            body: body_stream(key, body, limit),
        })
    }

    /// Failures here are ours, not the request's (so not `Invalid`, which the
    /// store reads as an unsatisfiable range).
    async fn signed(
        &self,
        key: &str,
        full_key: &str,
        range: Option<&str>,
        if_match: Option<&str>,
    ) -> Result<http::Request<Empty<Bytes>>> {
        let uri = format!("{}/{}", self.base, encode_key(full_key));
        let mut headers = Vec::with_capacity(2);
        if let Some(r) = range {
            headers.push(("range", r));
        }
        if let Some(m) = if_match {
            headers.push(("if-match", m));
        }
        let identity = self.credentials.get(key).await?.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings())
            .build()
            .map_err(|e| Error::other(format!("{key}: signing the GET"), e))?
            .into();
        let signable = SignableRequest::new(
            "GET",
            uri.as_str(),
            headers.iter().copied(),
            SignableBody::Bytes(&[]),
        )
        .and_then(|r| sign(r, &params))
        .map_err(|e| Error::other(format!("{key}: signing the GET"), e))?;
        let mut builder = http::Request::get(uri.as_str());
        for (name, value) in &headers {
            builder = builder.header(*name, *value);
        }
        let mut request = builder
            .body(Empty::new())
            .map_err(|e| Error::other(format!("{key}: building the GET"), e))?;
        signable
            .into_parts()
            .0
            .apply_to_request_http1x(&mut request);
        Ok(request)
    }

    /// Reads an error response (bounded, with the read timeout) and maps its
    /// status and S3 error code as the SDK path does.
    async fn error(&self, key: &str, status: u16, headers: &HeaderMap, body: Incoming) -> Error {
        let limited = http_body_util::Limited::new(body, ERROR_BODY_MAX).collect();
        let text = match tokio::time::timeout(self.read_timeout, limited).await {
            Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            _ => String::new(),
        };
        let code = xml_element(&text, "Code");
        let retry_after = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let detail = xml_element(&text, "Message").unwrap_or_default();
        let msg = format!("{key}: HTTP {status} {}: {detail}", code.unwrap_or("-"));
        classify(key, status, code, retry_after, msg.clone(), msg)
    }
}

/// What the SDK uses for S3: keys are signed as sent (no second encoding, no
/// `.`/`..` normalisation) and the payload hash goes in `x-amz-content-sha256`.
fn settings() -> SigningSettings {
    let mut s = SigningSettings::default();
    s.percent_encoding_mode = PercentEncodingMode::Single;
    s.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    s.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    s
}

/// Percent-encodes a key for the URL path as S3 expects: everything but
/// RFC 3986 unreserved characters and `/`.
pub(crate) fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 8);
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The text of the first `<name>…</name>` in an S3 error document.
fn xml_element<'a>(doc: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = doc.find(&open)? + open.len();
    let len = doc[start..].find(&format!("</{name}>"))?;
    Some(doc[start..start + len].trim())
}

/// The whole cause chain in the message, as the SDK path words its errors.
fn unavailable(key: &str, e: &dyn std::error::Error) -> Error {
    Error::Unavailable {
        msg: format!("{key}: {}", DisplayErrorContext(e)),
        retry_after: None,
    }
}

/// The body as data chunks; a chunk that takes longer than `limit` to come
/// ends the stream with a timeout, as a stalled connection must.
fn body_stream(key: &str, body: Incoming, limit: Duration) -> BoxStream<'static, Result<Bytes>> {
    let key = key.to_string();
    Box::pin(futures::stream::unfold(Some(body), move |body| {
        let key = key.clone();
        async move {
            let mut body = body?;
            loop {
                let frame = match tokio::time::timeout(limit, body.frame()).await {
                    Err(_) => {
                        let e = Error::Timeout(format!("{key}: body stalled for {limit:?}"));
                        return Some((Err(e), None));
                    }
                    Ok(None) => return None,
                    Ok(Some(Err(e))) => return Some((Err(unavailable(&key, &e)), None)),
                    Ok(Some(Ok(frame))) => frame,
                };
                // Trailers carry no data; keep reading.
                if let Ok(data) = frame.into_data() {
                    return Some((Ok(data), Some(body)));
                }
            }
        }
    }))
}

/// Credentials resolved once and reused until close to expiry. The provider
/// chain (environment, profile, web identity, instance metadata) may make
/// network calls, so it must not run per request; refreshes are serialised.
struct CredentialCache {
    provider: SharedCredentialsProvider,
    current: RwLock<Option<Credentials>>,
    refresh: tokio::sync::Mutex<()>,
}

impl CredentialCache {
    fn new(provider: SharedCredentialsProvider) -> Self {
        Self {
            provider,
            current: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self) -> Option<Credentials> {
        let current = self.current.read().ok()?;
        let c = current.as_ref()?;
        let soon = SystemTime::now() + REFRESH_BEFORE;
        c.expiry().is_none_or(|e| e > soon).then(|| c.clone())
    }

    async fn get(&self, key: &str) -> Result<Credentials> {
        if let Some(c) = self.fresh() {
            return Ok(c);
        }
        let _one_at_a_time = self.refresh.lock().await;
        if let Some(c) = self.fresh() {
            return Ok(c);
        }
        let c = self
            .provider
            .provide_credentials()
            .await
            .map_err(|e| Error::Unauthorized(format!("{key}: no S3 credentials: {e}")))?;
        if let Ok(mut current) = self.current.write() {
            *current = Some(c.clone());
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_like_the_sdk() {
        assert_eq!(encode_key("p/20240517/0a.des"), "p/20240517/0a.des");
        assert_eq!(encode_key("a b+c%d"), "a%20b%2Bc%25d");
        assert_eq!(encode_key("_big/é~x"), "_big/%C3%A9~x");
        assert_eq!(encode_key("q?x=1&y#z"), "q%3Fx%3D1%26y%23z");
    }

    #[test]
    fn error_documents_are_read() {
        let doc = "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code>\
                   <Message> The key does not exist </Message></Error>";
        assert_eq!(xml_element(doc, "Code"), Some("NoSuchKey"));
        assert_eq!(xml_element(doc, "Message"), Some("The key does not exist"));
        assert_eq!(xml_element(doc, "Resource"), None);
        assert_eq!(xml_element("<Code>cut", "Code"), None);
    }

    fn lean(token: Option<&str>) -> LeanGet {
        let creds = Credentials::new("AKID", "secret", token.map(str::to_string), None, "test");
        LeanGet::new(
            "http://127.0.0.1:3900/",
            "bkt",
            "garage".into(),
            SharedCredentialsProvider::new(creds),
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
    }

    #[tokio::test]
    async fn requests_are_signed_with_their_headers() {
        let req = lean(None)
            .signed("k", "p/a b", Some("bytes=0-9"), Some("\"e1\""))
            .await
            .unwrap();
        assert_eq!(req.uri(), "http://127.0.0.1:3900/bkt/p/a%20b");
        let h = req.headers();
        assert_eq!(h["range"], "bytes=0-9");
        assert_eq!(h["if-match"], "\"e1\"");
        // SHA-256 of the empty body, as the SDK sends it for GET.
        assert_eq!(
            h["x-amz-content-sha256"],
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let auth = h["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKID/")
                && auth.contains("/garage/s3/aws4_request")
                && auth
                    .contains("SignedHeaders=host;if-match;range;x-amz-content-sha256;x-amz-date"),
            "{auth}"
        );
        assert!(!h.contains_key("x-amz-security-token"));
    }

    #[tokio::test]
    async fn a_request_that_cannot_be_built_is_not_an_unsatisfiable_range() {
        let e = lean(None)
            .signed("k", "k", None, Some("a\nb"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Other, "{e}");
    }

    #[tokio::test]
    async fn session_tokens_are_sent_and_signed() {
        let req = lean(Some("tok"))
            .signed("k", "k", None, None)
            .await
            .unwrap();
        assert_eq!(req.headers()["x-amz-security-token"], "tok");
        let auth = req.headers()["authorization"].to_str().unwrap();
        assert!(auth.contains("x-amz-security-token"), "{auth}");
    }

    /// A one-connection HTTP server that answers any request with `reply`,
    /// then closes (`hang`: false) or keeps the connection open silently.
    async fn server(reply: Vec<u8>, hang: bool) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 8192];
            let _ = sock.read(&mut request).await;
            let _ = sock.write_all(&reply).await;
            if hang {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        });
        format!("http://{addr}")
    }

    fn client(endpoint: &str) -> LeanGet {
        let creds = Credentials::new("AKID", "secret", None, None, "test");
        LeanGet::new(
            endpoint,
            "bkt",
            "us-east-1".into(),
            SharedCredentialsProvider::new(creds),
            Duration::from_secs(1),
            Duration::from_millis(300),
        )
    }

    async fn get_from(reply: &str, hang: bool) -> Result<Response> {
        let endpoint = server(reply.as_bytes().to_vec(), hang).await;
        client(&endpoint)
            .get("k", "p/k", Some("bytes=0-99"), None)
            .await
    }

    async fn body_error(r: Response) -> crate::ErrorKind {
        let chunks: Vec<Result<Bytes>> = futures::StreamExt::collect(r.body).await;
        chunks
            .into_iter()
            .find_map(Result::err)
            .expect("the body fails")
            .kind()
    }

    #[tokio::test]
    async fn a_cut_or_stalled_body_is_an_error_not_short_data() {
        let head = "HTTP/1.1 206 Partial Content\r\nContent-Length: 100\r\n\
                    Content-Range: bytes 0-99/1000\r\nETag: \"e1\"\r\n\r\n0123456789";
        let cut = get_from(head, false).await.unwrap();
        assert_eq!((cut.length, cut.etag.as_deref()), (100, Some("\"e1\"")));
        assert_eq!(cut.content_range.as_deref(), Some("bytes 0-99/1000"));
        assert_eq!(body_error(cut).await, crate::ErrorKind::Unavailable);
        let stalled = get_from(head, true).await.unwrap();
        assert_eq!(body_error(stalled).await, crate::ErrorKind::Timeout);
    }

    #[tokio::test]
    async fn no_answer_is_a_timeout_and_no_server_is_unavailable() {
        let e = get_from("", true).await.map(|_| ()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Timeout, "{e}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let e = client(&closed)
            .get("k", "k", None, None)
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unavailable, "{e}");
    }

    #[tokio::test]
    async fn error_responses_map_like_the_sdk_path() {
        let reply = |status: &str, extra: &str, body: &str| {
            format!(
                "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let xml = |code: &str| format!("<Error><Code>{code}</Code><Message>m</Message></Error>");
        let slow = reply("503 Slow Down", "Retry-After: 7\r\n", &xml("SlowDown"));
        let e = get_from(&slow, false).await.map(|_| ()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Throttled, "{e}");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        let cases = [
            (
                reply("404 Not Found", "", &xml("NoSuchKey")),
                crate::ErrorKind::NotFound,
            ),
            (
                reply("403 Forbidden", "", ""),
                crate::ErrorKind::Unauthorized,
            ),
            (
                reply("412 Precondition Failed", "", &xml("PreconditionFailed")),
                crate::ErrorKind::PreconditionFailed,
            ),
            (
                reply("416 Range Not Satisfiable", "", &xml("InvalidRange")),
                crate::ErrorKind::Invalid,
            ),
            // Not an S3 error document, and too long to be one: the status decides.
            (
                reply("500 Internal Server Error", "", &"x".repeat(100_000)),
                crate::ErrorKind::Unavailable,
            ),
        ];
        for (r, kind) in cases {
            let e = get_from(&r, false).await.map(|_| ()).unwrap_err();
            assert_eq!(e.kind(), kind, "{e}");
        }
    }

    #[tokio::test]
    async fn expiring_credentials_are_refreshed() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU32, Ordering};

        #[derive(Debug)]
        struct Counting(Arc<AtomicU32>, Duration);
        impl ProvideCredentials for Counting {
            fn provide_credentials<'a>(
                &'a self,
            ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
            where
                Self: 'a,
            {
                let n = self.0.fetch_add(1, Ordering::SeqCst);
                let expiry = SystemTime::now() + self.1;
                aws_credential_types::provider::future::ProvideCredentials::ready(Ok(
                    Credentials::new(format!("AK{n}"), "s", None, Some(expiry), "test"),
                ))
            }
        }
        let calls = Arc::new(AtomicU32::new(0));
        let long = CredentialCache::new(SharedCredentialsProvider::new(Counting(
            Arc::clone(&calls),
            Duration::from_secs(3600),
        )));
        for _ in 0..3 {
            assert_eq!(long.get("k").await.unwrap().access_key_id(), "AK0");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Expiring within the refresh margin: resolved again every time.
        let calls = Arc::new(AtomicU32::new(0));
        let short = CredentialCache::new(SharedCredentialsProvider::new(Counting(
            Arc::clone(&calls),
            Duration::from_secs(60),
        )));
        assert_eq!(short.get("k").await.unwrap().access_key_id(), "AK0");
        assert_eq!(short.get("k").await.unwrap().access_key_id(), "AK1");
    }
}
