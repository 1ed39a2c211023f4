//! The store's key namespace: every object a v3 store holds, built and
//! strictly parsed in one place, so no tool spells a key by hand and no
//! listing mistakes one kind of object for another.
//!
//! ```text
//! _des/store.json                          settings (StoreKey::Config)
//! <YYYYMMDD>/<HEX>.des                     a shard (ShardKey)
//! _big/<hex digest>                        a big file, content-addressed
//! _big/<hex digest>.chunks                 its chunk table (SPEC §6.5), optional
//! _tombstones/<name>                       a tombstone (storage/src/tombstones)
//! _tombstones_applied/<name>               its applied marker
//! _legal_holds/<name>.json                 a legal hold
//! _des/retention.toml                      the current retention rules (storage/src/retention.rs)
//! _des/retention/<N, 10 digits>.toml       every version of them, immutable
//! _des/retention-applied.json              how far the repacker has applied them
//! _des/repack.lease                        the repacker's lease
//! _des/gc/big/<hex>                        a big file registered for collection
//! _des/big-refs/<hex>/<holder>             a packer's reference in flight to a big file
//! _des/checked/versions.json               the shard versions a repack last checked (older stores:
//!   _des/checked/<YYYYMMDD>/<HEX>/<tag>, one empty object per shard, folded into it)
//! _des/journal/<YYYYMMDD>/<HEX>.json       a repack's intent to drop entries
//! _des/.probe-<tag>                        a conditional-write probe
//! ```

use std::fmt;

use des_format::routing;

use crate::tombstones::{APPLIED_PREFIX, LOG_PREFIX};

pub const CONFIG_KEY: &str = "_des/store.json";
pub const SHARD_EXT: &str = ".des";
pub const BIG_PREFIX: &str = "_big/";
/// Shared zstd dictionaries (SPEC §6.7), written once, never deleted.
pub const DICTS_PREFIX: &str = "_dicts/";
/// `_big/<hex>` + this is the big file's chunk table.
pub const CHUNKS_SUFFIX: &str = des_format::chunks::TABLE_SUFFIX;
pub const HOLDS_PREFIX: &str = "_legal_holds/";
pub const LEASE_KEY: &str = "_des/repack.lease";
pub const GC_PREFIX: &str = "_des/gc/big/";
pub const BIG_REFS_PREFIX: &str = "_des/big-refs/";
pub const CHECKED_PREFIX: &str = "_des/checked/";
pub const JOURNAL_PREFIX: &str = "_des/journal/";
pub const PROBE_PREFIX: &str = "_des/.probe-";
pub const RETENTION_KEY: &str = "_des/retention.toml";
pub const RETENTION_HISTORY_PREFIX: &str = "_des/retention/";
pub const RETENTION_APPLIED_KEY: &str = "_des/retention-applied.json";
const TOML: &str = ".toml";
const JSON: &str = ".json";

/// A (date, shard) object's key: `<YYYYMMDD>/<HEX>.des`, HEX uppercase and
/// padded as the router pads it for the store's `n_bits`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardKey {
    pub date: u32,
    pub index: u32,
    hex: String,
}

impl ShardKey {
    pub fn new(date: u32, index: u32, n_bits: u8) -> Self {
        Self {
            date,
            index,
            hex: routing::shard_hex(index, n_bits),
        }
    }

    /// The key of a routed location.
    pub fn at(loc: &routing::ShardLocation) -> Self {
        Self {
            date: loc.date_dir.parse().unwrap_or(0),
            index: loc.shard_index,
            hex: loc.shard_hex.clone(),
        }
    }

    /// The shard holding `(uid, date)` in a store of `n_bits`.
    pub fn of(uid: &str, date: u32, n_bits: u8) -> Option<Self> {
        let index = routing::shard_index(uid, n_bits).ok()?;
        Some(Self::new(date, index, n_bits))
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Parses the canonical spelling only; `n_bits`, when known, must match
    /// the padding and range of the index.
    pub fn parse(key: &str, n_bits: Option<u8>) -> Option<Self> {
        let (date, hex) = key.strip_suffix(SHARD_EXT)?.split_once('/')?;
        Self::from_parts(date, hex, n_bits)
    }

    fn from_parts(date: &str, hex: &str, n_bits: Option<u8>) -> Option<Self> {
        let date = parse_date(date)?;
        if hex.is_empty() || hex.len() > 4 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        if hex.bytes().any(|b| b.is_ascii_lowercase()) {
            return None;
        }
        let index = u32::from_str_radix(hex, 16).ok()?;
        if let Some(n) = n_bits
            && (index >> n != 0 || routing::shard_hex(index, n) != hex)
        {
            return None;
        }
        Some(Self {
            date,
            index,
            hex: hex.to_string(),
        })
    }

    /// `<YYYYMMDD>/<HEX>`: the shard's name inside the per-shard prefixes.
    fn stem(&self) -> String {
        format!("{:08}/{}", self.date, self.hex)
    }
}

impl fmt::Display for ShardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08}/{}{SHARD_EXT}", self.date, self.hex)
    }
}

