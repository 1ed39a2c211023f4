//! Which listed keys are shards, which are strays, and what a shard's key
//! promises about its contents.

use des_format::routing::{self, MAX_N_BITS};
use des_storage::Layout;
use des_storage::store::SHARD_EXT;

use super::report::{Finding, FindingKind};

/// The (date, shard) a key names, under a given n_bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardPlace {
    /// `YYYYMMDD` as a number, as in v3 trailers.
    pub date: u32,
    pub shard_index: u32,
    pub n_bits: u8,
}

/// One shard object to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardTarget {
    pub key: String,
    /// `None` for a lone shard file whose key promises nothing: it is then
    /// checked only against itself.
    pub place: Option<ShardPlace>,
}

/// How a listed key is treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    Shard(ShardTarget),
    Stray(Finding),
    /// Not where shards live (store settings, big files, unrelated files).
    Ignored,
}

fn parse_date(s: &str) -> Option<u32> {
    (s.len() == 8)
        .then(|| des_storage::tombstones::parse_date(s).ok())
        .flatten()
}

/// Only the canonical spelling (uppercase, padded as the router pads) names a
/// shard: any other spelling is a key no reader would ever ask for.
fn parse_hex(s: &str, n_bits: u8) -> Option<u32> {
    if s.is_empty() || s.len() > usize::from(MAX_N_BITS / 4) {
        return None;
    }
    let index = u32::from_str_radix(s, 16).ok()?;
    (index >> n_bits == 0 && routing::shard_hex(index, n_bits) == s).then_some(index)
}

/// The place a key names, if it is a canonical shard key of the layout.
pub fn place_of(layout: Layout, key: &str, n_bits: u8) -> Option<ShardPlace> {
    let stem = key.strip_suffix(SHARD_EXT)?;
    let (date, hex) = match layout {
        // `YYYYMMDD/HEX.des`
        Layout::V3 => {
            let (date, hex) = stem.split_once('/')?;
            (date, hex)
        }
        // `YYYYMMDD_HEX_NNNN.des`, flat.
        Layout::Legacy => {
            let mut parts = stem.splitn(3, '_');
            let (date, hex, part) = (parts.next()?, parts.next()?, parts.next()?);
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (date, hex)
        }
    };
    if hex.contains('/') || date.contains('/') {
        return None;
    }
    Some(ShardPlace {
        date: parse_date(date)?,
        shard_index: parse_hex(hex, n_bits)?,
        n_bits,
    })
}

/// Classifies one listed key. Keys starting with `_` are the store's own
/// (`_des/`, `_big/`, `_bigFiles/`) and never strays.
pub fn classify(layout: Layout, key: &str, n_bits: u8) -> Listed {
    if key.starts_with('_') {
        return Listed::Ignored;
    }
    if let Some(place) = place_of(layout, key, n_bits) {
        return Listed::Shard(ShardTarget {
            key: key.to_string(),
            place: Some(place),
        });
    }
    let expected = match layout {
        Layout::V3 => "YYYYMMDD/HEX.des",
        Layout::Legacy => "YYYYMMDD_HEX_NNNN.des",
    };
    let first = key.split('/').next().unwrap_or(key);
    let reason = if key.ends_with(SHARD_EXT) {
        format!("not a shard key of this store (expected {expected} with n_bits {n_bits})")
    } else if layout == Layout::V3 && key.contains('/') && parse_date(first).is_some() {
        "not a shard object, but inside a date directory".to_string()
    } else {
        return Listed::Ignored;
    };
    Listed::Stray(Finding {
        key: key.to_string(),
        uid: None,
        kind: FindingKind::Stray,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(layout: Layout, key: &str, n: u8) -> Option<ShardPlace> {
        match classify(layout, key, n) {
            Listed::Shard(t) => t.place,
            _ => None,
        }
    }

    fn stray(layout: Layout, key: &str, n: u8) -> bool {
        matches!(classify(layout, key, n), Listed::Stray(_))
    }

    #[test]
    fn v3_keys() {
        let p = shard(Layout::V3, "20240517/3F.des", 8).unwrap();
        assert_eq!((p.date, p.shard_index, p.n_bits), (20240517, 0x3F, 8));
        assert_eq!(
            shard(Layout::V3, "20240517/B5C.des", 12)
                .unwrap()
                .shard_index,
            0xB5C
        );
        for bad in [
            "20240517/3f.des",
            "20240517/03F.des",
            "20240517/3F.DES",
            "20241317/3F.des",
            "2024051/3F.des",
            "20240517/x/3F.des",
            "x/3F.des",
            "3F.des",
        ] {
            assert!(stray(Layout::V3, bad, 8), "{bad}");
        }
        assert!(stray(Layout::V3, "20240517/notes.txt", 8));
        assert!(stray(Layout::V3, "20240517/100.des", 8));
        for ignored in ["_des/store.json", "_big/abcd", "README", "docs/a.txt"] {
            assert_eq!(
                classify(Layout::V3, ignored, 8),
                Listed::Ignored,
                "{ignored}"
            );
        }
    }

    #[test]
    fn legacy_keys() {
        let p = shard(Layout::Legacy, "20250301_A_0000.des", 4).unwrap();
        assert_eq!((p.date, p.shard_index), (20250301, 0xA));
        assert!(shard(Layout::Legacy, "20250301_A_12.des", 4).is_some());
        for bad in [
            "20250301_AB_0000.des",
            "20250301_A.des",
            "20250301_A_x.des",
            "sub/20250301_A_0000.des",
            "20240517_NONE_0000.des",
        ] {
            assert!(stray(Layout::Legacy, bad, 4), "{bad}");
        }
        assert_eq!(classify(Layout::Legacy, "_bigFiles/ab", 4), Listed::Ignored);
        assert_eq!(classify(Layout::Legacy, "notes.txt", 4), Listed::Ignored);
    }
}
