//! Checked-in shards pin the byte layout: any change to what the writer
//! emits shows up as a diff against `tests/data/golden_v3.des` (flat index,
//! format version 3) or `tests/data/golden_v4.des` (paged index, version 4,
//! pages of about 200 bytes so the directory has several records).
//!
//! To accept an intentional format change, regenerate the file with
//!
//! ```text
//! DES_BLESS=1 cargo test -p des-format --test golden
//! ```
//!
//! and review the new bytes (and SPEC.md) before committing. `hand_decoded`
//! reads the checked-in file with nothing but the offsets from SPEC.md, so a
//! blessed file that contradicts the spec still fails.

// clippy.toml lets #[test] functions unwrap, but not the helpers they call;
// in a test binary a panic is a failed test either way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use bytes::Bytes;
use des_format::codec::{self, Codec};
use des_format::shard::Source;
use des_format::v3::{IndexLayout, NewEntry, ShardIdent, ShardWriter};
use des_format::{AnyIndex, DigestAlgorithm, Tail, Timestamp};

fn golden_path() -> PathBuf {
    golden_path_of(IndexLayout::Flat)
}

fn golden_path_of(layout: IndexLayout) -> PathBuf {
    let name = format!("tests/data/golden_v{}.des", layout.version());
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name)
}

// Compressed payloads are fixed bytes, not produced by zstd/lz4 at test time:
// the golden file must pin the shard layout, not a compressor version's output.

/// zstd level 3 of `ZSTD_TEXT`.
const ZSTD_STORED: &[u8] = &[
    0x28, 0xB5, 0x2F, 0xFD, 0x20, 0xB4, 0xBD, 0x01, 0x00, 0xC4, 0x02, 0x74, //
    0x68, 0x65, 0x20, 0x71, 0x75, 0x69, 0x63, 0x6B, 0x20, 0x62, 0x72, 0x6F, //
    0x77, 0x6E, 0x20, 0x66, 0x6F, 0x78, 0x20, 0x6A, 0x75, 0x6D, 0x70, 0x73, //
    0x20, 0x6F, 0x76, 0x65, 0x72, 0x20, 0x74, 0x68, 0x65, 0x20, 0x6C, 0x61, //
    0x7A, 0x79, 0x20, 0x64, 0x6F, 0x67, 0x2E, 0x02, 0x00, 0x00, 0xA8, 0x08, //
    0x30, 0xDA, 0x59, 0x06,
];

/// LZ4 frame of `LZ4_TEXT`.
const LZ4_STORED: &[u8] = &[
    0x04, 0x22, 0x4D, 0x18, 0x60, 0x40, 0x82, 0x24, 0x00, 0x00, 0x00, 0xFF, //
    0x09, 0x44, 0x45, 0x53, 0x20, 0x67, 0x6F, 0x6C, 0x64, 0x65, 0x6E, 0x20, //
    0x6C, 0x7A, 0x34, 0x20, 0x70, 0x61, 0x79, 0x6C, 0x6F, 0x61, 0x64, 0x3B, //
    0x20, 0x18, 0x00, 0x5F, 0x60, 0x6C, 0x6F, 0x61, 0x64, 0x3B, 0x20, 0x00, //
    0x00, 0x00, 0x00,
];

fn zstd_text() -> Vec<u8> {
    "the quick brown fox jumps over the lazy dog. "
        .repeat(4)
        .into_bytes()
}

fn lz4_text() -> Vec<u8> {
    "DES golden lz4 payload; ".repeat(6).into_bytes()
}

const RAW_TEXT: &[u8] = b"hello, DES\n";
const WRITTEN_AT_US: i64 = 1_715_947_200_000_000; // 2024-05-17T12:00:00Z

fn external_payload() -> Vec<u8> {
    (0..4096u32).map(|i| (i % 251) as u8).collect()
}

struct Expected {
    uid: &'static str,
    data: Vec<u8>,
    codec: Codec,
    external: bool,
    content_type: Option<&'static str>,
    meta: Option<&'static str>,
}

