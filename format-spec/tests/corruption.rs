//! Single-byte damage anywhere in a shard must never yield wrong bytes: the
//! reader either reports an error or returns exactly what was written. Every
//! position is tried with each single-bit flip and with a full-byte inversion.

// clippy.toml lets #[test] functions unwrap, but not the helpers they call;
// in a test binary a panic is a failed test either way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;
use des_format::codec::{self, Codec, Compression};
use des_format::legacy;
use des_format::shard::Source;
use des_format::v3::{IndexLayout, NewEntry, ShardIdent, ShardWriter};
use des_format::{AnyIndex, DigestAlgorithm, Tail, Timestamp};

struct Fixture {
    shard: Vec<u8>,
    /// uid -> original bytes.
    files: BTreeMap<String, Vec<u8>>,
    /// The one external payload, kept outside the shard and never damaged.
    external: (String, Vec<u8>),
}

/// The identity of the test shards (date 20240517, shard 3 of n_bits 4).
fn ident(alg: DigestAlgorithm, generation: u64) -> ShardIdent {
    ShardIdent {
        date: 20240517,
        shard_index: 3,
        n_bits: 4,
        generation,
        digest_alg: alg,
        written_at: Timestamp::from_micros(1_715_947_200_000_000),
    }
}

fn fixture() -> Fixture {
    fixture_in(IndexLayout::Flat)
}

