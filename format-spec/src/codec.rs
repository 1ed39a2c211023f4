//! Per-entry codecs and the `auto` compression policy.

use std::borrow::Cow;
use std::io::{self, Read, Write};

use crate::error::{FormatError, Result};

/// On-disk codec byte; the same numbering as the legacy format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    None,
    Zstd,
    /// LZ4 frame format (`lz4_flex::frame`), as written by python-lz4's `lz4.frame`.
    Lz4,
    /// A zstd frame compressed with a shared dictionary (`crate::dict`),
    /// named in the frame header. Inline entries only.
    ZstdDict,
}

impl Codec {
    pub const fn code(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Zstd => 1,
            Self::Lz4 => 2,
            Self::ZstdDict => 3,
        }
    }

    pub fn from_code(code: u8) -> Result<Self> {
        match code {
            0 => Ok(Self::None),
            1 => Ok(Self::Zstd),
            2 => Ok(Self::Lz4),
            3 => Ok(Self::ZstdDict),
            other => Err(FormatError::Corrupt(format!("unknown codec {other}"))),
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Zstd => "zstd",
            Self::Lz4 => "lz4",
            Self::ZstdDict => "zstd-dict",
        }
    }
}

pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// What the packer was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// zstd unless the content is already compressed or does not shrink by 10%.
    Auto {
        zstd_level: i32,
    },
    Zstd {
        level: i32,
    },
    Lz4,
    None,
}

impl Default for Compression {
    fn default() -> Self {
        Self::Auto {
            zstd_level: DEFAULT_ZSTD_LEVEL,
        }
    }
}

impl Compression {
    pub fn parse(name: &str, zstd_level: i32) -> Result<Self> {
        match name {
            "auto" => Ok(Self::Auto { zstd_level }),
            "zstd" => Ok(Self::Zstd { level: zstd_level }),
            "lz4" => Ok(Self::Lz4),
            "none" => Ok(Self::None),
            other => Err(FormatError::InvalidInput(format!(
                "compression must be auto|zstd|lz4|none, got {other:?}"
            ))),
        }
    }
}

const COMPRESSED_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "gif", "webp", "avif", "heic", "heif", "gz", "tgz", "zip", "bz2", "xz",
    "zst", "zstd", "lz4", "7z", "rar", "br", "mp4", "m4v", "m4a", "mov", "mkv", "webm", "mp3",
    "ogg", "opus", "flac", "aac", "pdf", "docx", "xlsx", "pptx", "odt", "ods", "jar", "apk",
    "woff", "woff2",
];

fn has_compressed_extension(name: &str) -> bool {
    let Some((_, ext)) = name.rsplit_once('.') else {
        return false;
    };
    COMPRESSED_EXTENSIONS
        .iter()
        .any(|c| c.eq_ignore_ascii_case(ext))
}

fn has_compressed_magic(data: &[u8]) -> bool {
    const MAGICS: &[&[u8]] = &[
        b"\xFF\xD8\xFF",       // jpeg
        b"\x89PNG\r\n\x1A\n",  // png
        b"GIF8",               // gif
        b"\x1F\x8B",           // gzip
        b"PK\x03\x04",         // zip, docx, jar
        b"BZh",                // bzip2
        b"\xFD7zXZ\x00",       // xz
        b"\x28\xB5\x2F\xFD",   // zstd
        b"\x04\x22\x4D\x18",   // lz4 frame
        b"7z\xBC\xAF\x27\x1C", // 7z
        b"Rar!\x1A\x07",       // rar
        b"%PDF",               // pdf (internally deflated)
        b"OggS",               // ogg
        b"fLaC",               // flac
        b"ID3",                // mp3
        b"wOF2",               // woff2
    ];
    if MAGICS.iter().any(|m| data.starts_with(m)) {
        return true;
    }
    // RIFF....WEBP and ISO BMFF (mp4/mov/heic): a 4-byte tag at offset 4 or 8.
    let tag = |at: usize| data.get(at..at + 4);
    (data.starts_with(b"RIFF") && tag(8) == Some(b"WEBP")) || tag(4) == Some(b"ftyp")
}

