//! The paged index of format version 4 (SPEC.md §5.10): the entry table and
//! heap of §5.4–5.5 cut into self-contained pages, plus a directory of the
//! pages between the last page and the trailer. A reader that has the
//! directory (it arrives with the suffix read) needs one page per lookup, so a
//! cold lookup costs about the same bytes at 100 entries as at 200,000.

use std::cmp::Ordering;
use std::ops::Range;

use bytes::Bytes;

use super::{ENTRY_LEN, IndexView, TRAILER_LEN, Trailer, entry as at, index};
use crate::digest::DigestAlgorithm;
use crate::error::{FormatError, Result, corrupt};
use crate::le::{self, Cursor, put_varint, varint};
use crate::shard::Located;

/// Pages start at this size; warm lookups read one page.
pub const PAGE_TARGET: usize = 4 << 10;
/// The writer doubles the page size until the directory fits this, so the
/// directory arrives with a 48 KiB suffix read (SPEC §7.1).
pub const DIRECTORY_BUDGET: usize = 40 << 10;
/// Page count (u32) and directory record bytes (u32), just before the trailer.
pub const FOOTER_LEN: usize = 8;

/// Where one page lies and how to check it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PageSpan {
    start: u64,
    len: u32,
    count: u32,
    crc32c: u32,
}

/// A validated page directory: what a reader caches per paged shard.
#[derive(Debug, Clone)]
pub struct Directory {
    trailer: Trailer,
    /// What every key but key 0 (always empty) starts with: uids of one
    /// shard often share a long prefix (a path, a date), kept here once.
    prefix: Vec<u8>,
    /// The rest of each key, back to back; key `k`'s ends at `key_ends[k]`.
    keys: Vec<u8>,
    key_ends: Vec<u32>,
    pages: Vec<PageSpan>,
}

/// The object range holding the directory of a paged shard of `object_len`
/// bytes, from its last `FOOTER_LEN + TRAILER_LEN` bytes (`tail`'s end).
pub fn directory_range(tail: &[u8], trailer: &Trailer, object_len: u64) -> Result<Range<u64>> {
    let footer_at = tail
        .len()
        .checked_sub(TRAILER_LEN + FOOTER_LEN)
        .ok_or_else(|| FormatError::Corrupt("suffix too short for the page directory".into()))?;
    let records = u64::from(le::u32_at(tail, footer_at + 4).unwrap_or(u32::MAX));
    let end = object_len - TRAILER_LEN as u64;
    let start = end
        .checked_sub(records + FOOTER_LEN as u64)
        .filter(|s| *s >= trailer.index_offset);
    match start {
        Some(start) => Ok(start..end),
        None => corrupt(format!(
            "page directory of {records} bytes does not fit the index"
        )),
    }
}

impl Directory {
    /// Validates the directory bytes (records and footer) of a paged shard.
    pub fn parse(dir: &[u8], trailer: &Trailer) -> Result<Self> {
        if crc32c::crc32c(dir) != trailer.index_crc32c {
            return corrupt("page directory checksum mismatch");
        }
        let split = dir
            .len()
            .checked_sub(FOOTER_LEN)
            .ok_or_else(|| FormatError::Corrupt("page directory too short".into()))?;
        let (records, footer) = dir.split_at(split);
        let page_count = le::u32_at(footer, 0).unwrap_or(u32::MAX);
        if le::u32_at(footer, 4).map(|n| n as usize) != Some(records.len()) {
            return corrupt("page directory length mismatch");
        }
        // Each record takes at least 8 bytes, so this bounds the allocation.
        if page_count as usize > records.len() / 8 {
            return corrupt(format!("{page_count} pages in {} bytes", records.len()));
        }
        let mut d = Self {
            trailer: *trailer,
            prefix: Vec::new(),
            keys: Vec::new(),
            key_ends: Vec::with_capacity(page_count as usize),
            pages: Vec::with_capacity(page_count as usize),
        };
        let mut c = Cursor::new(records);
        let mut start = trailer.index_offset;
        let mut entries = 0u64;
        for k in 0..page_count as usize {
            let span = d
                .read_record(&mut c, start)
                .ok_or_else(|| FormatError::Corrupt(format!("page directory record {k}")))?;
            d.check_record(k, &span)?;
            start += u64::from(span.len);
            entries += u64::from(span.count);
            d.pages.push(span);
        }
        let dir_start = trailer.index_offset + trailer.index_len - dir.len() as u64;
        if c.remaining() != 0 || start != dir_start || entries != u64::from(trailer.entry_count) {
            return corrupt("pages do not add up to the index");
        }
        d.strip_common_prefix();
        Ok(d)
    }

