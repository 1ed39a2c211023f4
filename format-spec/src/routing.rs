//! Deterministic routing `(uid, created_at) -> (YYYYMMDD, shard)`, byte-for-byte
//! compatible with the original DES (see SPEC.md §Routing).

use crate::error::{FormatError, Result};
use crate::timestamp::Timestamp;

pub const MIN_N_BITS: u8 = 4;
pub const MAX_N_BITS: u8 = 16;

/// Where a file lives: the day directory and the shard inside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardLocation {
    /// `YYYYMMDD` of `created_at` in UTC.
    pub date_dir: String,
    pub shard_index: u32,
    /// Uppercase hex of `shard_index`, zero-padded to `max(1, n_bits / 4)` digits.
    pub shard_hex: String,
}

pub fn check_n_bits(n_bits: u8) -> Result<()> {
    if (MIN_N_BITS..=MAX_N_BITS).contains(&n_bits) {
        Ok(())
    } else {
        Err(FormatError::InvalidInput(format!(
            "n_bits must be in {MIN_N_BITS}..={MAX_N_BITS}, got {n_bits}"
        )))
    }
}

/// Shard index of a uid. All-digit uids route by their integer value (any
/// length, so this reduces digit by digit: mod 2^n commutes with `*10 + d`);
/// every other uid by CRC-32/ISO-HDLC of its UTF-8 bytes.
pub fn shard_index(uid: &str, n_bits: u8) -> Result<u32> {
    check_n_bits(n_bits)?;
    if uid.is_empty() {
        return Err(FormatError::InvalidInput("uid must not be empty".into()));
    }
    let mask: u32 = (1u32 << n_bits) - 1;
    if uid.bytes().all(|b| b.is_ascii_digit()) {
        let mut r: u32 = 0;
        for b in uid.bytes() {
            r = (r * 10 + u32::from(b - b'0')) & mask;
        }
        Ok(r)
    } else {
        Ok(crc32fast::hash(uid.as_bytes()) & mask)
    }
}

pub fn shard_hex(index: u32, n_bits: u8) -> String {
    let width = usize::from((n_bits / 4).max(1));
    format!("{index:0width$X}")
}

pub fn locate(uid: &str, created_at: &str, n_bits: u8) -> Result<ShardLocation> {
    let ts = Timestamp::parse_rfc3339(created_at)?;
    locate_ts(uid, ts, n_bits)
}

pub fn locate_ts(uid: &str, created_at: Timestamp, n_bits: u8) -> Result<ShardLocation> {
    let shard_index = shard_index(uid, n_bits)?;
    Ok(ShardLocation {
        date_dir: created_at.date_dir(),
        shard_index,
        shard_hex: shard_hex(shard_index, n_bits),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_of(uid: &str, n: u8) -> String {
        let i = shard_index(uid, n).unwrap();
        shard_hex(i, n)
    }

    #[test]
    fn issue_vectors() {
        assert_eq!(shard_index("12345", 8).unwrap(), 57);
        assert_eq!(hex_of("12345", 8), "39");
        assert_eq!(shard_index("abc123", 8).unwrap(), 92);
        assert_eq!(hex_of("abc123", 8), "5C");
        assert_eq!(hex_of("abc123", 12), "B5C");
        assert_eq!(hex_of("abc123", 16), "BB5C");
        assert_eq!(hex_of("abc123", 4), "C");
        assert_eq!(hex_of("100", 8), "64");
        assert_eq!(hex_of("356", 8), "64");
        assert_eq!(hex_of("256", 8), "00");
        assert_eq!(hex_of("00255", 8), "FF");
    }

    #[test]
    fn huge_numeric_uid() {
        // 99999999999999999999 mod 256 = 255; mod 2^16 = 65535 (10^20-1 ≡ -1 mod 2^k for k ≤ 20).
        assert_eq!(shard_index("99999999999999999999", 8).unwrap(), 255);
        assert_eq!(shard_index("99999999999999999999", 16).unwrap(), 0xFFFF);
        let long = "1".repeat(10_000);
        assert!(shard_index(&long, 12).is_ok());
    }

    #[test]
    fn width_is_not_truncating() {
        assert_eq!(shard_hex(0x1F, 5), "1F");
        assert_eq!(shard_hex(0, 7), "0");
        assert_eq!(shard_hex(0x3FF, 10), "3FF");
    }

    #[test]
    fn n_bits_bounds() {
        assert!(shard_index("1", 3).is_err());
        assert!(shard_index("1", 17).is_err());
        assert!(shard_index("", 8).is_err());
    }

    #[test]
    fn date_is_utc() {
        let loc = locate("x", "2024-05-17T23:30:00-02:00", 8).unwrap();
        assert_eq!(loc.date_dir, "20240518");
        assert!(locate("x", "2024-05-17 23:30:00", 8).is_err());
        assert!(locate("x", "2024-05-17", 8).is_err());
    }
}
