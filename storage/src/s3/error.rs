//! The one place where aws-sdk errors become [`Error`] kinds, so retry
//! policy and HTTP status mapping above never see SDK types.

use std::time::Duration;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::error::Error;

/// Maps a failed SDK call on `key` (an object key, or a description of the
/// operation for calls that have none).
pub(crate) fn map_sdk_error<E>(key: &str, err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let detail = DisplayErrorContext(&err).to_string();
    let msg = format!("{key}: {detail}");
    match &err {
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            let raw = err.raw_response();
            let status = raw.map(|r| r.status().as_u16());
            let retry_after = raw
                .and_then(|r| r.headers().get("retry-after"))
                .and_then(parse_retry_after);
            let code = err
                .as_service_error()
                .and_then(|e| e.code())
                .map(str::to_string);
            match status {
                Some(status) if status >= 400 => {
                    classify(key, status, code.as_deref(), retry_after, msg, err)
                }
                // A success status whose body could not be read or parsed: the
                // connection broke mid-way.
                _ => Error::Unavailable {
                    msg,
                    retry_after: None,
                },
            }
        }
        SdkError::TimeoutError(_) => Error::Timeout(msg),
        SdkError::DispatchFailure(d) => {
            if d.is_timeout() {
                Error::Timeout(msg)
            } else if d.is_io() {
                Error::Unavailable {
                    msg,
                    retry_after: None,
                }
            } else if caused_by::<CredentialsError>(&err) {
                // Identity resolution fails before anything is sent; retrying
                // will not make credentials appear.
                Error::Unauthorized(msg)
            } else if d.is_user() {
                Error::Invalid(msg)
            } else {
                Error::Unavailable {
                    msg,
                    retry_after: None,
                }
            }
        }
        SdkError::ConstructionFailure(_) => Error::Invalid(msg),
        _ => Error::other(format!("S3 request on {key} failed"), err),
    }
}

