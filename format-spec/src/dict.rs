//! Shared zstd dictionaries (SPEC §6.7): the `_dicts/<id>` object, how its
//! id follows from its bytes, and one payload compressed or decoded with a
//! dictionary.
//!
//! Small files compress badly alone because each starts with an empty
//! window; a dictionary trained on files of the same kind gives every file
//! that history. The entry names no dictionary: codec 3 stores a zstd frame
//! whose header carries the dictionary's id, and the id is derived from the
//! dictionary's bytes, so a dictionary can never be replaced under an id.

use std::cell::RefCell;

use zstd::zstd_safe::{CCtx, CDict, DCtx, DDict};

use crate::digest::{ContentDigest, DIGEST_LEN, DigestAlgorithm};
use crate::error::{FormatError, Result, corrupt};

pub const DICT_MAGIC: &[u8; 8] = b"DESDICT1";
/// magic 8 | id u32 | digest_alg u8 | reserved 3 | digest 32
pub const DICT_HEADER_LEN: usize = 48;
/// A zstd dictionary starts with this magic, then its id (u32 LE).
const ZSTD_DICT_MAGIC: [u8; 4] = 0xEC30_A437_u32.to_le_bytes();
/// Ids below this are reserved by zstd for registered dictionaries.
const MIN_ID: u32 = 32_768;
/// Ids from 2^31 up are reserved by zstd too.
const ID_SPAN: u32 = (1 << 31) - MIN_ID;
/// Largest payload (original bytes) a writer compresses with a dictionary,
/// and so a reader decodes in one call: dictionaries pay on small files.
pub const MAX_DICT_PAYLOAD: u64 = 16 << 20;

/// A dictionary id as written in keys, reports and on command lines: 8
/// lowercase hex digits.
/// A file's content class, which picks its dictionary (a packer trains one
/// per class; `des-repack --recompress-dict auto` takes the class's latest):
/// its name's extension (lowercased, at most 10 bytes), else its content
/// type (lowercased), else the empty class.
pub fn content_class(uid: &str, content_type: Option<&str>) -> String {
    let name = uid.rsplit('/').next().unwrap_or(uid);
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() && ext.len() <= 10 => {
            format!(".{}", ext.to_ascii_lowercase())
        }
        _ => content_type.unwrap_or("").to_ascii_lowercase(),
    }
}

pub fn id_hex(id: u32) -> String {
    format!("{id:08x}")
}

/// Parses an id written by [`id_hex`] (a `0x` prefix and fewer digits are
/// accepted too).
pub fn parse_id(s: &str) -> std::result::Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| format!("{s:?}: expected a dictionary id (hex)"))
}

/// A dictionary as stored: its zstd bytes (with its id in them), that id,
/// and the digest of the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dictionary {
    id: u32,
    alg: DigestAlgorithm,
    digest: ContentDigest,
    bytes: Vec<u8>,
}

/// The id a dictionary's bytes call for: from the digest of the bytes with
/// their id field zeroed, into the range zstd leaves to users.
fn derive_id(alg: DigestAlgorithm, bytes: &[u8]) -> Result<u32> {
    let mut zeroed = bytes.to_vec();
    let field = zeroed
        .get_mut(4..8)
        .ok_or_else(|| FormatError::Corrupt("dictionary shorter than 8 bytes".into()))?;
    field.fill(0);
    let d = alg.digest(&zeroed);
    let v = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
    Ok(MIN_ID + v % ID_SPAN)
}

