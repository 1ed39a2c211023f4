use std::collections::HashSet;
use std::io::{Read, Write};

use super::{
    ENTRY_LEN, FLAG_EXTERNAL, HEADER_LEN, HEADER_MAGIC, IndexLayout, MAX_CONTENT_TYPE_LEN,
    MAX_META_LEN, MAX_U40, MAX_UID_LEN, Trailer, paged,
};
use crate::codec::Codec;
use crate::digest::{ContentDigest, DigestAlgorithm};
use crate::error::{FormatError, Result};
use crate::le;
use crate::timestamp::Timestamp;

/// Which (date, shard) object this is, recorded in the trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardIdent {
    pub date: u32,
    pub shard_index: u16,
    pub n_bits: u8,
    pub generation: u64,
    pub digest_alg: DigestAlgorithm,
    /// Recorded in the trailer; passed in so identical input gives identical bytes.
    pub written_at: Timestamp,
}

/// Everything about an entry except where its bytes end up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    pub uid: String,
    pub created_at: Timestamp,
    pub content_type: Option<String>,
    /// JSON text (an object), stored verbatim.
    pub meta: Option<String>,
    pub codec: Codec,
    pub orig_len: u64,
    /// Digest of the original bytes with the shard's algorithm.
    pub digest: ContentDigest,
}

#[derive(Debug)]
struct Placed {
    e: NewEntry,
    external: bool,
    data_offset: u64,
    stored_len: u64,
    crc32c: u32,
}

#[derive(Debug, Clone)]
pub struct ShardSummary {
    pub trailer: Trailer,
    pub total_len: u64,
    pub entries: u32,
    pub inline_stored_bytes: u64,
    pub orig_bytes: u64,
}

/// Streams a v3 shard into `out`: payloads as they come, index and trailer on
/// `finish`. Memory is one small record per entry; payload bytes are never kept.
pub struct ShardWriter<W: Write> {
    out: W,
    pos: u64,
    ident: ShardIdent,
    layout: IndexLayout,
    page_target: usize,
    placed: Vec<Placed>,
    uids: HashSet<String>,
    /// Set when a write failed half-way; such a shard must never be finished.
    poisoned: bool,
}

fn invalid<T>(msg: String) -> Result<T> {
    Err(FormatError::InvalidInput(msg))
}

fn check_entry(e: &NewEntry) -> Result<()> {
    if e.uid.is_empty() || e.uid.len() > MAX_UID_LEN {
        return invalid(format!("uid must be 1..={MAX_UID_LEN} bytes: {:?}", e.uid));
    }
    if e.content_type
        .as_ref()
        .is_some_and(|c| c.len() > MAX_CONTENT_TYPE_LEN)
    {
        return invalid(format!(
            "content type of {:?} is over {MAX_CONTENT_TYPE_LEN} bytes",
            e.uid
        ));
    }
    if let Some(m) = &e.meta {
        if m.len() > MAX_META_LEN {
            return invalid(format!(
                "metadata of {:?} is over {MAX_META_LEN} bytes",
                e.uid
            ));
        }
        if serde_json::from_str::<serde_json::Value>(m).is_err() {
            return invalid(format!("metadata of {:?} is not valid JSON", e.uid));
        }
    }
    if e.orig_len > MAX_U40 {
        return invalid(format!("{:?} is larger than 1 TiB", e.uid));
    }
    Ok(())
}

impl<W: Write> ShardWriter<W> {
    /// A writer of the default layout: a paged index (format version 4).
    pub fn new(out: W, ident: ShardIdent) -> Result<Self> {
        Self::with_layout(out, ident, IndexLayout::default())
    }

