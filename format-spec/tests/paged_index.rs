//! The paged index (SPEC §5.10) at archive sizes: a lookup needs the
//! directory, which arrives with a 48 KiB suffix read, and one page of at
//! most 8 KiB, whether the shard has 10 entries or 200,000; and damage to
//! the directory or a page is caught on the lookup path, not only by a
//! whole-index read.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use des_format::codec::Codec;
use des_format::shard::Located;
use des_format::v3::{Directory, IndexLayout, NewEntry, ShardIdent, ShardWriter, Trailer, paged};
use des_format::{AnyIndex, DigestAlgorithm, Tail, Timestamp};

/// What a reader fetches first (SPEC §7.1).
const SUFFIX: usize = 48 << 10;
const MAX_PAGE: u64 = 8 << 10;

fn ident() -> ShardIdent {
    ShardIdent {
        date: 20240517,
        shard_index: 3,
        n_bits: 4,
        generation: 1,
        digest_alg: DigestAlgorithm::Blake3,
        written_at: Timestamp::from_micros(1_715_947_200_000_000),
    }
}

/// Uids shaped like a business system's: a long shared prefix and a counter.
fn uid(i: usize) -> String {
    format!("invoices/2024/05/17/scan-{:08}.pdf", i * 7919 % 1_000_003)
}

/// A shard of `n` one-byte files, with a content type on every fifth entry.
fn shard(n: usize, layout: IndexLayout) -> Vec<u8> {
    let mut w = ShardWriter::with_layout(Vec::new(), ident(), layout).unwrap();
    for i in 0..n {
        let data = [i as u8];
        let e = NewEntry {
            uid: uid(i),
            created_at: Timestamp::from_micros(1_715_947_200_000_000),
            content_type: (i % 5 == 0).then(|| "application/pdf".to_string()),
            meta: None,
            codec: Codec::None,
            orig_len: 1,
            digest: DigestAlgorithm::Blake3.digest(&data),
        };
        w.add_inline(e, &data).unwrap();
    }
    w.finish().unwrap().0
}

/// A remote lookup, counting the bytes it reads: suffix, directory (from the
/// suffix when it is there), one page.
struct Reader<'a> {
    shard: &'a [u8],
    trailer: Trailer,
    dir: Directory,
    suffix_start: u64,
}

impl<'a> Reader<'a> {
    fn open(shard: &'a [u8]) -> Result<(Self, u64), String> {
        let len = shard.len() as u64;
        let suffix_start = shard.len().saturating_sub(SUFFIX);
        let tail = &shard[suffix_start..];
        let Tail::V3(trailer) = Tail::parse(tail, len).map_err(|e| e.to_string())? else {
            return Err("not v3".into());
        };
        let r = paged::directory_range(tail, &trailer, len).map_err(|e| e.to_string())?;
        let mut read = tail.len() as u64;
        if r.start < suffix_start as u64 {
            read += suffix_start as u64 - r.start;
        }
        let dir = Directory::parse(&shard[r.start as usize..r.end as usize], &trailer)
            .map_err(|e| e.to_string())?;
        let reader = Self {
            shard,
            trailer,
            dir,
            suffix_start: suffix_start as u64,
        };
        Ok((reader, read))
    }

    /// The entry, and the page bytes read that the suffix did not already hold.
    fn find(&self, uid: &str) -> Result<(Option<Located>, u64), String> {
        let Some(k) = self.dir.page_for(uid) else {
            return Ok((None, 0));
        };
        let r = self.dir.page_range(k).unwrap();
        let fetched = if r.start >= self.suffix_start {
            0
        } else {
            r.end - r.start
        };
        let bytes = Bytes::copy_from_slice(&self.shard[r.start as usize..r.end as usize]);
        let page = self.dir.page(k, bytes).map_err(|e| e.to_string())?;
        Ok((page.find(uid), fetched))
    }
}

fn budgets_hold(n: usize) {
    let bytes = shard(n, IndexLayout::Paged);
    let (reader, opened) = Reader::open(&bytes).unwrap();
    assert_eq!(reader.trailer.layout, IndexLayout::Paged);
    assert!(
        opened <= SUFFIX as u64,
        "{n} entries: the directory needed {opened} bytes"
    );
    let step = (n / 500).max(1);
    let mut largest = 0;
    for i in (0..n).step_by(step) {
        let (found, page) = reader.find(&uid(i)).unwrap();
        largest = largest.max(page);
        assert_eq!(found.map(|l| l.uid), Some(uid(i)));
        assert!(page <= MAX_PAGE, "{n} entries: page of {page} bytes");
        assert!(opened + page <= 64 << 10, "{n} entries: {opened} + {page}");
        // Neighbours that are absent: the page that would hold them says so.
        assert_eq!(reader.find(&format!("{}~", uid(i))).unwrap().0, None);
        assert_eq!(reader.find(&uid(i)[..20]).unwrap().0, None);
    }
    assert_eq!(reader.find("").unwrap().0, None);
    assert_eq!(reader.find("zzz").unwrap().0, None);
    println!(
        "{n} entries: {} pages, suffix read {opened} bytes, largest page read {largest}, \
         directory in memory {} bytes",
        reader.dir.page_count(),
        reader.dir.heap_size()
    );
    // What a reader caches per shard: about a byte per entry at most, not the index.
    if n >= 10_000 {
        assert!(
            reader.dir.heap_size() <= n,
            "{} bytes",
            reader.dir.heap_size()
        );
    }
}