impl Dictionary {
    /// A freshly trained zstd dictionary, given the id its content calls for.
    pub fn from_trained(mut bytes: Vec<u8>, alg: DigestAlgorithm) -> Result<Self> {
        if bytes.get(..4) != Some(&ZSTD_DICT_MAGIC[..]) {
            return Err(FormatError::InvalidInput(
                "not a zstd dictionary (no dictionary magic)".into(),
            ));
        }
        let id = derive_id(alg, &bytes)?;
        if let Some(field) = bytes.get_mut(4..8) {
            field.copy_from_slice(&id.to_le_bytes());
        }
        let digest = alg.digest(&bytes);
        Ok(Self {
            id,
            alg,
            digest,
            bytes,
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// The zstd dictionary bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The `_dicts/<id>` object.
    pub fn to_object(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(DICT_HEADER_LEN + self.bytes.len());
        out.extend_from_slice(DICT_MAGIC);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.push(self.alg.code());
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(&self.bytes);
        out
    }

    /// Parses and verifies a `_dicts/<id>` object read for `expected_id`
    /// (SPEC §6.7): a damaged or substituted dictionary is corrupt, never used.
    pub fn parse(object: &[u8], expected_id: u32) -> Result<Self> {
        let Some((head, bytes)) = object.split_at_checked(DICT_HEADER_LEN) else {
            return corrupt(format!("dictionary object of {} bytes", object.len()));
        };
        let field = |r: std::ops::Range<usize>| head.get(r).unwrap_or_default();
        if field(0..8) != DICT_MAGIC {
            return corrupt("dictionary object: bad magic");
        }
        let id = u32::from_le_bytes(field(8..12).try_into().unwrap_or_default());
        let alg = DigestAlgorithm::from_code(head.get(12).copied().unwrap_or_default())?;
        if field(13..16) != [0; 3] {
            return corrupt("dictionary object: reserved bytes not zero");
        }
        let digest: ContentDigest = field(16..16 + DIGEST_LEN).try_into().unwrap_or_default();
        if alg.digest(bytes) != digest {
            return corrupt(format!("dictionary {id}: digest mismatch"));
        }
        let own_id = bytes
            .get(4..8)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()));
        if id != expected_id || own_id != Some(id) || derive_id(alg, bytes)? != id {
            return corrupt(format!(
                "dictionary object for id {expected_id} holds dictionary {id} ({own_id:?})"
            ));
        }
        Ok(Self {
            id,
            alg,
            digest,
            bytes: bytes.to_vec(),
        })
    }

    /// Prepared for compressing at `level` (build once per run).
    pub fn encoder(&self, level: i32) -> Result<EncoderDict> {
        let cdict = CDict::try_create(&self.bytes, level).ok_or_else(|| {
            FormatError::InvalidInput(format!("dictionary {}: zstd refused it", self.id))
        })?;
        Ok(EncoderDict { id: self.id, cdict })
    }

    /// Prepared for decoding (build once, keep cached).
    pub fn decoder(&self) -> Result<DecoderDict> {
        let ddict = DDict::try_create(&self.bytes).ok_or_else(|| {
            FormatError::Corrupt(format!("dictionary {}: zstd refused it", self.id))
        })?;
        Ok(DecoderDict {
            id: self.id,
            size: self.bytes.len(),
            ddict,
        })
    }
}

/// A dictionary prepared for compression.
pub struct EncoderDict {
    id: u32,
    cdict: CDict<'static>,
}

impl std::fmt::Debug for EncoderDict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncoderDict({})", self.id)
    }
}

/// A dictionary prepared for decoding.
pub struct DecoderDict {
    id: u32,
    size: usize,
    ddict: DDict<'static>,
}

impl DecoderDict {
    /// Bytes of the dictionary it was prepared from.
    pub fn size(&self) -> usize {
        self.size
    }
}

impl std::fmt::Debug for DecoderDict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DecoderDict({})", self.id)
    }
}

thread_local! {
    // One context per thread, as for plain zstd (see codec.rs): creating
    // one costs more than a small payload's whole compression.
    static CCTX: RefCell<Option<CCtx<'static>>> = const { RefCell::new(None) };
    static DCTX: RefCell<Option<DCtx<'static>>> = const { RefCell::new(None) };
}

fn zstd_error(what: &str, code: usize) -> String {
    format!("zstd {what}: {}", zstd::zstd_safe::get_error_name(code))
}

/// One frame of `data` compressed with `dict`; its header names the dictionary.
pub fn compress(data: &[u8], dict: &EncoderDict) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    CCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        let cctx = slot.get_or_insert_with(CCtx::create);
        cctx.compress_using_cdict(&mut out, data, &dict.cdict)
            .map_err(|c| FormatError::InvalidInput(zstd_error("compress", c)))
    })?;
    Ok(out)
}

/// The dictionary id a stored codec-3 payload names (`None`: it names none,
/// which makes the entry corrupt).
pub fn frame_dict_id(stored: &[u8]) -> Option<u32> {
    zstd::zstd_safe::get_dict_id_from_frame(stored).map(|id| id.get())
}

