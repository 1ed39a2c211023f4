//! Chunk tables for external payloads (SPEC §6.5): CRC32C of every fixed-size
//! chunk of a `_big/<hex>` object, so a reader can serve a byte range of a big
//! file by reading and checking only the chunks that cover it.
//!
//! A table is a sidecar object (`_big/<hex>.chunks`), immutable and fully
//! determined by the object's bytes. It is only trusted once it is *bound* to
//! the verified shard index: its `stored_len` equals the entry's, and its chunk
//! CRCs, combined, equal the entry's whole-object CRC32C ([`ChunkTable::parse`]).
//! A stale, truncated or forged table therefore never vouches for bytes the
//! index does not describe.

use std::ops::Range;

use crate::error::{FormatError, Result, corrupt};
use crate::le;
use crate::v3::MAX_U40;

/// First 8 bytes of every table.
pub const MAGIC: [u8; 8] = *b"DESCHNK1";
/// What DES writers use.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Readers accept any power of two in `MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE`: small
/// enough bounds that a table stays small (at most 1 in 16 384 of the object)
/// and one chunk's buffer stays bounded.
pub const MIN_CHUNK_SIZE: u32 = 64 << 10;
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;
/// Appended to the big object's key: `_big/<hex>.chunks`.
pub const TABLE_SUFFIX: &str = ".chunks";

/// Field offsets (SPEC §6.5).
mod at {
    pub const MAGIC: usize = 0;
    pub const CHUNK_SIZE: usize = 8;
    pub const RESERVED: usize = 12;
    pub const STORED_LEN: usize = 16;
    pub const COUNT: usize = 24;
    pub const CRCS: usize = 28;
}
/// magic + chunk_size + reserved + stored_len + count.
pub const HEADER_LEN: usize = at::CRCS;

/// Bytes of a table with `count` chunks: header, CRCs, trailing CRC.
pub fn table_len(count: u64) -> u64 {
    HEADER_LEN as u64 + 4 * count + 4
}

/// The largest valid table for an object of `stored_len` bytes (at the
/// smallest chunk size): a reader can refuse anything bigger before
/// buffering it.
pub fn max_table_len(stored_len: u64) -> u64 {
    table_len(stored_len.div_ceil(u64::from(MIN_CHUNK_SIZE)))
}

fn valid_chunk_size(cs: u32) -> bool {
    cs.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs)
}

/// Per-chunk CRC32C of one object's stored bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkTable {
    chunk_size: u32,
    stored_len: u64,
    /// One per chunk; `ceil(stored_len / chunk_size)` of them (kept so by
    /// every constructor).
    crcs: Vec<u32>,
}

/// The chunks a window of bytes needs: read `bytes` of the object, check
/// chunks `chunks`, then hand out only the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Covering {
    pub bytes: Range<u64>,
    pub chunks: Range<u32>,
}

