//! Shard format v3: header, data, sorted fixed-width index + string heap, trailer.
//! SPEC.md is normative; every offset here is named after a field there.

mod compact;
mod index;
mod trailer;
mod writer;

pub use index::{EntryRef, IndexView, ShardIndex};
pub use trailer::Trailer;
pub use writer::{NewEntry, ShardIdent, ShardSummary, ShardWriter};

pub const HEADER_MAGIC: [u8; 4] = *b"DES3";
pub const FORMAT_VERSION: u8 = 3;
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
