//! Format-independent view of a shard: detect the layout from a suffix, hold
//! its index, and turn a lookup into "which bytes to fetch and how to check them".

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use crate::codec::{self, Codec};
use crate::dict::DecoderDict;
use crate::digest::{ContentDigest, DigestAlgorithm};
use crate::error::{FormatError, Result, corrupt};
use crate::legacy::{self, LegacyIndex, LegacyPayload};
use crate::timestamp::Timestamp;
use crate::v3::{self, EntryRef, ShardIndex, Trailer};

/// What the end of an object says about its layout.
#[derive(Debug, Clone)]
pub enum Tail {
    V3(Trailer),
    Legacy { index: Range<u64> },
}

impl Tail {
    /// `tail` is the last bytes of an object of `object_len` bytes.
    pub fn parse(tail: &[u8], object_len: u64) -> Result<Self> {
        if Trailer::has_magic(tail) {
            Ok(Self::V3(Trailer::parse(tail, object_len)?))
        } else if legacy::has_footer(tail) {
            Ok(Self::Legacy {
                index: legacy::parse_footer(tail, object_len)?,
            })
        } else {
            corrupt("neither a v3 trailer nor a legacy footer at the end of the object")
        }
    }

    pub fn index_range(&self) -> Range<u64> {
        match self {
            Self::V3(t) => t.index_range(),
            Self::Legacy { index } => index.clone(),
        }
    }
}

/// A parsed index of either layout; cheap to clone (shared bytes).
#[derive(Debug, Clone)]
pub enum AnyIndex {
    V3(ShardIndex),
    Legacy(Arc<LegacyIndex>),
}

/// How to verify an entry's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// CRC32C of the stored bytes and digest of the original bytes.
    V3 {
        crc32c: u32,
        digest: ContentDigest,
        alg: DigestAlgorithm,
    },
    /// Legacy big files are named by the SHA-256 of their bytes.
    Sha256Hex(String),
    /// Legacy inline entries carry no checksum; decoding is the only check.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    InShard {
        offset: u64,
    },
    /// Key relative to the store root (v3: `_big/<hex>`) or to the shard's
    /// directory (legacy: `_bigFiles/<sha256>`).
    External {
        key: String,
        relative_to_shard: bool,
    },
}

/// One file found in an index: where its bytes are and how to check them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub uid: String,
    pub created_at: Option<Timestamp>,
    pub codec: Codec,
    pub stored_len: u64,
    pub orig_len: u64,
    pub source: Source,
    pub check: Check,
    pub content_type: Option<String>,
    pub meta: Option<String>,
}

impl Located {
    pub fn from_v3(e: &EntryRef<'_>, alg: DigestAlgorithm) -> Self {
        let source = if e.is_external() {
            Source::External {
                key: v3::external_key(&e.digest()),
                relative_to_shard: false,
            }
        } else {
            Source::InShard {
                offset: e.data_offset(),
            }
        };
        Self {
            uid: e.uid.to_string(),
            created_at: Some(e.created_at()),
            codec: e.codec(),
            stored_len: e.stored_len(),
            orig_len: e.orig_len(),
            source,
            check: Check::V3 {
                crc32c: e.crc32c(),
                digest: e.digest(),
                alg,
            },
            content_type: e.content_type.map(str::to_string),
            meta: e.meta.map(str::to_string),
        }
    }

    pub fn from_legacy(e: &legacy::LegacyEntry) -> Self {
        let (source, stored_len, check) = match &e.payload {
            LegacyPayload::Inline { offset, len } => {
                (Source::InShard { offset: *offset }, *len, Check::None)
            }
            LegacyPayload::BigFile { sha256_hex } => (
                Source::External {
                    key: format!("{}/{sha256_hex}", legacy::BIG_FILES_DIR),
                    relative_to_shard: true,
                },
                e.orig_len,
                Check::Sha256Hex(sha256_hex.clone()),
            ),
        };
        Self {
            uid: e.uid.clone(),
            created_at: None,
            codec: e.codec,
            stored_len,
            orig_len: e.orig_len,
            source,
            check,
            content_type: None,
            meta: e.meta.clone(),
        }
    }

    /// Byte range inside the shard, for inline entries.
    pub fn shard_range(&self) -> Option<Range<u64>> {
        match self.source {
            Source::InShard { offset } => Some(offset..offset + self.stored_len),
            Source::External { .. } => None,
        }
    }

    /// Checks stored bytes and decodes them; never returns bytes that fail a check.
    pub fn decode(&self, stored: &[u8]) -> Result<Vec<u8>> {
        self.decode_with(stored, None)
    }

    /// [`Self::decode`] with the dictionary a codec-3 entry names (SPEC §6.7);
    /// without it such an entry is an error.
    pub fn decode_with(&self, stored: &[u8], dict: Option<&DecoderDict>) -> Result<Vec<u8>> {
        self.check_stored(stored)?;
        let data = match (self.codec, dict) {
            (Codec::ZstdDict, Some(dict)) => crate::dict::decode(stored, self.orig_len, dict),
            (codec, _) => codec::decode(codec, stored, self.orig_len),
        }
        .map_err(|e| self.corrupt(e.to_string()))?;
        self.check_original(&data)?;
        Ok(data)
    }

