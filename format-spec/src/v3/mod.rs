//! Shard format v3: header, data, sorted fixed-width index + string heap, trailer.
//! SPEC.md is normative; every offset here is named after a field there.

mod compact;
mod index;
pub mod paged;
mod trailer;
mod writer;

pub use index::{EntryRef, IndexView, ShardIndex};
pub use paged::{Directory, Page};
pub use trailer::Trailer;
pub use writer::{NewEntry, ShardIdent, ShardSummary, ShardWriter};

pub const HEADER_MAGIC: [u8; 4] = *b"DES3";
/// Version byte of a shard with a flat index (SPEC §5.4–5.5).
pub const FORMAT_VERSION: u8 = 3;
/// Version byte of a shard with a paged index (SPEC §5.10).
pub const PAGED_FORMAT_VERSION: u8 = 4;

/// How a shard's index is laid out; the header and trailer version byte say which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IndexLayout {
    /// One sorted entry table and one heap: a lookup needs the whole index.
    Flat,
    /// Self-contained pages and a directory before the trailer: a lookup
    /// needs the directory and one page, whatever the number of entries.
    #[default]
    Paged,
}

impl IndexLayout {
    pub fn version(self) -> u8 {
        match self {
            Self::Flat => FORMAT_VERSION,
            Self::Paged => PAGED_FORMAT_VERSION,
        }
    }

    pub fn from_version(v: u8) -> Option<Self> {
        match v {
            FORMAT_VERSION => Some(Self::Flat),
            PAGED_FORMAT_VERSION => Some(Self::Paged),
            _ => None,
        }
    }
}
/// magic(4) + version(1) + flags(1) + reserved(2).
pub const HEADER_LEN: u64 = 8;

pub const TRAILER_LEN: usize = 64;
pub const TRAILER_MAGIC: [u8; 8] = *b"DES3TAIL";

pub const ENTRY_LEN: usize = 64;

/// Offsets and lengths are 40-bit fields: 1 TiB per shard and per file.
pub const MAX_U40: u64 = (1 << 40) - 1;

pub const MAX_UID_LEN: usize = 1024;
pub const MAX_CONTENT_TYPE_LEN: usize = 255;
pub const MAX_META_LEN: usize = 1 << 20;

/// Entry flag bits (high nibble of byte 63).
pub const FLAG_EXTERNAL: u8 = 0x1;
pub const KNOWN_FLAGS: u8 = FLAG_EXTERNAL;

/// Entry field offsets inside one 64-byte entry.
pub(crate) mod entry {
    pub const DIGEST: usize = 0;
    pub const CREATED_AT: usize = 32;
    pub const HEAP_OFF: usize = 40;
    pub const CRC32C: usize = 44;
    pub const DATA_OFFSET: usize = 48;
    pub const STORED_LEN: usize = 53;
    pub const ORIG_LEN: usize = 58;
    pub const CODEC_FLAGS: usize = 63;
}

/// Trailer field offsets.
pub(crate) mod trailer_at {
    pub const INDEX_OFFSET: usize = 0;
    pub const INDEX_LEN: usize = 8;
    pub const ENTRY_COUNT: usize = 16;
    pub const INDEX_CRC: usize = 20;
    pub const GENERATION: usize = 24;
    pub const WRITTEN_AT: usize = 32;
    pub const DATE: usize = 40;
    pub const SHARD_INDEX: usize = 44;
    pub const N_BITS: usize = 46;
    pub const DIGEST_ALG: usize = 47;
    pub const VERSION: usize = 48;
    pub const RESERVED: usize = 49;
    pub const TRAILER_CRC: usize = 52;
    pub const MAGIC: usize = 56;
}

/// Key of a big file stored outside its shard.
pub fn external_key(digest: &crate::ContentDigest) -> String {
    format!("_big/{}", hex::encode(digest))
}

/// Key of the chunk table of the big file at `big_key` (SPEC §6.5):
/// `_big/<hex>.chunks`.
pub fn chunk_table_key(big_key: &str) -> String {
    format!("{big_key}{}", crate::chunks::TABLE_SUFFIX)
}
