//! What a file's response headers say, all known from its index entry, and
//! built once per entry: the hot payload cache keeps it beside the bytes.

use std::time::{Duration, SystemTime};

use actix_web::HttpResponseBuilder;
use actix_web::http::header::{self, HeaderValue};
use des_format::Timestamp;
use des_format::shard::Located;

use crate::config::HttpCaching;

/// The caching headers of every file response, built once from the settings.
///
/// A file never changes under its (uid, created_at) address, but it can be
/// deleted: `max-age` bounds how long any cache may keep serving it after a
/// DELETE, so it defaults to well inside the deletion bound, and `immutable`
/// is only sent when asked for. With API keys on, a response is for the
/// caller alone: `private` keeps shared caches (a CDN, a proxy) from handing
/// it to someone without a key, and `Vary: Authorization` keeps a browser
/// cache from answering one key's request with another's response.
#[derive(Debug, Clone)]
pub struct CacheHeaders {
    cache_control: HeaderValue,
    vary_authorization: bool,
}

impl CacheHeaders {
    pub fn new(caching: HttpCaching, auth_on: bool) -> Self {
        let who = if auth_on { "private" } else { "public" };
        let mut value = format!("{who}, max-age={}", caching.max_age.as_secs());
        if caching.immutable {
            value.push_str(", immutable");
        }
        Self {
            // Only ASCII letters, digits, commas, spaces and `=` above.
            cache_control: HeaderValue::from_str(&value)
                .unwrap_or(HeaderValue::from_static("no-store")),
            vary_authorization: auth_on,
        }
    }

    fn apply(&self, b: &mut HttpResponseBuilder) {
        b.insert_header((header::CACHE_CONTROL, self.cache_control.clone()));
        if self.vary_authorization {
            b.insert_header((header::VARY, HeaderValue::from_static("Authorization")));
        }
    }
}

/// What the headers say about a file, all known from its index entry.
/// Header values are built (and validated) here once, not per response.
#[derive(Debug, Clone)]
pub struct Representation {
    pub len: u64,
    /// Quoted strong validator, if the entry has a digest.
    pub etag: Option<String>,
    etag_value: Option<HeaderValue>,
    pub content_type: HeaderValue,
    last_modified: Option<HeaderValue>,
}

impl Representation {
    pub fn of(located: &Located) -> Self {
        let etag = located.etag().map(|hex| format!("\"{hex}\""));
        Self {
            len: located.orig_len,
            etag_value: etag.as_deref().and_then(|e| HeaderValue::from_str(e).ok()),
            etag,
            content_type: content_type(located),
            last_modified: located
                .created_at
                .and_then(http_date)
                .and_then(|d| HeaderValue::from_str(&d).ok()),
        }
    }

    pub fn apply(&self, b: &mut HttpResponseBuilder, caching: &CacheHeaders) {
        b.insert_header((header::CONTENT_TYPE, self.content_type.clone()));
        if let Some(etag) = &self.etag_value {
            b.insert_header((header::ETAG, etag.clone()));
        }
        if let Some(date) = &self.last_modified {
            b.insert_header((header::LAST_MODIFIED, date.clone()));
        }
        b.insert_header((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")));
        caching.apply(b);
        // Stored bytes are whatever was packed; never let a browser reinterpret them.
        b.insert_header((
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ));
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
