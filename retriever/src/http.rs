//! Request handlers: `GET|HEAD /files/{uid}`, `/health`, `/ready`, `/metrics`.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::SizedStream;
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use bytes::Bytes;
use des_format::Timestamp;
use des_format::codec::Codec;
use des_format::shard::{Located, Source};

use crate::admission::{Held, HeldBody};
use crate::auth::Scope;
use crate::error::ApiError;
use crate::metrics::{self, CacheSizes};
use crate::payload::Payload;
use crate::range::{self, RangeRequest};
use crate::representation::{CacheHeaders, Representation};
use crate::state::AppState;

/// `created_at` from the query string. A literal `+` in an offset arrives as a
/// space (form decoding); no valid RFC 3339 value contains one there, so put it back.
pub(crate) fn created_at(query: &str) -> Result<Timestamp, ApiError> {
    #[derive(serde::Deserialize)]
    struct Q {
        created_at: Option<String>,
    }
    let q = web::Query::<Q>::from_query(query).map_err(|e| ApiError::bad_request(e.to_string()))?;
    parse_created_at(q.into_inner().created_at)
}

/// The `created_at` query value, required.
pub(crate) fn parse_created_at(raw: Option<String>) -> Result<Timestamp, ApiError> {
    let raw = raw.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
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

/// The files route as metrics label it.
pub const FILES_ROUTE: &str = "/files/{uid}";

/// The uid of a `/files/{uid}` path: the rest of the path, percent-decoded
/// as actix decodes path parameters (so `%2F` is a `/` inside the uid).
/// Routed by hand because matching a `{uid:.*}` pattern runs a regex, ≈ 4 %
/// of a warm GET (docs/BENCHMARKS.md §2).
pub fn files_uid(req: &HttpRequest) -> Option<String> {
    let rest = files_path_rest(req.path())?;
    Some(
        percent_encoding::percent_decode_str(rest)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// The still-encoded uid part of a `/files/…` path.
pub fn files_path_rest(path: &str) -> Option<&str> {
    path.strip_prefix("/files/")
}

/// Everything no static route took: `/files/{uid}` by method, else 404.
pub async fn files_or_no_route(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Some(uid) = files_uid(&req) else {
        // The operator's paths serve GET only; any other method lands here.
        if OPS_PATHS.contains(&req.path()) {
            return Err(ApiError::method_not_allowed(
                req.method().as_str(),
                req.path(),
                "GET",
            ));
        }
        return no_route(req).await;
    };
    match *req.method() {
        Method::GET | Method::HEAD => get_file(req, uid, state).await,
        Method::DELETE => crate::delete::delete_route(req, uid, state).await,
        _ => Err(ApiError::method_not_allowed(
            req.method().as_str(),
            req.path(),
            "GET, HEAD, DELETE",
        )),
    }
}

/// The routes registered for GET alone (server.rs).
const OPS_PATHS: [&str; 3] = ["/health", "/ready", "/metrics"];

/// `GET|HEAD /files/{uid}`, counted in `des_retrievals_total` and timed.
pub async fn get_file(
    req: HttpRequest,
    uid: String,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let at = created_at(req.query_string());
    let r = &state.retriever;
    let backend = at
        .as_ref()
        .ok()
        .and_then(|_| r.backend_for(&uid))
        .unwrap_or("none");
    let result = serve_file(&req, &uid, at, &state).await;
    let status = match &result {
        Ok(r) => r.status(),
        Err(e) => e.status_code(),
    };
    let m = r.metrics();
    m.retrievals
        .with_label_values(&[backend, status.as_str()])
        .inc();
    m.retrieval_seconds.observe(started.elapsed().as_secs_f64());
    result
}

/// `created_at` is the query's, parsed once by the caller; its error is
/// reported after the uid's and the caller's credentials'.
async fn serve_file(
    req: &HttpRequest,
    uid: &str,
    created_at: Result<Timestamp, ApiError>,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    if uid.is_empty() {
        return Err(ApiError::bad_request(
            "missing uid: use /files/{uid}?created_at=…",
        ));
    }
    state.admit(req, Scope::Read, uid)?;
    let created_at = created_at?;
    let retriever = &state.retriever;
    // Before the tombstone check, so a delete that check misses cannot leave
    // the bytes this request reads in the hot cache (see hot::Slot::fill).
    let ticket = retriever.payload_ticket();
    // Before the lookup: a deleted file costs no storage request, and the
    // hot cache is never asked for it.
    state.check_not_deleted(uid, created_at)?;
    let caching = &state.cache_headers;
    if let Some(hot) = retriever.hot_hit(uid, created_at) {
        // Cached bytes are shared, not copied: they take no share of the bound.
        return match wanted(req, &hot.rep, caching)? {
            Wanted::Answered(r) => Ok(r),
            Wanted::Bytes(span) => send(&hot.rep, span, Payload::Inline(hot.bytes), None, state),
        };
    }
    let hit = retriever.locate(uid, created_at).await?;
    let rep = Arc::new(Representation::of(&hit.located));
    // Everything up to here needed only the index: no payload read for these answers.
    let span = match wanted(req, &rep, caching)? {
        Wanted::Answered(r) => return Ok(r),
        Wanted::Bytes(span) => span,
    };
    // Before the read: an overloaded pod answers at once, without storage requests.
    let held = hold(state, &hit.located)?;
    if let Some(window) = span.clone() {
        let corruption = &retriever.metrics().corruption;
        if let Some(w) =
            crate::payload::open_window(retriever.store(), &hit, window, corruption).await?
        {
            return send(&rep, span, w, Some(held), state);
        }
    }
    let (_, payload, sent) = retriever
        .fetch(uid, created_at, hit, Arc::clone(&rep), ticket)
        .await?;
    // A reloaded index may describe other bytes: then so must the headers.
    let span = if Arc::ptr_eq(&rep, &sent) {
        span
    } else {
        span_of(req, &sent)?
    };
    send(&sent, span, payload, Some(held), state)
}

/// The share of a bound a file's response holds while it is sent: a big-file
/// stream, or the bytes a small file is held in (stored and decoded; one
/// buffer when stored raw).
fn hold(state: &AppState, located: &Located) -> Result<Held, ApiError> {
    if matches!(located.source, Source::External { .. }) {
        return state.admission.big_stream();
    }
    let buffers = match located.codec {
        Codec::None => located.orig_len,
        _ => located.orig_len.saturating_add(located.stored_len),
    };
    state.admission.payload_bytes(buffers)
}

/// What a GET or HEAD asks of a file, decided from its headers alone.
enum Wanted {
    /// 304, or HEAD: answered without the payload.
    Answered(HttpResponse),
    /// The bytes to send: one range, or all of them.
    Bytes(Option<Range<u64>>),
}

fn wanted(
    req: &HttpRequest,
    rep: &Representation,
    caching: &CacheHeaders,
) -> Result<Wanted, ApiError> {
    if not_modified(req.headers(), rep) {
        let mut b = HttpResponse::build(StatusCode::NOT_MODIFIED);
        rep.apply(&mut b, caching);
        return Ok(Wanted::Answered(b.finish()));
    }
    let span = span_of(req, rep)?;
    if req.method() == Method::HEAD {
        let mut b = HttpResponse::Ok();
        rep.apply(&mut b, caching);
        // An empty stream with an explicit length: the length is announced, no bytes are read.
        b.no_chunking(rep.len);
        let empty = futures::stream::empty::<Result<Bytes, std::io::Error>>();
        return Ok(Wanted::Answered(b.streaming(empty)));
    }
    Ok(Wanted::Bytes(span))
}

/// The range to send (`None`: everything), or 416.
fn span_of(req: &HttpRequest, rep: &Representation) -> Result<Option<Range<u64>>, ApiError> {
    match wanted_range(req.headers(), rep) {
        RangeRequest::Partial(r) => Ok(Some(r)),
        RangeRequest::Full => Ok(None),
        RangeRequest::Unsatisfiable => Err(ApiError::range_not_satisfiable(rep.len)),
    }
}

/// `held` is the response's share of a bound, kept until its body is sent
/// or dropped (none for bytes shared with the payload cache).
fn send(
    rep: &Representation,
    span: Option<Range<u64>>,
    payload: Payload,
    held: Option<Held>,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
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
    rep.apply(&mut b, &state.cache_headers);
    let window = span.unwrap_or(0..rep.len);
    Ok(match payload {
        Payload::Inline(bytes) => {
            let (start, end) = (
                to_index(window.start, &bytes)?,
                to_index(window.end, &bytes)?,
            );
            b.body(HeldBody::new(bytes.slice(start..end), held))
        }
        Payload::External(ext) => {
            let len = window.end - window.start;
            let corruption = state.retriever.metrics().corruption.clone();
            b.body(SizedStream::new(
                len,
                crate::stream::verified(ext, window, corruption, held),
            ))
        }
        Payload::Window(chunks) => {
            let len = window.end - window.start;
            let corruption = state.retriever.metrics().corruption.clone();
            b.body(SizedStream::new(
                len,
                crate::stream::counted(*chunks, corruption, held),
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

/// `/ready` on the public port: the status alone, unless the caller holds
/// a key with the `metrics` scope (auth on); bucket names, endpoints and
/// storage errors are for operators, not for whoever can reach the port.
pub async fn ready_public(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.limits.check_ip(req.peer_addr().map(|a| a.ip()))?;
    // A probe without a key gets the status, not a 401.
    let detailed = state.auth.is_on()
        && state
            .auth
            .authenticate(req.headers())
            .is_ok_and(|p| p.authorize(Scope::Metrics, "").is_ok());
    Ok(ready_answer(&state, detailed).await)
}

/// `/ready` on the admin port: with every backend's detail.
pub async fn ready_admin(state: web::Data<AppState>) -> HttpResponse {
    ready_answer(&state, true).await
}

async fn ready_answer(state: &AppState, detailed: bool) -> HttpResponse {
    let report = state.readiness.report(&state.retriever).await;
    let mut b = if report.up {
        HttpResponse::Ok()
    } else {
        let mut b = HttpResponse::ServiceUnavailable();
        b.insert_header((header::RETRY_AFTER, "1"));
        b
    };
    b.insert_header((header::CACHE_CONTROL, "no-store"));
    if detailed {
        b.json(serde_json::json!({"status": report.status, "backends": report.backends}))
    } else {
        b.json(serde_json::json!({"status": report.status}))
    }
}

/// `/metrics` on the public port: 404 when an admin listener serves it,
/// else for keys with the `metrics` scope (everyone when auth is off).
pub async fn metrics_public(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if state.admin_listener {
        return no_route(req).await;
    }
    state.admit(&req, Scope::Metrics, "")?;
    metrics(state).await
}

/// Prometheus text exposition.
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let r = &state.retriever;
    let dicts = r.store().dict_cache();
    let sizes = CacheSizes {
        index: r.cache_bytes().await,
        pages: r.page_cache_bytes().await,
        payload: r.payload_cache_bytes(),
        dictionaries: dicts.bytes(),
        dictionary_loads: dicts.loads(),
    };
    let text = r
        .metrics()
        .render(sizes, r.backends().zones())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, metrics::CONTENT_TYPE))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(text))
}

pub async fn no_route(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}
