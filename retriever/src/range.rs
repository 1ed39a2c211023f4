//! `Range: bytes=…` (RFC 9110 §14) for a representation of known length.

use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable Range header: send everything with 200.
    Full,
    /// One satisfiable range, end exclusive: send it with 206.
    Partial(Range<u64>),
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Interprets a Range header value. Syntax we do not understand is ignored
/// (as RFC 9110 allows), and multiple ranges are answered with the whole
/// file, which is always a correct response and spares us multipart bodies.
pub fn parse(value: Option<&str>, len: u64) -> RangeRequest {
    let Some(value) = value else {
        return RangeRequest::Full;
    };
    let Some((unit, specs)) = value.trim().split_once('=') else {
        return RangeRequest::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeRequest::Full;
    }
    let mut parts = specs.split(',').map(str::trim).filter(|s| !s.is_empty());
    let (Some(spec), None) = (parts.next(), parts.next()) else {
        return RangeRequest::Full;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    match (number(first), number(last)) {
        // bytes=-n: the last n bytes.
        (None, Some(n)) if first.is_empty() => {
            if n == 0 || len == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial(len - n.min(len)..len)
            }
        }
        // bytes=a-
        (Some(a), None) if last.is_empty() => satisfiable_from(a, len, len),
        // bytes=a-b, b inclusive and clipped to the end.
        (Some(a), Some(b)) if a <= b => satisfiable_from(a, b.saturating_add(1).min(len), len),
        _ => RangeRequest::Full,
    }
}

fn satisfiable_from(start: u64, end: u64, len: u64) -> RangeRequest {
    if start >= len {
        RangeRequest::Unsatisfiable
    } else {
        RangeRequest::Partial(start..end)
    }
}

fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::RangeRequest::{Full, Partial, Unsatisfiable};
    use super::*;

    #[test]
    fn single_ranges() {
        let p = |v: &str| parse(Some(v), 100);
        assert_eq!(parse(None, 100), Full);
        assert_eq!(p("bytes=0-0"), Partial(0..1));
        assert_eq!(p("bytes=99-99"), Partial(99..100));
        assert_eq!(p("bytes=10-"), Partial(10..100));
        assert_eq!(p("bytes=-5"), Partial(95..100));
        assert_eq!(p("bytes=-500"), Partial(0..100));
        assert_eq!(p("bytes=90-1000"), Partial(90..100));
        assert_eq!(p("Bytes = 1-2"), Partial(1..3));
        assert_eq!(p("bytes=0-18446744073709551615"), Partial(0..100));
    }

    #[test]
    fn unsatisfiable() {
        let p = |v: &str| parse(Some(v), 100);
        assert_eq!(p("bytes=100-"), Unsatisfiable);
        assert_eq!(p("bytes=100-200"), Unsatisfiable);
        assert_eq!(p("bytes=-0"), Unsatisfiable);
        assert_eq!(parse(Some("bytes=-1"), 0), Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-"), 0), Unsatisfiable);
    }

    #[test]
    fn ignored() {
        let p = |v: &str| parse(Some(v), 100);
        for v in [
            "items=0-1",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=",
            "bytes=-",
            "0-1",
            "bytes=1-2,4-5",
        ] {
            assert_eq!(p(v), Full, "{v}");
        }
        assert_eq!(p("bytes=1-2, "), Partial(1..3));
    }
}
