//! Sizes and durations in the grammar every DES binary uses
//! (`des_storage::units`), plus rates: a size per second, `100MB/s` (or
//! just `100MB`).

pub use des_storage::units::{GRAMMAR, parse_duration, parse_size};

pub const RATES: &str = "Rates are sizes per second (100MB/s = 100 MiB/s).";

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_sizes_per_second() {
        assert_eq!(parse_rate("100MB/s"), Ok(100 << 20));
        assert_eq!(parse_rate("1k"), Ok(1024));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
