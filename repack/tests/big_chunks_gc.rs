#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Chunk tables (`_big/<hex>.chunks`, SPEC §6.5) in maintenance: collection
//! deletes a table with its big file and removes tables whose big file is
//! gone, never one of a live big file; des-verify reports a bad table.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use des_format::Timestamp;
use des_format::chunks::ChunkTable;
use des_format::v3::{chunk_table_key, external_key};
use des_packer::{Input, PackOptions, Target, pack_into};
use des_repack::holds::HoldSet;
use des_repack::repack::bigfiles::{GcOptions, collect};
use des_repack::repack::{RepackOptions, repack};
use des_repack::verify::{FindingKind, VerifyOptions, verify_store};
use des_storage::protocol::BigRef;
use des_storage::tombstones::{DeleteReason, Tombstone, TombstoneLog};
use des_storage::{ByteRange, DesStore, MemoryStore, ObjectStore, ObjectStoreExt, PutOptions};
use tokio::runtime::Runtime;

const CREATED: &str = "2024-05-17T10:00:00Z";

fn noise(seed: u64, n: usize) -> Vec<u8> {
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

fn ts() -> Timestamp {
    Timestamp::parse_rfc3339(CREATED).unwrap()
}

/// Packs `files` (uid → bytes) into `mem` with the real packer; files above
/// 64 KiB become big files with chunk tables.
fn pack(rt: &Runtime, mem: &MemoryStore, files: &[(&str, &[u8])]) {
    let dir = tempfile::tempdir().unwrap();
    for (uid, data) in files {
        std::fs::write(dir.path().join(uid), data).unwrap();
    }
    let input = Input::Dir {
        root: dir.path().to_path_buf(),
        created_at: ts(),
    };
    let opts = PackOptions {
        n_bits: Some(4),
        big_file_threshold: 64 << 10,
        jobs: 1,
        // Refs that expire at once: the run is over, nothing is in flight.
        big_ref_ttl: Duration::ZERO,
        ..PackOptions::default()
    };
    let objects: Arc<dyn ObjectStore> = Arc::new(mem.clone());
    let r = pack_into(&input, &opts, &Target::single(objects), rt.handle(), false).unwrap();
    assert_eq!(r.files_failed, 0, "{r:?}");
}

fn open(rt: &Runtime, mem: &MemoryStore) -> DesStore {
    rt.block_on(DesStore::open(Arc::new(mem.clone()))).unwrap()
}

fn big_key(rt: &Runtime, mem: &MemoryStore, data: &[u8]) -> String {
    external_key(&open(rt, mem).digest().digest(data))
}

fn exists(rt: &Runtime, mem: &MemoryStore, key: &str) -> bool {
    rt.block_on(mem.head(key)).is_ok()
}

fn put(rt: &Runtime, mem: &MemoryStore, key: &str, data: Vec<u8>) {
    rt.block_on(mem.put(key, Bytes::from(data), PutOptions::default()))
        .unwrap();
}

fn gc(rt: &Runtime, store: &DesStore, dry_run: bool) -> des_repack::repack::bigfiles::GcOutcome {
    let holds = rt.block_on(HoldSet::load(store)).unwrap();
    let opts = GcOptions {
        grace: Duration::ZERO,
        ref_ttl: Duration::from_secs(3600),
        dry_run,
    };
    rt.block_on(collect(store, &holds, opts)).unwrap()
}

#[test]
fn a_collected_big_file_takes_its_table_along() {
    let rt = Runtime::new().unwrap();
    let mem = MemoryStore::new();
    let (gone, kept) = (noise(1, 200_000), noise(2, 150_000));
    pack(&rt, &mem, &[("gone.bin", &gone), ("kept.bin", &kept)]);
    let store = open(&rt, &mem);
    let (gone_key, kept_key) = (big_key(&rt, &mem, &gone), big_key(&rt, &mem, &kept));
    for k in [&gone_key, &kept_key] {
        assert!(exists(&rt, &mem, &chunk_table_key(k)), "{k}");
    }

    let t = Tombstone::new("gone.bin", ts(), DeleteReason::Gdpr, "test");
    rt.block_on(TombstoneLog::new(&store).append(&t)).unwrap();
    let mut opts = RepackOptions::default();
    opts.min_garbage_ratio = 0.0;
    opts.big_file_grace = Duration::ZERO;
    opts.lease.settle = Duration::ZERO;
    let r = rt.block_on(repack(&store, &opts, |_| {})).unwrap();
    assert_eq!(r.big_files.deleted, vec![gone_key.clone()], "{r:#?}");
    assert!(!exists(&rt, &mem, &gone_key));
    assert!(!exists(&rt, &mem, &chunk_table_key(&gone_key)));
    // The other big file and its table stay, and it still reads.
    assert!(exists(&rt, &mem, &kept_key));
    assert!(exists(&rt, &mem, &chunk_table_key(&kept_key)));
    assert!(r.big_files.orphan_tables.is_empty(), "{r:#?}");
    let (_, data) = rt.block_on(store.get_file("kept.bin", ts())).unwrap();
    assert!(data == kept);
}

#[test]
fn tables_without_a_big_file_are_removed_and_live_ones_kept() {
    let rt = Runtime::new().unwrap();
    let mem = MemoryStore::new();
    let live = noise(3, 100_000);
    pack(&rt, &mem, &[("live.bin", &live)]);
    let store = open(&rt, &mem);
    let live_key = big_key(&rt, &mem, &live);
    let table = |hex: &str| format!("_big/{hex}.chunks");
    let any_table = ChunkTable::of(1 << 16, b"x").unwrap().encode();

    // 600 big files with their tables, so that one page of the listing ends
    // between a big file and its table; an orphan sorting first (`00` <
    // `000…`), one in the middle, one at the end.
    for i in 0..600u32 {
        let hex = format!("{i:064x}");
        put(&rt, &mem, &format!("_big/{hex}"), b"big".to_vec());
        put(&rt, &mem, &table(&hex), any_table.clone());
    }
    let orphans = ["00".to_string(), "d".repeat(64), "f".repeat(64)];
    for hex in &orphans {
        put(&rt, &mem, &table(hex), any_table.clone());
    }
    let first = rt.block_on(mem.list("_big/", None)).unwrap();
    let last = &first.objects.last().unwrap().key;
    let next = first.next_start_after.clone().unwrap();
    let second = rt.block_on(mem.list("_big/", Some(&next))).unwrap();
    assert_eq!(
        format!("{last}.chunks"),
        second.objects[0].key,
        "a page must end between a big file and its table"
    );
    // An orphan whose big file a packer is uploading right now: kept.
    let uploading = "e".repeat(64);
    put(&rt, &mem, &table(&uploading), any_table.clone());
    rt.block_on(BigRef::take(
        &mem,
        &uploading,
        "packer-1",
        ("u", 20240517),
        Duration::from_secs(3600),
    ))
    .unwrap();
    // Not a table (not a DES key at all): never touched.
    put(&rt, &mem, "_big/notes.chunks", b"?".to_vec());

    let mut want: Vec<String> = orphans.iter().map(|h| table(h)).collect();
    want.sort();
    let dry = gc(&rt, &store, true);
    assert_eq!(dry.orphan_tables, want);
    assert!(exists(&rt, &mem, &want[0]), "a dry run deleted");

    let done = gc(&rt, &store, false);
    assert_eq!(done.orphan_tables, want);
    for t in &want {
        assert!(!exists(&rt, &mem, t), "{t}");
    }
    for i in 0..600u32 {
        assert!(exists(&rt, &mem, &table(&format!("{i:064x}"))), "{i}");
    }
    assert!(exists(&rt, &mem, &chunk_table_key(&live_key)));
    assert!(exists(&rt, &mem, &table(&uploading)));
    assert!(exists(&rt, &mem, "_big/notes.chunks"));
    assert!(gc(&rt, &store, false).orphan_tables.is_empty());
}

#[test]
fn verify_checks_a_table_when_there_is_one() {
    let rt = Runtime::new().unwrap();
    let mem = MemoryStore::new();
    let (a, b) = (noise(5, 300_000), noise(6, 300_000));
    pack(&rt, &mem, &[("a.bin", &a), ("b.bin", &b)]);
    let store = open(&rt, &mem);
    let verify = || {
        rt.block_on(verify_store(&store, &VerifyOptions::default(), |_| {}))
            .unwrap()
    };
    let r = verify();
    assert!(r.clean, "{r}");
    assert_eq!(r.entries_checked, 2);

    let (a_table, b_table) = (
        chunk_table_key(&big_key(&rt, &mem, &a)),
        chunk_table_key(&big_key(&rt, &mem, &b)),
    );
    let good = rt
        .block_on(mem.get_range(&a_table, ByteRange::All))
        .unwrap()
        .1;
    let mut damaged = good.to_vec();
    damaged[30] ^= 1;
    put(&rt, &mem, &a_table, damaged);
    let r = verify();
    assert_eq!(r.exit_code(), 1, "{r}");
    assert_eq!(r.findings.len(), 1, "{r}");
    let f = &r.findings[0];
    assert_eq!(
        (f.kind, f.uid.as_deref()),
        (FindingKind::ChunkTable, Some("a.bin"))
    );
    assert!(f.reason.contains(&a_table), "{}", f.reason);
    assert!(r.to_string().contains("CORRUPT"), "{r}");

    // A sound table of another file: bound to the wrong entry.
    let other = rt
        .block_on(mem.get_range(&b_table, ByteRange::All))
        .unwrap()
        .1;
    put(&rt, &mem, &a_table, other.to_vec());
    let r = verify();
    assert_eq!(r.findings.len(), 1, "{r}");
    assert_eq!(r.findings[0].kind, FindingKind::ChunkTable);

    // No table: a big file from before tables, fine.
    rt.block_on(mem.delete(&a_table)).unwrap();
    assert!(verify().clean);
}
