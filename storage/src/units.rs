//! The one grammar for sizes and durations, on every command line, in every
//! environment variable and configuration file of every DES binary.
//!
//! - Sizes: `1048576`, `512K`, `64MiB`, `10G`, `2TB`: binary multiples
//!   (K = 1024), case-insensitive, `B`, `iB` or nothing after the letter; a
//!   bare number is bytes.
//! - Durations: `250ms`, `90s`, `15m`, `24h`, `7d`; a bare number is
//!   seconds (so options named `…-secs` keep their meaning).

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// What `--help` says once, after the options.
pub const GRAMMAR: &str = "Sizes: 512K, 64MiB, 10G, 2T (binary multiples; a bare number is bytes). \
     Durations: 250ms, 90s, 15m, 24h, 7d (a bare number is seconds).";

/// `--help`'s text after the options: the grammar, then `rest` (exit codes).
pub fn after_help(rest: &str) -> String {
    format!("{GRAMMAR}\n\n{rest}")
}

const SIZE_HINT: &str = "expected a size like 1048576, 512K, 64MiB, 10G or 2T";
const DURATION_HINT: &str = "expected a duration like 250ms, 90s, 15m, 24h or 7d";

fn split(s: &str) -> (&str, &str) {
    let t = s.trim();
    let at = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(at);
    (num, unit.trim())
}

/// Parses a size (see the module docs) into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, unit) = split(s);
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: {SIZE_HINT}"))?;
    let unit = unit.to_ascii_uppercase();
    let letter = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let shift = match letter {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?}: {SIZE_HINT}")),
    };
    // "1iB" is not a size.
    if letter.is_empty() && unit.len() > 1 {
        return Err(format!("{s:?}: {SIZE_HINT}"));
    }
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// Parses a duration (see the module docs).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = split(s);
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: {DURATION_HINT}"))?;
    let secs = |k: u64| n.checked_mul(k).map(Duration::from_secs);
    let d = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => return Err(format!("{s:?}: {DURATION_HINT}")),
    };
    d.ok_or_else(|| format!("{s:?}: too long"))
}

/// A duration in whole seconds (for settings kept in seconds): sub-second
/// parts round up, so `1500ms` is 2 s, never less than asked.
pub fn parse_secs(s: &str) -> Result<u64, String> {
    let d = parse_duration(s)?;
    Ok(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// A size setting (bytes): from a command line or environment variable in
/// the grammar, or from a configuration file as a number or such text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// A setting kept in whole seconds (the `…_secs` ones): a bare number, or
/// any duration in the grammar (rounded up to a second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secs(pub u64);

/// A duration setting kept to the millisecond: text in the grammar, or a
/// bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(n) => Ok(Self(Duration::from_secs(n))),
            NumberOrText::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_size(s).map(Self)
    }
}

impl FromStr for Secs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_secs(s).map(Self)
    }
}

/// A number, or text in the grammar, as configuration files may hold either.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(n) => Ok(Self(n)),
            NumberOrText::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(n) => Ok(Self(n)),
            NumberOrText::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn sizes() {
        for (s, want) in [
            ("7", 7),
            ("7B", 7),
            ("64k", 64 << 10),
            ("64K", 64 << 10),
            ("64KB", 64 << 10),
            ("64KiB", 64 << 10),
            ("512M", 512 << 20),
            ("512mib", 512 << 20),
            ("10G", 10 << 30),
            ("10 GiB", 10 << 30),
            ("2T", 2 << 40),
            ("2TiB", 2 << 40),
        ] {
            assert_eq!(parse_size(s).unwrap(), want, "{s}");
        }
        for bad in ["", "M", "1X", "1iB", "-1", "1.5G", "1KK", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        for (s, want) in [
            ("0", Duration::ZERO),
            ("90", Duration::from_secs(90)),
            ("90s", Duration::from_secs(90)),
            ("250ms", Duration::from_millis(250)),
            ("15m", Duration::from_secs(900)),
            ("24h", Duration::from_secs(86_400)),
            ("7d", Duration::from_secs(7 * 86_400)),
        ] {
            assert_eq!(parse_duration(s).unwrap(), want, "{s}");
        }
        for bad in ["", "h", "1w", "1H", "-5s", "1.5h", "99999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_secs("1500ms").unwrap(), 2);
        assert_eq!(parse_secs("2m").unwrap(), 120);
    }

    #[test]
    fn settings_take_numbers_or_text() {
        #[derive(Deserialize)]
        struct F {
            size: Option<Size>,
            ttl: Option<Secs>,
        }
        let f: F = toml::from_str("size = \"64MiB\"\nttl = \"1h\"").unwrap();
        assert_eq!((f.size, f.ttl), (Some(Size(64 << 20)), Some(Secs(3600))));
        let f: F = toml::from_str("size = 1024\nttl = 30").unwrap();
        assert_eq!((f.size, f.ttl), (Some(Size(1024)), Some(Secs(30))));
        let f: F = toml::from_str("").unwrap();
        assert_eq!((f.size, f.ttl), (None, None));
        assert!(toml::from_str::<F>("size = \"lots\"").is_err());
        assert_eq!("2G".parse::<Size>().unwrap(), Size(2 << 30));
        assert_eq!("90".parse::<Secs>().unwrap(), Secs(90));
    }
}