    /// `IndexLayout::Flat` writes format version 3, which readers older than
    /// version 4 can still open.
    pub fn with_layout(mut out: W, ident: ShardIdent, layout: IndexLayout) -> Result<Self> {
        crate::routing::check_n_bits(ident.n_bits)?;
        // Readers reject a trailer whose shard index does not fit n_bits; refuse
        // here rather than publish a shard nobody can open.
        if u32::from(ident.shard_index) >> ident.n_bits != 0 {
            return invalid(format!(
                "shard index {} does not fit n_bits {}",
                ident.shard_index, ident.n_bits
            ));
        }
        let mut header = [0u8; HEADER_LEN as usize];
        header[..4].copy_from_slice(&HEADER_MAGIC);
        header[4] = layout.version();
        out.write_all(&header)?;
        Ok(Self {
            out,
            pos: HEADER_LEN,
            ident,
            layout,
            page_target: paged::PAGE_TARGET,
            placed: Vec::new(),
            uids: HashSet::new(),
            poisoned: false,
        })
    }

    /// Size a page of a paged index starts from (default
    /// [`paged::PAGE_TARGET`]); tests use tiny pages to get many of them.
    pub fn with_page_target(mut self, bytes: usize) -> Self {
        self.page_target = bytes.max(1);
        self
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.uids.contains(uid)
    }

    pub fn len(&self) -> usize {
        self.placed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.placed.is_empty()
    }

    /// Bytes written so far (header + payloads).
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn admit(&mut self, e: &NewEntry, stored_len: u64) -> Result<()> {
        if self.poisoned {
            return invalid("shard writer failed earlier; discard this shard".into());
        }
        check_entry(e)?;
        if stored_len > MAX_U40 || self.pos.saturating_add(stored_len) > MAX_U40 {
            return invalid(format!("shard would exceed 1 TiB at {:?}", e.uid));
        }
        if self.uids.contains(&e.uid) {
            return invalid(format!("duplicate uid {:?} in one shard", e.uid));
        }
        Ok(())
    }

    fn record(
        &mut self,
        e: NewEntry,
        external: bool,
        data_offset: u64,
        stored_len: u64,
        crc32c: u32,
    ) {
        self.uids.insert(e.uid.clone());
        self.placed.push(Placed {
            e,
            external,
            data_offset,
            stored_len,
            crc32c,
        });
    }

    /// Adds a payload already encoded with `e.codec`.
    pub fn add_inline(&mut self, e: NewEntry, stored: &[u8]) -> Result<()> {
        let len = stored.len() as u64;
        self.admit(&e, len)?;
        let crc = crc32c::crc32c(stored);
        if let Err(err) = self.out.write_all(stored) {
            self.poisoned = true;
            return Err(err.into());
        }
        let at = self.pos;
        self.pos += len;
        self.record(e, false, at, len, crc);
        Ok(())
    }

    /// Copies `stored_len` already-encoded bytes from `r` (an entry of an older
    /// generation), checking them against `expected_crc` so corruption is never
    /// carried forward.
    pub fn add_inline_from<R: Read>(
        &mut self,
        e: NewEntry,
        stored_len: u64,
        expected_crc: u32,
        r: R,
    ) -> Result<()> {
        self.admit(&e, stored_len)?;
        let at = self.pos;
        let result = copy_with_crc(r.take(stored_len), &mut self.out);
        match result {
            Ok((n, crc)) if n == stored_len && crc == expected_crc => {
                self.pos += n;
                self.record(e, false, at, n, crc);
                Ok(())
            }
            Ok((n, crc)) => {
                self.poisoned = true;
                Err(FormatError::CorruptEntry {
                    uid: e.uid,
                    detail: format!(
                        "copied {n}/{stored_len} bytes, crc {crc:08x} (expected {expected_crc:08x})"
                    ),
                })
            }
            Err(err) => {
                self.poisoned = true;
                Err(err.into())
            }
        }
    }

    /// Adds an entry whose payload was stored as its own object.
    pub fn add_external(&mut self, e: NewEntry, stored_len: u64, crc32c: u32) -> Result<()> {
        if e.codec == Codec::ZstdDict {
            return Err(FormatError::InvalidInput(format!(
                "{:?}: dictionary entries are inline only",
                e.uid
            )));
        }
        self.admit(&e, 0)?;
        if stored_len > MAX_U40 {
            return invalid(format!("{:?} is larger than 1 TiB", e.uid));
        }
        self.record(e, true, 0, stored_len, crc32c);
        Ok(())
    }