/// The same files in either index layout; paged with pages of about one
/// entry, so the directory has several records and keys.
fn fixture_in(layout: IndexLayout) -> Fixture {
    let alg = DigestAlgorithm::Blake3;
    let ident = ident(alg, 2);
    let text = |s: &str, n: usize| s.repeat(n).into_bytes();
    // (uid, original bytes, policy, content type, metadata)
    type File = (
        &'static str,
        Vec<u8>,
        Compression,
        Option<&'static str>,
        Option<&'static str>,
    );
    let files: Vec<File> = vec![
        (
            "a.txt",
            text("alpha beta gamma ", 12),
            Compression::Zstd { level: 3 },
            None,
            None,
        ),
        (
            "b.log",
            text("lz4 line\n", 16),
            Compression::Lz4,
            Some("text/plain"),
            None,
        ),
        (
            "c.bin",
            (0u8..=200).collect(),
            Compression::None,
            None,
            Some(r#"{"k":"v"}"#),
        ),
        ("d", Vec::new(), Compression::None, None, None),
        (
            "12345",
            b"short".to_vec(),
            Compression::default(),
            Some("text/x"),
            None,
        ),
        (
            "ext",
            text("external ", 40),
            Compression::Zstd { level: 3 },
            None,
            None,
        ),
    ];
    let mut w = ShardWriter::with_layout(Vec::new(), ident, layout)
        .unwrap()
        .with_page_target(100);
    let mut external = None;
    let mut map = BTreeMap::new();
    for (uid, data, policy, ct, meta) in files {
        let (codec, stored) = codec::encode(policy, uid, ct, &data).unwrap();
        let e = NewEntry {
            uid: uid.to_string(),
            created_at: Timestamp::from_micros(1_715_940_000_000_000),
            content_type: ct.map(str::to_string),
            meta: meta.map(str::to_string),
            codec,
            orig_len: data.len() as u64,
            digest: alg.digest(&data),
        };
        if uid == "ext" {
            let key = format!("_big/{}", hex::encode(e.digest));
            w.add_external(e, stored.len() as u64, crc32c::crc32c(&stored))
                .unwrap();
            external = Some((key, stored.into_owned()));
        } else {
            w.add_inline(e, &stored).unwrap();
        }
        map.insert(uid.to_string(), data);
    }
    let (shard, _) = w.finish().unwrap();
    Fixture {
        shard,
        files: map,
        external: external.unwrap(),
    }
}

/// A complete read as a client does it: detect the layout from the tail, parse
/// the index (asking for the header only if a legacy index is ambiguous), then
/// fetch and decode every entry it lists.
fn read_everything(
    shard: &[u8],
    external: &(String, Vec<u8>),
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let len = shard.len() as u64;
    let tail = Tail::parse(shard, len).map_err(|e| e.to_string())?;
    let r = tail.index_range();
    let index = Bytes::copy_from_slice(&shard[r.start as usize..r.end as usize]);
    let ix = match AnyIndex::parse(&tail, index.clone(), None).map_err(|e| e.to_string())? {
        Some(ix) => ix,
        None => {
            let v = legacy::parse_header(shard).map_err(|e| e.to_string())?;
            AnyIndex::parse(&tail, index, Some(v))
                .map_err(|e| e.to_string())?
                .ok_or("ambiguous")?
        }
    };
    let mut out = BTreeMap::new();
    for loc in ix.located() {
        let stored: &[u8] = match &loc.source {
            Source::InShard { .. } => {
                let r = loc.shard_range().ok_or("no range")?;
                &shard[r.start as usize..r.end as usize]
            }
            Source::External { key, .. } if *key == external.0 => &external.1,
            Source::External { key, .. } => return Err(format!("no such object {key}")),
        };
        // The zero-copy path must accept and refuse exactly what the copying one does.
        let data = match (
            loc.decode(stored),
            loc.decode_bytes(Bytes::copy_from_slice(stored)),
        ) {
            (Ok(copied), Ok(shared)) if copied[..] == shared[..] => copied,
            (Err(e), Err(_)) => return Err(e.to_string()),
            other => panic!("decode and decode_bytes disagree on {}: {other:?}", loc.uid),
        };
        out.insert(loc.uid, data);
    }
    Ok(out)
}

fn check(f: &Fixture, damaged: &[u8], what: &str) -> bool {
    let result = catch_unwind(AssertUnwindSafe(|| read_everything(damaged, &f.external)))
        .unwrap_or_else(|_| panic!("reader panicked on {what}"));
    match result {
        Err(_) => false,
        Ok(files) => {
            assert_eq!(files, f.files, "{what}: reader returned wrong content");
            true
        }
    }
}

#[test]
fn fixture_is_small_and_mixed() {
    let f = fixture();
    assert!(
        (600..=2048).contains(&f.shard.len()),
        "shard is {} bytes",
        f.shard.len()
    );
    assert_eq!(read_everything(&f.shard, &f.external).unwrap(), f.files);
    let tail = Tail::parse(&f.shard, f.shard.len() as u64).unwrap();
    let r = tail.index_range();
    let ix = AnyIndex::parse(
        &tail,
        Bytes::copy_from_slice(&f.shard[r.start as usize..]),
        None,
    );
    // The trailer is not part of the index; slicing past it must be refused.
    assert!(ix.is_err());
    let index = Bytes::copy_from_slice(&f.shard[r.start as usize..r.end as usize]);
    let ix = AnyIndex::parse(&tail, index, None).unwrap().unwrap();
    let codecs: Vec<Codec> = ix.located().iter().map(|l| l.codec).collect();
    for c in [Codec::None, Codec::Zstd, Codec::Lz4] {
        assert!(codecs.contains(&c), "fixture lacks {c:?}");
    }
}

#[test]
fn single_byte_damage_never_returns_wrong_bytes() {
    for layout in [IndexLayout::Flat, IndexLayout::Paged] {
        single_byte_damage_is_detected(&fixture_in(layout));
    }
}

fn single_byte_damage_is_detected(f: &Fixture) {
    let mut survived = Vec::new();
    let mut damaged = f.shard.clone();
    for pos in 0..f.shard.len() {
        let masks = (0..8).map(|bit| 1u8 << bit).chain([0xFF]);
        for mask in masks {
            damaged[pos] ^= mask;
            if check(f, &damaged, &format!("byte {pos} ^ {mask:#04x}")) {
                survived.push(pos);
            }
            damaged[pos] ^= mask;
        }
    }
    // Only the header is outside every checksum, and it carries no entry data;
    // everything else (payloads, index, trailer) must detect any change.
    survived.dedup();
    assert!(
        survived.iter().all(|&p| p < 8),
        "undetected damage at {survived:?}"
    );
}

#[test]
fn truncation_and_extension_are_errors() {
    for layout in [IndexLayout::Flat, IndexLayout::Paged] {
        truncation_and_extension_are_errors_in(&fixture_in(layout));
    }
}

fn truncation_and_extension_are_errors_in(f: &Fixture) {
    for cut in 0..f.shard.len() {
        assert!(
            !check(f, &f.shard[..cut], &format!("truncated to {cut}")),
            "cut {cut}"
        );
    }
    let mut longer = f.shard.clone();
    longer.push(0);
    assert!(!check(f, &longer, "one byte appended"));
    let mut prefixed = vec![0];
    prefixed.extend_from_slice(&f.shard);
    assert!(!check(f, &prefixed, "one byte prepended"));
}

/// One raw entry `e` whose stored bytes are `stored` (its CRC computed over
/// them by the writer) and whose digest is that of `original`.
fn one_raw_entry(original: &[u8], stored: &[u8]) -> des_format::shard::Located {
    let alg = DigestAlgorithm::Blake3;
    let ident = ident(alg, 1);
    let mut w = ShardWriter::new(Vec::new(), ident).unwrap();
    let e = NewEntry {
        uid: "e".into(),
        created_at: Timestamp::from_micros(1_715_947_200_000_000),
        content_type: None,
        meta: None,
        codec: Codec::None,
        orig_len: original.len() as u64,
        digest: alg.digest(original),
    };
    w.add_inline(e, stored).unwrap();
    let (shard, _) = w.finish().unwrap();
    let tail = Tail::parse(&shard, shard.len() as u64).unwrap();
    let r = tail.index_range();
    let index = Bytes::copy_from_slice(&shard[r.start as usize..r.end as usize]);
    let ix = AnyIndex::parse(&tail, index, None).unwrap().unwrap();
    ix.located().into_iter().next().unwrap()
}

/// Each check catches the damage it is there for, not a later one: a
/// flipped stored byte fails the CRC (before decoding); bytes whose CRC was
/// computed after the damage (a bad copy carried forward) fail the digest.
#[test]
fn each_check_fires_on_its_own_damage() {
    let original: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut damaged = original.clone();
    damaged[100] ^= 0x10;

    let loc = one_raw_entry(&original, &original);
    for err in [
        loc.decode(&damaged).unwrap_err(),
        loc.decode_bytes(Bytes::from(damaged.clone())).unwrap_err(),
    ] {
        assert!(err.to_string().contains("crc32c"), "{err}");
    }

    let loc = one_raw_entry(&original, &damaged);
    for err in [
        loc.decode(&damaged).unwrap_err(),
        loc.decode_bytes(Bytes::from(damaged.clone())).unwrap_err(),
    ] {
        let text = err.to_string();
        assert!(
            text.contains("digest") && !text.contains("crc32c"),
            "{text}"
        );
    }
}

/// `shard` with its index replaced by `index`, the trailer's index checksum
/// (and its own) recomputed: damage a reader can only catch by checking the
/// index's structure, as a buggy or hostile writer would produce it.
fn with_index(shard: &[u8], index: &[u8]) -> Vec<u8> {
    let len = shard.len() as u64;
    let Tail::V3(mut trailer) = Tail::parse(shard, len).unwrap() else {
        panic!("not v3")
    };
    let r = trailer.index_range();
    let mut out = shard.to_vec();
    out[r.start as usize..r.end as usize].copy_from_slice(index);
    trailer.index_crc32c = crc32c::crc32c(index);
    let at = out.len() - des_format::v3::TRAILER_LEN;
    out[at..].copy_from_slice(&trailer.encode());
    out
}

/// Each structural rule of the index (SPEC §5.9) is checked on its own, not
/// only through the checksum: damage with a valid checksum is refused.
#[test]
fn index_structure_is_checked_behind_a_valid_checksum() {
    const E: usize = 64;
    let f = fixture();
    let tail = Tail::parse(&f.shard, f.shard.len() as u64).unwrap();
    let r = tail.index_range();
    let index = f.shard[r.start as usize..r.end as usize].to_vec();
    let entries = AnyIndex::parse(&tail, Bytes::from(index.clone()), None)
        .unwrap()
        .unwrap()
        .located();
    let inline: Vec<usize> = (0..entries.len())
        .filter(|&i| matches!(entries[i].source, Source::InShard { .. }))
        .collect();
    let external = (0..entries.len())
        .find(|&i| matches!(entries[i].source, Source::External { .. }))
        .unwrap();
    let (a, b) = (inline[0], inline[1]);
    let span = |i: usize| entries[i].shard_range().unwrap();
    let (longer, longer_len) = inline
        .iter()
        .map(|&i| (i, span(i)))
        .find(|(_, r)| {
            !r.is_empty()
                && inline
                    .iter()
                    .any(|&j| span(j).start == r.end && !span(j).is_empty())
        })
        .map(|(i, r)| (i, r.end - r.start))
        .unwrap();
    let set_u40 = |ix: &mut Vec<u8>, entry: usize, at: usize, v: u64| {
        ix[entry * E + at..entry * E + at + 5].copy_from_slice(&v.to_le_bytes()[..5]);
    };
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let damages: Vec<(&str, Damage)> = vec![
        (
            "out of order",
            Box::new(move |ix| {
                let (x, y) = (ix[a * E..a * E + E].to_vec(), ix[b * E..b * E + E].to_vec());
                ix[a * E..a * E + E].copy_from_slice(&y);
                ix[b * E..b * E + E].copy_from_slice(&x);
            }),
        ),
        (
            "unknown codec",
            Box::new(move |ix| ix[a * E + 63] = (ix[a * E + 63] & 0xF0) | 0x0F),
        ),
        ("unknown flags", Box::new(move |ix| ix[a * E + 63] |= 0x80)),
        (
            "inside the header",
            Box::new(move |ix| set_u40(ix, a, 48, 1)),
        ),
        (
            "outside the data region",
            Box::new(move |ix| set_u40(ix, a, 48, 1 << 39)),
        ),
        (
            // One payload one byte longer, into the next: an overlap that
            // leaves no gap anywhere, so only the overlap rule can see it.
            "overlap",
            Box::new(move |ix| set_u40(ix, longer, 53, longer_len + 1)),
        ),
        (
            "external with an offset",
            Box::new(move |ix| set_u40(ix, external, 48, 64)),
        ),
        (
            "heap out of range",
            Box::new(move |ix| {
                ix[a * E + 40..a * E + 44].copy_from_slice(&u32::MAX.to_le_bytes());
            }),
        ),
    ];
    for (what, damage) in damages {
        let mut damaged = index.clone();
        damage(&mut damaged);
        let shard = with_index(&f.shard, &damaged);
        let tail = Tail::parse(&shard, shard.len() as u64).unwrap();
        let parsed = AnyIndex::parse(&tail, Bytes::from(damaged), None);
        assert!(parsed.is_err(), "{what}: index accepted");
        assert!(!check(&f, &shard, what), "{what}: shard read");
    }
}

/// The trailer's geometry is checked on its own, not only through its
/// checksum: a trailer re-encoded (valid CRC) with impossible numbers is
/// refused before any index is read.
#[test]
fn trailer_geometry_is_checked_behind_a_valid_checksum() {
    let f = fixture();
    let len = f.shard.len() as u64;
    let Tail::V3(good) = Tail::parse(&f.shard, len).unwrap() else {
        panic!("not v3")
    };
    type Forge = Box<dyn Fn(&mut des_format::v3::Trailer)>;
    let forged: Vec<(&str, Forge)> = vec![
        ("index inside the header", Box::new(|t| t.index_offset = 4)),
        ("index past the trailer", Box::new(|t| t.index_len += 1)),
        ("index short of the trailer", Box::new(|t| t.index_len -= 1)),
        (
            // One entry more than the index can hold, not absurdly many:
            // the size arithmetic itself is what is tested.
            "entries beyond the index",
            Box::new(|t| t.entry_count = u32::try_from(t.index_len / 64 + 1).unwrap()),
        ),
        (
            "shard index beyond n_bits",
            Box::new(|t| t.shard_index = 1 << t.n_bits),
        ),
        ("n_bits out of range", Box::new(|t| t.n_bits = 40)),
    ];
    for (what, forge) in forged {
        let mut t = good;
        forge(&mut t);
        let mut shard = f.shard.clone();
        let at = shard.len() - des_format::v3::TRAILER_LEN;
        shard[at..].copy_from_slice(&t.encode());
        assert!(
            Tail::parse(&shard, len).is_err(),
            "{what}: trailer accepted"
        );
        assert!(!check(&f, &shard, what), "{what}: shard read");
    }
}
