//! Every failure the service reports, and the single table that turns an
//! error kind into an HTTP status and a stable JSON `error` code.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use des_storage::ErrorKind as StorageKind;

/// Clients decide on `error` codes, so these names are part of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    BadRequest,
    /// No usable API key: missing, unknown or expired.
    Unauthorized,
    /// A valid key that may not do this (scope) or see this uid (prefix).
    Forbidden,
    NotFound,
    /// The file existed and was deleted (tombstoned).
    Gone,
    RangeNotSatisfiable,
    Corrupt,
    Unavailable,
    /// A bound on what responses in progress hold was reached (the client
    /// sees `unavailable`, as for any 503: the pod, not the store, is busy).
    Overloaded,
    Throttled,
    Internal,
    NotImplemented,
    /// A known path asked with a method it does not serve.
    MethodNotAllowed,
}

/// Retry-After sent when storage gave no hint: long enough to shed load,
/// short enough that a blip does not look like an outage.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// THE table. Status and code for each kind; nothing else maps errors to statuses.
pub const fn describe(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
        ErrorKind::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
        ErrorKind::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        ErrorKind::Gone => (StatusCode::GONE, "gone"),
        ErrorKind::RangeNotSatisfiable => {
            (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
        }
        ErrorKind::Corrupt => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt"),
        ErrorKind::Unavailable | ErrorKind::Overloaded => {
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
        ErrorKind::Throttled => (StatusCode::TOO_MANY_REQUESTS, "throttled"),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        ErrorKind::NotImplemented => (StatusCode::NOT_IMPLEMENTED, "not_implemented"),
        ErrorKind::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    }
}

/// How a storage failure looks to a client.
pub const fn kind_of_storage(kind: StorageKind) -> ErrorKind {
    match kind {
        StorageKind::NotFound => ErrorKind::NotFound,
        StorageKind::Corrupt => ErrorKind::Corrupt,
        StorageKind::Throttled => ErrorKind::Throttled,
        // A shard that keeps being replaced under us is a transient condition.
        StorageKind::Unavailable | StorageKind::Timeout | StorageKind::PreconditionFailed => {
            ErrorKind::Unavailable
        }
        // Our credentials or our keys being wrong is the server's fault, not the client's.
        StorageKind::Unauthorized | StorageKind::Invalid | StorageKind::Other => {
            ErrorKind::Internal
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{message}{}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
pub struct ApiError {
    pub kind: ErrorKind,
    /// What the client is told.
    pub message: String,
    /// For the log only: storage errors name buckets, endpoints and keys,
    /// which are not the business of whoever can reach the public port.
    pub detail: Option<String>,
    pub(crate) retry_after: Option<Duration>,
    /// For 416: the representation length, sent as `Content-Range: bytes */len`.
    range_len: Option<u64>,
    /// For 405: the methods the path serves, sent as `Allow`.
    allow: Option<&'static str>,
    /// For 410: why the file is gone, when it is known (`retention_expired`);
    /// sent as `reason` beside `error` and `message`.
    reason: Option<&'static str>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            detail: None,
            retry_after: None,
            range_len: None,
            allow: None,
            reason: None,
        }
    }

    /// 405 for a known path; `allow` lists the methods it serves.
    pub fn method_not_allowed(method: &str, path: &str, allow: &'static str) -> Self {
        let mut e = Self::new(
            ErrorKind::MethodNotAllowed,
            format!("{method} is not served on {path} (allowed: {allow})"),
        );
        e.allow = Some(allow);
        e
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Gone, message)
    }

    /// 410 with the `reason` the body names (e.g. `retention_expired`).
    pub fn gone_because(reason: &'static str, message: impl Into<String>) -> Self {
        let mut e = Self::gone(message);
        e.reason = Some(reason);
        e
    }

    /// The `reason` of a 410, if any.
    pub fn reason(&self) -> Option<&'static str> {
        self.reason
    }

    pub fn throttled(message: impl Into<String>, retry_after: Duration) -> Self {
        let mut e = Self::new(ErrorKind::Throttled, message);
        e.retry_after = Some(retry_after);
        e
    }

    pub fn range_not_satisfiable(len: u64) -> Self {
        let mut e = Self::new(
            ErrorKind::RangeNotSatisfiable,
            format!("file has {len} bytes"),
        );
        e.range_len = Some(len);
        e
    }

    pub fn overloaded(message: impl Into<String>, retry_after: Duration) -> Self {
        let mut e = Self::new(ErrorKind::Overloaded, message);
        e.retry_after = Some(retry_after);
        e
    }

    pub fn unavailable(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        let mut e = Self::new(ErrorKind::Unavailable, message);
        e.retry_after = retry_after;
        e
    }

    pub fn code(&self) -> &'static str {
        describe(self.kind).1
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self.kind {
            ErrorKind::Unavailable | ErrorKind::Overloaded | ErrorKind::Throttled => {
                let d = self.retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
                // Retry-After has whole seconds: round up (a client retrying
                // early is refused again) and never say "0".
                let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                Some(secs.max(1))
            }
            _ => None,
        }
    }
}

