#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Chunk tables (SPEC §6.5): every big file the packer stores gets a
//! `_big/<hex>.chunks` table that binds to its index entry, re-runs keep it,
//! and a store without it still serves the file through the whole-object path.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use des_format::chunks::{ChunkTable, DEFAULT_CHUNK_SIZE};
use des_format::shard::{Check, Located};
use des_format::{Timestamp, v3};
use des_packer::{Input, PackOptions, PackReport, Target, pack_into};
use des_storage::bigchunks::{WindowRead, read_window};
use des_storage::keys::StoreKey;
use des_storage::store::external_key;
use des_storage::{
    ByteRange, DesStore, Error, GetOptions, GetResult, ListPage, MemoryStore, ObjectMeta,
    ObjectStore, ObjectStoreExt, ObjectWriter, PutOptions, PutResult, Result,
};
use futures::StreamExt;
use tokio::runtime::Runtime;

const CREATED: &str = "2024-05-17T10:00:00Z";
/// 2.5 chunks: two full ones and a short last one.
const BIG: usize = 5 * DEFAULT_CHUNK_SIZE as usize / 2;

fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A manifest in `dir` listing `(uid, file name)`; returns its path.
fn manifest(dir: &Path, name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let lines: Vec<String> = files
        .iter()
        .map(|(uid, src)| format!(r#"{{"uid":"{uid}","created_at":"{CREATED}","source":"{src}"}}"#))
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn pack(rt: &Runtime, manifest: &Path, objects: Arc<dyn ObjectStore>) -> PackReport {
    let opts = PackOptions {
        n_bits: Some(4),
        big_file_threshold: 64 << 10,
        jobs: 1,
        ..PackOptions::default()
    };
    let input = Input::Manifest(manifest.to_path_buf());
    pack_into(&input, &opts, &Target::single(objects), rt.handle(), false).unwrap()
}

fn ts() -> Timestamp {
    Timestamp::parse_rfc3339(CREATED).unwrap()
}

/// The entry of `uid` and the key of its big object.
fn entry(rt: &Runtime, mem: &MemoryStore, uid: &str) -> (Located, String) {
    let des = rt.block_on(DesStore::open(Arc::new(mem.clone()))).unwrap();
    let (loaded, located) = rt.block_on(des.find(uid, ts())).unwrap();
    let key = external_key(&loaded.key, &located).expect("an external entry");
    (located, key)
}

fn get(rt: &Runtime, mem: &MemoryStore, key: &str) -> Option<(ObjectMeta, Bytes)> {
    rt.block_on(mem.get_range(key, ByteRange::All)).ok()
}

/// Every `_big/` object, by kind: (big files, chunk tables).
fn big_objects(rt: &Runtime, mem: &MemoryStore) -> (usize, usize) {
    let all = rt.block_on(mem.list_all("_big/")).unwrap();
    let kind = |want: fn(&StoreKey) -> bool| {
        all.iter()
            .filter(|m| StoreKey::parse(&m.key).as_ref().is_some_and(want))
            .count()
    };
    let bigs = kind(|k| matches!(k, StoreKey::Big { .. }));
    let tables = kind(|k| matches!(k, StoreKey::BigChunks { .. }));
    assert_eq!(bigs + tables, all.len(), "{all:?}");
    (bigs, tables)
}

#[test]
fn a_big_file_gets_a_table_bound_to_its_entry_and_reruns_keep_it() {
    let rt = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = noise(1, BIG);
    std::fs::write(dir.path().join("big.bin"), &data).unwrap();
    std::fs::write(dir.path().join("small.txt"), b"small and inline").unwrap();
    let m = manifest(
        dir.path(),
        "m.jsonl",
        &[("big", "big.bin"), ("small", "small.txt")],
    );
    let mem = MemoryStore::new();
    let r = pack(&rt, &m, Arc::new(mem.clone()));
    assert_eq!(
        (r.files_packed, r.big_files, r.files_failed),
        (2, 1, 0),
        "{r:?}"
    );
    // One big file, one table; the inline file has none.
    assert_eq!(big_objects(&rt, &mem), (1, 1));

    let (located, big_key) = entry(&rt, &mem, "big");
    let table_key = v3::chunk_table_key(&big_key);
    let (meta, bytes) = get(&rt, &mem, &table_key).expect("the table exists");
    let Check::V3 { crc32c, .. } = located.check else {
        panic!("{located:?}")
    };
    let table = ChunkTable::parse(&bytes, located.stored_len, crc32c).unwrap();
    assert_eq!(table.chunk_size(), DEFAULT_CHUNK_SIZE);
    assert_eq!(table.count(), 3);
    assert_eq!(table, ChunkTable::of(DEFAULT_CHUNK_SIZE, &data).unwrap());

    // A window of it reads through the table.
    let w = u64::from(DEFAULT_CHUNK_SIZE) - 2..u64::from(DEFAULT_CHUNK_SIZE) + 3;
    let read = rt
        .block_on(read_window(&mem, &big_key, &located, w.clone()))
        .unwrap();
    let stream = read.into_stream().expect("a chunked read");
    assert_eq!(stream.covering(), 0..2 * u64::from(DEFAULT_CHUNK_SIZE));
    let got: Vec<Bytes> = rt.block_on(stream.map(|b| b.unwrap()).collect());
    assert_eq!(got.concat(), &data[w.start as usize..w.end as usize]);

    // Re-run: nothing packed, the table untouched (same object version).
    let again = pack(&rt, &m, Arc::new(mem.clone()));
    assert_eq!(again.files_already_present, 2, "{again:?}");
    let (meta2, bytes2) = get(&rt, &mem, &table_key).unwrap();
    assert_eq!((meta2.etag, bytes2), (meta.etag, bytes.clone()));

    // The same content under another uid shares the big object; its table
    // is written again, byte for byte the same.
    let m2 = manifest(dir.path(), "m2.jsonl", &[("copy", "big.bin")]);
    let third = pack(&rt, &m2, Arc::new(mem.clone()));
    assert_eq!(
        (third.files_packed, third.files_failed),
        (1, 0),
        "{third:?}"
    );
    assert_eq!(entry(&rt, &mem, "copy").1, big_key);
    assert_eq!(get(&rt, &mem, &table_key).unwrap().1, bytes);
    assert_eq!(big_objects(&rt, &mem), (1, 1));

    // A lost table comes back when the content is packed again.
    rt.block_on(mem.delete(&table_key)).unwrap();
    let m3 = manifest(dir.path(), "m3.jsonl", &[("copy2", "big.bin")]);
    assert_eq!(pack(&rt, &m3, Arc::new(mem.clone())).files_packed, 1);
    assert_eq!(get(&rt, &mem, &table_key).unwrap().1, bytes);
}

#[test]
fn without_its_table_a_big_file_is_served_whole() {
    let rt = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = noise(2, BIG);
    std::fs::write(dir.path().join("big.bin"), &data).unwrap();
    let m = manifest(dir.path(), "m.jsonl", &[("big", "big.bin")]);
    let mem = MemoryStore::new();
    assert_eq!(pack(&rt, &m, Arc::new(mem.clone())).files_packed, 1);
    let (located, big_key) = entry(&rt, &mem, "big");
    // As for a big file packed before tables existed.
    rt.block_on(mem.delete(&v3::chunk_table_key(&big_key)))
        .unwrap();

    let read = rt
        .block_on(read_window(&mem, &big_key, &located, 0..1))
        .unwrap();
    assert!(matches!(read, WindowRead::Fallback), "{read:?}");
    let des = rt.block_on(DesStore::open(Arc::new(mem.clone()))).unwrap();
    let (_, whole) = rt.block_on(des.get_file("big", ts())).unwrap();
    assert!(whole == data);
}

/// Fails every write of a chunk table.
#[derive(Debug)]
struct NoTables(MemoryStore);

#[async_trait]
impl ObjectStore for NoTables {
    fn describe(&self) -> String {
        "no-tables".into()
    }
    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        self.0.get(key, opts).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.0.head(key).await
    }
    async fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<PutResult> {
        if key.ends_with(".chunks") {
            return Err(Error::Unauthorized(format!("{key}: denied")));
        }
        self.0.put(key, data, opts).await
    }
    async fn put_writer(&self, key: &str, opts: PutOptions) -> Result<Box<dyn ObjectWriter>> {
        self.0.put_writer(key, opts).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.0.delete(key).await
    }
    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<ListPage> {
        self.0.list(prefix, start_after).await
    }
}

#[test]
fn a_table_that_cannot_be_written_fails_its_file_only() {
    let rt = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.bin"), noise(3, BIG)).unwrap();
    std::fs::write(dir.path().join("small.txt"), b"still packed").unwrap();
    let m = manifest(
        dir.path(),
        "m.jsonl",
        &[("big", "big.bin"), ("small", "small.txt")],
    );
    let mem = MemoryStore::new();
    let r = pack(&rt, &m, Arc::new(NoTables(mem.clone())));
    assert_eq!((r.files_packed, r.files_failed), (1, 1), "{r:?}");
    let why = serde_json::to_string(&r.failures).unwrap();
    assert!(why.contains("chunk table"), "{why}");
    let des = rt.block_on(DesStore::open(Arc::new(mem.clone()))).unwrap();
    assert!(rt.block_on(des.find("big", ts())).is_err());
    assert_eq!(
        rt.block_on(des.get_file("small", ts())).unwrap().1,
        b"still packed"
    );
}