/// In insertion order, which is also the data-region order; the index sorts them.
fn expected() -> Vec<Expected> {
    vec![
        Expected {
            uid: "abc123",
            data: zstd_text(),
            codec: Codec::Zstd,
            external: false,
            content_type: None,
            meta: Some(r#"{"source":"golden","n":1}"#),
        },
        Expected {
            uid: "12345",
            data: RAW_TEXT.to_vec(),
            codec: Codec::None,
            external: false,
            content_type: Some("text/plain"),
            meta: None,
        },
        Expected {
            uid: "doc/é.txt",
            data: lz4_text(),
            codec: Codec::Lz4,
            external: false,
            content_type: Some("text/plain; charset=utf-8"),
            meta: Some(r#"{"lang":"fr"}"#),
        },
        Expected {
            uid: "big-file.bin",
            data: external_payload(),
            codec: Codec::None,
            external: true,
            content_type: Some("application/octet-stream"),
            meta: None,
        },
        Expected {
            uid: "empty",
            data: Vec::new(),
            codec: Codec::None,
            external: false,
            content_type: None,
            meta: None,
        },
    ]
}

fn stored_of(e: &Expected) -> Vec<u8> {
    match e.codec {
        Codec::None => e.data.clone(),
        Codec::Zstd => ZSTD_STORED.to_vec(),
        Codec::Lz4 => LZ4_STORED.to_vec(),
        Codec::ZstdDict => unreachable!("the golden shard has no dictionary entry"),
    }
}

fn build(layout: IndexLayout) -> Vec<u8> {
    let ident = ShardIdent {
        date: 20240517,
        shard_index: 0x5C,
        n_bits: 8,
        generation: 1,
        digest_alg: DigestAlgorithm::Blake3,
        written_at: Timestamp::from_micros(WRITTEN_AT_US),
    };
    let mut w = ShardWriter::with_layout(Vec::new(), ident, layout)
        .unwrap()
        .with_page_target(200);
    for (i, e) in expected().iter().enumerate() {
        let ne = NewEntry {
            uid: e.uid.to_string(),
            created_at: Timestamp::from_micros(1_715_940_000_000_000 + i as i64 * 1_000_001),
            content_type: e.content_type.map(str::to_string),
            meta: e.meta.map(str::to_string),
            codec: e.codec,
            orig_len: e.data.len() as u64,
            digest: DigestAlgorithm::Blake3.digest(&e.data),
        };
        let stored = stored_of(e);
        if e.external {
            w.add_external(ne, stored.len() as u64, crc32c::crc32c(&stored))
                .unwrap();
        } else {
            w.add_inline(ne, &stored).unwrap();
        }
    }
    let (bytes, summary) = w.finish().unwrap();
    assert_eq!(summary.total_len, bytes.len() as u64);
    bytes
}

#[test]
fn fixed_payloads_are_what_they_claim() {
    assert_eq!(
        codec::decode(Codec::Zstd, ZSTD_STORED, 180).unwrap(),
        zstd_text()
    );
    assert_eq!(
        codec::decode(Codec::Lz4, LZ4_STORED, 144).unwrap(),
        lz4_text()
    );
}

#[test]
fn writer_matches_golden_file() {
    writer_matches(IndexLayout::Flat);
    writer_matches(IndexLayout::Paged);
}

fn writer_matches(layout: IndexLayout) {
    let built = build(layout);
    let path = golden_path_of(layout);
    if std::env::var_os("DES_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &built).unwrap();
        return;
    }
    let golden = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with DES_BLESS=1 to create)", path.display()));
    if let Some(at) = built.iter().zip(&golden).position(|(a, b)| a != b) {
        panic!("writer output differs from {} at byte {at}", path.display());
    }
    assert_eq!(
        built.len(),
        golden.len(),
        "writer output length differs from golden file"
    );
}

#[test]
fn golden_file_reads_back_through_the_api() {
    read_back(IndexLayout::Flat);
    read_back(IndexLayout::Paged);
}

fn read_back(layout: IndexLayout) {
    let bytes = std::fs::read(golden_path_of(layout)).unwrap();
    let len = bytes.len() as u64;
    let tail = Tail::parse(&bytes, len).unwrap();
    let r = tail.index_range();
    let index = Bytes::copy_from_slice(&bytes[r.start as usize..r.end as usize]);
    let ix = AnyIndex::parse(&tail, index, None).unwrap().unwrap();
    assert_eq!(ix.len(), expected().len());
    for e in expected() {
        let loc = ix
            .find(e.uid)
            .unwrap_or_else(|| panic!("{} missing", e.uid));
        let stored = match &loc.source {
            Source::InShard { .. } => {
                let r = loc.shard_range().unwrap();
                bytes[r.start as usize..r.end as usize].to_vec()
            }
            Source::External {
                key,
                relative_to_shard,
            } => {
                assert!(!relative_to_shard);
                let digest = DigestAlgorithm::Blake3.digest(&e.data);
                assert_eq!(*key, format!("_big/{}", hex::encode(digest)));
                stored_of(&e)
            }
        };
        assert_eq!(loc.decode(&stored).unwrap(), e.data, "{}", e.uid);
        assert_eq!(loc.codec, e.codec, "{}", e.uid);
        assert_eq!(loc.content_type.as_deref(), e.content_type, "{}", e.uid);
        assert_eq!(loc.meta.as_deref(), e.meta, "{}", e.uid);
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn u40_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w[..5].copy_from_slice(&b[at..at + 5]);
    u64::from_le_bytes(w)
}

/// Decodes the checked-in file by the offsets in SPEC.md alone, without the
/// crate's parser, so the golden file is checked independently of the writer.
#[test]
fn hand_decoded() {
    let f = std::fs::read(golden_path()).unwrap();
    let n = f.len();

    assert_eq!(&f[..8], b"DES3\x03\x00\x00\x00", "header");

    let t = &f[n - 64..];
    assert_eq!(&t[56..64], b"DES3TAIL");
    assert_eq!(u32_at(t, 52), crc32c::crc32c(&t[..52]), "trailer crc");
    let index_offset = u64_at(t, 0) as usize;
    let index_len = u64_at(t, 8) as usize;
    let count = u32_at(t, 16) as usize;
    assert_eq!(index_offset + index_len + 64, n);
    assert_eq!(count, 5);
    assert_eq!(u64_at(t, 24), 1, "generation");
    assert_eq!(u64_at(t, 32) as i64, WRITTEN_AT_US);
    assert_eq!(u32_at(t, 40), 20240517);
    assert_eq!(u16_at(t, 44), 0x5C);
    assert_eq!(t[46], 8, "n_bits");
    assert_eq!(t[47], 1, "digest algorithm: blake3");
    assert_eq!(t[48], 3, "format version");
    assert_eq!(&t[49..52], &[0, 0, 0]);

    let index = &f[index_offset..index_offset + index_len];
    assert_eq!(u32_at(t, 20), crc32c::crc32c(index), "index crc");
    let (entries, heap) = index.split_at(count * 64);

    let mut uids = Vec::new();
    let mut data_end = 8u64;
    for (i, e) in entries.chunks_exact(64).enumerate() {
        let heap_off = u32_at(e, 40) as usize;
        let uid_len = u16_at(heap, heap_off) as usize;
        let uid = std::str::from_utf8(&heap[heap_off + 2..heap_off + 2 + uid_len]).unwrap();
        let ct_len = heap[heap_off + 2 + uid_len] as usize;
        let ct = &heap[heap_off + 3 + uid_len..heap_off + 3 + uid_len + ct_len];
        let meta_at = heap_off + 3 + uid_len + ct_len;
        let meta_len = u32_at(heap, meta_at) as usize;
        let meta = &heap[meta_at + 4..meta_at + 4 + meta_len];

        let want = expected().into_iter().find(|x| x.uid == uid).unwrap();
        assert_eq!(ct, want.content_type.unwrap_or("").as_bytes(), "{uid}");
        assert_eq!(meta, want.meta.unwrap_or("").as_bytes(), "{uid}");
        assert_eq!(
            &e[..32],
            DigestAlgorithm::Blake3.digest(&want.data),
            "{uid}"
        );
        assert_eq!(
            u64_at(e, 32) as i64,
            1_715_940_000_000_000 + {
                let pos = expected().iter().position(|x| x.uid == uid).unwrap();
                pos as i64 * 1_000_001
            }
        );
        let (off, stored_len, orig_len) = (u40_at(e, 48), u40_at(e, 53), u40_at(e, 58));
        assert_eq!(orig_len, want.data.len() as u64, "{uid}");
        assert_eq!(e[63] & 0x0F, want.codec.code(), "{uid}");
        let stored = stored_of(&want);
        assert_eq!(stored_len, stored.len() as u64, "{uid}");
        assert_eq!(u32_at(e, 44), crc32c::crc32c(&stored), "{uid}");
        if want.external {
            assert_eq!(e[63] >> 4, 1, "{uid}: external flag");
            assert_eq!(off, 0, "{uid}");
        } else {
            assert_eq!(e[63] >> 4, 0, "{uid}");
            assert_eq!(
                &f[off as usize..(off + stored_len) as usize],
                &stored[..],
                "{uid}"
            );
            data_end = data_end.max(off + stored_len);
        }
        if i == 0 {
            assert_eq!(heap_off, 0, "first heap record starts the heap");
        }
        uids.push(uid.to_string());
    }
    // Sorted by UTF-8 bytes: '1' < 'a' < 'b' < 'd' < 'e'.
    assert_eq!(
        uids,
        ["12345", "abc123", "big-file.bin", "doc/é.txt", "empty"]
    );
    // Payloads are packed back to back from the header to the index.
    assert_eq!(data_end, index_offset as u64);
    // The first payload written (abc123, zstd) starts right after the header.
    assert_eq!(&f[8..8 + ZSTD_STORED.len()], ZSTD_STORED);
}

fn varint(b: &[u8], at: &mut usize) -> usize {
    let mut v = 0usize;
    for shift in (0..35).step_by(7) {
        let byte = b[*at];
        *at += 1;
        v |= usize::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
    }
    panic!("varint longer than 5 bytes");
}

/// The paged golden file decoded by SPEC.md §5.10 alone: the directory from
/// the end, each page's CRC, entry count and heap offsets relative to the
/// page, separator keys between the pages' uids.
#[test]
fn hand_decoded_paged() {
    let f = std::fs::read(golden_path_of(IndexLayout::Paged)).unwrap();
    let n = f.len();
    assert_eq!(&f[..8], b"DES3\x04\x00\x00\x00", "header");
    let t = &f[n - 64..];
    assert_eq!(t[48], 4, "format version");
    assert_eq!(u32_at(t, 52), crc32c::crc32c(&t[..52]), "trailer crc");
    let index_offset = u64_at(t, 0) as usize;
    let index_len = u64_at(t, 8) as usize;
    assert_eq!(index_offset + index_len + 64, n);
    let count = u32_at(t, 16) as usize;
    assert_eq!(count, 5);

    let dir_end = n - 64;
    let page_count = u32_at(&f, dir_end - 8) as usize;
    let rec_len = u32_at(&f, dir_end - 4) as usize;
    let dir_start = dir_end - 8 - rec_len;
    assert_eq!(
        u32_at(t, 20),
        crc32c::crc32c(&f[dir_start..dir_end]),
        "directory crc"
    );
    assert!(page_count >= 3, "{page_count} pages");

    let (mut at, mut page_at) = (dir_start, index_offset);
    let (mut prev_key, mut uids, mut entries) = (Vec::new(), Vec::new(), 0);
    let mut keys = Vec::new();
    for _ in 0..page_count {
        let shared = varint(&f, &mut at);
        let suffix_len = varint(&f, &mut at);
        let mut key = prev_key[..shared].to_vec();
        key.extend_from_slice(&f[at..at + suffix_len]);
        at += suffix_len;
        let n_k = varint(&f, &mut at);
        let page_len = varint(&f, &mut at);
        let crc = u32_at(&f, at);
        at += 4;
        let page = &f[page_at..page_at + page_len];
        assert_eq!(crc, crc32c::crc32c(page), "page crc");
        let (table, heap) = page.split_at(n_k * 64);
        for e in table.chunks_exact(64) {
            let heap_off = u32_at(e, 40) as usize;
            let uid_len = u16_at(heap, heap_off) as usize;
            uids.push(
                String::from_utf8(heap[heap_off + 2..heap_off + 2 + uid_len].to_vec()).unwrap(),
            );
        }
        keys.push((key.clone(), uids.len() - n_k));
        entries += n_k;
        page_at += page_len;
        prev_key = key;
    }
    assert_eq!(at, dir_end - 8, "records fill rec_len");
    assert_eq!(page_at, dir_start, "pages end where the directory starts");
    assert_eq!(entries, count);
    let mut sorted = uids.clone();
    sorted.sort();
    assert_eq!(uids, sorted, "pages in uid order");
    assert!(keys[0].0.is_empty(), "key 0 is empty");
    for (key, first) in keys.iter().skip(1) {
        let (last_before, first_here) = (uids[first - 1].as_bytes(), uids[*first].as_bytes());
        assert!(key.as_slice() > last_before && key.as_slice() <= first_here);
    }
}
