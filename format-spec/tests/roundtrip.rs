//! Whatever the writer accepts, the reader returns unchanged: every payload,
//! every field, through both the generic (`AnyIndex`) and the v3 (`IndexView`)
//! paths, reading the index from a suffix the way a remote reader does.

// clippy.toml lets #[test] functions unwrap, but not the helpers they call;
// in a test binary a panic is a failed test either way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use des_format::codec::{self, Codec, Compression};
use des_format::shard::Located;
use des_format::shard::Source;
use des_format::v3::{
    Directory, IndexLayout, IndexView, NewEntry, ShardIdent, ShardWriter, TRAILER_LEN, Trailer,
    paged,
};
use des_format::{AnyIndex, DigestAlgorithm, FormatError, Tail, Timestamp};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Input {
    uid: String,
    data: Vec<u8>,
    policy: Compression,
    external: bool,
    content_type: Option<String>,
    meta: Option<String>,
    created_at: i64,
}

/// Uids that stress ordering: shared prefixes (one a prefix of another),
/// digits (numeric routing), multi-byte UTF-8 that sorts differently by bytes
/// than by chars, and the 1024-byte maximum.
fn uid() -> impl Strategy<Value = String> {
    let prefix = prop::sample::select(vec![
        "",
        "a",
        "ab",
        "doc-",
        "doc-1",
        "é",
        "日本/",
        "\u{10FFFF}",
    ]);
    let tail = prop_oneof![
        "[a-z0-9]{0,6}",
        "[0-9]{1,25}",
        "\\PC{0,8}",
        Just(String::new()),
    ];
    prop_oneof![
        8 => (prefix, tail).prop_map(|(p, t)| format!("{p}{t}")),
        1 => Just("x".repeat(1024)),
    ]
    .prop_filter("uid must be 1..=1024 bytes", |u| {
        !u.is_empty() && u.len() <= 1024
    })
}

/// Mixes incompressible noise with runs so zstd/lz4 actually compress some payloads.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..4096),
        (any::<u8>(), 0usize..4096).prop_map(|(b, n)| vec![b; n]),
        ("[a-z ]{1,16}", 1usize..256).prop_map(|(s, n)| s.repeat(n).into_bytes()),
    ]
}

fn policy() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Lz4),
        (1i32..=5).prop_map(|level| Compression::Zstd { level }),
        Just(Compression::default()),
    ]
}

fn meta() -> impl Strategy<Value = Option<String>> {
    prop::option::of(
        prop::collection::btree_map("[a-z]{1,6}", "\\PC{0,10}", 0..4)
            .prop_map(|m| serde_json::to_string(&m).unwrap()),
    )
}

fn input() -> impl Strategy<Value = Input> {
    (
        uid(),
        payload(),
        policy(),
        prop::bool::weighted(0.15),
        // Empty content type is stored as "none" (length 0), so never generate it.
        prop::option::of("[a-z]{1,10}/[a-z0-9.+-]{1,20}"),
        meta(),
        any::<i64>(),
    )
        .prop_map(
            |(uid, data, policy, external, content_type, meta, created_at)| Input {
                uid,
                data,
                policy,
                external,
                content_type,
                meta,
                created_at,
            },
        )
}

/// Distinct uids (the writer rejects duplicates; that is tested separately).
fn inputs() -> impl Strategy<Value = Vec<Input>> {
    prop::collection::vec(input(), 0..24).prop_map(|v| {
        let mut seen = std::collections::HashSet::new();
        v.into_iter()
            .filter(|i| seen.insert(i.uid.clone()))
            .collect()
    })
}

fn alg() -> impl Strategy<Value = DigestAlgorithm> {
    prop_oneof![Just(DigestAlgorithm::Blake3), Just(DigestAlgorithm::Sha256)]
}

struct Written {
    shard: Vec<u8>,
    /// Stand-in for the store's `_big/<hex>` objects.
    external: HashMap<String, Vec<u8>>,
}

fn ident(alg: DigestAlgorithm) -> ShardIdent {
    ShardIdent {
        date: 20240517,
        shard_index: 0xB5C,
        n_bits: 12,
        generation: 7,
        digest_alg: alg,
        written_at: Timestamp::from_micros(1_715_947_200_123_456),
    }
}

fn new_entry(i: &Input, codec: Codec, alg: DigestAlgorithm) -> NewEntry {
    NewEntry {
        uid: i.uid.clone(),
        created_at: Timestamp::from_micros(i.created_at),
        content_type: i.content_type.clone(),
        meta: i.meta.clone(),
        codec,
        orig_len: i.data.len() as u64,
        digest: alg.digest(&i.data),
    }
}

