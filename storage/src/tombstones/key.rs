//! Log object names. A name starts with the time it was logged, so a plain
//! listing is in time order and `start_after` polls incrementally; it then
//! carries the date and (percent-encoded) uid, so building the set of
//! deleted `(uid, date)` pairs needs listings only, not one GET per tombstone.
//!
//! `<YYYYMMDD>T<HHMMSS><ffffff>Z-<YYYYMMDD>-u<uid, percent-encoded>.json`, or
//! `…-h<16 hex>.json` (a hash) when the encoded uid would not fit a file name.
//!
//! A bundle (many tombstones in one object, see `bundle.rs`) is
//! `<time>-bundle-<count>-<crc32c 8 hex>.jsonl`; each member is named as if
//! it were a record logged at the bundle's time, so markers and segments
//! treat members and records alike.

use des_format::Timestamp;

/// Every tombstone object lives under this prefix.
pub const LOG_PREFIX: &str = "_tombstones/";
/// "Applied" markers mirror tombstone names under this prefix.
pub const APPLIED_PREFIX: &str = "_tombstones_applied/";

/// Longest percent-encoded uid kept in a name: local file names are limited
/// to 255 bytes, and the time, date and suffix take about 40.
const MAX_EMBEDDED: usize = 200;
const TIME_LEN: usize = 22;
const EXT: &str = ".json";

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// What an object name tells without reading the object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogName {
    /// The name under the prefix, e.g. `20240601T080000000000Z-20240517-uabc.json`.
    pub name: String,
    /// The writer's clock when it appended the tombstone.
    pub logged_at: Timestamp,
    pub date: u32,
    /// `None` when the uid was too long to embed (read the object).
    pub uid: Option<String>,
    /// For a member of a bundle: the bundle's name (the object holding it).
    pub bundle: Option<String>,
}

impl LogName {
    /// The object holding the tombstone: its own record, or its bundle.
    pub fn log_key(&self) -> String {
        format!("{LOG_PREFIX}{}", self.object())
    }

    /// The name (under [`LOG_PREFIX`]) of the object holding the tombstone.
    pub fn object(&self) -> &str {
        self.bundle.as_deref().unwrap_or(&self.name)
    }

    pub fn applied_key(&self) -> String {
        format!("{APPLIED_PREFIX}{}", self.name)
    }
}

/// `20240517T100000123456Z`: fixed width, so byte order is time order.
pub fn format_time(ts: Timestamp) -> String {
    let us = ts.micros().rem_euclid(MICROS_PER_DAY);
    let secs = us / 1_000_000;
    format!(
        "{}T{:02}{:02}{:02}{:06}Z",
        ts.date_dir(),
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        us % 1_000_000
    )
}

fn parse_time(s: &str) -> Option<Timestamp> {
    if s.len() != TIME_LEN || !s.is_ascii() {
        return None;
    }
    let p = |a: usize, b: usize| s.get(a..b);
    let text = format!(
        "{}-{}-{}T{}:{}:{}.{}Z",
        p(0, 4)?,
        p(4, 6)?,
        p(6, 8)?,
        p(9, 11)?,
        p(11, 13)?,
        p(13, 15)?,
        p(15, 21)?
    );
    let ts = Timestamp::parse_rfc3339(&text).ok()?;
    (format_time(ts) == s).then_some(ts)
}

/// The smallest name that sorts at or after every name logged at `ts`
/// or later: a `start_after` bound for polling.
pub fn lower_bound(ts: Timestamp) -> String {
    format!("{LOG_PREFIX}{}", format_time(ts))
}

pub fn encode_name(logged_at: Timestamp, date: u32, uid: &str) -> String {
    let enc = percent_encode(uid);
    let tail = if enc.len() <= MAX_EMBEDDED {
        format!("u{enc}")
    } else {
        format!("h{:016x}", fnv1a64(uid.as_bytes()))
    };
    format!("{}-{date:08}-{tail}{EXT}", format_time(logged_at))
}

/// Parses a name under [`LOG_PREFIX`] or [`APPLIED_PREFIX`] (prefix removed).
pub fn parse_name(name: &str) -> Option<LogName> {
    let stem = name.strip_suffix(EXT)?;
    let mut parts = stem.splitn(3, '-');
    let (time, date, tail) = (parts.next()?, parts.next()?, parts.next()?);
    let logged_at = parse_time(time)?;
    let date = super::record::parse_date(date).ok()?;
    let uid = match tail.split_at_checked(1)? {
        ("u", enc) => Some(percent_decode(enc)?),
        ("h", hash) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => None,
        _ => return None,
    };
    Some(LogName {
        name: name.to_string(),
        logged_at,
        date,
        uid,
        bundle: None,
    })
}

