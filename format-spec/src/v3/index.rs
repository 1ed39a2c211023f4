use std::cmp::Ordering;

use bytes::Bytes;

use super::{
    ENTRY_LEN, FLAG_EXTERNAL, HEADER_LEN, IndexLayout, KNOWN_FLAGS, Trailer, compact, entry as at,
    paged,
};
use crate::codec::Codec;
use crate::digest::ContentDigest;
use crate::error::{FormatError, Result, corrupt};
use crate::le::{self, Cursor};
use crate::timestamp::Timestamp;

/// A borrowed view of a v3 index: the stored bytes (entries then heap), or the
/// in-memory form a [`ShardIndex`] holds. Lookups binary search the bytes in
/// place; nothing is allocated per entry.
#[derive(Debug, Clone, Copy)]
pub struct IndexView<'a> {
    entries: &'a [u8],
    heap: &'a [u8],
    layout: Layout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// As stored: SPEC.md §5.4–5.5.
    Stored,
    /// See `compact.rs`.
    Compact,
}

/// One entry, decoded lazily from the index bytes.
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    raw: &'a [u8],
    pub uid: &'a str,
    pub content_type: Option<&'a str>,
    /// JSON object text, if any.
    pub meta: Option<&'a str>,
}

impl<'a> EntryRef<'a> {
    pub(super) fn raw(&self) -> &'a [u8] {
        self.raw
    }

    pub fn digest(&self) -> ContentDigest {
        le::bytes::<32>(self.raw, at::DIGEST).unwrap_or([0; 32])
    }
    pub fn created_at(&self) -> Timestamp {
        Timestamp::from_micros(le::i64_at(self.raw, at::CREATED_AT).unwrap_or(0))
    }
    pub fn crc32c(&self) -> u32 {
        le::u32_at(self.raw, at::CRC32C).unwrap_or(0)
    }
    pub fn data_offset(&self) -> u64 {
        le::u40_at(self.raw, at::DATA_OFFSET).unwrap_or(0)
    }
    pub fn stored_len(&self) -> u64 {
        le::u40_at(self.raw, at::STORED_LEN).unwrap_or(0)
    }
    pub fn orig_len(&self) -> u64 {
        le::u40_at(self.raw, at::ORIG_LEN).unwrap_or(0)
    }
    fn codec_flags(&self) -> u8 {
        le::u8_at(self.raw, at::CODEC_FLAGS).unwrap_or(0)
    }
    /// Validated at parse time, so the fallback is unreachable for parsed indexes.
    pub fn codec(&self) -> Codec {
        Codec::from_code(self.codec_flags() & 0x0F).unwrap_or(Codec::None)
    }
    /// Flags as stored. Bits the in-memory form uses are masked out; stored
    /// bytes with them set never get past validation.
    pub fn flags(&self) -> u8 {
        (self.codec_flags() & !compact::MEMORY_BITS) >> 4
    }
    /// Payload lives in its own object (`_big/<digest>`), not in the shard.
    pub fn is_external(&self) -> bool {
        self.flags() & FLAG_EXTERNAL != 0
    }
    /// The entry as writer input, for copying it into a new generation
    /// (append or repack) with its stored bytes unchanged.
    pub fn to_new_entry(&self) -> super::NewEntry {
        super::NewEntry {
            uid: self.uid.to_string(),
            created_at: self.created_at(),
            content_type: self.content_type.map(str::to_string),
            meta: self.meta.map(str::to_string),
            codec: self.codec(),
            orig_len: self.orig_len(),
            digest: self.digest(),
        }
    }
}

fn heap_record(heap: &[u8], off: u32) -> Option<(&str, Option<&str>, Option<&str>)> {
    let mut c = Cursor::new(heap.get(usize::try_from(off).ok()?..)?);
    let uid_len = usize::from(c.u16()?);
    let uid = std::str::from_utf8(c.take(uid_len)?).ok()?;
    let ct_len = usize::from(c.u8()?);
    let ct = std::str::from_utf8(c.take(ct_len)?).ok()?;
    let meta_len = usize::try_from(c.u32()?).ok()?;
    let meta = std::str::from_utf8(c.take(meta_len)?).ok()?;
    Some((uid, non_empty(ct), non_empty(meta)))
}

fn non_empty(s: &str) -> Option<&str> {
    if s.is_empty() { None } else { Some(s) }
}