    /// [`Self::decode`] for shared buffers: an entry stored raw is checked in
    /// place and handed back without a copy (the common case when serving).
    pub fn decode_bytes(&self, stored: bytes::Bytes) -> Result<bytes::Bytes> {
        self.decode_bytes_with(stored, None)
    }

    /// [`Self::decode_bytes`] with a codec-3 entry's dictionary.
    pub fn decode_bytes_with(
        &self,
        stored: bytes::Bytes,
        dict: Option<&DecoderDict>,
    ) -> Result<bytes::Bytes> {
        if self.codec != Codec::None {
            return self.decode_with(&stored, dict).map(bytes::Bytes::from);
        }
        self.check_stored(&stored)?;
        if stored.len() as u64 != self.orig_len {
            return Err(self.corrupt(format!(
                "raw entry has {} bytes, original length is {}",
                stored.len(),
                self.orig_len
            )));
        }
        self.check_original(&stored)?;
        Ok(stored)
    }

    fn corrupt(&self, detail: String) -> FormatError {
        FormatError::CorruptEntry {
            uid: self.uid.clone(),
            detail,
        }
    }

    /// Steps 1 and 2 of SPEC §5.9 (entry payload): stored length and CRC32C.
    fn check_stored(&self, stored: &[u8]) -> Result<()> {
        if stored.len() as u64 != self.stored_len {
            return Err(self.corrupt(format!(
                "got {} stored bytes, expected {}",
                stored.len(),
                self.stored_len
            )));
        }
        if let Check::V3 { crc32c, .. } = &self.check {
            let got = crc32c::crc32c(stored);
            if got != *crc32c {
                return Err(self.corrupt(format!("crc32c {got:08x} != {crc32c:08x}")));
            }
        }
        Ok(())
    }

    /// Checks decoded bytes against the digest (v3) or name (legacy big file).
    pub fn check_original(&self, data: &[u8]) -> Result<()> {
        let ok = match &self.check {
            Check::V3 { digest, alg, .. } => alg.digest(data) == *digest,
            Check::Sha256Hex(hex) => crate::digest::sha256_hex(data) == *hex,
            Check::None => true,
        };
        if ok {
            Ok(())
        } else {
            Err(FormatError::CorruptEntry {
                uid: self.uid.clone(),
                detail: "content digest mismatch".into(),
            })
        }
    }

    /// Strong HTTP validator: the content digest (v3) or SHA-256 (legacy big).
    pub fn etag(&self) -> Option<String> {
        match &self.check {
            Check::V3 { digest, .. } => {
                // encode_to_slice is table-driven; hex::encode goes char by char.
                let mut buf = [0u8; 64];
                hex::encode_to_slice(digest, &mut buf).ok()?;
                String::from_utf8(buf.to_vec()).ok()
            }
            Check::Sha256Hex(h) => Some(h.clone()),
            Check::None => None,
        }
    }
}

impl AnyIndex {
    /// Parses index bytes described by `tail`. For legacy indexes read without
    /// the header, `legacy_version` may be `None`; the result is then
    /// `Ok(None)` if the version is ambiguous and the header must be read.
    pub fn parse(tail: &Tail, index: Bytes, legacy_version: Option<u8>) -> Result<Option<Self>> {
        match tail {
            Tail::V3(t) => Ok(Some(Self::V3(ShardIndex::parse(index, *t)?))),
            Tail::Legacy { index: range } => {
                let parsed = match legacy_version {
                    Some(v) => Some(LegacyIndex::parse(&index, v, range.start)?),
                    None => LegacyIndex::parse_guessing_version(&index, range.start)?,
                };
                Ok(parsed.map(|l| Self::Legacy(Arc::new(l))))
            }
        }
    }

    pub fn find(&self, uid: &str) -> Option<Located> {
        match self {
            Self::V3(ix) => ix
                .view()
                .find(uid)
                .map(|e| Located::from_v3(&e, ix.trailer().digest_alg)),
            Self::Legacy(ix) => ix.find(uid).map(Located::from_legacy),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::V3(ix) => ix.view().len(),
            Self::Legacy(ix) => ix.entries().len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry, in uid order.
    pub fn located(&self) -> Vec<Located> {
        match self {
            Self::V3(ix) => {
                let alg = ix.trailer().digest_alg;
                ix.view()
                    .iter()
                    .map(|e| Located::from_v3(&e, alg))
                    .collect()
            }
            Self::Legacy(ix) => ix.entries().iter().map(Located::from_legacy).collect(),
        }
    }

    pub fn trailer(&self) -> Option<&Trailer> {
        match self {
            Self::V3(ix) => Some(ix.trailer()),
            Self::Legacy(_) => None,
        }
    }

    pub fn heap_size(&self) -> usize {
        match self {
            Self::V3(ix) => ix.heap_size(),
            Self::Legacy(ix) => ix.heap_size(),
        }
    }
}