const BUNDLE_EXT: &str = ".jsonl";

/// The name of a bundle of `count` tombstones whose body has checksum `crc`.
pub fn encode_bundle_name(logged_at: Timestamp, count: usize, crc: u32) -> String {
    format!(
        "{}-bundle-{count}-{crc:08x}{BUNDLE_EXT}",
        format_time(logged_at)
    )
}

/// What a bundle's name tells: when it was logged, how many tombstones it
/// holds and the CRC32C of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleName {
    pub logged_at: Timestamp,
    pub count: usize,
    pub crc: u32,
}

/// Parses a bundle name (prefix removed); `None` for anything else.
pub fn parse_bundle_name(name: &str) -> Option<BundleName> {
    let stem = name.strip_suffix(BUNDLE_EXT)?;
    let mut parts = stem.splitn(4, '-');
    let (time, tag, count, crc) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if tag != "bundle" || crc.len() != 8 || !count.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let b = BundleName {
        logged_at: parse_time(time)?,
        count: count.parse().ok()?,
        crc: u32::from_str_radix(crc, 16).ok()?,
    };
    (encode_bundle_name(b.logged_at, b.count, b.crc) == name).then_some(b)
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

/// Keeps names valid keys everywhere: no `/`, no control bytes, no `%` ambiguity.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = char::from(bytes.next()?).to_digit(16)?;
            let lo = char::from(bytes.next()?).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
        } else if unreserved(b) {
            out.push(b);
        } else {
            return None;
        }
    }
    let uid = String::from_utf8(out).ok()?;
    (!uid.is_empty()).then_some(uid)
}

/// Spelled out rather than taken from a library whose output may change:
/// names written today must parse the same way in ten years.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn time_is_fixed_width_and_round_trips() {
        let t = ts("2024-05-17T09:08:07.000123Z");
        assert_eq!(format_time(t), "20240517T090807000123Z");
        assert_eq!(parse_time(&format_time(t)), Some(t));
        assert!(format_time(ts("2024-05-17T10:00:00Z")) > format_time(t));
        assert_eq!(parse_time("20240517T250807000123Z"), None);
    }

    #[test]
    fn names_round_trip() {
        let t = ts("2024-06-01T08:00:00Z");
        for uid in ["abc", "a/b c%d", "ünï-cødé", "..", "-x-"] {
            let name = encode_name(t, 20240517, uid);
            crate::object::check_key(&format!("{LOG_PREFIX}{name}")).unwrap();
            let parsed = parse_name(&name).unwrap();
            assert_eq!(parsed.uid.as_deref(), Some(uid));
            assert_eq!((parsed.logged_at, parsed.date), (t, 20240517));
        }
        let long = "x/".repeat(300);
        let name = encode_name(t, 20240517, &long);
        assert!(name.len() < 255);
        assert_eq!(parse_name(&name).unwrap().uid, None);
        for bad in ["x.json", "20240601T080000000000Z-20240517-q.json", "a-b-c"] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn bundle_names_round_trip_and_are_not_record_names() {
        let t = ts("2024-06-01T08:00:00.5Z");
        let name = encode_bundle_name(t, 10_000, 0xdead_beef);
        assert_eq!(name, "20240601T080000500000Z-bundle-10000-deadbeef.jsonl");
        crate::object::check_key(&format!("{LOG_PREFIX}{name}")).unwrap();
        let b = parse_bundle_name(&name).unwrap();
        assert_eq!((b.logged_at, b.count, b.crc), (t, 10_000, 0xdead_beef));
        assert_eq!(parse_name(&name), None);
        for bad in [
            "20240601T080000500000Z-bundle-10000-deadbeef.json",
            "20240601T080000500000Z-bundle-x-deadbeef.jsonl",
            "20240601T080000500000Z-bundle-010-deadbeef.jsonl",
            "20240601T080000500000Z-bundle-1-dead.jsonl",
            "20240601T080000500000Z-20240517-uabc.json",
        ] {
            assert_eq!(parse_bundle_name(bad), None, "{bad}");
        }
    }
}