/// Every kind of object in a v3 store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKey {
    Config,
    Shard(ShardKey),
    Big {
        hex: String,
    },
    /// The chunk table of `Big { hex }`: a sidecar, never a big file itself.
    BigChunks {
        hex: String,
    },
    Tombstone {
        name: String,
    },
    Applied {
        name: String,
    },
    Hold {
        name: String,
    },
    Lease,
    GcCandidate {
        hex: String,
    },
    BigRef {
        hex: String,
        holder: String,
    },
    Checked {
        shard: ShardKey,
        tag: String,
    },
    Journal {
        shard: ShardKey,
    },
    Probe {
        tag: String,
    },
    /// The current retention rules.
    Retention,
    /// Version `version` of the retention rules, as it was set.
    RetentionHistory {
        version: u64,
    },
    /// The repacker's record of the rules it applied, and up to which day.
    RetentionApplied,
}

impl StoreKey {
    /// Parses any key of a v3 store; `None` for keys DES does not write
    /// (another application's objects in a shared bucket, temp files).
    pub fn parse(key: &str) -> Option<Self> {
        let seg = |s: &str| !s.is_empty() && !s.contains('/');
        let hexname = |s: &str| {
            (seg(s)
                && s.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
            .then(|| s.to_string())
        };
        if key == CONFIG_KEY {
            return Some(Self::Config);
        }
        if key == LEASE_KEY {
            return Some(Self::Lease);
        }
        if key == RETENTION_KEY {
            return Some(Self::Retention);
        }
        if key == RETENTION_APPLIED_KEY {
            return Some(Self::RetentionApplied);
        }
        if let Some(name) = key.strip_prefix(RETENTION_HISTORY_PREFIX) {
            // Exactly the 10 digits the writer spells, so one version has one key.
            let digits = name.strip_suffix(TOML)?;
            if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let version = digits.parse().ok().filter(|v| *v > 0)?;
            return Some(Self::RetentionHistory { version });
        }
        if let Some(name) = key.strip_prefix(BIG_PREFIX) {
            if let Some(hex) = name.strip_suffix(CHUNKS_SUFFIX) {
                return hexname(hex).map(|hex| Self::BigChunks { hex });
            }
            return hexname(name).map(|hex| Self::Big { hex });
        }
        if let Some(hex) = key.strip_prefix(GC_PREFIX) {
            return hexname(hex).map(|hex| Self::GcCandidate { hex });
        }
        if let Some(rest) = key.strip_prefix(BIG_REFS_PREFIX) {
            let (hex, holder) = rest.split_once('/')?;
            let hex = hexname(hex)?;
            return seg(holder).then(|| Self::BigRef {
                hex,
                holder: holder.to_string(),
            });
        }
        if let Some(rest) = key.strip_prefix(CHECKED_PREFIX) {
            let mut parts = rest.split('/');
            let (date, hex, tag) = (parts.next()?, parts.next()?, parts.next()?);
            let shard = ShardKey::from_parts(date, hex, None)?;
            return (parts.next().is_none() && seg(tag)).then(|| Self::Checked {
                shard,
                tag: tag.to_string(),
            });
        }
        if let Some(rest) = key.strip_prefix(JOURNAL_PREFIX) {
            let (date, hex) = rest.strip_suffix(JSON)?.split_once('/')?;
            let shard = ShardKey::from_parts(date, hex, None)?;
            return Some(Self::Journal { shard });
        }
        if let Some(tag) = key.strip_prefix(PROBE_PREFIX) {
            return seg(tag).then(|| Self::Probe {
                tag: tag.to_string(),
            });
        }
        if let Some(name) = key.strip_prefix(LOG_PREFIX) {
            let logged = crate::tombstones::parse_name(name).is_some()
                || crate::tombstones::parse_bundle_name(name).is_some();
            return logged.then(|| Self::Tombstone {
                name: name.to_string(),
            });
        }
        if let Some(name) = key.strip_prefix(APPLIED_PREFIX) {
            return crate::tombstones::parse_name(name).map(|_| Self::Applied {
                name: name.to_string(),
            });
        }
        if let Some(name) = key.strip_prefix(HOLDS_PREFIX) {
            let name = name.strip_suffix(JSON)?;
            return seg(name).then(|| Self::Hold {
                name: name.to_string(),
            });
        }
        ShardKey::parse(key, None).map(Self::Shard)
    }

    /// The prefix listing every `BigRef` of one big file.
    pub fn big_refs_prefix(hex: &str) -> String {
        format!("{BIG_REFS_PREFIX}{hex}/")
    }

    /// The prefix listing every `Checked` record of one shard.
    pub fn checked_prefix(shard: &ShardKey) -> String {
        format!("{CHECKED_PREFIX}{}/", shard.stem())
    }
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config => f.write_str(CONFIG_KEY),
            Self::Shard(s) => s.fmt(f),
            Self::Big { hex } => write!(f, "{BIG_PREFIX}{hex}"),
            Self::BigChunks { hex } => write!(f, "{BIG_PREFIX}{hex}{CHUNKS_SUFFIX}"),
            Self::Tombstone { name } => write!(f, "{LOG_PREFIX}{name}"),
            Self::Applied { name } => write!(f, "{APPLIED_PREFIX}{name}"),
            Self::Hold { name } => write!(f, "{HOLDS_PREFIX}{name}{JSON}"),
            Self::Lease => f.write_str(LEASE_KEY),
            Self::GcCandidate { hex } => write!(f, "{GC_PREFIX}{hex}"),
            Self::BigRef { hex, holder } => write!(f, "{BIG_REFS_PREFIX}{hex}/{holder}"),
            Self::Checked { shard, tag } => write!(f, "{CHECKED_PREFIX}{}/{tag}", shard.stem()),
            Self::Journal { shard } => write!(f, "{JOURNAL_PREFIX}{}{JSON}", shard.stem()),
            Self::Probe { tag } => write!(f, "{PROBE_PREFIX}{tag}"),
            Self::Retention => f.write_str(RETENTION_KEY),
            Self::RetentionHistory { version } => {
                write!(f, "{RETENTION_HISTORY_PREFIX}{version:010}{TOML}")
            }
            Self::RetentionApplied => f.write_str(RETENTION_APPLIED_KEY),
        }
    }
}

