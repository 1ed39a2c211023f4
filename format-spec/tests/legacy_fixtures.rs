//! Every shard the Python DES wrote must read back with the expected SHA-256.

// clippy.toml lets #[test] functions unwrap, but not the helpers they call;
// in a test binary a panic is a failed test either way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use des_format::digest::sha256_hex;
use des_format::legacy;
use des_format::routing::{shard_hex, shard_index};
use des_format::shard::Source;
use des_format::{AnyIndex, Tail, locate};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/legacy-des/format")
}

fn read_all(path: &Path) -> (Vec<u8>, AnyIndex) {
    let bytes = std::fs::read(path).unwrap();
    let len = bytes.len() as u64;
    let tail = Tail::parse(&bytes, len).unwrap();
    let range = tail.index_range();
    let index = Bytes::copy_from_slice(&bytes[range.start as usize..range.end as usize]);
    let version = legacy::parse_header(&bytes).unwrap();
    let ix = AnyIndex::parse(&tail, index.clone(), Some(version))
        .unwrap()
        .unwrap();
    // Reading from a suffix alone (version unknown) must give the same answer or ask for the header.
    if let Some(guess) = AnyIndex::parse(&tail, index.clone(), None).unwrap() {
        assert_eq!(guess.located(), ix.located());
    }
    assert!(ix.trailer().is_none(), "legacy shards have no v3 trailer");
    assert!(!ix.is_empty());
    let uid_bytes: usize = ix.located().iter().map(|l| l.uid.len()).sum();
    assert!(
        ix.heap_size() > uid_bytes,
        "cache charge below the uids held"
    );
    (bytes, ix)
}

#[test]
fn every_legacy_entry_reads_back() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    let mut checked = 0;
    for shard in expected["shards"].as_array().unwrap() {
        let file = shard["file"].as_str().unwrap();
        let (bytes, ix) = read_all(&fixtures().join(file));
        let entries = shard["entries"].as_array().unwrap();
        assert_eq!(ix.len(), entries.len(), "{file}");
        for e in entries {
            let uid = e["uid"].as_str().unwrap();
            let loc = ix
                .find(uid)
                .unwrap_or_else(|| panic!("{file}: {uid} missing"));
            let stored = match &loc.source {
                Source::InShard { offset } => {
                    bytes[*offset as usize..(*offset + loc.stored_len) as usize].to_vec()
                }
                Source::External {
                    key,
                    relative_to_shard,
                } => {
                    assert!(relative_to_shard);
                    assert_eq!(e["bigfile"], Value::Bool(true));
                    std::fs::read(fixtures().join(key)).unwrap()
                }
            };
            let data = loc.decode(&stored).unwrap();
            assert_eq!(data.len() as u64, e["size"].as_u64().unwrap(), "{uid}");
            assert_eq!(sha256_hex(&data), e["sha256"].as_str().unwrap(), "{uid}");
            let meta_expected = &e["meta"];
            let meta_got: Value = loc
                .meta
                .as_deref()
                .map_or(Value::Object(Default::default()), |m| {
                    serde_json::from_str(m).unwrap()
                });
            assert_eq!(&meta_got, meta_expected, "{uid}");
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} entries checked");
}

#[test]
fn routing_matches_the_original() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    let vectors = expected["routing"].as_array().unwrap();
    assert!(vectors.len() > 100);
    for v in vectors {
        let uid = v["uid"].as_str().unwrap();
        let n = v["n_bits"].as_u64().unwrap() as u8;
        let created = v["created_at"].as_str().unwrap();
        let idx = shard_index(uid, n).unwrap();
        assert_eq!(
            u64::from(idx),
            v["shard_index"].as_u64().unwrap(),
            "{uid} n={n}"
        );
        assert_eq!(
            shard_hex(idx, n),
            v["shard_hex"].as_str().unwrap(),
            "{uid} n={n}"
        );
        let loc = locate(uid, created, n).unwrap();
        assert_eq!(
            loc.date_dir,
            v["date_dir"].as_str().unwrap(),
            "{uid} {created}"
        );
    }
}

#[test]
fn truncated_legacy_shards_are_errors_not_panics() {
    let bytes = std::fs::read(fixtures().join("20240517_NONE_0000.des")).unwrap();
    // A cut object has lost its footer: the tail itself is refused.
    for cut in [
        0,
        1,
        7,
        8,
        12,
        100,
        bytes.len() / 2,
        bytes.len() - 13,
        bytes.len() - 1,
    ] {
        let b = &bytes[..cut];
        assert!(Tail::parse(b, b.len() as u64).is_err(), "cut at {cut}");
    }
    // A footer intact over an index cut short (the rest zeroed, as a torn
    // write would leave it): the footer parses, the index must not. (The
    // legacy index has no checksum: damage confined to its last field can go
    // unseen, so the cuts leave more than that to lose.)
    let tail = Tail::parse(&bytes, bytes.len() as u64).unwrap();
    let r = tail.index_range();
    let (start, end) = (r.start as usize, r.end as usize);
    for keep in [
        0,
        1,
        4,
        (end - start) / 3,
        (end - start) / 2,
        (end - start) * 2 / 3,
    ] {
        let mut torn = bytes.clone();
        torn[start + keep..end].fill(0);
        let t = Tail::parse(&torn, torn.len() as u64).unwrap();
        let ix = Bytes::copy_from_slice(&torn[start..end]);
        assert!(
            AnyIndex::parse(&t, ix, None).is_err(),
            "index cut after {keep} of {} bytes parsed",
            end - start
        );
    }
}
