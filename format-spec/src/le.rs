//! Bounds-checked little-endian field access. Every read returns `None` instead
//! of panicking, so parsers turn short input into `Corrupt`, never a crash.

pub(crate) fn bytes<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

pub(crate) fn u8_at(buf: &[u8], at: usize) -> Option<u8> {
    buf.get(at).copied()
}

pub(crate) fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    bytes::<2>(buf, at).map(u16::from_le_bytes)
}

pub(crate) fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    bytes::<4>(buf, at).map(u32::from_le_bytes)
}

pub(crate) fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    bytes::<8>(buf, at).map(u64::from_le_bytes)
}

pub(crate) fn i64_at(buf: &[u8], at: usize) -> Option<i64> {
    bytes::<8>(buf, at).map(i64::from_le_bytes)
}

/// 40-bit unsigned, 5 bytes little endian.
pub(crate) fn u40_at(buf: &[u8], at: usize) -> Option<u64> {
    let b = bytes::<5>(buf, at)?;
    let mut wide = [0u8; 8];
    wide[..5].copy_from_slice(&b);
    Some(u64::from_le_bytes(wide))
}

pub(crate) fn put_u40(out: &mut Vec<u8>, v: u64) {
    let b = v.to_le_bytes();
    out.extend_from_slice(&b[..5]);
}

/// A cursor for sequential records (legacy index, heap records).
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).and_then(|s| s.first().copied())
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take(2).and_then(|s| u16_at(s, 0))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4).and_then(|s| u32_at(s, 0))
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.take(8).and_then(|s| u64_at(s, 0))
    }
}

/// LEB128: 7 bits per byte, low first, high bit set on all but the last.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v & 0x7F) as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a [`put_varint`] value of at most 35 bits.
pub(crate) fn varint(c: &mut Cursor<'_>) -> Option<usize> {
    let mut v = 0u64;
    for shift in (0..35).step_by(7) {
        let b = c.u8()?;
        v |= u64::from(b & 0x7F) << shift;
        if b & 0x80 == 0 {
            return usize::try_from(v).ok();
        }
    }
    None
}
