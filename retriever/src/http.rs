//! Request handlers: `GET|HEAD /files/{uid}`, `/health`, `/ready`.

use std::time::{Duration, SystemTime};

use actix_web::body::SizedStream;
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use bytes::Bytes;
use des_format::Timestamp;
use des_format::shard::Located;

use crate::error::ApiError;
use crate::lookup::Retriever;
use crate::payload::Payload;
use crate::range::{self, RangeRequest};

/// Files are immutable under their (uid, created_at) address.
pub const CACHE_FOREVER: &str = "public, max-age=31536000, immutable";
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// What the headers say about a file, all known from its index entry.
#[derive(Debug, Clone)]
pub struct Representation {
    pub len: u64,
    /// Quoted strong validator, if the entry has a digest.
    pub etag: Option<String>,
    pub content_type: HeaderValue,
    pub last_modified: Option<String>,
}

impl Representation {
    pub fn of(located: &Located) -> Self {
        Self {
            len: located.orig_len,
            etag: located.etag().map(|hex| format!("\"{hex}\"")),
            content_type: content_type(located),
            last_modified: located.created_at.and_then(http_date),
        }
    }

    fn apply(&self, b: &mut HttpResponseBuilder) {
        b.insert_header((header::CONTENT_TYPE, self.content_type.clone()));
        if let Some(etag) = &self.etag {
            b.insert_header((header::ETAG, etag.as_str()));
        }
        if let Some(date) = &self.last_modified {
            b.insert_header((header::LAST_MODIFIED, date.as_str()));
        }
        b.insert_header((header::ACCEPT_RANGES, "bytes"));
        b.insert_header((header::CACHE_CONTROL, CACHE_FOREVER));
        // Stored bytes are whatever was packed; never let a browser reinterpret them.
        b.insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    }
}

/// The stored type if it is a valid header value, else a guess from the uid's extension.
fn content_type(located: &Located) -> HeaderValue {
    located
        .content_type
        .as_deref()
        .and_then(|ct| HeaderValue::from_str(ct).ok())
        .or_else(|| {
            mime_guess::from_path(&located.uid)
                .first()
                .and_then(|m| HeaderValue::from_str(m.essence_str()).ok())
        })
        .unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

fn http_date(t: Timestamp) -> Option<String> {
    let secs = u64::try_from(t.unix_seconds()).ok()?;
    let at = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))?;
    Some(httpdate::fmt_http_date(at))
}

/// `created_at` from the query string. A literal `+` in an offset arrives as a
/// space (form decoding); no valid RFC 3339 value contains one there, so put it back.
fn created_at(query: &str) -> Result<Timestamp, ApiError> {
    #[derive(serde::Deserialize)]
    struct Q {
        created_at: Option<String>,
    }
    let q = web::Query::<Q>::from_query(query).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let raw = q
        .into_inner()
        .created_at
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("query parameter created_at (RFC 3339) is required")
        })?;
    let fixed = raw.trim().replace(' ', "+");
    Timestamp::parse_rfc3339(&fixed).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// If-None-Match (weak comparison, RFC 9110 §13.1.2).
fn not_modified(headers: &HeaderMap, rep: &Representation) -> bool {
    let Some(value) = header_str(headers, header::IF_NONE_MATCH) else {
        return false;
    };
    value.split(',').map(str::trim).any(|tag| {
        tag == "*"
            || rep
                .etag
                .as_deref()
                .is_some_and(|e| tag.trim_start_matches("W/") == e)
    })
}

/// The Range to honour: none if If-Range names another version (or a date,
/// which we cannot compare as strongly as an ETag).
fn wanted_range(headers: &HeaderMap, rep: &Representation) -> RangeRequest {
    if let Some(if_range) = header_str(headers, header::IF_RANGE)
        && rep.etag.as_deref() != Some(if_range.trim())
    {
        return RangeRequest::Full;
    }
    range::parse(header_str(headers, header::RANGE), rep.len)
}

pub async fn get_file(
    req: HttpRequest,
    uid: web::Path<String>,
    state: web::Data<Retriever>,
) -> Result<HttpResponse, ApiError> {
    let uid = uid.into_inner();
    if uid.is_empty() {
        return Err(ApiError::bad_request(
            "missing uid: use /files/{uid}?created_at=…",
        ));
    }
    let created_at = created_at(req.query_string())?;
    let hit = state.locate(&uid, created_at).await?;
    let rep = Representation::of(&hit.located);
    // Everything up to here needed only the index: no payload read for these answers.
    if not_modified(req.headers(), &rep) {
        let mut b = HttpResponse::build(StatusCode::NOT_MODIFIED);
        rep.apply(&mut b);
        return Ok(b.finish());
    }
    let wanted = wanted_range(req.headers(), &rep);
    if wanted == RangeRequest::Unsatisfiable {
        return Err(ApiError::range_not_satisfiable(rep.len));
    }
    if req.method() == Method::HEAD {
        let mut b = HttpResponse::Ok();
        rep.apply(&mut b);
        // An empty stream with an explicit length: the length is announced, no bytes are read.
        b.no_chunking(rep.len);
        return Ok(b.streaming(futures::stream::empty::<Result<Bytes, std::io::Error>>()));
    }
    let (hit, payload) = state.fetch(&uid, created_at, hit).await?;
    // The index may have been reloaded: describe what is actually sent.
    let rep = Representation::of(&hit.located);
    let span = match wanted_range(req.headers(), &rep) {
        RangeRequest::Partial(r) => Some(r),
        RangeRequest::Full => None,
        RangeRequest::Unsatisfiable => return Err(ApiError::range_not_satisfiable(rep.len)),
    };
    let mut b = match &span {
        Some(r) => {
            let mut b = HttpResponse::PartialContent();
            b.insert_header((
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{}", r.start, r.end - 1, rep.len),
            ));
            b
        }
        None => HttpResponse::Ok(),
    };
    rep.apply(&mut b);
    let window = span.unwrap_or(0..rep.len);
    Ok(match payload {
        Payload::Inline(bytes) => {
            let (start, end) = (
                to_index(window.start, &bytes)?,
                to_index(window.end, &bytes)?,
            );
            b.body(bytes.slice(start..end))
        }
        Payload::External(ext) => {
            let len = window.end - window.start;
            b.body(SizedStream::new(
                len,
                Box::pin(crate::stream::verified(ext, window)),
            ))
        }
    })
}

fn to_index(n: u64, bytes: &Bytes) -> Result<usize, ApiError> {
    usize::try_from(n)
        .ok()
        .filter(|&i| i <= bytes.len())
        .ok_or_else(|| {
            ApiError::internal(format!(
                "range end {n} beyond decoded {} bytes",
                bytes.len()
            ))
        })
}

/// Liveness: the process answers; no I/O.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the store answers one cheap request in time.
pub async fn ready(state: web::Data<Retriever>) -> Result<HttpResponse, ApiError> {
    match tokio::time::timeout(READY_TIMEOUT, state.probe()).await {
        Ok(Ok(())) => Ok(HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(serde_json::json!({"status": "ready"}))),
        Ok(Err(e)) => Err(ApiError::unavailable(
            format!("store not ready: {e}"),
            e.retry_after(),
        )),
        Err(_) => Err(ApiError::unavailable(
            format!("store did not answer within {READY_TIMEOUT:?}"),
            None,
        )),
    }
}

pub async fn no_route(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}
