#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Two packers publishing the same shard: the loser must notice and rebuild
//! on the winner's generation, on backends with and without conditional
//! writes. The "other packer" is injected at the exact moment of each race.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use des_format::Timestamp;
use des_packer::{Input, PackOptions, PackReport, Target, pack_into};
use des_storage::{
    Capabilities, DesStore, GetOptions, GetResult, ListPage, MemoryStore, ObjectMeta, ObjectStore,
    ObjectStoreExt, ObjectWriter, PutOptions, PutResult, Result,
};

const CREATED: &str = "2024-05-17T10:00:00Z";
/// All-digit uids that are multiples of 16 route to shard 0 with n_bits 4.
const SHARD: &str = "20240517/0.des";

/// What the other packer does, and when.
enum Race {
    /// Publishes its files just before our pre-publish check.
    PackBeforeHead(Box<dyn FnOnce() + Send>),
    /// Publishes its files just before our upload completes.
    PackBeforeFinish(Box<dyn FnOnce() + Send>),
    /// Right after our upload completes, puts back the generation we built
    /// on (a writer that built on it too and finished last).
    RestoreAfterFinish(Bytes),
}

struct Racy {
    inner: Arc<MemoryStore>,
    conditional: bool,
    race: Arc<Mutex<Option<Race>>>,
    shard_uploads: AtomicU32,
}

impl std::fmt::Debug for Racy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Racy").finish_non_exhaustive()
    }
}

struct RacyWriter {
    inner: Box<dyn ObjectWriter>,
    store: Arc<MemoryStore>,
    race: Arc<Mutex<Option<Race>>>,
}

fn take_if(race: &Mutex<Option<Race>>, want: impl Fn(&Race) -> bool) -> Option<Race> {
    let mut r = race.lock().unwrap();
    if r.as_ref().is_some_and(want) {
        r.take()
    } else {
        None
    }
}

#[async_trait]
impl ObjectWriter for RacyWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.inner.write(chunk).await
    }

    async fn finish(self: Box<Self>) -> Result<PutResult> {
        if let Some(Race::PackBeforeFinish(other)) =
            take_if(&self.race, |r| matches!(r, Race::PackBeforeFinish(_)))
        {
            other();
        }
        let put = self.inner.finish().await?;
        if let Some(Race::RestoreAfterFinish(base)) =
            take_if(&self.race, |r| matches!(r, Race::RestoreAfterFinish(_)))
        {
            self.store
                .put(SHARD, base, PutOptions::default())
                .await
                .unwrap();
        }
        Ok(put)
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for Racy {
    fn describe(&self) -> String {
        "racy".into()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            conditional_put: self.conditional,
        }
    }
    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        self.inner.get(key, opts).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        if key == SHARD
            && let Some(Race::PackBeforeHead(other)) =
                take_if(&self.race, |r| matches!(r, Race::PackBeforeHead(_)))
        {
            other();
        }
        self.inner.head(key).await
    }
    async fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<PutResult> {
        self.inner.put(key, data, opts).await
    }
    async fn put_writer(&self, key: &str, opts: PutOptions) -> Result<Box<dyn ObjectWriter>> {
        let inner = self.inner.put_writer(key, opts).await?;
        if key != SHARD {
            return Ok(inner);
        }
        self.shard_uploads.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(RacyWriter {
            inner,
            store: Arc::clone(&self.inner),
            race: Arc::clone(&self.race),
        }))
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<ListPage> {
        self.inner.list(prefix, start_after).await
    }
}

fn write_files(dir: &Path, uids: &[u32]) {
    std::fs::create_dir_all(dir).unwrap();
    for uid in uids {
        std::fs::write(dir.join(uid.to_string()), format!("content of {uid}")).unwrap();
    }
}

fn pack(dir: &Path, objects: Arc<dyn ObjectStore>) -> PackReport {
    let input = Input::Dir {
        root: dir.to_path_buf(),
        created_at: Timestamp::parse_rfc3339(CREATED).unwrap(),
    };
    let opts = PackOptions {
        n_bits: Some(4),
        jobs: 1,
        ..PackOptions::default()
    };
    // Its own runtime on its own thread: `pack_into` blocks, and the other
    // packer runs while ours is parked inside a storage call.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        pack_into(&input, &opts, &Target::single(objects), rt.handle(), false).unwrap()
    })
    .join()
    .unwrap()
}

fn uids_in_shard(store: &Arc<MemoryStore>) -> Vec<u32> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let objects: Arc<dyn ObjectStore> = store.clone();
    let des = rt.block_on(DesStore::open(objects)).unwrap();
    let loaded = rt.block_on(des.load_index(SHARD)).unwrap().unwrap();
    let mut uids: Vec<u32> = (0..20)
        .map(|i| i * 16)
        .filter(|u| loaded.find(&u.to_string()).is_some())
        .collect();
    uids.sort_unstable();
    uids
}

/// Packs `ours` over an existing shard while `race` plays the other packer
/// (who packs `theirs`); returns the uids the shard ends up with and how
/// many uploads of the shard our run made.
fn race(conditional: bool, make_race: impl FnOnce(&Arc<MemoryStore>, &Path) -> Race) -> Vec<u32> {
    let dir = tempfile::tempdir().unwrap();
    let inner = Arc::new(MemoryStore::new());
    write_files(&dir.path().join("base"), &[0, 16, 32]);
    write_files(&dir.path().join("ours"), &[48, 64]);
    write_files(&dir.path().join("theirs"), &[80, 96]);
    let base = pack(&dir.path().join("base"), inner.clone());
    assert_eq!(base.files_packed, 3);
    let racy = Arc::new(Racy {
        inner: Arc::clone(&inner),
        conditional,
        race: Arc::new(Mutex::new(Some(make_race(&inner, dir.path())))),
        shard_uploads: AtomicU32::new(0),
    });
    let ours = pack(&dir.path().join("ours"), racy.clone());
    assert_eq!(ours.files_failed, 0, "{ours:?}");
    assert!(
        racy.race.lock().unwrap().is_none(),
        "the race never happened"
    );
    assert_eq!(
        racy.shard_uploads.load(Ordering::Relaxed),
        2,
        "the lost race must be rebuilt exactly once"
    );
    uids_in_shard(&inner)
}

fn other_packer(inner: &Arc<MemoryStore>, root: &Path) -> Box<dyn FnOnce() + Send> {
    let inner: Arc<dyn ObjectStore> = inner.clone();
    let theirs = root.join("theirs");
    Box::new(move || {
        let r = pack(&theirs, inner);
        assert_eq!(r.files_packed, 2, "{r:?}");
    })
}

#[test]
fn without_conditional_writes_a_change_before_publishing_is_caught() {
    let uids = race(false, |inner, root| {
        Race::PackBeforeHead(other_packer(inner, root))
    });
    assert_eq!(uids, [0, 16, 32, 48, 64, 80, 96]);
}

#[test]
fn without_conditional_writes_a_lost_update_after_publishing_is_caught() {
    let uids = race(false, |inner, _| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (_, base) = rt
            .block_on(inner.get_range(SHARD, des_storage::ByteRange::All))
            .unwrap();
        Race::RestoreAfterFinish(base)
    });
    // The restored generation dropped ours; the rebuild put them back.
    assert_eq!(uids, [0, 16, 32, 48, 64]);
}

#[test]
fn with_conditional_writes_the_loser_rebuilds_on_the_winner() {
    let uids = race(true, |inner, root| {
        Race::PackBeforeFinish(other_packer(inner, root))
    });
    assert_eq!(uids, [0, 16, 32, 48, 64, 80, 96]);
}
