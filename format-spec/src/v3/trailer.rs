use super::{ENTRY_LEN, HEADER_LEN, IndexLayout, TRAILER_LEN, TRAILER_MAGIC, trailer_at as at};
use crate::digest::DigestAlgorithm;
use crate::error::{Result, corrupt};
use crate::le;
use crate::timestamp::Timestamp;

/// The fixed 64-byte record at the end of every v3 shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Absolute offset of the index (entries, then heap).
    pub index_offset: u64,
    pub index_len: u64,
    pub entry_count: u32,
    pub index_crc32c: u32,
    /// Increments each time the (date, shard) object is rewritten.
    pub generation: u64,
    pub written_at: Timestamp,
    /// `YYYYMMDD` as a number; lets a reader notice a shard stored under the wrong key.
    pub date: u32,
    pub shard_index: u16,
    pub n_bits: u8,
    pub digest_alg: DigestAlgorithm,
    /// Told by the version byte: 3 flat (SPEC §5.4), 4 paged (§5.10).
    pub layout: IndexLayout,
}

impl Trailer {
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut b = [0u8; TRAILER_LEN];
        let mut put = |at: usize, bytes: &[u8]| {
            if let Some(dst) = b.get_mut(at..at + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        };
        put(at::INDEX_OFFSET, &self.index_offset.to_le_bytes());
        put(at::INDEX_LEN, &self.index_len.to_le_bytes());
        put(at::ENTRY_COUNT, &self.entry_count.to_le_bytes());
        put(at::INDEX_CRC, &self.index_crc32c.to_le_bytes());
        put(at::GENERATION, &self.generation.to_le_bytes());
        put(at::WRITTEN_AT, &self.written_at.micros().to_le_bytes());
        put(at::DATE, &self.date.to_le_bytes());
        put(at::SHARD_INDEX, &self.shard_index.to_le_bytes());
        put(at::N_BITS, &[self.n_bits]);
        put(at::DIGEST_ALG, &[self.digest_alg.code()]);
        put(at::VERSION, &[self.layout.version()]);
        put(at::MAGIC, &TRAILER_MAGIC);
        let crc = crc32c::crc32c(b.get(..at::TRAILER_CRC).unwrap_or_default());
        if let Some(dst) = b.get_mut(at::TRAILER_CRC..at::TRAILER_CRC + 4) {
            dst.copy_from_slice(&crc.to_le_bytes());
        }
        b
    }

    /// True if `tail` ends with the v3 trailer magic.
    pub fn has_magic(tail: &[u8]) -> bool {
        tail.len() >= TRAILER_LEN && tail.ends_with(&TRAILER_MAGIC)
    }

    /// Parses the last [`TRAILER_LEN`] bytes of `tail`, a suffix of an object of
    /// `object_len` bytes, and checks that the trailer describes that object.
    pub fn parse(tail: &[u8], object_len: u64) -> Result<Self> {
        let Some(b) = tail
            .len()
            .checked_sub(TRAILER_LEN)
            .and_then(|s| tail.get(s..))
        else {
            return corrupt(format!(
                "object of {} bytes is too short for a v3 trailer",
                tail.len()
            ));
        };
        if le::bytes::<8>(b, at::MAGIC) != Some(TRAILER_MAGIC) {
            return corrupt("bad trailer magic");
        }
        let stored_crc = le::u32_at(b, at::TRAILER_CRC);
        let crc = crc32c::crc32c(b.get(..at::TRAILER_CRC).unwrap_or_default());
        if stored_crc != Some(crc) {
            return corrupt("trailer checksum mismatch");
        }
        let field = |v: Option<u64>| v.ok_or_else(|| crate::FormatError::Corrupt("trailer".into()));
        let version = le::u8_at(b, at::VERSION).unwrap_or(0);
        let Some(layout) = IndexLayout::from_version(version) else {
            return corrupt(format!("trailer says format version {version}"));
        };
        if le::bytes::<3>(b, at::RESERVED) != Some([0; 3]) {
            return corrupt("trailer reserved bytes are not zero");
        }
        let t = Self {
            index_offset: field(le::u64_at(b, at::INDEX_OFFSET))?,
            index_len: field(le::u64_at(b, at::INDEX_LEN))?,
            entry_count: le::u32_at(b, at::ENTRY_COUNT).unwrap_or(0),
            index_crc32c: le::u32_at(b, at::INDEX_CRC).unwrap_or(0),
            generation: field(le::u64_at(b, at::GENERATION))?,
            written_at: Timestamp::from_micros(le::i64_at(b, at::WRITTEN_AT).unwrap_or(0)),
            date: le::u32_at(b, at::DATE).unwrap_or(0),
            shard_index: le::u16_at(b, at::SHARD_INDEX).unwrap_or(0),
            n_bits: le::u8_at(b, at::N_BITS).unwrap_or(0),
            digest_alg: DigestAlgorithm::from_code(le::u8_at(b, at::DIGEST_ALG).unwrap_or(0))
                .map_err(|e| crate::FormatError::Corrupt(e.to_string()))?,
            layout,
        };
        t.check_geometry(object_len)?;
        Ok(t)
    }

    fn check_geometry(&self, object_len: u64) -> Result<()> {
        let end = self
            .index_offset
            .checked_add(self.index_len)
            .and_then(|e| e.checked_add(TRAILER_LEN as u64));
        if self.index_offset < HEADER_LEN || end != Some(object_len) {
            return corrupt(format!(
                "index at {}+{} does not fit an object of {object_len} bytes",
                self.index_offset, self.index_len
            ));
        }
        let entries_len = u64::from(self.entry_count) * ENTRY_LEN as u64;
        if entries_len > self.index_len {
            return corrupt(format!(
                "{} entries do not fit an index of {} bytes",
                self.entry_count, self.index_len
            ));
        }
        if !(crate::routing::MIN_N_BITS..=crate::routing::MAX_N_BITS).contains(&self.n_bits)
            || u32::from(self.shard_index) >> self.n_bits != 0
        {
            return corrupt(format!(
                "shard index {} does not fit n_bits {}",
                self.shard_index, self.n_bits
            ));
        }
        Ok(())
    }

    /// Byte range of the index inside the object.
    pub fn index_range(&self) -> std::ops::Range<u64> {
        self.index_offset..self.index_offset + self.index_len
    }

    /// End of the data region (== start of the index).
    pub fn data_end(&self) -> u64 {
        self.index_offset
    }
}
