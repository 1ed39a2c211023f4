//! Building v3 stores for the repack tests and checking them afterwards.
//!
//! Payloads are pseudo-random (incompressible) and stored with codec `none`,
//! so searching the raw objects for a slice of a deleted file is a
//! meaningful test that its bytes are physically gone.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use bytes::Bytes;
use des_format::v3::{NewEntry, ShardIdent, ShardWriter};
use des_format::{Codec, Timestamp};
use des_storage::{CreateOptions, DesStore, LocalStore, ObjectStore, PutOptions};

pub const N_BITS: u8 = 4;

#[derive(Debug, Clone)]
pub struct FileSpec {
    pub uid: String,
    pub created_at: String,
    pub size: usize,
    /// Stored as a `_big/<digest>` object.
    pub external: bool,
}

impl FileSpec {
    pub fn new(uid: &str, created_at: &str, size: usize) -> Self {
        Self {
            uid: uid.into(),
            created_at: created_at.into(),
            size,
            external: false,
        }
    }

    pub fn big(mut self) -> Self {
        self.external = true;
        self
    }

    pub fn ts(&self) -> Timestamp {
        Timestamp::parse_rfc3339(&self.created_at).unwrap()
    }

    pub fn date(&self) -> String {
        self.ts().date_dir()
    }
}

/// Incompressible bytes, the same for the same uid.
pub fn content(uid: &str, size: usize) -> Vec<u8> {
    let mut x = uid.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size);
    out
}

/// 200 bytes from the middle of a file: unique enough to search for.
pub fn needle(spec: &FileSpec) -> Vec<u8> {
    let data = content(&spec.uid, spec.size);
    let mid = data.len() / 2;
    let start = mid.saturating_sub(100);
    data[start..(start + 200).min(data.len())].to_vec()
}

/// The shard key each file lands in.
pub async fn write_store(
    objects: Arc<dyn ObjectStore>,
    specs: &[FileSpec],
) -> BTreeMap<String, String> {
    let (store, _) = DesStore::open_or_create(
        Arc::clone(&objects),
        CreateOptions {
            n_bits: Some(N_BITS),
            digest: None,
        },
    )
    .await
    .unwrap();
    let alg = store.digest();
    let mut groups: BTreeMap<String, Vec<&FileSpec>> = BTreeMap::new();
    let mut shard_of = BTreeMap::new();
    for s in specs {
        let loc = store.locate(&s.uid, s.ts()).unwrap();
        let key = DesStore::shard_key(&loc);
        shard_of.insert(s.uid.clone(), key.clone());
        groups.entry(key).or_default().push(s);
    }
    for (key, members) in groups {
        let first = members[0];
        let loc = store.locate(&first.uid, first.ts()).unwrap();
        let ident = ShardIdent {
            date: first.ts().date_number(),
            shard_index: u16::try_from(loc.shard_index).unwrap(),
            n_bits: N_BITS,
            generation: 1,
            digest_alg: alg,
            written_at: Timestamp::now(),
        };
        let mut w = ShardWriter::new(Vec::new(), ident).unwrap();
        for s in members {
            let data = content(&s.uid, s.size);
            let digest = alg.digest(&data);
            let entry = NewEntry {
                uid: s.uid.clone(),
                created_at: s.ts(),
                content_type: Some("application/octet-stream".into()),
                meta: None,
                codec: Codec::None,
                orig_len: data.len() as u64,
                digest,
            };
            if s.external {
                let big = des_format::v3::external_key(&digest);
                objects
                    .put(&big, Bytes::from(data.clone()), PutOptions::default())
                    .await
                    .unwrap();
                w.add_external(entry, data.len() as u64, crc32c::crc32c(&data))
                    .unwrap();
            } else {
                w.add_inline(entry, &data).unwrap();
            }
        }
        let (bytes, _) = w.finish().unwrap();
        objects
            .put(&key, Bytes::from(bytes), PutOptions::default())
            .await
            .unwrap();
    }
    shard_of
}

pub struct Local {
    pub dir: tempfile::TempDir,
    /// For files beside the store (batches, rules, metrics).
    pub aux: tempfile::TempDir,
    pub specs: Vec<FileSpec>,
    pub shard_of: BTreeMap<String, String>,
}

