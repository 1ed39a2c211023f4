//! Micro-benchmarks of the per-request work a retriever does on a warm
//! cache: route, find the entry in the cached index bytes, check the
//! trailer of a fresh suffix read, and verify + decode the payload.
//!
//! `cargo bench -p des-format --bench format`; the stored index size per
//! entry, and what the cache holds of it, are printed once at start.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use des_format::codec::{self, Codec, Compression};
use des_format::routing::locate_ts;
use des_format::v3::{NewEntry, ShardIdent, ShardWriter};
use des_format::{AnyIndex, DigestAlgorithm, Tail, Timestamp};

const ENTRIES: usize = 100_000;

fn ident() -> ShardIdent {
    ShardIdent {
        date: 20240517,
        shard_index: 0x5C,
        n_bits: 8,
        generation: 1,
        digest_alg: DigestAlgorithm::Blake3,
        written_at: Timestamp::from_micros(1_715_947_200_000_000),
    }
}

/// Uids shaped like real document ids (`docs/2024/05/17/<n>.pdf`).
fn uid(i: usize) -> String {
    format!(
        "docs/2024/05/17/{:08}.pdf",
        i.wrapping_mul(2_654_435_761) % 100_000_000
    )
}

/// A shard of `ENTRIES` tiny entries: only the index matters here.
fn big_index_shard() -> Vec<u8> {
    let mut w = ShardWriter::new(Vec::new(), ident()).unwrap();
    let mut uids: Vec<String> = (0..ENTRIES).map(uid).collect();
    uids.sort();
    uids.dedup();
    for u in &uids {
        let data = u.as_bytes();
        let e = NewEntry {
            uid: u.clone(),
            created_at: Timestamp::from_micros(1_715_947_200_000_000),
            content_type: None,
            meta: None,
            codec: Codec::None,
            orig_len: data.len() as u64,
            digest: DigestAlgorithm::Blake3.digest(data),
        };
        w.add_inline(e, data).unwrap();
    }
    w.finish().unwrap().0
}

fn parse_index(shard: &[u8]) -> (Tail, AnyIndex) {
    let tail = Tail::parse(shard, shard.len() as u64).unwrap();
    let r = tail.index_range();
    let bytes = Bytes::copy_from_slice(&shard[r.start as usize..r.end as usize]);
    let index = AnyIndex::parse(&tail, bytes, None).unwrap().unwrap();
    (tail, index)
}

fn index_benches(c: &mut Criterion) {
    let shard = big_index_shard();
    let (tail, index) = parse_index(&shard);
    let r = tail.index_range();
    let uid_bytes: usize = (0..ENTRIES).map(|i| uid(i).len()).sum();
    let index_len = (r.end - r.start) as usize;
    eprintln!(
        "index: {index_len} bytes for {} entries = {:.1} B/entry ({:.1} B/entry besides the uid)",
        index.len(),
        index_len as f64 / index.len() as f64,
        (index_len - uid_bytes) as f64 / index.len() as f64
    );
    eprintln!(
        "cached: {} bytes = {:.1} B/entry ({:.1} B/entry besides the uid)",
        index.heap_size(),
        index.heap_size() as f64 / index.len() as f64,
        (index.heap_size() - uid_bytes) as f64 / index.len() as f64
    );
    let probes: Vec<String> = (0..1024).map(|i| uid(i * 97)).collect();
    let mut i = 0;
    c.bench_function("index_find_100k_entries", |b| {
        b.iter(|| {
            i = (i + 1) % probes.len();
            black_box(index.find(black_box(&probes[i])))
        })
    });
    let suffix = &shard[shard.len() - 64 * 1024..];
    c.bench_function("trailer_parse_from_64k_suffix", |b| {
        b.iter(|| black_box(Tail::parse(black_box(suffix), shard.len() as u64).unwrap()))
    });
}

/// Pseudo-text: compressible like HTML, deterministic.
fn payload(len: usize) -> Vec<u8> {
    let words: [&[u8]; 6] = [
        b"<div class=",
        b"\"item\">",
        b"fn main() ",
        b"{ 42 }",
        b"</div>\n",
        b"lorem ",
    ];
    let mut out = Vec::with_capacity(len);
    let mut x = 7u64;
    while out.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.extend_from_slice(words[(x >> 61) as usize % words.len()]);
        out.push(b'a' + (x >> 40) as u8 % 26);
    }
    out.truncate(len);
    out
}

fn verify_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify_and_decode");
    for (label, policy) in [
        ("none", Compression::None),
        ("zstd3", Compression::Zstd { level: 3 }),
    ] {
        for kib in [1usize, 64] {
            let data = payload(kib * 1024);
            let (codec, stored) = codec::encode(policy, "x.html", None, &data).unwrap();
            let mut w = ShardWriter::new(Vec::new(), ident()).unwrap();
            let e = NewEntry {
                uid: "x.html".into(),
                created_at: Timestamp::from_micros(0),
                content_type: None,
                meta: None,
                codec,
                orig_len: data.len() as u64,
                digest: DigestAlgorithm::Blake3.digest(&data),
            };
            w.add_inline(e, &stored).unwrap();
            let shard = w.finish().unwrap().0;
            let (_, index) = parse_index(&shard);
            let loc = index.find("x.html").unwrap();
            let r = loc.shard_range().unwrap();
            let stored = &shard[r.start as usize..r.end as usize];
            g.throughput(Throughput::Bytes(data.len() as u64));
            g.bench_with_input(
                BenchmarkId::new(label, format!("{kib}KiB")),
                &stored,
                |b, s| b.iter(|| black_box(loc.decode(black_box(s)).unwrap())),
            );
        }
    }
    g.finish();
}

fn routing_benches(c: &mut Criterion) {
    let at = Timestamp::parse_rfc3339("2024-05-17T10:00:00Z").unwrap();
    c.bench_function("route_numeric_uid", |b| {
        b.iter(|| black_box(locate_ts(black_box("99999999999999999999"), at, 12).unwrap()))
    });
    c.bench_function("route_string_uid", |b| {
        b.iter(|| black_box(locate_ts(black_box("docs/2024/05/17/00012345.pdf"), at, 12).unwrap()))
    });
    c.bench_function("parse_rfc3339", |b| {
        b.iter(|| {
            black_box(Timestamp::parse_rfc3339(black_box("2024-05-17T10:00:00.123+02:00")).unwrap())
        })
    });
}

criterion_group!(benches, index_benches, verify_benches, routing_benches);
criterion_main!(benches);