fn layout() -> impl Strategy<Value = IndexLayout> {
    prop_oneof![Just(IndexLayout::Flat), Just(IndexLayout::Paged)]
}

/// Paged shards get pages of about 200 bytes, so a few entries make several
/// pages and separator keys meet the uids' shared prefixes.
fn write(inputs: &[Input], alg: DigestAlgorithm, layout: IndexLayout) -> Written {
    let mut w = ShardWriter::with_layout(Vec::new(), ident(alg), layout)
        .unwrap()
        .with_page_target(200);
    let mut external = HashMap::new();
    for i in inputs {
        let (codec, stored) =
            codec::encode(i.policy, &i.uid, i.content_type.as_deref(), &i.data).unwrap();
        let e = new_entry(i, codec, alg);
        if i.external {
            let key = format!("_big/{}", hex::encode(e.digest));
            w.add_external(e, stored.len() as u64, crc32c::crc32c(&stored))
                .unwrap();
            external.insert(key, stored.into_owned());
        } else {
            w.add_inline(e, &stored).unwrap();
        }
    }
    let (shard, summary) = w.finish().unwrap();
    assert_eq!(summary.total_len, shard.len() as u64);
    assert_eq!(summary.entries as usize, inputs.len());
    Written { shard, external }
}

/// A remote reader's first request: the last `n` bytes of the object.
fn suffix(shard: &[u8], n: usize) -> &[u8] {
    &shard[shard.len().saturating_sub(n)..]
}

/// A paged lookup as a remote reader makes it: the directory from the end of
/// the object, then the one page it names.
fn paged_find(shard: &[u8], trailer: &Trailer, uid: &str) -> Option<Located> {
    let len = shard.len() as u64;
    let dir = paged::directory_range(shard, trailer, len).unwrap();
    let dir = Directory::parse(&shard[dir.start as usize..dir.end as usize], trailer).unwrap();
    let r = dir.page_range(dir.page_for(uid)?).unwrap();
    let page = Bytes::copy_from_slice(&shard[r.start as usize..r.end as usize]);
    dir.page(dir.page_for(uid)?, page).unwrap().find(uid)
}

