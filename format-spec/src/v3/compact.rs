//! The in-memory form of a validated v3 index, which caches hold. Not a
//! storage format: it is rebuilt from the stored bytes on every load, so it may
//! change between versions without touching SPEC.md.
//!
//! It keeps the stored 64-byte entry records, so `EntryRef` reads them as
//! is, and replaces the heap: the stored heap frames every record with 7
//! bytes of lengths, which is more than a tenth of an entry. Here records are
//! contiguous and in entry order, so a record ends where the next begins, and
//! one with neither content type nor metadata is just its uid. The others are
//! marked in bits 5–7 of `codec_flags`, which validated input has clear
//! (SPEC §5.4), and put their extras before the uid:
//!
//! ```text
//! heap:   content types: (u8 len, bytes)*   records: record*
//! record: [varint ct_at if HAS_CONTENT_TYPE] [varint meta_len, meta if HAS_META] uid
//! ```
//!
//! `ct_at` is the heap offset of a content type in the table. Types repeat
//! across a shard, so each is kept once, most frequent first so that the
//! common ones get one-byte references.

use std::collections::HashMap;

use super::{ENTRY_LEN, IndexView, entry as at};
use crate::error::{FormatError, Result};
use crate::le::{self, Cursor, put_varint, varint};

pub(super) const HAS_CONTENT_TYPE: u8 = 0x20;
pub(super) const HAS_META: u8 = 0x40;
/// Bits of `codec_flags` that only the in-memory form uses.
pub(super) const MEMORY_BITS: u8 = 0xE0;
const EXTRAS: u8 = HAS_CONTENT_TYPE | HAS_META;

/// Re-encodes a validated index, given as its pages in uid order (one view
/// for a flat index): the entry table, then the compact heap.
pub(super) fn encode(pages: &[IndexView<'_>]) -> Result<Vec<u8>> {
    let types = content_types(pages);
    let mut heap = Vec::new();
    for (ct, _) in &types {
        heap.push(u8::try_from(ct.len()).map_err(|_| too_large())?);
        heap.extend_from_slice(ct.as_bytes());
    }
    let type_at: HashMap<&str, u32> = types.into_iter().collect();
    let mut placed = Vec::with_capacity(pages.iter().map(IndexView::len).sum());
    for e in pages.iter().flat_map(IndexView::iter) {
        let off = u32::try_from(heap.len()).map_err(|_| too_large())?;
        let mut tag = 0;
        if let Some(at) = e.content_type.and_then(|ct| type_at.get(ct)) {
            tag |= HAS_CONTENT_TYPE;
            put_varint(&mut heap, *at);
        }
        if let Some(meta) = e.meta {
            tag |= HAS_META;
            put_varint(
                &mut heap,
                u32::try_from(meta.len()).map_err(|_| too_large())?,
            );
            heap.extend_from_slice(meta.as_bytes());
        }
        heap.extend_from_slice(e.uid.as_bytes());
        placed.push((e.raw(), off, tag));
    }
    let mut out = Vec::with_capacity(placed.len() * ENTRY_LEN + heap.len());
    for (raw, off, tag) in placed {
        let mut rec = le::bytes::<ENTRY_LEN>(raw, 0).ok_or_else(too_large)?;
        if let Some(dst) = rec.get_mut(at::HEAP_OFF..at::HEAP_OFF + 4) {
            dst.copy_from_slice(&off.to_le_bytes());
        }
        if let Some(flags) = rec.get_mut(at::CODEC_FLAGS) {
            *flags |= tag;
        }
        out.extend_from_slice(&rec);
    }
    out.extend_from_slice(&heap);
    Ok(out)
}

/// Distinct content types, most frequent first, with their heap offsets.
fn content_types<'a>(pages: &[IndexView<'a>]) -> Vec<(&'a str, u32)> {
    let mut counts: HashMap<&'a str, u64> = HashMap::new();
    for ct in pages
        .iter()
        .flat_map(IndexView::iter)
        .filter_map(|e| e.content_type)
    {
        *counts.entry(ct).or_default() += 1;
    }
    let mut types: Vec<(&str, u64)> = counts.into_iter().collect();
    types.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut at = 0u64;
    types
        .into_iter()
        .map(|(ct, _)| {
            // A table this large fails in `encode` on the first record's offset.
            let here = u32::try_from(at).unwrap_or(u32::MAX);
            at += 1 + ct.len() as u64;
            (ct, here)
        })
        .collect()
}

fn too_large() -> FormatError {
    FormatError::Unsupported("index too large to hold in memory".into())
}

/// The uid of the record `heap[start..end]`; the common case reads nothing
/// but the entry table and the uid itself.
pub(super) fn uid(heap: &[u8], start: usize, end: usize, codec_flags: u8) -> Option<&[u8]> {
    if codec_flags & EXTRAS == 0 {
        return heap.get(start..end);
    }
    split(heap, start, end, codec_flags).map(|r| r.2)
}

/// `(uid, content_type, meta)` of the record `heap[start..end]`.
pub(super) fn record(
    heap: &[u8],
    start: usize,
    end: usize,
    codec_flags: u8,
) -> Option<(&str, Option<&str>, Option<&str>)> {
    let (ct_at, meta, uid) = split(heap, start, end, codec_flags)?;
    let ct = match ct_at {
        Some(at) => {
            let len = usize::from(le::u8_at(heap, at)?);
            Some(std::str::from_utf8(heap.get(at + 1..at + 1 + len)?).ok()?)
        }
        None => None,
    };
    let meta = match meta {
        Some(m) => Some(std::str::from_utf8(m).ok()?),
        None => None,
    };
    Some((std::str::from_utf8(uid).ok()?, ct, meta))
}

type Split<'a> = (Option<usize>, Option<&'a [u8]>, &'a [u8]);

fn split(heap: &[u8], start: usize, end: usize, codec_flags: u8) -> Option<Split<'_>> {
    let mut c = Cursor::new(heap.get(start..end)?);
    let ct_at = match codec_flags & HAS_CONTENT_TYPE {
        0 => None,
        _ => Some(varint(&mut c)?),
    };
    let meta = match codec_flags & HAS_META {
        0 => None,
        _ => {
            let len = varint(&mut c)?;
            Some(c.take(len)?)
        }
    };
    let uid = c.take(c.remaining())?;
    Some((ct_at, meta, uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_width() {
        for v in [0, 1, 0x7F, 0x80, 0x3FFF, 0x4000, 1 << 20, u32::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut c = Cursor::new(&buf);
            assert_eq!(varint(&mut c), Some(v as usize), "{v}");
            assert_eq!(c.remaining(), 0);
        }
    }

    #[test]
    fn truncated_varint_is_none_not_a_panic() {
        let mut c = Cursor::new(&[0x80, 0x80]);
        assert_eq!(varint(&mut c), None);
        let mut c = Cursor::new(&[0xFF; 6]);
        assert_eq!(varint(&mut c), None);
    }
}