fn heap_uid(heap: &[u8], off: u32) -> Option<&[u8]> {
    let start = usize::try_from(off).ok()?;
    let len = usize::from(le::u16_at(heap, start)?);
    heap.get(start + 2..start + 2 + len)
}

impl<'a> IndexView<'a> {
    /// Builds a view without validation (for bytes already validated by
    /// [`IndexView::parse`], e.g. from a cache). Accessors stay bounds-checked.
    pub fn trusted(index: &'a [u8], entry_count: u32) -> Self {
        Self::with_layout(index, entry_count, Layout::Stored)
    }

    fn with_layout(index: &'a [u8], entry_count: u32, layout: Layout) -> Self {
        let split = (entry_count as usize)
            .saturating_mul(ENTRY_LEN)
            .min(index.len());
        let (entries, heap) = index.split_at(split);
        Self {
            entries,
            heap,
            layout,
        }
    }

    /// Validates the whole index against its trailer: checksum, sort order,
    /// uniqueness, heap references, codecs, and that every inline payload lies
    /// inside the data region without overlapping another.
    pub fn parse(index: &'a [u8], trailer: &Trailer) -> Result<Self> {
        if index.len() as u64 != trailer.index_len {
            return corrupt(format!(
                "index is {} bytes, trailer says {}",
                index.len(),
                trailer.index_len
            ));
        }
        if crc32c::crc32c(index) != trailer.index_crc32c {
            return corrupt("index checksum mismatch");
        }
        if trailer.layout != IndexLayout::Flat {
            return corrupt("a paged index is not one entry table");
        }
        let view = Self::trusted(index, trailer.entry_count);
        if view.len() != trailer.entry_count as usize {
            return corrupt("entry table truncated");
        }
        view.validate(trailer.data_end())?;
        Ok(view)
    }

    /// The per-entry checks of SPEC §5.9 and the overlap check among this
    /// view's entries; returns the inline payload spans, so a paged index can
    /// check overlap across its pages too.
    pub(super) fn validate(&self, data_end: u64) -> Result<Vec<(u64, u64)>> {
        let mut spans: Vec<(u64, u64)> = Vec::with_capacity(self.len());
        let mut prev: Option<&str> = None;
        for i in 0..self.len() {
            let e = self.entry(i).ok_or_else(|| {
                FormatError::Corrupt(format!("entry {i}: heap record out of range or not UTF-8"))
            })?;
            if prev.is_some_and(|p| p.as_bytes() >= e.uid.as_bytes()) {
                return corrupt(format!(
                    "entry {i} ({:?}) is out of order or duplicated",
                    e.uid
                ));
            }
            prev = Some(e.uid);
            let codec = Codec::from_code(e.codec_flags() & 0x0F)?;
            if codec == Codec::ZstdDict && e.is_external() {
                return corrupt(format!("external entry {:?} names a dictionary", e.uid));
            }
            // Not `flags()`: that hides the bits the in-memory form uses.
            let flags = e.codec_flags() >> 4;
            if flags & !KNOWN_FLAGS != 0 {
                return corrupt(format!("entry {:?} has unknown flags {flags:#x}", e.uid));
            }
            if let Some(m) = e.meta {
                serde_json::from_str::<serde_json::Value>(m).map_err(|_| {
                    FormatError::Corrupt(format!("entry {:?}: metadata is not JSON", e.uid))
                })?;
            }
            if e.is_external() {
                if e.data_offset() != 0 {
                    return corrupt(format!("external entry {:?} has a data offset", e.uid));
                }
                continue;
            }
            let (start, len) = (e.data_offset(), e.stored_len());
            if start < HEADER_LEN || start.saturating_add(len) > data_end {
                return corrupt(format!(
                    "entry {:?} at {start}+{len} is outside the data region",
                    e.uid
                ));
            }
            spans.push((start, len));
        }
        check_overlap(&mut spans)?;
        Ok(spans)
    }

    pub fn len(&self) -> usize {
        self.entries.len() / ENTRY_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn raw(&self, i: usize) -> Option<&'a [u8]> {
        self.entries
            .get(i.checked_mul(ENTRY_LEN)?..(i + 1).checked_mul(ENTRY_LEN)?)
    }

