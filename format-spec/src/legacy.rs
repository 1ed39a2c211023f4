//! Read-only support for shards written by the Python DES (format versions 1
//! and 2). Layout in SPEC.md §Legacy.

use std::ops::Range;

use crate::codec::Codec;
use crate::error::{FormatError, Result, corrupt};
use crate::le::{self, Cursor};

pub const HEADER_MAGIC: [u8; 4] = *b"DES2";
pub const HEADER_LEN: u64 = 8;
pub const FOOTER_MAGIC: [u8; 4] = *b"DESI";
pub const FOOTER_LEN: usize = 12;
/// Big files of a legacy shard live at `<shard dir>/_bigFiles/<sha256 hex>`.
pub const BIG_FILES_DIR: &str = "_bigFiles";

/// True if `tail` ends with a legacy footer.
pub fn has_footer(tail: &[u8]) -> bool {
    tail.len() >= FOOTER_LEN
        && tail.get(tail.len() - FOOTER_LEN..tail.len() - 8) == Some(&FOOTER_MAGIC[..])
}

/// Index byte range from the footer in the last 12 bytes of `tail`.
pub fn parse_footer(tail: &[u8], object_len: u64) -> Result<Range<u64>> {
    if !has_footer(tail) {
        return corrupt("missing legacy footer");
    }
    let size = le::u64_at(tail, tail.len() - 8).unwrap_or(u64::MAX);
    let start = object_len
        .checked_sub(FOOTER_LEN as u64)
        .and_then(|e| e.checked_sub(size))
        .filter(|s| *s >= HEADER_LEN);
    match start {
        Some(s) => Ok(s..s + size),
        None => corrupt(format!(
            "legacy index of {size} bytes does not fit {object_len} bytes"
        )),
    }
}