/// A real calendar day, `YYYYMMDD`: the same check tombstone names get.
fn parse_date(s: &str) -> Option<u32> {
    if s.len() != 8 {
        return None;
    }
    crate::tombstones::parse_date(s).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_kind_round_trips() {
        let shard = ShardKey::new(20240517, 0x5C, 8);
        assert_eq!(shard.to_string(), "20240517/5C.des");
        // The one spelling the format crate gives tables.
        assert_eq!(
            StoreKey::BigChunks { hex: "0a1b".into() }.to_string(),
            des_format::v3::chunk_table_key("_big/0a1b")
        );
        let kinds = [
            StoreKey::Config,
            StoreKey::Shard(shard.clone()),
            StoreKey::Big { hex: "0a1b".into() },
            StoreKey::BigChunks { hex: "0a1b".into() },
            StoreKey::Tombstone {
                name: "20240601T080000000000Z-20240517-uabc.json".into(),
            },
            StoreKey::Applied {
                name: "20240601T080000000000Z-20240517-uabc.json".into(),
            },
            StoreKey::Hold {
                name: "case-1".into(),
            },
            StoreKey::Lease,
            StoreKey::GcCandidate { hex: "0a1b".into() },
            StoreKey::BigRef {
                hex: "0a1b".into(),
                holder: "host-1-abc.json".into(),
            },
            StoreKey::Checked {
                shard: shard.clone(),
                tag: "00ff".into(),
            },
            StoreKey::Journal { shard },
            StoreKey::Probe { tag: "12".into() },
            StoreKey::Retention,
            StoreKey::RetentionHistory { version: 7 },
            StoreKey::RetentionApplied,
        ];
        for k in kinds {
            let s = k.to_string();
            crate::object::check_key(&s).unwrap();
            assert_eq!(StoreKey::parse(&s), Some(k), "{s}");
        }
    }

    #[test]
    fn strict() {
        for bad in [
            "20240517/5c.des",
            "20241317/5C.des",
            "20240517/5C.des/x",
            "_big/ABC",
            "_big/a/b",
            "_big/.chunks",
            "_big/ABC.chunks",
            "_big/ab.chunks.chunks",
            "_big/ab.CHUNKS",
            "_big/ab.chunk",
            "_big/ab.chunks/x",
            "_des/gc/big/",
            "_des/checked/20240517/5C",
            "_tombstones/nope.json",
            "backups/db.tar",
            "20240517/.des-tmp-5C.des-0011",
            "_des/retention/7.toml",
            "_des/retention/0000000000.toml",
            "_des/retention/000000000x.toml",
            "_des/retention/0000000007.json",
        ] {
            assert_eq!(StoreKey::parse(bad), None, "{bad}");
        }
        assert_eq!(
            StoreKey::RetentionHistory { version: 7 }.to_string(),
            "_des/retention/0000000007.toml"
        );
        assert_eq!(ShardKey::parse("20240517/05C.des", Some(8)), None);
        assert_eq!(ShardKey::parse("20240517/1FF.des", Some(8)), None);
        assert_eq!(
            ShardKey::parse("20240517/5C.des", Some(8)).map(|k| k.index),
            Some(0x5C)
        );
    }
}