    /// Moves the prefix all keys but key 0 share into `prefix`, and drops
    /// spare capacity: this is what a reader keeps per cached shard.
    fn strip_common_prefix(&mut self) {
        let mut common: Option<&[u8]> = None;
        for k in 1..self.pages.len() {
            let key = self.stored_key(k).unwrap_or_default();
            common = Some(match common {
                None => key,
                Some(c) => c.get(..shared_len(c, key)).unwrap_or_default(),
            });
        }
        let prefix = common.unwrap_or_default().to_vec();
        let mut keys = Vec::with_capacity(self.keys.len());
        let mut ends = Vec::with_capacity(self.pages.len());
        for k in 0..self.pages.len() {
            let key = self.stored_key(k).unwrap_or_default();
            keys.extend_from_slice(key.get(prefix.len()..).unwrap_or_default());
            ends.push(u32::try_from(keys.len()).unwrap_or(u32::MAX));
        }
        keys.shrink_to_fit();
        self.pages.shrink_to_fit();
        (self.prefix, self.keys, self.key_ends) = (prefix, keys, ends);
    }

    fn read_record(&mut self, c: &mut Cursor<'_>, start: u64) -> Option<PageSpan> {
        let shared = varint(c)?;
        let suffix_len = varint(c)?;
        let suffix = c.take(suffix_len)?;
        let prev_len = match self.pages.len().checked_sub(1) {
            Some(p) => self.stored_key(p)?.len(),
            None => 0,
        };
        let prev_start = self.keys.len() - prev_len;
        let prefix = self.keys.get(prev_start..prev_start.checked_add(shared)?)?;
        let key: Vec<u8> = [prefix, suffix].concat();
        self.keys.extend_from_slice(&key);
        self.key_ends.push(u32::try_from(self.keys.len()).ok()?);
        Some(PageSpan {
            start,
            count: u32::try_from(varint(c)?).ok()?,
            len: u32::try_from(varint(c)?).ok()?,
            crc32c: c.u32()?,
        })
    }

    /// While parsing (`prefix` still empty): key `k` in full.
    fn check_record(&self, k: usize, span: &PageSpan) -> Result<()> {
        let key = self.stored_key(k).unwrap_or_default();
        let ordered = match k.checked_sub(1).and_then(|p| self.stored_key(p)) {
            None => key.is_empty(),
            Some(prev) => prev < key,
        };
        if !ordered {
            return corrupt(format!("page {k}: separator key out of order"));
        }
        if span.count == 0 || u64::from(span.len) < u64::from(span.count) * ENTRY_LEN as u64 {
            return corrupt(format!(
                "page {k}: {} entries in {} bytes",
                span.count, span.len
            ));
        }
        Ok(())
    }

    /// Key `k` as kept: without `prefix` (but key 0 has none to strip).
    fn stored_key(&self, k: usize) -> Option<&[u8]> {
        let end = *self.key_ends.get(k)? as usize;
        let start = match k.checked_sub(1) {
            Some(p) => *self.key_ends.get(p)? as usize,
            None => 0,
        };
        self.keys.get(start..end)
    }

    pub fn trailer(&self) -> &Trailer {
        &self.trailer
    }

    pub fn page_count(&self) -> usize {
        self.pages.len()
    }

    /// The page that holds `uid` if the shard does: the last one whose key is
    /// not greater than `uid`. `None` for a shard without entries.
    pub fn page_for(&self, uid: &str) -> Option<usize> {
        let last = self.pages.len().checked_sub(1)?;
        let uid = uid.as_bytes();
        // Keys 1.. all start with `prefix`: a uid that does not sorts
        // before all of them or after all of them.
        let Some(rest) = uid.strip_prefix(self.prefix.as_slice()) else {
            return Some(if uid < self.prefix.as_slice() {
                0
            } else {
                last
            });
        };
        // The last key (from 1) not greater than the uid; key 0 ("") otherwise.
        let (mut lo, mut hi) = (1usize, self.pages.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.stored_key(mid)?.cmp(rest) {
                Ordering::Greater => hi = mid,
                Ordering::Less | Ordering::Equal => lo = mid + 1,
            }
        }
        Some(lo - 1)
    }

    /// Key `k` in full (`None` past the last page).
    fn key(&self, k: usize) -> Option<Vec<u8>> {
        let stored = self.stored_key(k)?;
        Some(match k {
            0 => stored.to_vec(),
            _ => [self.prefix.as_slice(), stored].concat(),
        })
    }

    /// Byte range of page `k` in the object.
    pub fn page_range(&self, k: usize) -> Option<Range<u64>> {
        let p = self.pages.get(k)?;
        Some(p.start..p.start + u64::from(p.len))
    }