/// Format version (1 or 2) from the 8-byte legacy header.
pub fn parse_header(head: &[u8]) -> Result<u8> {
    if head.get(..4) != Some(&HEADER_MAGIC[..]) {
        return corrupt("bad legacy header magic");
    }
    match (le::u8_at(head, 4), head.get(5..8)) {
        (Some(v @ (1 | 2)), Some([0, 0, 0])) => Ok(v),
        (Some(v), _) => Err(FormatError::Unsupported(format!(
            "legacy format version {v}"
        ))),
        _ => corrupt("truncated legacy header"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegacyPayload {
    Inline {
        offset: u64,
        len: u64,
    },
    /// Stored raw at `_bigFiles/<sha256>` beside the shard.
    BigFile {
        sha256_hex: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyEntry {
    pub uid: String,
    pub payload: LegacyPayload,
    pub codec: Codec,
    pub orig_len: u64,
    pub meta: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LegacyIndex {
    pub version: u8,
    /// Sorted by uid; on duplicates the later index record wins, as in the
    /// original reader (a dict built in index order).
    entries: Vec<LegacyEntry>,
}

fn short() -> FormatError {
    FormatError::Corrupt("legacy index truncated".into())
}

fn utf8(b: &[u8], what: &str) -> Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| FormatError::Corrupt(format!("{what} is not UTF-8")))
}

fn read_meta(c: &mut Cursor<'_>) -> Result<Option<String>> {
    let len = usize::try_from(c.u32().ok_or_else(short)?).map_err(|_| short())?;
    let raw = utf8(c.take(len).ok_or_else(short)?, "metadata")?;
    Ok(if raw.is_empty() || raw == "{}" || raw == "null" {
        None
    } else {
        Some(raw)
    })
}

fn read_inline(
    c: &mut Cursor<'_>,
    uid: &str,
    data_end: u64,
) -> Result<(LegacyPayload, Codec, u64)> {
    let offset = c.u64().ok_or_else(short)?;
    let len = c.u64().ok_or_else(short)?;
    let codec = match Codec::from_code(c.u8().ok_or_else(short)?)? {
        Codec::ZstdDict => return corrupt(format!("{uid:?}: codec 3 in a legacy shard")),
        codec => codec,
    };
    let compressed = c.u64().ok_or_else(short)?;
    let orig = c.u64().ok_or_else(short)?;
    if compressed != len {
        return corrupt(format!(
            "{uid:?}: length {len} != compressed size {compressed}"
        ));
    }
    if offset < HEADER_LEN || offset.saturating_add(len) > data_end {
        return corrupt(format!(
            "{uid:?} at {offset}+{len} is outside the data region"
        ));
    }
    if codec == Codec::None && orig != len {
        return corrupt(format!("{uid:?}: uncompressed entry with two sizes"));
    }
    Ok((LegacyPayload::Inline { offset, len }, codec, orig))
}

impl LegacyIndex {
    /// Parses an index of a known version; `data_end` is where the index starts.
    pub fn parse(bytes: &[u8], version: u8, data_end: u64) -> Result<Self> {
        let mut c = Cursor::new(bytes);
        let count = c.u32().ok_or_else(short)? as usize;
        // Smallest record is 35 bytes (v1, empty uid): never trust `count` further.
        let mut entries = Vec::with_capacity(count.min(c.remaining() / 35));
        for _ in 0..count {
            entries.push(Self::parse_entry(&mut c, version, data_end)?);
        }
        if c.remaining() != 0 {
            return corrupt(format!("{} stray bytes after legacy index", c.remaining()));
        }
        // Stable sort keeps index order among equal uids; keep the last of each run.
        entries.sort_by(|a, b| a.uid.cmp(&b.uid));
        let mut deduped: Vec<LegacyEntry> = Vec::with_capacity(entries.len());
        for e in entries {
            match deduped.last_mut() {
                Some(last) if last.uid == e.uid => *last = e,
                _ => deduped.push(e),
            }
        }
        Ok(Self {
            version,
            entries: deduped,
        })
    }

    /// When only a suffix was read the header (and so the version) is unknown:
    /// accept the one reading that consumes the index exactly. `None` when both do.
    pub fn parse_guessing_version(bytes: &[u8], data_end: u64) -> Result<Option<Self>> {
        match (
            Self::parse(bytes, 2, data_end),
            Self::parse(bytes, 1, data_end),
        ) {
            (Ok(v2), Err(_)) => Ok(Some(v2)),
            (Err(_), Ok(v1)) => Ok(Some(v1)),
            (Ok(_), Ok(_)) => Ok(None),
            (Err(e), Err(_)) => Err(e),
        }
    }

    fn parse_entry(c: &mut Cursor<'_>, version: u8, data_end: u64) -> Result<LegacyEntry> {
        let name_len = usize::from(c.u16().ok_or_else(short)?);
        let uid = utf8(c.take(name_len).ok_or_else(short)?, "uid")?;
        if uid.is_empty() {
            return corrupt("empty uid in legacy index");
        }
        let big = version >= 2 && (c.u8().ok_or_else(short)? & 1) == 1;
        if big {
            let hash_len = usize::from(c.u16().ok_or_else(short)?);
            let sha = utf8(c.take(hash_len).ok_or_else(short)?, "big file hash")?;
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return corrupt(format!("{uid:?}: big file hash {sha:?} is not sha256 hex"));
            }
            let size = c.u64().ok_or_else(short)?;
            let meta = read_meta(c)?;
            let payload = LegacyPayload::BigFile {
                sha256_hex: sha.to_ascii_lowercase(),
            };
            return Ok(LegacyEntry {
                uid,
                payload,
                codec: Codec::None,
                orig_len: size,
                meta,
            });
        }
        let (payload, codec, orig_len) = read_inline(c, &uid, data_end)?;
        let meta = if version >= 2 { read_meta(c)? } else { None };
        Ok(LegacyEntry {
            uid,
            payload,
            codec,
            orig_len,
            meta,
        })
    }

    pub fn find(&self, uid: &str) -> Option<&LegacyEntry> {
        self.entries
            .binary_search_by(|e| e.uid.as_str().cmp(uid))
            .ok()
            .and_then(|i| self.entries.get(i))
    }

    pub fn entries(&self) -> &[LegacyEntry] {
        &self.entries
    }

    pub fn heap_size(&self) -> usize {
        self.entries
            .iter()
            .map(|e| {
                std::mem::size_of::<LegacyEntry>()
                    + e.uid.len()
                    + e.meta.as_ref().map_or(0, |m| m.len())
                    + 64
            })
            .sum::<usize>()
            + std::mem::size_of::<Self>()
    }
}
