//! GET helpers: the `Range` header for a [`ByteRange`], parsing what the
//! server says it returned, and streaming the body without buffering it
//! (shared by the SDK and the lean GET paths).

use std::ops::Range;

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::error::{Error, Result};
use crate::object::ByteRange;

/// What to send for a range: no header, a header, or nothing at all because
/// the answer is known without reading (`Suffix(0)` has no valid HTTP form).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeRequest {
    Whole,
    Header(String),
    HeadOnly,
}

pub(crate) fn range_request(key: &str, range: Option<ByteRange>) -> Result<RangeRequest> {
    Ok(match range.unwrap_or(ByteRange::All) {
        ByteRange::All => RangeRequest::Whole,
        ByteRange::Bounded { start, end } if start >= end => {
            return Err(Error::Invalid(format!("{key}: range not satisfiable")));
        }
        ByteRange::Bounded { start, end } => {
            RangeRequest::Header(format!("bytes={start}-{}", end - 1))
        }
        ByteRange::Suffix(0) => RangeRequest::HeadOnly,
        ByteRange::Suffix(n) => RangeRequest::Header(format!("bytes=-{n}")),
        ByteRange::Offset(s) => RangeRequest::Header(format!("bytes={s}-")),
    })
}

/// Parses `Content-Range: bytes first-last/total` into `(first..last+1, total)`.
pub(crate) fn parse_content_range(v: &str) -> Option<(Range<u64>, u64)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last): (u64, u64) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    let total: u64 = total.trim().parse().ok()?;
    // Lazily: `last + 1` would overflow on a malformed `bytes 0-18446744073709551615/0`.
    (first <= last && last < total).then(|| (first..last + 1, total))
}

/// What came back for a successful GET (by the SDK or the lean path),
/// before the store checks it against what was asked.
pub(crate) struct Response {
    pub length: u64,
    pub content_range: Option<String>,
    pub etag: Option<String>,
    pub body: BoxStream<'static, Result<Bytes>>,
}

/// The SDK body as the trait's stream, chunk by chunk as it arrives.
pub(crate) fn sdk_stream(key: &str, body: ByteStream) -> BoxStream<'static, Result<Bytes>> {
    let key = key.to_string();
    futures::stream::unfold(body, |mut body| async move {
        body.next().await.map(|chunk| (chunk, body))
    })
    .map(move |chunk| {
        chunk.map_err(|e| Error::Unavailable {
            msg: format!(
                "{key}: reading S3 body: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            ),
            retry_after: None,
        })
    })
    .boxed()
}

/// If the server sent more than asked (some ignore `Range` and answer 200 with
/// the whole object), `got` is trimmed down to `want` on the fly.
pub(crate) fn body_stream(
    raw: BoxStream<'static, Result<Bytes>>,
    got: Range<u64>,
    want: Range<u64>,
) -> BoxStream<'static, Result<Bytes>> {
    let mut skip = want.start - got.start;
    let mut left = want.end - want.start;
    raw.filter_map(move |chunk| {
        let out = match chunk {
            Err(e) => Some(Err(e)),
            Ok(mut b) => {
                let dropped = skip.min(b.len() as u64);
                skip -= dropped;
                // `dropped` and `keep` are at most `b.len()`, so the casts are lossless.
                let mut b = b.split_off(dropped as usize);
                let keep = left.min(b.len() as u64);
                b.truncate(keep as usize);
                left -= keep;
                (!b.is_empty()).then_some(Ok(b))
            }
        };
        futures::future::ready(out)
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_headers() {
        let h = |r| range_request("k", Some(r)).unwrap();
        assert_eq!(
            h(ByteRange::Bounded { start: 2, end: 5 }),
            RangeRequest::Header("bytes=2-4".into())
        );
        assert_eq!(
            h(ByteRange::Suffix(3)),
            RangeRequest::Header("bytes=-3".into())
        );
        assert_eq!(
            h(ByteRange::Offset(7)),
            RangeRequest::Header("bytes=7-".into())
        );
        assert_eq!(h(ByteRange::Suffix(0)), RangeRequest::HeadOnly);
        assert_eq!(h(ByteRange::All), RangeRequest::Whole);
        assert_eq!(range_request("k", None).unwrap(), RangeRequest::Whole);
        assert!(range_request("k", Some(ByteRange::Bounded { start: 5, end: 5 })).is_err());
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 2-4/10"), Some((2..5, 10)));
        assert_eq!(parse_content_range("bytes 0-0/1"), Some((0..1, 1)));
        assert_eq!(parse_content_range("bytes */10"), None);
        assert_eq!(parse_content_range("bytes 5-4/10"), None);
        assert_eq!(parse_content_range("bytes 0-10/10"), None);
        assert_eq!(parse_content_range("bytes 0-18446744073709551615/0"), None);
    }

    #[tokio::test]
    async fn trims_overlong_bodies() {
        let body = || sdk_stream("k", ByteStream::from(Bytes::from_static(b"0123456789")));
        let s = body_stream(body(), 0..10, 7..10);
        let chunks: Vec<Bytes> = s.map(|c| c.unwrap()).collect().await;
        assert_eq!(chunks.concat(), b"789");
        let s = body_stream(body(), 0..10, 2..5);
        let chunks: Vec<Bytes> = s.map(|c| c.unwrap()).collect().await;
        assert_eq!(chunks.concat(), b"234");
    }
}