    /// Bytes held, for byte-bounded caches.
    pub fn heap_size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.prefix.capacity()
            + self.keys.capacity()
            + self.key_ends.capacity() * 4
            + self.pages.capacity() * std::mem::size_of::<PageSpan>()
    }

    /// Validates page `k` (checksum, then every per-entry check of SPEC
    /// §5.9, and that its uids lie between its key and the next one's).
    pub fn page(&self, k: usize, bytes: Bytes) -> Result<Page> {
        self.check_page(k, &bytes)?;
        Ok(Page {
            bytes,
            count: self.pages.get(k).map_or(0, |p| p.count),
            alg: self.trailer.digest_alg,
        })
    }

    /// Returns the page's inline payload spans, for a whole-index overlap check.
    fn check_page(&self, k: usize, bytes: &[u8]) -> Result<Vec<(u64, u64)>> {
        let span = self
            .pages
            .get(k)
            .ok_or_else(|| FormatError::Corrupt(format!("no page {k}")))?;
        if bytes.len() != span.len as usize {
            return corrupt(format!(
                "page {k} is {} bytes, expected {}",
                bytes.len(),
                span.len
            ));
        }
        if crc32c::crc32c(bytes) != span.crc32c {
            return corrupt(format!("page {k} checksum mismatch"));
        }
        let view = IndexView::trusted(bytes, span.count);
        let spans = view.validate(self.trailer.data_end())?;
        let first = view.entry(0).map(|e| e.uid.as_bytes());
        let last = view
            .entry(view.len().saturating_sub(1))
            .map(|e| e.uid.as_bytes());
        let below = first
            .zip(self.key(k))
            .is_none_or(|(f, key)| f < key.as_slice());
        let above = match (last, self.key(k + 1)) {
            (Some(l), Some(next)) => l >= next.as_slice(),
            (l, _) => l.is_none(),
        };
        if below || above {
            return corrupt(format!("page {k} holds uids outside its key range"));
        }
        Ok(spans)
    }

    /// Every page of a whole paged index, validated, in uid order; used to
    /// build the in-memory form and by anything that reads every entry.
    pub(super) fn views<'a>(&self, index: &'a [u8]) -> Result<Vec<IndexView<'a>>> {
        let base = self.trailer.index_offset;
        let mut all_spans = Vec::new();
        let mut views = Vec::with_capacity(self.pages.len());
        for (k, p) in self.pages.iter().enumerate() {
            let from = usize::try_from(p.start - base).unwrap_or(usize::MAX);
            let bytes = from
                .checked_add(p.len as usize)
                .and_then(|to| index.get(from..to))
                .ok_or_else(|| FormatError::Corrupt(format!("page {k} outside the index")))?;
            all_spans.extend(self.check_page(k, bytes)?);
            views.push(IndexView::trusted(bytes, p.count));
        }
        index::check_overlap(&mut all_spans)?;
        Ok(views)
    }
}

/// Validates a whole paged index (pages then directory, `trailer.index_len`
/// bytes) and returns its pages.
pub(super) fn parse_all<'a>(index: &'a [u8], trailer: &Trailer) -> Result<Vec<IndexView<'a>>> {
    if index.len() as u64 != trailer.index_len {
        return corrupt(format!(
            "index is {} bytes, trailer says {}",
            index.len(),
            trailer.index_len
        ));
    }
    let records = index
        .len()
        .checked_sub(FOOTER_LEN)
        .and_then(|at| le::u32_at(index, at + 4))
        .ok_or_else(|| FormatError::Corrupt("index too short for a page directory".into()))?;
    let dir_start = index
        .len()
        .checked_sub(FOOTER_LEN + records as usize)
        .ok_or_else(|| FormatError::Corrupt("page directory larger than the index".into()))?;
    let dir = Directory::parse(index.get(dir_start..).unwrap_or_default(), trailer)?;
    dir.views(index)
}

/// One validated page; what the page cache holds.
#[derive(Debug, Clone)]
pub struct Page {
    bytes: Bytes,
    count: u32,
    alg: DigestAlgorithm,
}

impl Page {
    pub fn find(&self, uid: &str) -> Option<Located> {
        IndexView::trusted(&self.bytes, self.count)
            .find(uid)
            .map(|e| Located::from_v3(&e, self.alg))
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes held, for byte-bounded caches.
    pub fn heap_size(&self) -> usize {
        self.bytes.len() + std::mem::size_of::<Self>()
    }
}

/// Cuts a flat index as the writer lays it out (entry table, then heap
/// records contiguous in entry order) into pages plus a directory. Returns
/// the index bytes and the directory's CRC32C (the trailer's `index_crc32c`).
pub(super) fn paginate(entries: &[u8], heap: &[u8], target: usize) -> Result<(Vec<u8>, u32)> {
    let records = split_records(entries, heap)?;
    let mut target = target;
    loop {
        let cuts = cut_pages(&records, target);
        let pages = page_bounds(&cuts, records.len())
            .map(|(s, e)| page_bytes(records.get(s..e).unwrap_or_default()))
            .collect::<Result<Vec<_>>>()?;
        let dir = directory(&records, &cuts, &pages)?;
        if dir.len() <= DIRECTORY_BUDGET || cuts.len() <= 1 {
            let crc = crc32c::crc32c(&dir);
            let mut out = pages.concat();
            out.extend_from_slice(&dir);
            return Ok((out, crc));
        }
        target *= 2;
    }
}

/// One entry: its 64 bytes (heap offset still flat) and its heap record.
struct Record<'a> {
    entry: &'a [u8],
    heap: &'a [u8],
}