impl ChunkTable {
    /// The table of `data` (convenience for tests and tools; writers stream
    /// with [`ChunkCrcs`]).
    pub fn of(chunk_size: u32, data: &[u8]) -> Result<Self> {
        let mut b = ChunkCrcs::new(chunk_size)?;
        b.update(data);
        b.finish()
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    pub fn stored_len(&self) -> u64 {
        self.stored_len
    }

    pub fn crcs(&self) -> &[u32] {
        &self.crcs
    }

    /// Number of chunks.
    pub fn count(&self) -> u32 {
        // Every constructor bounds stored_len to MAX_U40, so count < 2^25.
        u32::try_from(self.crcs.len()).unwrap_or(u32::MAX)
    }

    /// The serialized table (SPEC §6.5).
    pub fn encode(&self) -> Vec<u8> {
        let n = usize::try_from(table_len(u64::from(self.count()))).unwrap_or(0);
        let mut out = Vec::with_capacity(n);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.count().to_le_bytes());
        for crc in &self.crcs {
            out.extend_from_slice(&crc.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses and validates a table for an index entry whose stored bytes are
    /// `entry_stored_len` long with CRC32C `entry_crc32c`. Any failure is
    /// `Corrupt`: the table must then not be used (SPEC §6.5, validation).
    pub fn parse(bytes: &[u8], entry_stored_len: u64, entry_crc32c: u32) -> Result<Self> {
        let t = Self::parse_unbound(bytes)?;
        if t.stored_len != entry_stored_len {
            return corrupt(format!(
                "chunk table is for {} stored bytes, the index entry has {entry_stored_len}",
                t.stored_len
            ));
        }
        let combined = t.whole_crc32c();
        if combined != entry_crc32c {
            return corrupt(format!(
                "chunk table CRCs combine to {combined:08x}, the index entry's crc32c is \
                 {entry_crc32c:08x}"
            ));
        }
        Ok(t)
    }

    /// Steps 1–6 of the validation: everything but the binding to an entry.
    fn parse_unbound(b: &[u8]) -> Result<Self> {
        if le::bytes::<8>(b, at::MAGIC) != Some(MAGIC) {
            return corrupt("not a chunk table (bad magic)");
        }
        let field = |v: Option<u64>| {
            v.ok_or_else(|| FormatError::Corrupt("chunk table is truncated".into()))
        };
        let chunk_size = field(le::u32_at(b, at::CHUNK_SIZE).map(u64::from))?;
        let reserved = field(le::u32_at(b, at::RESERVED).map(u64::from))?;
        let stored_len = field(le::u64_at(b, at::STORED_LEN))?;
        let count = field(le::u32_at(b, at::COUNT).map(u64::from))?;
        let chunk_size = u32::try_from(chunk_size).unwrap_or(0);
        if !valid_chunk_size(chunk_size) {
            return corrupt(format!("chunk table has chunk size {chunk_size}"));
        }
        if reserved != 0 {
            return corrupt("chunk table reserved field is not zero");
        }
        if stored_len > MAX_U40 {
            return corrupt(format!(
                "chunk table claims {stored_len} bytes, more than any entry"
            ));
        }
        let want = stored_len.div_ceil(u64::from(chunk_size));
        if count != want {
            return corrupt(format!(
                "chunk table has {count} chunks, {stored_len} bytes in chunks of {chunk_size} \
                 need {want}"
            ));
        }
        if b.len() as u64 != table_len(count) {
            return corrupt(format!(
                "chunk table is {} bytes, {count} chunks need {}",
                b.len(),
                table_len(count)
            ));
        }
        let body_len = b.len().saturating_sub(4);
        let body = b.get(..body_len).unwrap_or_default();
        if le::u32_at(b, body_len) != Some(crc32c::crc32c(body)) {
            return corrupt("chunk table checksum mismatch");
        }
        let crcs = body
            .get(at::CRCS..)
            .unwrap_or_default()
            .chunks_exact(4)
            .filter_map(|c| le::u32_at(c, 0))
            .collect();
        Ok(Self {
            chunk_size,
            stored_len,
            crcs,
        })
    }

    /// CRC32C of the whole object, from the chunk CRCs alone.
    pub fn whole_crc32c(&self) -> u32 {
        let cs = u64::from(self.chunk_size);
        // Every chunk but the last is exactly `chunk_size` long: one operator
        // for appending that many zero bytes serves them all, 32 XORs each,
        // instead of a fresh `crc32c_combine` (dozens of matrix squarings)
        // per chunk — a 1 TiB object has a million chunks.
        let shift = zeros_operator(self.chunk_size);
        let mut total = 0u32;
        for (i, crc) in self.crcs.iter().enumerate() {
            let start = i as u64 * cs;
            let len = cs.min(self.stored_len.saturating_sub(start));
            total = if len == cs {
                gf2_times(&shift, total) ^ crc
            } else {
                crc32c::crc32c_combine(total, *crc, usize::try_from(len).unwrap_or(0))
            };
        }
        total
    }

    /// The object bytes of chunk `index`.
    pub fn chunk_range(&self, index: u32) -> Option<Range<u64>> {
        if index >= self.count() {
            return None;
        }
        let start = u64::from(index) * u64::from(self.chunk_size);
        Some(start..(start + u64::from(self.chunk_size)).min(self.stored_len))
    }

    /// The whole chunks covering `window` (object bytes). `None` unless
    /// `window` is non-empty and inside the object.
    pub fn covering(&self, window: Range<u64>) -> Option<Covering> {
        if window.start >= window.end || window.end > self.stored_len {
            return None;
        }
        let cs = u64::from(self.chunk_size);
        let first = window.start / cs;
        let end = window.end.div_ceil(cs);
        Some(Covering {
            bytes: first * cs..(end * cs).min(self.stored_len),
            chunks: u32::try_from(first).ok()?..u32::try_from(end).ok()?,
        })
    }

    /// The recorded CRC32C of chunk `index`.
    pub fn chunk_crc(&self, index: u32) -> Option<u32> {
        self.crcs
            .get(usize::try_from(index).unwrap_or(usize::MAX))
            .copied()
    }

    /// Checks one chunk's bytes: its full length and its CRC32C.
    pub fn check_chunk(&self, index: u32, bytes: &[u8]) -> Result<()> {
        let (Some(range), Some(want)) = (self.chunk_range(index), self.chunk_crc(index)) else {
            return Err(FormatError::InvalidInput(format!(
                "chunk {index} of {}",
                self.count()
            )));
        };
        if bytes.len() as u64 != range.end - range.start {
            return corrupt(format!(
                "chunk {index}: {} bytes, expected {}",
                bytes.len(),
                range.end - range.start
            ));
        }
        let got = crc32c::crc32c(bytes);
        if got != want {
            return corrupt(format!(
                "chunk {index} (bytes {}..{}): crc32c {got:08x} != {want:08x}",
                range.start, range.end
            ));
        }
        Ok(())
    }
}

/// Builds a [`ChunkTable`] while the object's bytes stream past, in pieces
/// of any size.
#[derive(Debug, Clone)]
pub struct ChunkCrcs {
    chunk_size: u32,
    crcs: Vec<u32>,
    /// CRC and length of the chunk being filled.
    current: u32,
    in_current: u64,
    total: u64,
}

impl ChunkCrcs {
    pub fn new(chunk_size: u32) -> Result<Self> {
        if !valid_chunk_size(chunk_size) {
            return Err(FormatError::InvalidInput(format!(
                "chunk size {chunk_size} is not a power of two in {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"
            )));
        }
        Ok(Self {
            chunk_size,
            crcs: Vec::new(),
            current: 0,
            in_current: 0,
            total: 0,
        })
    }

    pub fn update(&mut self, mut data: &[u8]) {
        let cs = u64::from(self.chunk_size);
        while !data.is_empty() {
            let room = usize::try_from(cs - self.in_current).unwrap_or(usize::MAX);
            let (now, rest) = data.split_at(room.min(data.len()));
            self.current = crc32c::crc32c_append(self.current, now);
            self.in_current += now.len() as u64;
            self.total += now.len() as u64;
            if self.in_current == cs {
                self.crcs.push(self.current);
                self.current = 0;
                self.in_current = 0;
            }
            data = rest;
        }
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The table; `InvalidInput` for more bytes than any entry can have.
    pub fn finish(mut self) -> Result<ChunkTable> {
        if self.total > MAX_U40 {
            return Err(FormatError::InvalidInput(format!(
                "{} bytes: more than an entry can hold",
                self.total
            )));
        }
        if self.in_current > 0 {
            self.crcs.push(self.current);
        }
        Ok(ChunkTable {
            chunk_size: self.chunk_size,
            stored_len: self.total,
            crcs: self.crcs,
        })
    }
}

// CRC32C arithmetic over GF(2), as in zlib's crc32_combine: a 32×32 bit
// matrix is 32 columns, column n being the image of bit n.

/// Reflected CRC32C polynomial.
const POLY: u32 = 0x82F6_3B78;

type Gf2Matrix = [u32; 32];

fn gf2_times(mat: &Gf2Matrix, mut vec: u32) -> u32 {
    let mut sum = 0;
    for col in mat {
        if vec == 0 {
            break;
        }
        if vec & 1 == 1 {
            sum ^= col;
        }
        vec >>= 1;
    }
    sum
}

fn gf2_square(mat: &Gf2Matrix) -> Gf2Matrix {
    mat.map(|col| gf2_times(mat, col))
}

/// The operator taking `crc(A)` to the raw shift of `A` by `len` zero bytes,
/// so that `crc(A ‖ B) = op(crc(A)) ^ crc(B)` when `|B| = len`. `len` is a
/// power of two (every valid chunk size is).
fn zeros_operator(len: u32) -> Gf2Matrix {
    // One zero bit: shift right, folding the polynomial in for bit 0.
    let mut op: Gf2Matrix = std::array::from_fn(|n| match n {
        0 => POLY,
        n => 1u32 << (n - 1),
    });
    // 2^3 bits = one byte, then one squaring per doubling of the length.
    for _ in 0..3 + len.trailing_zeros() {
        op = gf2_square(&op);
    }
    op
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CS: u32 = MIN_CHUNK_SIZE;

    fn data(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Re-seals a hand-edited table so only the field under test is wrong.
    fn reseal(b: &mut [u8]) {
        let n = b.len() - 4;
        let crc = crc32c::crc32c(&b[..n]);
        b[n..].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn known_bytes() {
        // The example in SPEC §6.5.
        let t = ChunkTable::of(CS, b"123456789").unwrap();
        assert_eq!(t.crcs(), [0xE306_9283]);
        let b = t.encode();
        assert_eq!(
            hex::encode(&b),
            "44455343484e4b3100000100000000000900000000000000010000008392\
             06e3774ba702"
        );
        assert_eq!(ChunkTable::parse(&b, 9, 0xE306_9283).unwrap(), t);
    }

    #[test]
    fn sizes_round_trip_and_bind() {
        let cs = CS as usize;
        for n in [
            0,
            1,
            cs - 1,
            cs,
            cs + 1,
            2 * cs,
            2 * cs + 1,
            3 * cs - 1,
            5 * cs + 7,
        ] {
            let d = data(n as u64, n);
            let t = ChunkTable::of(CS, &d).unwrap();
            assert_eq!(t.stored_len(), n as u64);
            assert_eq!(
                u64::from(t.count()),
                (n as u64).div_ceil(u64::from(CS)),
                "{n}"
            );
            assert_eq!(t.whole_crc32c(), crc32c::crc32c(&d), "{n}");
            let b = t.encode();
            assert_eq!(b.len() as u64, table_len(u64::from(t.count())));
            assert!(b.len() as u64 <= max_table_len(n as u64));
            assert_eq!(
                ChunkTable::parse(&b, n as u64, crc32c::crc32c(&d)).unwrap(),
                t
            );
            for i in 0..t.count() {
                let r = t.chunk_range(i).unwrap();
                t.check_chunk(i, &d[r.start as usize..r.end as usize])
                    .unwrap();
            }
            assert!(t.chunk_range(t.count()).is_none());
        }
    }

    #[test]
    fn the_empty_table() {
        let t = ChunkTable::of(CS, b"").unwrap();
        assert_eq!(t.count(), 0);
        assert_eq!(t.whole_crc32c(), 0);
        let b = t.encode();
        assert_eq!(b.len(), HEADER_LEN + 4);
        ChunkTable::parse(&b, 0, 0).unwrap();
        assert!(ChunkTable::parse(&b, 0, 1).is_err());
        assert!(t.covering(0..0).is_none());
    }

    #[test]
    fn every_byte_of_a_table_is_checked() {
        let d = data(7, 3 * CS as usize + 100);
        let crc = crc32c::crc32c(&d);
        let b = ChunkTable::of(CS, &d).unwrap().encode();
        for i in 0..b.len() {
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut bad = b.clone();
                bad[i] ^= flip;
                assert!(
                    ChunkTable::parse(&bad, d.len() as u64, crc).is_err(),
                    "byte {i} ^ {flip:#x} accepted"
                );
            }
        }
        for cut in 0..b.len() {
            assert!(ChunkTable::parse(&b[..cut], d.len() as u64, crc).is_err());
        }
        let mut longer = b.clone();
        longer.extend_from_slice(&[0; 4]);
        assert!(ChunkTable::parse(&longer, d.len() as u64, crc).is_err());
    }

    #[test]
    fn a_resealed_table_is_still_bound_to_its_entry() {
        let d = data(9, 2 * CS as usize + 5);
        let (len, crc) = (d.len() as u64, crc32c::crc32c(&d));
        let good = ChunkTable::of(CS, &d).unwrap().encode();
        // A chunk CRC changed and the table checksum fixed up: the combined
        // CRC no longer matches the index.
        let mut forged = good.clone();
        forged[HEADER_LEN] ^= 1;
        reseal(&mut forged);
        let e = ChunkTable::parse(&forged, len, crc).unwrap_err();
        assert!(e.to_string().contains("combine"), "{e}");
        // Another object's table, or the right one for a wrong entry.
        assert!(ChunkTable::parse(&good, len + 1, crc).is_err());
        assert!(ChunkTable::parse(&good, len, crc ^ 1).is_err());
        let other = ChunkTable::of(CS, &data(10, d.len())).unwrap().encode();
        assert!(ChunkTable::parse(&other, len, crc).is_err());
        // The same bytes in chunks of another (valid) size bind as well.
        let twice = ChunkTable::of(2 * CS, &d).unwrap();
        assert_eq!(ChunkTable::parse(&twice.encode(), len, crc).unwrap(), twice);
    }

    #[test]
    fn header_fields_are_validated() {
        let d = data(3, CS as usize * 2);
        let (len, crc) = (d.len() as u64, crc32c::crc32c(&d));
        let good = ChunkTable::of(CS, &d).unwrap().encode();
        let edit = |at: usize, bytes: &[u8]| {
            let mut b = good.clone();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            reseal(&mut b);
            ChunkTable::parse(&b, len, crc).unwrap_err().to_string()
        };
        for cs in [0u32, 1, CS - 1, CS + 1, CS / 2, 3 << 16, MAX_CHUNK_SIZE * 2] {
            assert!(edit(at::CHUNK_SIZE, &cs.to_le_bytes()).contains("chunk size"));
        }
        assert!(edit(at::RESERVED, &[1, 0, 0, 0]).contains("reserved"));
        assert!(edit(at::COUNT, &3u32.to_le_bytes()).contains("chunks"));
        assert!(edit(at::STORED_LEN, &(MAX_U40 + 1).to_le_bytes()).contains("claims"));
        // A consistent header for a different length fails the binding.
        let mut b = good.clone();
        b[at::STORED_LEN..at::STORED_LEN + 8].copy_from_slice(&(len - 1).to_le_bytes());
        reseal(&mut b);
        assert!(ChunkTable::parse(&b, len, crc).is_err());
        assert!(ChunkTable::parse(b"", 0, 0).is_err());
        assert!(ChunkTable::parse(b"DESCHNK1", 0, 0).is_err());
    }

    #[test]
    fn covering_windows() {
        let t = ChunkTable::of(CS, &data(1, 3 * CS as usize + 10)).unwrap();
        let cs = u64::from(CS);
        let len = t.stored_len();
        let cov = |a: u64, b: u64| t.covering(a..b).map(|c| (c.bytes, c.chunks));
        assert_eq!(cov(0, 1), Some((0..cs, 0..1)));
        assert_eq!(cov(5, cs), Some((0..cs, 0..1)));
        assert_eq!(cov(cs - 1, cs + 1), Some((0..2 * cs, 0..2)));
        assert_eq!(cov(cs, 2 * cs), Some((cs..2 * cs, 1..2)));
        assert_eq!(cov(len - 1, len), Some((3 * cs..len, 3..4)));
        assert_eq!(cov(0, len), Some((0..len, 0..4)));
        assert_eq!(cov(3, 3), None);
        assert_eq!(cov(4, 3), None);
        assert_eq!(cov(0, len + 1), None);
        assert!(t.check_chunk(4, b"").is_err());
        assert!(t.check_chunk(3, &[0; 9]).is_err());
    }

    #[test]
    fn the_builder_rejects_bad_chunk_sizes() {
        for cs in [0, 1, CS - 1, CS + 1, MAX_CHUNK_SIZE * 2] {
            assert!(ChunkCrcs::new(cs).is_err(), "{cs}");
        }
        for cs in [MIN_CHUNK_SIZE, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE] {
            assert!(ChunkCrcs::new(cs).is_ok(), "{cs}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Fed in arbitrary pieces, the builder gives the one-shot table,
        /// and the table binds to the whole object's CRC.
        #[test]
        fn pieces_make_the_same_table(
            len in 0usize..(4 * CS as usize + 3),
            cuts in proptest::collection::vec(0usize..(5 * CS as usize), 0..8),
            seed in any::<u64>(),
            shift in 0u32..3,
        ) {
            let cs = CS << shift;
            let d = data(seed, len);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(len)).collect();
            cuts.sort_unstable();
            let mut b = ChunkCrcs::new(cs).unwrap();
            let mut at = 0;
            for c in cuts.into_iter().chain([len]) {
                b.update(&d[at..c]);
                at = c;
            }
            prop_assert_eq!(b.len(), len as u64);
            let t = b.finish().unwrap();
            prop_assert_eq!(&t, &ChunkTable::of(cs, &d).unwrap());
            let parsed = ChunkTable::parse(&t.encode(), len as u64, crc32c::crc32c(&d));
            prop_assert_eq!(parsed.ok(), Some(t));
        }

        #[test]
        fn covering_is_the_smallest_chunk_aligned_superset(
            len in 1u64..(6 * u64::from(CS)),
            a in any::<u64>(),
            b in any::<u64>(),
        ) {
            let t = ChunkTable::of(CS, &vec![0; len as usize]).unwrap();
            let (s, e) = (a % len, b % len + 1);
            prop_assume!(s < e);
            let c = t.covering(s..e).unwrap();
            let cs = u64::from(CS);
            prop_assert!(c.bytes.start <= s && e <= c.bytes.end);
            prop_assert_eq!(c.bytes.start % cs, 0);
            prop_assert!(c.bytes.end.is_multiple_of(cs) || c.bytes.end == len);
            prop_assert!(s - c.bytes.start < cs && c.bytes.end - e < cs);
            prop_assert_eq!(t.chunk_range(c.chunks.start).unwrap().start, c.bytes.start);
            prop_assert_eq!(t.chunk_range(c.chunks.end - 1).unwrap().end, c.bytes.end);
        }

        #[test]
        fn the_shift_operator_is_crc32c_combine(crc1 in any::<u32>(), crc2 in any::<u32>(), k in 0u32..27) {
            let len = 1u32 << k;
            prop_assert_eq!(
                gf2_times(&zeros_operator(len), crc1) ^ crc2,
                crc32c::crc32c_combine(crc1, crc2, len as usize)
            );
        }
    }
}