/// True when compressing is known to be a waste: by the uid's (or content type's)
/// extension or by the leading magic bytes.
pub fn looks_compressed(name: &str, content_type: Option<&str>, head: &[u8]) -> bool {
    if has_compressed_extension(name) || has_compressed_magic(head) {
        return true;
    }
    content_type.is_some_and(|ct| {
        let ct = ct.to_ascii_lowercase();
        ct.starts_with("image/") && !ct.contains("svg") && !ct.contains("bmp")
            || ct.starts_with("video/")
            || ct.starts_with("audio/")
            || ct == "application/pdf"
            || ct == "application/zip"
            || ct == "application/gzip"
            || ct == "application/zstd"
    })
}

/// Encodes one in-memory payload (inline entries are bounded by the big-file
/// threshold, so holding them is bounded by configuration).
pub fn encode<'a>(
    policy: Compression,
    name: &str,
    content_type: Option<&str>,
    data: &'a [u8],
) -> Result<(Codec, Cow<'a, [u8]>)> {
    encode_with(policy, name, content_type, data, None)
}

/// [`encode`], with `dict` in place of plain zstd where the policy says
/// zstd (the `auto` rules apply as they are).
pub fn encode_with<'a>(
    policy: Compression,
    name: &str,
    content_type: Option<&str>,
    data: &'a [u8],
    dict: Option<&crate::dict::EncoderDict>,
) -> Result<(Codec, Cow<'a, [u8]>)> {
    let zstd = |level| match dict {
        Some(d) if data.len() as u64 <= crate::dict::MAX_DICT_PAYLOAD => {
            Ok((Codec::ZstdDict, crate::dict::compress(data, d)?))
        }
        _ => Ok((Codec::Zstd, zstd_compress(data, level)?)),
    };
    match policy {
        Compression::None => Ok((Codec::None, Cow::Borrowed(data))),
        Compression::Zstd { level } => zstd(level).map(|(c, p)| (c, Cow::Owned(p))),
        Compression::Lz4 => Ok((Codec::Lz4, Cow::Owned(lz4_compress(data)?))),
        Compression::Auto { zstd_level } => {
            if data.len() < 64 || looks_compressed(name, content_type, data) {
                return Ok((Codec::None, Cow::Borrowed(data)));
            }
            let (codec, packed) = zstd(zstd_level)?;
            if worth_it(packed.len() as u64, data.len() as u64) {
                Ok((codec, Cow::Owned(packed)))
            } else {
                Ok((Codec::None, Cow::Borrowed(data)))
            }
        }
    }
}

/// The `auto` rule: keep compressed bytes only if at least 10% smaller.
pub fn worth_it(compressed: u64, original: u64) -> bool {
    compressed.saturating_mul(10) <= original.saturating_mul(9)
}

thread_local! {
    /// Creating a zstd compression context (allocation, and a CPUID probe that
    /// a VM traps) cost the packer ~12 % of its CPU time on small files, so
    /// each thread keeps one, with the level it was last set to. The output is
    /// the same as with a fresh context: every call is a complete frame.
    static ZSTD_CCTX: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

fn zstd_compress(data: &[u8], level: i32) -> Result<Vec<u8>> {
    ZSTD_CCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        let (current, cctx) = match slot.as_mut() {
            Some(c) => c,
            None => slot.insert((level, zstd::bulk::Compressor::new(level)?)),
        };
        if *current != level {
            cctx.set_compression_level(level)?;
            *current = level;
        }
        Ok(cctx.compress(data)?)
    })
}

fn lz4_compress(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::with_capacity(data.len() / 2 + 64));
    enc.write_all(data)?;
    enc.finish()
        .map_err(|e| FormatError::Io(io::Error::other(e)))
}