#[test]
fn ten_entries_fit_one_page_in_the_suffix() {
    budgets_hold(10);
    let bytes = shard(10, IndexLayout::Paged);
    let (reader, _) = Reader::open(&bytes).unwrap();
    assert_eq!(reader.dir.page_count(), 1);
}

#[test]
fn ten_thousand_entries() {
    budgets_hold(10_000);
}

#[test]
fn two_hundred_thousand_entries() {
    budgets_hold(200_000);
}

/// The whole-index read (repack, verify) sees exactly the entries the flat
/// layout holds, in the same order, with the same fields.
#[test]
fn whole_paged_index_equals_the_flat_one() {
    let whole = |layout| {
        let bytes = shard(3_000, layout);
        let tail = Tail::parse(&bytes, bytes.len() as u64).unwrap();
        let r = tail.index_range();
        let index = Bytes::copy_from_slice(&bytes[r.start as usize..r.end as usize]);
        let ix = AnyIndex::parse(&tail, index, None).unwrap().unwrap();
        // Offsets differ (the paged index is not the same size); the rest must not.
        ix.located()
            .into_iter()
            .map(|mut l| {
                l.source = des_format::shard::Source::InShard { offset: 0 };
                l
            })
            .collect::<Vec<_>>()
    };
    let (flat, paged) = (whole(IndexLayout::Flat), whole(IndexLayout::Paged));
    assert_eq!(flat.len(), 3_000);
    assert_eq!(flat, paged);
}

/// Every byte of the pages, directory and trailer, damaged one at a time:
/// a lookup through the directory either fails or returns exactly what the
/// undamaged shard returns. Pages of about 300 bytes keep the shard small
/// while giving the directory many records.
#[test]
fn damage_to_directory_or_page_is_caught_on_the_lookup_path() {
    let mut w = ShardWriter::new(Vec::new(), ident())
        .unwrap()
        .with_page_target(300);
    let uids: Vec<String> = (0..40).map(uid).collect();
    for (i, u) in uids.iter().enumerate() {
        let data = [i as u8; 3];
        let e = NewEntry {
            uid: u.clone(),
            created_at: Timestamp::from_micros(i as i64),
            content_type: (i % 3 == 0).then(|| "text/plain".to_string()),
            meta: (i % 4 == 0).then(|| format!("{{\"n\":{i}}}")),
            codec: Codec::None,
            orig_len: 3,
            digest: DigestAlgorithm::Blake3.digest(&data),
        };
        w.add_inline(e, &data).unwrap();
    }
    let good = w.finish().unwrap().0;
    let (reader, _) = Reader::open(&good).unwrap();
    assert!(
        reader.dir.page_count() >= 8,
        "{} pages",
        reader.dir.page_count()
    );
    let expected: Vec<Option<Located>> = uids.iter().map(|u| reader.find(u).unwrap().0).collect();
    let index_start = reader.trailer.index_offset as usize;
    let mut damaged = good.clone();
    for pos in index_start..good.len() {
        for mask in [0x01u8, 0x80, 0xFF] {
            damaged[pos] ^= mask;
            if let Ok((reader, _)) = Reader::open(&damaged) {
                for (u, want) in uids.iter().zip(&expected) {
                    if let Ok((got, _)) = reader.find(u) {
                        assert_eq!(&got, want, "byte {pos} ^ {mask:#x}: {u} read wrong");
                    }
                }
            }
            damaged[pos] ^= mask;
        }
    }
}

/// Every key shares a long prefix, which the directory keeps once: probes
/// before, inside and after it, and prefixes of it, land on the right page.
#[test]
fn uids_around_the_shared_prefix_find_their_page() {
    let uids: Vec<String> = (0..60).map(|i| format!("archive/2024/x{i:03}")).collect();
    let mut w = ShardWriter::new(Vec::new(), ident())
        .unwrap()
        .with_page_target(150);
    for u in &uids {
        let e = NewEntry {
            uid: u.clone(),
            created_at: Timestamp::from_micros(0),
            content_type: None,
            meta: None,
            codec: Codec::None,
            orig_len: 0,
            digest: DigestAlgorithm::Blake3.digest(b""),
        };
        w.add_inline(e, b"").unwrap();
    }
    let shard = w.finish().unwrap().0;
    let (reader, _) = Reader::open(&shard).unwrap();
    assert!(
        reader.dir.page_count() > 10,
        "{} pages",
        reader.dir.page_count()
    );
    for u in &uids {
        assert_eq!(reader.find(u).unwrap().0.map(|l| l.uid), Some(u.clone()));
    }
    for probe in [
        "",
        "a",
        "archive",
        "archive/2024/",
        "archive/2024/x",
        "archive/2024/x0",
        "archive/2024/x0599",
        "archive/2024/y",
        "archive/2025",
        "b",
        "archive/2024/x059~",
    ] {
        assert_eq!(reader.find(probe).unwrap().0, None, "{probe:?}");
    }
}