impl Local {
    pub fn build(specs: Vec<FileSpec>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let objects: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
        let shard_of = rt().block_on(write_store(objects, &specs));
        Self {
            dir,
            aux: tempfile::tempdir().unwrap(),
            specs,
            shard_of,
        }
    }

    /// A path outside the store for a test's own files.
    pub fn aux(&self, name: &str) -> PathBuf {
        self.aux.path().join(name)
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn root_str(&self) -> String {
        self.root().display().to_string()
    }

    pub fn spec(&self, uid: &str) -> &FileSpec {
        self.specs.iter().find(|s| s.uid == uid).unwrap()
    }

    /// Every file except `deleted` reads back byte-identical; the deleted
    /// ones are absent from the index.
    pub fn check_files(&self, deleted: &[&str]) {
        let objects: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(self.root()).unwrap());
        check_files(objects, &self.specs, deleted);
    }

    /// Whether any object of the store contains these bytes.
    pub fn raw_contains(&self, needle: &[u8]) -> bool {
        walk(self.root())
            .iter()
            .any(|p| contains(&std::fs::read(p).unwrap(), needle))
    }

    /// Every object's relative path and bytes, to compare before and after.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        walk(self.root())
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                (p.strip_prefix(self.root()).unwrap().to_path_buf(), bytes)
            })
            .collect()
    }
}

pub fn check_files(objects: Arc<dyn ObjectStore>, specs: &[FileSpec], deleted: &[&str]) {
    rt().block_on(async {
        let store = DesStore::open(objects).await.unwrap();
        for s in specs {
            let got = store.get_file(&s.uid, s.ts()).await;
            if deleted.contains(&s.uid.as_str()) {
                let e = got.expect_err(&format!("{} should be gone", s.uid));
                assert_eq!(e.kind(), des_storage::ErrorKind::NotFound, "{}: {e}", s.uid);
            } else {
                let (_, data) = got.unwrap_or_else(|e| panic!("{}: {e}", s.uid));
                assert!(data == content(&s.uid, s.size), "{} differs", s.uid);
            }
        }
    });
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

pub fn bin(name: &str) -> Command {
    let path = match name {
        "des-repack" => env!("CARGO_BIN_EXE_des-repack"),
        "des-tombstones" => env!("CARGO_BIN_EXE_des-tombstones"),
        "des-verify" => env!("CARGO_BIN_EXE_des-verify"),
        "des-upgrade" => env!("CARGO_BIN_EXE_des-upgrade"),
        other => panic!("unknown binary {other}"),
    };
    let mut c = Command::new(path);
    c.env_remove("DES_REPACK_CRASH_AT");
    c
}

/// `des-pack`, from another package of the workspace: found next to this
/// test's binary, where `cargo test --workspace` builds it.
pub fn des_pack() -> Command {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join("des-pack");
    assert!(
        path.exists(),
        "{} missing: build it (cargo build -p des-packer, or cargo test --workspace)",
        path.display()
    );
    let mut c = Command::new(path);
    c.env_remove("DES_PACK_PAUSE_AT");
    c
}

pub fn run(name: &str, args: &[&str]) -> Output {
    bin(name).args(args).output().unwrap()
}

pub fn describe(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(o)))
}

/// 40 files over two days plus two big files; about 1.3 MB.
pub fn standard_specs() -> Vec<FileSpec> {
    let mut specs: Vec<FileSpec> = (0..40)
        .map(|i| {
            let day = if i % 2 == 0 {
                "2024-05-17"
            } else {
                "2024-05-18"
            };
            FileSpec::new(
                &format!("file-{i:02}"),
                &format!("{day}T10:{:02}:00Z", i % 60),
                8_000 + i * 1_000,
            )
        })
        .collect();
    specs.push(FileSpec::new("big-a", "2024-05-17T11:00:00Z", 150_000).big());
    specs.push(FileSpec::new("big-b", "2024-05-18T11:00:00Z", 150_000).big());
    specs
}

/// Starts `cmd` (a des-pack run) so that it stops itself right after it
/// looks up a big file, and waits until it has.
pub fn spawn_paused_at_big_file(cmd: &mut Command) -> std::process::Child {
    let child = cmd
        .env("DES_PACK_PAUSE_AT", "after_big_file_check")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_stopped(child.id());
    child
}

/// Waits until `pid` is stopped (state `T` in /proc/PID/stat).
pub fn wait_stopped(pid: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        if state == Some("T") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "des-pack never paused: {stat}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
