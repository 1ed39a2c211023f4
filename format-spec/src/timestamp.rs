//! `created_at` as UTC microseconds since the Unix epoch.

use std::fmt;

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use crate::error::{FormatError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_micros(us: i64) -> Self {
        Self(us)
    }

    pub const fn micros(self) -> i64 {
        self.0
    }

    /// Strict RFC 3339: a date, `T`, a time, and `Z` or a numeric offset.
    /// Sub-microsecond digits are truncated (the index stores microseconds).
    pub fn parse_rfc3339(s: &str) -> Result<Self> {
        let dt = OffsetDateTime::parse(s.trim(), &Rfc3339).map_err(|e| {
            FormatError::InvalidInput(format!(
                "created_at {s:?} is not RFC 3339 with Z or an offset: {e}"
            ))
        })?;
        // Floor, not `/`: dropping the sub-microsecond digits of an instant
        // before 1970 must move it earlier, or 23:59:59.9999999 would land on
        // the next day (and in the next day's shard).
        let us = dt.unix_timestamp_nanos().div_euclid(1_000);
        i64::try_from(us)
            .map(Self)
            .map_err(|_| FormatError::InvalidInput(format!("created_at {s:?} out of range")))
    }

    pub fn now() -> Self {
        let us = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000;
        Self(i64::try_from(us).unwrap_or(i64::MAX))
    }

    fn to_utc(self) -> Option<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000)
            .ok()
            .map(|d| d.to_offset(UtcOffset::UTC))
    }

    /// `YYYYMMDD` of the UTC calendar date.
    pub fn date_dir(self) -> String {
        match self.to_utc() {
            Some(d) => format!("{:04}{:02}{:02}", d.year(), u8::from(d.month()), d.day()),
            None => "00000000".to_string(),
        }
    }

    /// The same date as a number (`20240517`), as recorded in v3 trailers.
    pub fn date_number(self) -> u32 {
        self.date_dir().parse().unwrap_or(0)
    }

    pub fn to_rfc3339(self) -> String {
        self.to_utc()
            .and_then(|d| d.format(&Rfc3339).ok())
            .unwrap_or_else(|| format!("@{}us", self.0))
    }

    /// RFC 7231 date for HTTP headers (`Last-Modified`).
    pub fn unix_seconds(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        let t = Timestamp::parse_rfc3339("2024-05-17T10:00:00.123456789Z").unwrap();
        assert_eq!(t.micros() % 1_000_000, 123_456);
        assert_eq!(t.date_dir(), "20240517");
        assert_eq!(t.date_number(), 20240517);
        let u = Timestamp::parse_rfc3339(&t.to_rfc3339()).unwrap();
        assert_eq!(t, u);
        assert!(Timestamp::parse_rfc3339("2024-05-17T10:00:00").is_err());
        assert!(Timestamp::parse_rfc3339("1715940000").is_err());
    }

    #[test]
    fn before_epoch() {
        let t = Timestamp::parse_rfc3339("1969-12-31T23:59:59.5Z").unwrap();
        assert_eq!(t.date_dir(), "19691231");
        assert_eq!(t.unix_seconds(), -1);
        let t = Timestamp::parse_rfc3339("1969-12-31T23:59:59.9999999Z").unwrap();
        assert_eq!(t.micros(), -1);
        assert_eq!(t.date_dir(), "19691231");
    }
}
