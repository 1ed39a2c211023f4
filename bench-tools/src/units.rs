//! Sizes and durations in the grammar every DES binary uses
//! (`des_storage::units`), repeated here so the bench tools build without
//! the storage crate and its S3 SDK.
//!
//! - Sizes: `1048576`, `512K`, `64MiB`, `10G`: binary multiples (K = 1024),
//!   case-insensitive, `B`, `iB` or nothing after the letter.
//! - Durations: `250ms`, `90s`, `15m`, `24h`; a bare number is seconds.
//! - Rates: a size per second, `100MB/s` (or just `100MB`).

use std::time::Duration;

pub const GRAMMAR: &str = "Sizes: 512K, 64MiB, 10G (binary multiples; a bare number is bytes); \
     rates are sizes per second (100MB/s = 100 MiB/s). Durations: 250ms, 90s, 15m, 24h (a bare \
     number is seconds).";

fn split(s: &str) -> (&str, &str) {
    let t = s.trim();
    let at = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(at);
    (num, unit.trim())
}

/// Parses a size into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let hint = || format!("{s:?}: expected a size like 1048576, 512K, 64MiB or 10G");
    let (num, unit) = split(s);
    let n: u64 = num.parse().map_err(|_| hint())?;
    let unit = unit.to_ascii_uppercase();
    let letter = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let shift = match letter {
        "" if unit.len() <= 1 => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(hint()),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// Parses a rate (a size per second, `/s` optional) into bytes per second;
/// zero is refused (no rate cap is written by leaving the option out).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let size = t.strip_suffix("/s").unwrap_or(t);
    match parse_size(size)? {
        0 => Err(format!("{s:?}: a rate must be above zero")),
        n => Ok(n),
    }
}

/// Parses a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let hint = || format!("{s:?}: expected a duration like 250ms, 90s, 15m or 24h");
    let (num, unit) = split(s);
    let n: u64 = num.parse().map_err(|_| hint())?;
    let secs = |k: u64| n.checked_mul(k).map(Duration::from_secs);
    let d = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        _ => return Err(hint()),
    };
    d.ok_or_else(|| format!("{s:?}: too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("7"), Ok(7));
        assert!(parse_size("1iB").is_err());
        assert!(parse_size("1X").is_err());
        assert_eq!(parse_rate("100MB/s"), Ok(100 << 20));
        assert_eq!(parse_rate("1k"), Ok(1024));
        assert!(parse_rate("0/s").is_err());
        assert_eq!(parse_duration("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1.5s").is_err());
    }
}