/// Decodes a payload whose original length is known. Output is capped at
/// `orig_len`, so a hostile stream cannot make us allocate more.
///
/// `orig_len` itself is not trusted for allocation: legacy indexes carry no
/// checksum, so a flipped size byte would otherwise reserve up to 16 EiB (or
/// 1 TiB in v3) before a single byte is decoded. The buffer starts small and
/// grows only as real output arrives.
pub fn decode(codec: Codec, stored: &[u8], orig_len: u64) -> Result<Vec<u8>> {
    let cap = usize::try_from(orig_len)
        .map_err(|_| FormatError::Corrupt(format!("original length {orig_len} too large")))?;
    let out = match codec {
        Codec::None => stored.to_vec(),
        Codec::Zstd if cap <= BULK_DECODE_LIMIT => zstd_bulk(stored, cap)?,
        Codec::Zstd => {
            let mut out = Vec::with_capacity(initial_capacity(cap, stored.len()));
            zstd::stream::read::Decoder::with_buffer(stored)
                .map_err(|e| FormatError::Corrupt(format!("zstd: {e}")))?
                .take(orig_len.saturating_add(1))
                .read_to_end(&mut out)
                .map_err(|e| FormatError::Corrupt(format!("zstd: {e}")))?;
            out
        }
        Codec::ZstdDict => {
            return Err(FormatError::Unsupported(
                "a dictionary entry decodes only with its dictionary".into(),
            ));
        }
        Codec::Lz4 => {
            let mut out = Vec::with_capacity(initial_capacity(cap, stored.len()));
            lz4_flex::frame::FrameDecoder::new(stored)
                .take(orig_len.saturating_add(1))
                .read_to_end(&mut out)
                .map_err(|e| FormatError::Corrupt(format!("lz4: {e}")))?;
            out
        }
    };
    if out.len() as u64 != orig_len {
        return Err(FormatError::Corrupt(format!(
            "decoded {} bytes, index says {orig_len}",
            out.len()
        )));
    }
    Ok(out)
}

/// Payloads up to this size are decoded in one call into a buffer of their
/// declared size: small enough that a corrupt length cannot hurt, and it
/// covers every inline entry with the default big-file threshold.
const BULK_DECODE_LIMIT: usize = 16 << 20;

thread_local! {
    /// Creating a zstd context costs more than decoding a 1 KiB payload, so
    /// each thread keeps one.
    static ZSTD_DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn zstd_bulk(stored: &[u8], cap: usize) -> Result<Vec<u8>> {
    let corrupt = |e: std::io::Error| FormatError::Corrupt(format!("zstd: {e}"));
    ZSTD_DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        let dctx = match slot.as_mut() {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new().map_err(corrupt)?),
        };
        // Output beyond `cap` is an error here, not a reallocation.
        dctx.decompress(stored, cap).map_err(corrupt)
    })
}

/// Enough for typical compression ratios in one allocation; larger outputs
/// grow the buffer, bounded by `cap` through `take`.
fn initial_capacity(cap: usize, stored_len: usize) -> usize {
    cap.min(stored_len.saturating_mul(4).saturating_add(1024))
}

/// Streaming decoder for external (big) payloads.
pub fn decoder<'a, R: Read + 'a>(codec: Codec, r: R) -> Result<Box<dyn Read + 'a>> {
    Ok(match codec {
        Codec::None => Box::new(r),
        Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
        Codec::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(r)),
        Codec::ZstdDict => {
            return Err(FormatError::Unsupported(
                "dictionary entries are inline; nothing streams them".into(),
            ));
        }
    })
}

/// Streaming encoder for external (big) payloads; call `finish` to flush the frame.
pub enum StreamEncoder<W: Write> {
    None(W),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Lz4(lz4_flex::frame::FrameEncoder<W>),
}

impl<W: Write> StreamEncoder<W> {
    pub fn new(codec: Codec, level: i32, w: W) -> Result<Self> {
        Ok(match codec {
            Codec::None => Self::None(w),
            Codec::Zstd => Self::Zstd(zstd::stream::write::Encoder::new(w, level)?),
            Codec::Lz4 => Self::Lz4(lz4_flex::frame::FrameEncoder::new(w)),
            Codec::ZstdDict => {
                return Err(FormatError::InvalidInput(
                    "dictionary entries are inline; nothing streams them".into(),
                ));
            }
        })
    }