    /// Writes index and trailer; returns the sink so the caller can publish it.
    pub fn finish(mut self) -> Result<(W, ShardSummary)> {
        if self.poisoned {
            return invalid("shard writer failed earlier; discard this shard".into());
        }
        self.placed
            .sort_unstable_by(|a, b| a.e.uid.as_bytes().cmp(b.e.uid.as_bytes()));
        let count = u32::try_from(self.placed.len())
            .map_err(|_| FormatError::InvalidInput("too many entries for one shard".into()))?;
        let (entries, heap, inline_stored, orig) = self.encode_index()?;
        let (index, index_crc32c) = match self.layout {
            IndexLayout::Flat => {
                let flat = [entries, heap].concat();
                let crc = crc32c::crc32c(&flat);
                (flat, crc)
            }
            IndexLayout::Paged => paged::paginate(&entries, &heap, self.page_target)?,
        };
        let trailer = Trailer {
            index_offset: self.pos,
            index_len: index.len() as u64,
            entry_count: count,
            index_crc32c,
            generation: self.ident.generation,
            written_at: self.ident.written_at,
            date: self.ident.date,
            shard_index: self.ident.shard_index,
            n_bits: self.ident.n_bits,
            digest_alg: self.ident.digest_alg,
            layout: self.layout,
        };
        self.out.write_all(&index)?;
        self.out.write_all(&trailer.encode())?;
        self.out.flush()?;
        let total_len = self.pos + index.len() as u64 + super::TRAILER_LEN as u64;
        let summary = ShardSummary {
            trailer,
            total_len,
            entries: count,
            inline_stored_bytes: inline_stored,
            orig_bytes: orig,
        };
        Ok((self.out, summary))
    }

    /// The flat entry table and heap (SPEC §5.4–5.5), with payload totals.
    fn encode_index(&self) -> Result<(Vec<u8>, Vec<u8>, u64, u64)> {
        let mut entries = Vec::with_capacity(self.placed.len() * ENTRY_LEN);
        let mut heap = Vec::new();
        let (mut inline_stored, mut orig) = (0u64, 0u64);
        for p in &self.placed {
            let heap_off = u32::try_from(heap.len())
                .map_err(|_| FormatError::InvalidInput("index heap over 4 GiB".into()))?;
            push_heap_record(&mut heap, &p.e);
            entries.extend_from_slice(&p.e.digest);
            entries.extend_from_slice(&p.e.created_at.micros().to_le_bytes());
            entries.extend_from_slice(&heap_off.to_le_bytes());
            entries.extend_from_slice(&p.crc32c.to_le_bytes());
            le::put_u40(&mut entries, p.data_offset);
            le::put_u40(&mut entries, p.stored_len);
            le::put_u40(&mut entries, p.e.orig_len);
            let flags = if p.external { FLAG_EXTERNAL } else { 0 };
            entries.push(p.e.codec.code() | (flags << 4));
            if !p.external {
                inline_stored += p.stored_len;
            }
            orig += p.e.orig_len;
        }
        Ok((entries, heap, inline_stored, orig))
    }
}

fn push_heap_record(heap: &mut Vec<u8>, e: &NewEntry) {
    // Lengths were bounded by `check_entry`, so these narrowings cannot truncate.
    let ct = e.content_type.as_deref().unwrap_or("");
    let meta = e.meta.as_deref().unwrap_or("");
    heap.extend_from_slice(&(e.uid.len() as u16).to_le_bytes());
    heap.extend_from_slice(e.uid.as_bytes());
    heap.push(ct.len() as u8);
    heap.extend_from_slice(ct.as_bytes());
    heap.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    heap.extend_from_slice(meta.as_bytes());
}

fn copy_with_crc<R: Read, W: Write>(mut r: R, w: &mut W) -> std::io::Result<(u64, u32)> {
    let mut buf = vec![0u8; 256 * 1024];
    let (mut n, mut crc) = (0u64, 0u32);
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => return Ok((n, crc)),
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = buf.get(..k).unwrap_or_default();
        crc = crc32c::crc32c_append(crc, chunk);
        w.write_all(chunk)?;
        n += k as u64;
    }
}