impl Record<'_> {
    fn size(&self) -> usize {
        ENTRY_LEN + self.heap.len()
    }
    fn uid(&self) -> &[u8] {
        let len = usize::from(le::u16_at(self.heap, 0).unwrap_or(0));
        self.heap.get(2..2 + len).unwrap_or_default()
    }
}

fn split_records<'a>(entries: &'a [u8], heap: &'a [u8]) -> Result<Vec<Record<'a>>> {
    let rows: Vec<&[u8]> = entries.chunks_exact(ENTRY_LEN).collect();
    let off = |row: &[u8]| le::u32_at(row, at::HEAP_OFF).map_or(usize::MAX, |o| o as usize);
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            let end = rows.get(i + 1).map_or(heap.len(), |next| off(next));
            let heap = heap.get(off(row)..end).ok_or_else(|| {
                FormatError::InvalidInput("heap records are not in entry order".into())
            })?;
            Ok(Record { entry: row, heap })
        })
        .collect()
}

/// Start index of each page: a page takes entries while it stays within
/// `target` bytes, and always at least one.
fn cut_pages(records: &[Record<'_>], target: usize) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut size = 0usize;
    for (i, r) in records.iter().enumerate() {
        if cuts.is_empty() || size + r.size() > target {
            cuts.push(i);
            size = 0;
        }
        size += r.size();
    }
    cuts
}

fn page_bounds(cuts: &[usize], n: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    cuts.iter()
        .enumerate()
        .map(move |(k, &s)| (s, cuts.get(k + 1).copied().unwrap_or(n)))
}

fn page_bytes(records: &[Record<'_>]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(records.iter().map(Record::size).sum());
    let mut heap_off = 0u32;
    for r in records {
        let mut entry = le::bytes::<ENTRY_LEN>(r.entry, 0).unwrap_or([0; ENTRY_LEN]);
        if let Some(dst) = entry.get_mut(at::HEAP_OFF..at::HEAP_OFF + 4) {
            dst.copy_from_slice(&heap_off.to_le_bytes());
        }
        out.extend_from_slice(&entry);
        heap_off = u32::try_from(r.heap.len())
            .ok()
            .and_then(|n| heap_off.checked_add(n))
            .ok_or_else(|| FormatError::InvalidInput("page heap over 4 GiB".into()))?;
    }
    for r in records {
        out.extend_from_slice(r.heap);
    }
    Ok(out)
}

/// Directory records and footer. Page `k`'s key is the shortest prefix of
/// its first uid that sorts after the previous page's last uid ("" for page
/// 0), stored as (bytes shared with the previous key, the rest).
fn directory(records: &[Record<'_>], cuts: &[usize], pages: &[Vec<u8>]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut prev_key: &[u8] = &[];
    for ((s, e), bytes) in page_bounds(cuts, records.len()).zip(pages) {
        let key = match s.checked_sub(1).and_then(|p| records.get(p)) {
            None => &[][..],
            Some(prev) => separator(prev.uid(), records.get(s).map_or(&[][..], Record::uid)),
        };
        let shared = shared_len(prev_key, key);
        let rest = key.get(shared..).unwrap_or_default();
        put_varint(&mut out, to_u32(shared)?);
        put_varint(&mut out, to_u32(rest.len())?);
        out.extend_from_slice(rest);
        put_varint(&mut out, to_u32(e - s)?);
        put_varint(&mut out, to_u32(bytes.len())?);
        out.extend_from_slice(&crc32c::crc32c(bytes).to_le_bytes());
        prev_key = key;
    }
    let records_len = to_u32(out.len())?;
    out.extend_from_slice(&to_u32(cuts.len())?.to_le_bytes());
    out.extend_from_slice(&records_len.to_le_bytes());
    Ok(out)
}

fn separator<'a>(prev_last: &[u8], first: &'a [u8]) -> &'a [u8] {
    let common = shared_len(prev_last, first);
    first.get(..=common).unwrap_or(first)
}

fn shared_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn to_u32(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| FormatError::InvalidInput("index too large".into()))
}