    pub fn entry(&self, i: usize) -> Option<EntryRef<'a>> {
        let raw = self.raw(i)?;
        let (uid, content_type, meta) = match self.layout {
            Layout::Stored => heap_record(self.heap, le::u32_at(raw, at::HEAP_OFF)?)?,
            Layout::Compact => {
                let (start, end, tag) = self.compact_span(i)?;
                compact::record(self.heap, start, end, tag)?
            }
        };
        Some(EntryRef {
            raw,
            uid,
            content_type,
            meta,
        })
    }

    fn stored_uid(&self, i: usize) -> Option<&'a [u8]> {
        heap_uid(self.heap, le::u32_at(self.raw(i)?, at::HEAP_OFF)?)
    }

    fn compact_uid(&self, i: usize) -> Option<&'a [u8]> {
        let (start, end, tag) = self.compact_span(i)?;
        compact::uid(self.heap, start, end, tag)
    }

    /// Where entry `i`'s compact record lies, and its tag. Records are
    /// contiguous, so each ends where the next entry's begins.
    fn compact_span(&self, i: usize) -> Option<(usize, usize, u8)> {
        let here = self.entries.get(i.checked_mul(ENTRY_LEN)?..)?;
        let start = usize::try_from(le::u32_at(here, at::HEAP_OFF)?).ok()?;
        let end = match le::u32_at(here, ENTRY_LEN + at::HEAP_OFF) {
            Some(next) => usize::try_from(next).ok()?,
            None => self.heap.len(),
        };
        Some((start, end, le::u8_at(here, at::CODEC_FLAGS)?))
    }

    /// Binary search by uid bytes directly on the entry table.
    pub fn find(&self, uid: &str) -> Option<EntryRef<'a>> {
        // One loop per layout, so the layout is not re-checked at every probe.
        let found = match self.layout {
            Layout::Stored => search(self.len(), uid, |i| self.stored_uid(i)),
            Layout::Compact => search(self.len(), uid, |i| self.compact_uid(i)),
        };
        self.entry(found?)
    }

    pub fn iter(&self) -> impl Iterator<Item = EntryRef<'a>> + '_ {
        (0..self.len()).filter_map(|i| self.entry(i))
    }
}

/// Inline payloads must not share bytes (zero-length ones at a boundary may touch).
pub(super) fn check_overlap(spans: &mut [(u64, u64)]) -> Result<()> {
    spans.sort_unstable();
    for w in spans.windows(2) {
        if let [(a, alen), (b, _)] = w
            && a + alen > *b
        {
            return corrupt(format!("payloads at {a} and {b} overlap"));
        }
    }
    Ok(())
}

fn search<'a>(len: usize, uid: &str, uid_at: impl Fn(usize) -> Option<&'a [u8]>) -> Option<usize> {
    let (mut lo, mut hi) = (0usize, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match uid_at(mid)?.cmp(uid.as_bytes()) {
            Ordering::Less => lo = mid + 1,
            Ordering::Greater => hi = mid,
            Ordering::Equal => return Some(mid),
        }
    }
    None
}

/// An owned, validated index plus its trailer; this is what caches hold.
/// It does not keep the stored bytes but a denser copy (see `compact.rs`):
/// 64 bytes per entry plus the uid when there is no content type or metadata.
/// Whoever needs the stored bytes (to check or copy them) reads them with
/// [`IndexView::parse`].
#[derive(Debug, Clone)]
pub struct ShardIndex {
    compact: Bytes,
    trailer: Trailer,
}

impl ShardIndex {
    pub fn parse(bytes: Bytes, trailer: Trailer) -> Result<Self> {
        let compact = match trailer.layout {
            IndexLayout::Flat => compact::encode(&[IndexView::parse(&bytes, &trailer)?])?,
            IndexLayout::Paged => compact::encode(&paged::parse_all(&bytes, &trailer)?)?,
        };
        Ok(Self {
            compact: Bytes::from(compact),
            trailer,
        })
    }

    pub fn view(&self) -> IndexView<'_> {
        IndexView::with_layout(&self.compact, self.trailer.entry_count, Layout::Compact)
    }

    pub fn trailer(&self) -> &Trailer {
        &self.trailer
    }

    /// Bytes held, for byte-bounded caches.
    pub fn heap_size(&self) -> usize {
        self.compact.len() + std::mem::size_of::<Self>()
    }
}