/// Classifies an S3 error response by status and error code. The code wins
/// where it is more specific than the status (S3 returns throttling as 503
/// `SlowDown`, an unsatisfiable range as 416 or 400 `InvalidRange`).
pub(crate) fn classify(
    key: &str,
    status: u16,
    code: Option<&str>,
    retry_after: Option<Duration>,
    msg: String,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> Error {
    match code {
        Some("NoSuchKey" | "NoSuchUpload" | "NotFound") => return Error::not_found(key),
        // Usually a configuration mistake: say so instead of blaming the key.
        Some("NoSuchBucket") => return Error::not_found(format!("{key} (no such bucket)")),
        Some(
            "SlowDown"
            | "RequestLimitExceeded"
            | "Throttling"
            | "ThrottlingException"
            | "TooManyRequests"
            | "TooManyRequestsException",
        ) => return Error::Throttled { msg, retry_after },
        Some("InvalidRange") => return Error::Invalid(msg),
        Some("RequestTimeout") => return Error::Timeout(msg),
        Some(
            "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "InvalidToken"
            | "RequestTimeTooSkewed",
        ) => return Error::Unauthorized(msg),
        Some("PreconditionFailed") => {
            return Error::PreconditionFailed {
                key: key.to_string(),
            };
        }
        // A concurrent conditional write won a race; retrying resolves it into
        // success or a clean 412.
        Some("ConditionalRequestConflict") => return Error::Unavailable { msg, retry_after },
        _ => {}
    }
    match status {
        404 => Error::not_found(key),
        412 => Error::PreconditionFailed {
            key: key.to_string(),
        },
        401 | 403 => Error::Unauthorized(msg),
        429 => Error::Throttled { msg, retry_after },
        416 => Error::Invalid(msg),
        408 => Error::Timeout(msg),
        500 | 502 | 503 | 504 => Error::Unavailable { msg, retry_after },
        _ => Error::other(msg, source),
    }
}

/// `Retry-After` in delay-seconds form; the HTTP-date form is not used by S3.
pub(crate) fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn caused_by<T: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<T>() {
            return true;
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::primitives::SdkBody;
    use aws_smithy_runtime_api::http::StatusCode;

    fn response(status: u16, retry_after: Option<&str>) -> HttpResponse {
        let mut r = HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        if let Some(v) = retry_after {
            r.headers_mut().insert("retry-after", v.to_string());
        }
        r
    }

    fn service(status: u16, code: Option<&str>, retry_after: Option<&str>) -> Error {
        let mut meta = ErrorMetadata::builder().message("test");
        if let Some(c) = code {
            meta = meta.code(c);
        }
        let err = GetObjectError::generic(meta.build());
        map_sdk_error(
            "k/ey",
            SdkError::service_error(err, response(status, retry_after)),
        )
    }

    #[test]
    fn maps_status_codes() {
        let cases = [
            (404, None, ErrorKind::NotFound),
            (404, Some("NoSuchKey"), ErrorKind::NotFound),
            (404, Some("NoSuchBucket"), ErrorKind::NotFound),
            (412, None, ErrorKind::PreconditionFailed),
            (
                412,
                Some("PreconditionFailed"),
                ErrorKind::PreconditionFailed,
            ),
            (401, None, ErrorKind::Unauthorized),
            (403, Some("AccessDenied"), ErrorKind::Unauthorized),
            (403, Some("SignatureDoesNotMatch"), ErrorKind::Unauthorized),
            (429, None, ErrorKind::Throttled),
            (503, Some("SlowDown"), ErrorKind::Throttled),
            (503, Some("RequestLimitExceeded"), ErrorKind::Throttled),
            (503, None, ErrorKind::Unavailable),
            (503, Some("ServiceUnavailable"), ErrorKind::Unavailable),
            (500, Some("InternalError"), ErrorKind::Unavailable),
            (502, None, ErrorKind::Unavailable),
            (504, None, ErrorKind::Unavailable),
            (400, Some("InvalidRange"), ErrorKind::Invalid),
            (416, None, ErrorKind::Invalid),
            (400, Some("RequestTimeout"), ErrorKind::Timeout),
            (
                409,
                Some("ConditionalRequestConflict"),
                ErrorKind::Unavailable,
            ),
            (400, Some("InvalidArgument"), ErrorKind::Other),
            (501, Some("NotImplemented"), ErrorKind::Other),
        ];
        for (status, code, want) in cases {
            assert_eq!(
                service(status, code, None).kind(),
                want,
                "{status} {code:?}"
            );
        }
        match service(404, Some("NoSuchKey"), None) {
            Error::NotFound { key } => assert_eq!(key, "k/ey"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keeps_retry_after() {
        let e = service(503, Some("SlowDown"), Some("7"));
        assert_eq!(e.kind(), ErrorKind::Throttled);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        let e = service(503, None, Some("2"));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(service(429, None, Some("soon")).retry_after(), None);
    }

    #[test]
    fn maps_transport_failures() {
        use aws_sdk_s3::error::ConnectorError;
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e: SdkError<GetObjectError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io(Box::new(io)));
        assert_eq!(map_sdk_error("k", e).kind(), ErrorKind::Unavailable);
        let e: SdkError<GetObjectError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::timeout("slow".into()));
        assert_eq!(map_sdk_error("k", e).kind(), ErrorKind::Timeout);
        let e: SdkError<GetObjectError, HttpResponse> = SdkError::timeout_error("deadline");
        assert_eq!(map_sdk_error("k", e).kind(), ErrorKind::Timeout);
        let creds = CredentialsError::not_loaded("no credentials in the environment");
        let e: SdkError<GetObjectError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::other(Box::new(creds), None));
        assert_eq!(map_sdk_error("k", e).kind(), ErrorKind::Unauthorized);
        let e: SdkError<GetObjectError, HttpResponse> =
            SdkError::response_error("truncated xml", response(200, None));
        assert_eq!(map_sdk_error("k", e).kind(), ErrorKind::Unavailable);
        let e: SdkError<GetObjectError, HttpResponse> =
            SdkError::response_error("html error page", response(502, None));
        assert_eq!(map_sdk_error("k", e).kind(), ErrorKind::Unavailable);
    }
}