fn index_bytes(shard: &[u8], tail: &Tail) -> Bytes {
    let r = tail.index_range();
    Bytes::copy_from_slice(&shard[r.start as usize..r.end as usize])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn every_entry_reads_back(inputs in inputs(), alg in alg(), layout in layout(), suffix_len in TRAILER_LEN..70_000) {
        let Written { shard, external } = write(&inputs, alg, layout);
        let len = shard.len() as u64;

        // The trailer must parse from any suffix that holds at least the trailer.
        let tail = Tail::parse(suffix(&shard, suffix_len), len).unwrap();
        let Tail::V3(trailer) = &tail else { panic!("v3 shard detected as legacy") };
        prop_assert_eq!(trailer.digest_alg, alg);
        prop_assert_eq!(trailer.entry_count as usize, inputs.len());
        prop_assert_eq!(trailer.generation, 7);
        prop_assert_eq!(trailer.shard_index, 0xB5C);
        prop_assert_eq!(trailer.layout, layout);
        prop_assert_eq!(shard[4], layout.version(), "header version byte");

        let index = index_bytes(&shard, &tail);
        // Only a flat index is one entry table; paged ones are read by page below.
        let view = IndexView::parse(&index, trailer).ok();
        prop_assert_eq!(view.is_some(), layout == IndexLayout::Flat);
        let ix = AnyIndex::parse(&tail, index.clone(), None).unwrap().unwrap();
        prop_assert_eq!(ix.len(), inputs.len());
        prop_assert_eq!(ix.is_empty(), inputs.is_empty());
        prop_assert_eq!(ix.trailer(), Some(trailer));
        // What a byte-bounded cache charges for it: at least the uids it holds.
        let uid_bytes: usize = inputs.iter().map(|i| i.uid.len()).sum();
        prop_assert!(ix.heap_size() > 1 + uid_bytes, "{} for {uid_bytes} uid bytes", ix.heap_size());

        // Listing is in uid byte order.
        let listed: Vec<String> = ix.located().into_iter().map(|l| l.uid).collect();
        let mut sorted: Vec<String> = inputs.iter().map(|i| i.uid.clone()).collect();
        sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        prop_assert_eq!(listed, sorted);

        for i in &inputs {
            let loc = ix.find(&i.uid).unwrap();
            let stored = match &loc.source {
                Source::InShard { .. } => {
                    prop_assert!(!i.external);
                    let r = loc.shard_range().unwrap();
                    shard[r.start as usize..r.end as usize].to_vec()
                }
                Source::External { key, relative_to_shard } => {
                    prop_assert!(i.external);
                    prop_assert!(!relative_to_shard);
                    external[key].clone()
                }
            };
            prop_assert_eq!(&loc.decode(&stored).unwrap(), &i.data, "uid {:?}", i.uid);
            prop_assert_eq!(loc.orig_len, i.data.len() as u64);
            prop_assert_eq!(loc.created_at, Some(Timestamp::from_micros(i.created_at)));
            prop_assert_eq!(&loc.content_type, &i.content_type);
            prop_assert_eq!(&loc.meta, &i.meta);
            prop_assert_eq!(loc.etag(), Some(hex::encode(alg.digest(&i.data))));
            if i.policy == Compression::None {
                prop_assert_eq!(loc.codec, Codec::None);
            }
            if i.policy == Compression::Lz4 {
                prop_assert_eq!(loc.codec, Codec::Lz4);
            }

            // The stored-bytes view (flat) or the page (paged) sees the same entry.
            if let Some(view) = &view {
                let e = view.find(&i.uid).unwrap();
                prop_assert_eq!(e.uid, i.uid.as_str());
                prop_assert_eq!(e.is_external(), i.external);
                prop_assert_eq!(e.digest(), alg.digest(&i.data));
            } else {
                prop_assert_eq!(paged_find(&shard, trailer, &i.uid), Some(loc));
            }
        }
    }

    #[test]
    fn find_equals_linear_scan(inputs in inputs(), probes in prop::collection::vec(uid(), 0..16)) {
        let Written { shard, .. } = write(&inputs, DigestAlgorithm::Blake3, IndexLayout::Flat);
        let tail = Tail::parse(&shard, shard.len() as u64).unwrap();
        let Tail::V3(trailer) = &tail else { panic!("v3 shard detected as legacy") };
        let index = index_bytes(&shard, &tail);
        let view = IndexView::parse(&index, trailer).unwrap();
        let paged = write(&inputs, DigestAlgorithm::Blake3, IndexLayout::Paged).shard;
        let Tail::V3(paged_trailer) = Tail::parse(&paged, paged.len() as u64).unwrap() else {
            panic!("v3 shard detected as legacy")
        };

        // Present uids, random (mostly absent) uids, and near misses that sit
        // right next to a present uid in sort order.
        let mut all: Vec<String> = probes;
        for i in &inputs {
            all.push(i.uid.clone());
            all.push(format!("{}\0", i.uid));
            all.push(format!("{}~", i.uid));
            let mut shorter = i.uid.clone();
            shorter.pop();
            all.push(shorter);
        }
        for p in &all {
            let scanned = view.iter().find(|e| e.uid == p.as_str()).map(|e| (e.uid, e.data_offset(), e.crc32c()));
            let found = view.find(p).map(|e| (e.uid, e.data_offset(), e.crc32c()));
            prop_assert_eq!(found, scanned, "probe {:?}", p);
            prop_assert_eq!(found.is_some(), inputs.iter().any(|i| &i.uid == p));
            let by_page = paged_find(&paged, &paged_trailer, p).map(|l| l.uid);
            prop_assert_eq!(by_page.as_deref(), found.map(|f| f.0), "paged probe {:?}", p);
        }
    }

    #[test]
    fn duplicate_uid_is_rejected(inputs in inputs(), pick in any::<prop::sample::Index>(), ext in any::<bool>()) {
        prop_assume!(!inputs.is_empty());
        let dup = pick.get(&inputs).clone();
        let mut w = ShardWriter::new(Vec::new(), ident(DigestAlgorithm::Blake3)).unwrap();
        for i in &inputs {
            let e = new_entry(i, Codec::None, DigestAlgorithm::Blake3);
            w.add_inline(e, &i.data).unwrap();
        }
        let before = w.position();
        let e = new_entry(&dup, Codec::None, DigestAlgorithm::Blake3);
        let err = if ext {
            w.add_external(e, dup.data.len() as u64, crc32c::crc32c(&dup.data)).unwrap_err()
        } else {
            w.add_inline(e, &dup.data).unwrap_err()
        };
        prop_assert!(matches!(err, FormatError::InvalidInput(_)), "{err:?}");
        // The rejected payload was not written; the shard is still valid.
        prop_assert_eq!(w.position(), before);
        let (shard, _) = w.finish().unwrap();
        let tail = Tail::parse(&shard, shard.len() as u64).unwrap();
        let ix = AnyIndex::parse(&tail, index_bytes(&shard, &tail), None).unwrap().unwrap();
        prop_assert_eq!(ix.len(), inputs.len());
        let loc = ix.find(&dup.uid).unwrap();
        let r = loc.shard_range().unwrap();
        prop_assert_eq!(loc.decode(&shard[r.start as usize..r.end as usize]).unwrap(), dup.data);
    }
}