impl From<&des_storage::Error> for ApiError {
    fn from(e: &des_storage::Error) -> Self {
        let kind = kind_of_storage(e.kind());
        let mut api = Self::new(kind, public_message(kind));
        api.detail = Some(e.to_string());
        api.retry_after = e.retry_after();
        api
    }
}

impl From<des_storage::Error> for ApiError {
    fn from(e: des_storage::Error) -> Self {
        Self::from(&e)
    }
}

/// What a client is told of a storage failure of `kind`.
fn public_message(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound => "not found",
        ErrorKind::Corrupt => "the stored data failed its integrity check",
        ErrorKind::Throttled => "storage is throttling requests; retry later",
        ErrorKind::Unavailable => "storage unavailable; retry later",
        _ => "internal error",
    }
}

#[derive(serde::Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
    /// Only where a reason is known, so every other body keeps its shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        describe(self.kind).0
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        // Errors are about this moment (an outage, a file not yet packed): never cache them.
        resp.insert_header((header::CACHE_CONTROL, "no-store"));
        if let Some(secs) = self.retry_after_secs() {
            resp.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if self.kind == ErrorKind::Unauthorized {
            // RFC 6750 §3: say which scheme would work.
            resp.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"des\""));
        }
        if let Some(allow) = self.allow {
            resp.insert_header((header::ALLOW, allow));
        }
        if let Some(len) = self.range_len {
            resp.insert_header((header::CONTENT_RANGE, format!("bytes */{len}")));
            resp.insert_header((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")));
        }
        resp.json(Body {
            error: self.code(),
            message: &self.message,
            reason: self.reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let rows = [
            (ErrorKind::BadRequest, 400, "bad_request"),
            (ErrorKind::Unauthorized, 401, "unauthorized"),
            (ErrorKind::Forbidden, 403, "forbidden"),
            (ErrorKind::NotFound, 404, "not_found"),
            (ErrorKind::Gone, 410, "gone"),
            (ErrorKind::RangeNotSatisfiable, 416, "range_not_satisfiable"),
            (ErrorKind::Corrupt, 500, "corrupt"),
            (ErrorKind::Unavailable, 503, "unavailable"),
            (ErrorKind::Overloaded, 503, "unavailable"),
            (ErrorKind::Throttled, 429, "throttled"),
            (ErrorKind::Internal, 500, "internal"),
            (ErrorKind::NotImplemented, 501, "not_implemented"),
            (ErrorKind::MethodNotAllowed, 405, "method_not_allowed"),
        ];
        for (kind, status, code) in rows {
            assert_eq!(
                describe(kind),
                (StatusCode::from_u16(status).unwrap(), code),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn storage_kinds() {
        let rows = [
            (StorageKind::NotFound, ErrorKind::NotFound),
            (StorageKind::Corrupt, ErrorKind::Corrupt),
            (StorageKind::Throttled, ErrorKind::Throttled),
            (StorageKind::Unavailable, ErrorKind::Unavailable),
            (StorageKind::Timeout, ErrorKind::Unavailable),
            (StorageKind::PreconditionFailed, ErrorKind::Unavailable),
            (StorageKind::Unauthorized, ErrorKind::Internal),
            (StorageKind::Invalid, ErrorKind::Internal),
            (StorageKind::Other, ErrorKind::Internal),
        ];
        for (storage, kind) in rows {
            assert_eq!(kind_of_storage(storage), kind, "{storage:?}");
        }
    }

    #[test]
    fn responses_carry_retry_after_and_content_range() {
        let throttled = ApiError::from(des_storage::Error::Throttled {
            msg: "slow down".into(),
            retry_after: Some(Duration::from_secs(7)),
        });
        let r = throttled.error_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers().get(header::RETRY_AFTER).unwrap(), "7");

        let down = ApiError::from(des_storage::Error::Timeout("slow disk".into()));
        let r = down.error_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers().get(header::RETRY_AFTER).unwrap(), "1");

        let r = ApiError::range_not_satisfiable(42).error_response();
        assert_eq!(r.status(), 416);
        assert_eq!(
            r.headers().get(header::CONTENT_RANGE).unwrap(),
            "bytes */42"
        );
        assert!(r.headers().get(header::RETRY_AFTER).is_none());

        let r = ApiError::throttled("slow", Duration::from_millis(1500)).error_response();
        assert_eq!(
            r.headers().get(header::RETRY_AFTER).unwrap(),
            "2",
            "rounded up"
        );

        let r = ApiError::unauthorized("who?").error_response();
        assert_eq!(r.status(), 401);
        assert!(
            r.headers()
                .get(header::WWW_AUTHENTICATE)
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        assert!(
            ApiError::forbidden("no")
                .error_response()
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .is_none()
        );

        let r = ApiError::not_found("nope").error_response();
        assert_eq!(r.headers().get(header::CACHE_CONTROL).unwrap(), "no-store");
    }
}
