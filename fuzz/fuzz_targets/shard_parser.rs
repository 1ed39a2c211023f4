//! Arbitrary bytes as a whole shard object: every reader entry point must return
//! `Ok` or `Err`, never panic, abort or allocate without bound.

#![no_main]

use bytes::Bytes;
use des_format::shard::Source;
use des_format::v3::{Directory, IndexLayout, paged};
use des_format::{AnyIndex, Tail};
use libfuzzer_sys::fuzz_target;

/// Readers fetch a suffix of this size first (SPEC.md §7.1); parsing the
/// trailer from a suffix shorter than the object is a distinct path.
const SUFFIX: usize = 48 * 1024;

const PROBES: &[&str] = &[
    "",
    "a",
    "12345",
    "abc123",
    "doc-1",
    "\u{10FFFF}",
    "zzzzzzzz",
];

fuzz_target!(|data: &[u8]| {
    read_everything(data);
    // Random mutations almost never keep CRC32C valid, so without repair the
    // index validator and the codecs would only see bytes the checksums had
    // already rejected. Repair is done here, not in the reader, so the reader
    // still gets (and must survive) every combination.
    if data.ends_with(b"DES3TAIL") {
        for entries_too in [false, true] {
            let mut repaired = data.to_vec();
            if repair_v3_checksums(&mut repaired, entries_too).is_some() {
                read_everything(&repaired);
            }
        }
    }
});

fn read_everything(data: &[u8]) {
    let object_len = data.len() as u64;
    let suffix = data
        .get(data.len().saturating_sub(SUFFIX)..)
        .unwrap_or_default();
    let Ok(tail) = Tail::parse(suffix, object_len) else {
        return;
    };
    if let Tail::V3(t) = &tail
        && t.layout == IndexLayout::Paged
    {
        lookup_by_page(data, suffix, t);
    }
    let range = tail.index_range();
    let (Ok(start), Ok(end)) = (usize::try_from(range.start), usize::try_from(range.end)) else {
        return;
    };
    // A successful Tail::parse promises the index lies inside the object.
    let index = Bytes::copy_from_slice(data.get(start..end).expect("index range outside object"));
    for version in [Some(1), Some(2), None] {
        if let Ok(Some(ix)) = AnyIndex::parse(&tail, index.clone(), version) {
            exercise(&ix, data);
        }
    }
}

/// The retriever's path for a paged shard (SPEC §5.10): the directory from
/// the end of the object, then one page per probe.
fn lookup_by_page(data: &[u8], suffix: &[u8], t: &des_format::v3::Trailer) {
    let Ok(r) = paged::directory_range(suffix, t, data.len() as u64) else {
        return;
    };
    let (Ok(start), Ok(end)) = (usize::try_from(r.start), usize::try_from(r.end)) else {
        return;
    };
    let dir_bytes = data.get(start..end).expect("directory range outside object");
    let Ok(dir) = Directory::parse(dir_bytes, t) else {
        return;
    };
    for probe in PROBES {
        let Some(k) = dir.page_for(probe) else {
            continue;
        };
        let page = dir.page_range(k).expect("the directory names page k");
        let (Ok(s), Ok(e)) = (usize::try_from(page.start), usize::try_from(page.end)) else {
            continue;
        };
        let bytes = Bytes::copy_from_slice(data.get(s..e).expect("page outside object"));
        if let Ok(p) = dir.page(k, bytes) {
            let _ = p.find(probe);
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
}

fn u64_at(b: &[u8], at: usize) -> Option<usize> {
    usize::try_from(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?)).ok()
}

fn u40_at(b: &[u8], at: usize) -> Option<usize> {
    let mut w = [0u8; 8];
    w.get_mut(..5)?.copy_from_slice(b.get(at..at + 5)?);
    usize::try_from(u64::from_le_bytes(w)).ok()
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    if let Some(dst) = b.get_mut(at..at + 4) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
}

/// Rewrites the CRC32C fields of a v3-looking object (offsets from SPEC.md):
/// optionally every in-range entry CRC, then the index CRC, then the trailer CRC.
fn repair_v3_checksums(b: &mut [u8], entries_too: bool) -> Option<()> {
    let t = b.len().checked_sub(64)?;
    let index_offset = u64_at(b, t)?;
    let index_len = u64_at(b, t + 8)?;
    let count = u32_at(b, t + 16)?;
    let index_end = index_offset.checked_add(index_len)?;
    if b.get(t + 48) == Some(&4) {
        // Paged: the index CRC covers the directory, which ends at the trailer.
        let records = u32_at(b, t.checked_sub(4)?)?;
        let dir_start = t.checked_sub(8)?.checked_sub(records)?;
        let crc = crc32c::crc32c(b.get(dir_start..t)?);
        put_u32(b, t + 20, crc);
    } else if index_end <= t {
        if entries_too {
            for i in 0..count.min(index_len / 64) {
                let e = index_offset + i * 64;
                let (off, len) = (u40_at(b, e + 48)?, u40_at(b, e + 53)?);
                if let Some(stored) = b.get(off..off.saturating_add(len)) {
                    let crc = crc32c::crc32c(stored);
                    put_u32(b, e + 44, crc);
                }
            }
        }
        let crc = crc32c::crc32c(b.get(index_offset..index_end)?);
        put_u32(b, t + 20, crc);
    }
    let crc = crc32c::crc32c(b.get(t..t + 52)?);
    put_u32(b, t + 52, crc);
    Some(())
}

fn exercise(ix: &AnyIndex, data: &[u8]) {
    for probe in PROBES {
        let _ = ix.find(probe);
    }
    let located = ix.located();
    assert_eq!(located.len(), ix.len());
    for loc in &located {
        // Entries are unique and sorted, so lookup must find exactly this one.
        assert_eq!(ix.find(&loc.uid).as_ref(), Some(loc));
        let _ = loc.etag();
        match loc.source {
            Source::InShard { .. } => {
                let r = loc.shard_range().expect("in-shard entry has a range");
                let stored = usize::try_from(r.start)
                    .ok()
                    .zip(usize::try_from(r.end).ok())
                    .and_then(|(s, e)| data.get(s..e))
                    .expect("validated entry outside object");
                let _ = loc.decode(stored);
            }
            Source::External { .. } => {
                let _ = loc.decode(&[]);
            }
        }
    }
}