#[test]
fn duplicate_uid_in_one_shard_is_an_error() {
    let mut w = ShardWriter::new(Vec::new(), ident(DigestAlgorithm::Sha256)).unwrap();
    let i = Input {
        uid: "same".into(),
        data: b"one".to_vec(),
        policy: Compression::None,
        external: false,
        content_type: None,
        meta: None,
        created_at: 0,
    };
    w.add_inline(new_entry(&i, Codec::None, DigestAlgorithm::Sha256), &i.data)
        .unwrap();
    let again = w.add_inline(new_entry(&i, Codec::None, DigestAlgorithm::Sha256), b"two");
    assert!(
        matches!(again, Err(FormatError::InvalidInput(_))),
        "{again:?}"
    );
    let ext = w.add_external(new_entry(&i, Codec::None, DigestAlgorithm::Sha256), 3, 0);
    assert!(matches!(ext, Err(FormatError::InvalidInput(_))), "{ext:?}");
}

#[test]
fn writer_refuses_what_readers_would_reject() {
    let mut bad = ident(DigestAlgorithm::Blake3);
    bad.n_bits = 8; // 0xB5C needs 12 bits
    assert!(ShardWriter::new(Vec::new(), bad).is_err());

    let mut w = ShardWriter::new(Vec::new(), ident(DigestAlgorithm::Blake3)).unwrap();
    let mut e = new_entry(
        &Input {
            uid: "x".repeat(1025),
            data: Vec::new(),
            policy: Compression::None,
            external: false,
            content_type: None,
            meta: None,
            created_at: 0,
        },
        Codec::None,
        DigestAlgorithm::Blake3,
    );
    assert!(
        w.add_inline(e.clone(), b"").is_err(),
        "uid over MAX_UID_LEN"
    );
    e.uid = String::new();
    assert!(w.add_inline(e.clone(), b"").is_err(), "empty uid");
    e.uid = "ok".into();
    e.meta = Some("{not json".into());
    assert!(w.add_inline(e.clone(), b"").is_err(), "meta must be JSON");
    e.meta = None;
    e.content_type = Some("t".repeat(256));
    assert!(w.add_inline(e, b"").is_err(), "content type over 255 bytes");
}

/// The index is sorted by UTF-8 bytes (how Rust `str` and Python `bytes`
/// compare), not by UTF-16 code units (how Java and JavaScript strings
/// compare); a reader in either language must search the same order.
#[test]
fn sort_order_is_utf8_bytes_not_utf16() {
    let a = "\u{FF61}"; // EF BD A1; UTF-16 0xFF61
    let b = "\u{10000}"; // F0 90 80 80; UTF-16 0xD800 0xDC00 (sorts first in UTF-16)
    let inputs: Vec<Input> = [b, a]
        .iter()
        .map(|u| Input {
            uid: (*u).to_string(),
            data: u.as_bytes().to_vec(),
            policy: Compression::None,
            external: false,
            content_type: None,
            meta: None,
            created_at: 0,
        })
        .collect();
    let Written { shard, .. } = write(&inputs, DigestAlgorithm::Blake3, IndexLayout::Paged);
    let tail = Tail::parse(&shard, shard.len() as u64).unwrap();
    let ix = AnyIndex::parse(&tail, index_bytes(&shard, &tail), None)
        .unwrap()
        .unwrap();
    let order: Vec<String> = ix.located().into_iter().map(|l| l.uid).collect();
    assert_eq!(order, [a, b]);
    let by_uid: BTreeMap<_, _> = inputs
        .iter()
        .map(|i| (i.uid.clone(), i.data.clone()))
        .collect();
    for l in ix.located() {
        let r = l.shard_range().unwrap();
        assert_eq!(
            l.decode(&shard[r.start as usize..r.end as usize]).unwrap(),
            by_uid[&l.uid]
        );
    }
}