/// Decodes a codec-3 payload of `orig_len` bytes with `dict`. The output is
/// capped at `orig_len`: more is an error, not an allocation.
pub fn decode(stored: &[u8], orig_len: u64, dict: &DecoderDict) -> Result<Vec<u8>> {
    match frame_dict_id(stored) {
        Some(id) if id == dict.id => {}
        named => {
            return corrupt(format!(
                "payload names dictionary {named:?}, decoding with {}",
                dict.id
            ));
        }
    }
    if orig_len > MAX_DICT_PAYLOAD {
        return corrupt(format!(
            "dictionary payload of {orig_len} bytes (limit {MAX_DICT_PAYLOAD})"
        ));
    }
    let cap = usize::try_from(orig_len).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(cap);
    DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        let dctx = slot.get_or_insert_with(DCtx::create);
        dctx.decompress_using_ddict(&mut out, stored, &dict.ddict)
            .map_err(|c| FormatError::Corrupt(zstd_error("decode", c)))
    })?;
    if out.len() as u64 != orig_len {
        return corrupt(format!(
            "decoded {} bytes, index says {orig_len}",
            out.len()
        ));
    }
    Ok(out)
}

/// Trains a dictionary of at most `max_size` bytes on `samples` (whole
/// files), with the id its content calls for.
pub fn train<S: AsRef<[u8]>>(
    samples: &[S],
    max_size: usize,
    alg: DigestAlgorithm,
) -> Result<Dictionary> {
    let bytes = zstd::dict::from_samples(samples, max_size)
        .map_err(|e| FormatError::InvalidInput(format!("training a dictionary: {e}")))?;
    Dictionary::from_trained(bytes, alg)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn content_classes() {
        assert_eq!(content_class("docs/a/index.HTML", None), ".html");
        assert_eq!(content_class("scan-001", Some("Image/TIFF")), "image/tiff");
        assert_eq!(content_class("dir.d/.hidden", None), "");
        assert_eq!(
            content_class("a.verylongextension", Some("text/x")),
            "text/x"
        );
    }

    fn samples() -> Vec<Vec<u8>> {
        (0..400)
            .map(|i| {
                format!(
                    "<html><head><title>Page {i}</title><link rel=\"stylesheet\" href=\"../static/rustdoc.css\"></head>\
                     <body class=\"rustdoc struct\"><nav class=\"sidebar\">item {i} of the crate</nav>\
                     <main><h1>Struct std::thing::T{i}</h1><p>Number {}</p></main></body></html>",
                    i * 7919 % 1000
                )
                .into_bytes()
            })
            .collect()
    }

    #[test]
    fn round_trip_and_smaller_than_plain_zstd() {
        let s = samples();
        let dict = train(&s, 4096, DigestAlgorithm::Blake3).unwrap();
        assert!(dict.id() >= MIN_ID && dict.id() < 1 << 31);
        let object = dict.to_object();
        let back = Dictionary::parse(&object, dict.id()).unwrap();
        assert_eq!(back, dict);
        let (enc, dec) = (back.encoder(3).unwrap(), back.decoder().unwrap());
        let file = &s[123];
        let packed = compress(file, &enc).unwrap();
        assert_eq!(frame_dict_id(&packed), Some(dict.id()));
        let plain = zstd::bulk::compress(file, 3).unwrap();
        assert!(
            packed.len() * 2 < plain.len(),
            "{} vs {}",
            packed.len(),
            plain.len()
        );
        assert_eq!(decode(&packed, file.len() as u64, &dec).unwrap(), *file);
        // A wrong length is corrupt, not truncated or padded.
        assert!(
            decode(&packed, file.len() as u64 - 1, &dec)
                .unwrap_err()
                .is_corrupt()
        );
    }

    #[test]
    fn a_damaged_or_substituted_dictionary_is_corrupt() {
        let dict = train(&samples(), 4096, DigestAlgorithm::Blake3).unwrap();
        let object = dict.to_object();
        assert!(
            Dictionary::parse(&object, dict.id() ^ 1)
                .unwrap_err()
                .is_corrupt()
        );
        for at in [0, 9, 13, 20, DICT_HEADER_LEN + 5, object.len() - 1] {
            let mut bad = object.clone();
            bad[at] ^= 0x40;
            assert!(Dictionary::parse(&bad, dict.id()).is_err(), "byte {at}");
        }
        assert!(
            Dictionary::parse(&object[..40], dict.id())
                .unwrap_err()
                .is_corrupt()
        );
        // Another dictionary's frame is refused before decoding.
        let other = train(&samples()[..200], 2048, DigestAlgorithm::Sha256).unwrap();
        let packed = compress(b"<html><head><title>Page", &other.encoder(3).unwrap()).unwrap();
        assert!(
            decode(&packed, 23, &dict.decoder().unwrap())
                .unwrap_err()
                .is_corrupt()
        );
    }
}