    pub fn finish(self) -> Result<W> {
        match self {
            Self::None(w) => Ok(w),
            Self::Zstd(e) => Ok(e.finish()?),
            Self::Lz4(e) => e.finish().map_err(|e| FormatError::Io(io::Error::other(e))),
        }
    }
}

impl<W: Write> Write for StreamEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::None(w) => w.write(buf),
            Self::Zstd(e) => e.write(buf),
            Self::Lz4(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::None(w) => w.flush(),
            Self::Zstd(e) => e.flush(),
            Self::Lz4(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_policy() {
        let text = b"hello world, hello world, hello world, hello world, hello world!!".repeat(20);
        let (c, _) = encode(Compression::default(), "a.txt", None, &text).unwrap();
        assert_eq!(c, Codec::Zstd);
        let (c, _) = encode(Compression::default(), "a.jpg", None, &text).unwrap();
        assert_eq!(c, Codec::None);
        let mut png = b"\x89PNG\r\n\x1A\n".to_vec();
        png.extend_from_slice(&text);
        let (c, _) = encode(Compression::default(), "noext", None, &png).unwrap();
        assert_eq!(c, Codec::None);
        // Incompressible bytes stay raw.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let (c, _) = encode(Compression::default(), "n.bin", None, &noise).unwrap();
        assert_eq!(c, Codec::None);
    }

    #[test]
    fn round_trips_and_caps() {
        let data = b"abcabcabcabcabcabcabcabc".repeat(100);
        for policy in [
            Compression::Zstd { level: 3 },
            Compression::Lz4,
            Compression::None,
        ] {
            let (codec, stored) = encode(policy, "x", None, &data).unwrap();
            assert_eq!(decode(codec, &stored, data.len() as u64).unwrap(), data);
            assert!(decode(codec, &stored, data.len() as u64 - 1).is_err());
            assert!(decode(codec, &stored, data.len() as u64 + 1).is_err());
            let mut streamed = Vec::new();
            decoder(codec, &stored[..])
                .unwrap()
                .read_to_end(&mut streamed)
                .unwrap();
            assert_eq!(streamed, data);
        }
    }

    /// The per-thread context must not change a single output byte, whatever
    /// came before (bigger or smaller inputs, other levels).
    #[test]
    fn reused_zstd_context_matches_a_fresh_one() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for len in [100_000usize, 70, 5000, 1 << 20, 300, 64 * 1024, 1000] {
            let line = b"<div class=\"item\">hello, world</div>\n";
            let text = line.repeat(len / line.len() + 1);
            let mut data = text[..len].to_vec();
            for b in data.iter_mut().step_by(7) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = (x >> 56) as u8;
            }
            inputs.push(data);
        }
        for level in [3, 1, 19, 3, -5, 3] {
            for data in &inputs {
                let fresh = zstd::bulk::compress(data, level).unwrap();
                let (codec, stored) = encode(Compression::Zstd { level }, "x", None, data).unwrap();
                assert_eq!(codec, Codec::Zstd);
                assert_eq!(*stored, fresh[..], "level {level}, {} bytes", data.len());
            }
        }
    }

    /// Found by the `shard_parser` fuzz target: a legacy index (no checksum)
    /// claiming a huge uncompressed size used to make zstd reserve it up front,
    /// aborting the process. It must be a plain error.
    #[test]
    fn huge_claimed_length_is_an_error_not_an_allocation() {
        let data = b"abcabcabcabcabcabcabcabc".repeat(100);
        for policy in [Compression::Zstd { level: 3 }, Compression::Lz4] {
            let (codec, stored) = encode(policy, "x", None, &data).unwrap();
            for claimed in [1 << 40, u64::MAX >> 1, u64::MAX] {
                assert!(
                    decode(codec, &stored, claimed).is_err(),
                    "{codec:?} {claimed}"
                );
            }
        }
    }
}
