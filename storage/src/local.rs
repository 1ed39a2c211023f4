//! Local-directory backend. Keys map to files under the root; every write goes
//! to a temp file in the target directory, is fsynced, then renamed (or
//! hard-linked for create-only) and the directory fsynced, so a crash leaves
//! the old object or the new one, never a partial one under the final name.
//!
//! # Compare-and-swap across processes
//!
//! Two packers, or a packer and a repacker, may publish the same shard at the
//! same time, and `UpdateIfMatch` is only a compare-and-swap if nobody can
//! replace the file between the ETag check and the rename. Every commit (and
//! every delete) therefore holds an exclusive `flock(2)` on the target's
//! directory across that check and the rename/link, and only there: the data
//! fsync before it and the directory fsync after it run unlocked, so writers
//! queue for microseconds, not for the disk. The lock belongs to a descriptor
//! opened for this one commit, so it serialises threads of one process as well
//! as processes. A crashed holder releases it (the kernel closes its
//! descriptors); a stopped one (`SIGSTOP`) stalls writers of that directory.
//!
//! Limits: `flock` is advisory, so only writers that take it (this store, in
//! any process) are excluded; a tool renaming files into the store on its own
//! is not. On a network filesystem the lock is only as wide as the
//! filesystem makes it: Linux's NFS and CIFS/SMB clients keep a `flock` on a
//! directory local to the host (NFS emulates `flock` with server-side
//! byte-range locks for regular files only, and not even those with
//! `local_lock=flock`), and FUSE filesystems may do the same. Processes on one
//! host are then still excluded, processes on different hosts are not: there
//! the compare-and-swap does not hold, and parallel packers must use disjoint
//! `--shard-range`s, as on backends that ignore conditional writes
//! (docs/CONCURRENCY.md).
//!
//! # Leftover temp files
//!
//! A writer killed before its rename leaves its `.des-tmp-*` file behind;
//! [`ObjectStore::sweep_leftovers`] removes those not modified for a while.
//! Removing the temp file of a writer that is still running costs that writer
//! its write, never data: its commit renames or links a name that no longer
//! exists, which fails, and the object it meant to replace stays as it was.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::Rng;

use crate::cached_read::{open_cached, read_cached};
use crate::error::{Error, ErrorKind, Result};
use crate::object::{
    ByteRange, GetOptions, GetResult, LIST_PAGE, ListPage, ObjectMeta, ObjectStore, ObjectWriter,
    PutMode, PutOptions, PutResult, check_key,
};
use crate::open_files::{OpenFile, OpenFiles};

/// Temp files start with this; `list` hides them and `sweep_leftovers` removes leftovers.
pub const TEMP_PREFIX: &str = ".des-tmp-";
const READ_CHUNK: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: Arc<PathBuf>,
    /// Handles kept for small reads; every write or delete through this store
    /// drops the handle of its path, whether it succeeded or not.
    files: Arc<OpenFiles>,
}

/// Reads at most this long are done on the calling task when the page cache
/// holds them (see `get`).
const INLINE_READ_MAX: u64 = 64 * 1024;

fn is_small(range: Option<ByteRange>) -> bool {
    match range {
        Some(ByteRange::Bounded { start, end }) => end.saturating_sub(start) <= INLINE_READ_MAX,
        Some(ByteRange::Suffix(n)) => n <= INLINE_READ_MAX,
        _ => false,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::other("blocking task failed", e))?
}

fn etag_of(md: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "\"{:x}-{:x}-{:x}\"",
        md.ino(),
        md.mtime_nsec() + md.mtime() * 1_000_000_000,
        md.len()
    )
}

fn meta_of(key: &str, md: &std::fs::Metadata) -> ObjectMeta {
    ObjectMeta {
        key: key.to_string(),
        size: md.len(),
        etag: Some(etag_of(md)),
    }
}

pub(crate) fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl LocalStore {
    /// Opens (and creates) a store rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root: PathBuf = root.into();
        std::fs::create_dir_all(&root).map_err(|e| Error::io(&root.display().to_string(), e))?;
        Ok(Self {
            root: Arc::new(root),
            files: Arc::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn temp_path(target: &Path) -> PathBuf {
        let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("obj");
        let tag: u64 = rand::thread_rng().r#gen();
        // The random tail keeps temp names from ending in `.des`, so no tool mistakes them for shards.
        target.with_file_name(format!("{TEMP_PREFIX}{name}-{tag:016x}"))
    }

    /// Removes temp files left by crashed writers (not modified for `min_age`).
    pub fn sweep_temp_files(&self, min_age: Duration) -> Result<usize> {
        let mut removed = 0;
        let now = std::time::SystemTime::now();
        let mut stack = vec![self.root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for ent in rd.flatten() {
                let p = ent.path();
                let Ok(ft) = ent.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(p);
                } else if ent.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    let old = ent
                        .metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= min_age);
                    if old && std::fs::remove_file(&p).is_ok() {
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }
}

/// An exclusive `flock` on a directory, released when dropped (closing the
/// descriptor, which was opened for this lock alone, releases it).
struct DirLock {
    _fd: OwnedFd,
}

fn lock_dir(dir: &Path) -> std::io::Result<DirLock> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    loop {
        match rustix::fs::flock(&fd, FlockOperation::LockExclusive) {
            Ok(()) => return Ok(DirLock { _fd: fd }),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Locks the directory holding `path` (see the module doc); `None` when the
/// directory does not exist.
fn lock_parent(key: &str, path: &Path) -> Result<Option<DirLock>> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Invalid(format!("bad key {key}")))?;
    match lock_dir(dir) {
        Ok(lock) => Ok(Some(lock)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(key, e)),
    }
}

/// A commit whose temp file is gone: a sweep took it for a crashed writer's
/// leftover. Not a `NotFound`, which callers read as "the object is absent".
fn temp_gone(key: &str, tmp: &Path, e: std::io::Error) -> Error {
    Error::other(
        format!(
            "{key}: temp file {} was removed before the commit (swept as a leftover?)",
            tmp.display()
        ),
        e,
    )
}

/// Moves a finished (already fsynced) temp file into place according to
/// `mode`, holding the directory's lock across the check and the move; the
/// directory fsync that makes the move durable is left to the caller, after
/// the lock is released.
fn commit_file(key: &str, tmp: &Path, dst: &Path, mode: &PutMode) -> Result<PutResult> {
    let moved = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            temp_gone(key, tmp, e)
        } else {
            Error::io(key, e)
        }
    };
    let Some(_lock) = lock_parent(key, dst)? else {
        // The directory was made when the temp file was created in it.
        return Err(temp_gone(key, tmp, std::io::ErrorKind::NotFound.into()));
    };
    match mode {
        PutMode::Create => {
            // link(2) fails if the target exists: an atomic create-if-absent.
            let linked = std::fs::hard_link(tmp, dst);
            let _ = std::fs::remove_file(tmp);
            match linked {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(Error::PreconditionFailed { key: key.into() });
                }
                other => other.map_err(moved)?,
            }
        }
        PutMode::UpdateIfMatch(want) => {
            let current = std::fs::metadata(dst).ok().map(|m| etag_of(&m));
            if current.as_deref() != Some(want.as_str()) {
                let _ = std::fs::remove_file(tmp);
                return Err(Error::PreconditionFailed { key: key.into() });
            }
            std::fs::rename(tmp, dst).map_err(moved)?;
        }
        // Locked too: an overwrite landing between a conditional writer's
        // check and rename would be undone by that rename.
        PutMode::Overwrite => std::fs::rename(tmp, dst).map_err(moved)?,
    }
    // Under the lock: after it, another writer may already have replaced `dst`.
    let md = std::fs::metadata(dst).map_err(|e| Error::io(key, e))?;
    Ok(PutResult {
        etag: Some(etag_of(&md)),
        size: md.len(),
    })
}

fn sync_parent(key: &str, dst: &Path) -> Result<()> {
    match dst.parent() {
        Some(dir) => fsync_dir(dir).map_err(|e| Error::io(key, e)),
        None => Ok(()),
    }
}

fn open_for_write(key: &str, dst: &Path) -> Result<(PathBuf, std::fs::File)> {
    let dir = dst
        .parent()
        .ok_or_else(|| Error::Invalid(format!("bad key {key}")))?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(key, e))?;
    let tmp = LocalStore::temp_path(dst);
    let f = std::fs::File::create(&tmp).map_err(|e| Error::io(key, e))?;
    Ok((tmp, f))
}

fn read_chunk(file: &mut std::fs::File, key: &str, max: u64) -> Result<Bytes> {
    let mut buf = vec![0u8; usize::try_from(max).unwrap_or(READ_CHUNK).min(READ_CHUNK)];
    file.read_exact(&mut buf).map_err(|e| Error::io(key, e))?;
    Ok(Bytes::from(buf))
}

/// Opens `path` for reading with its metadata, taken from the open handle so
/// a concurrent rename cannot mix two versions.
fn open_file(key: &str, path: &Path) -> Result<(std::fs::File, std::fs::Metadata)> {
    described(
        key,
        std::fs::File::open(path).map_err(|e| Error::io(key, e))?,
    )
}

/// An opened object file with its metadata; a directory is no object.
fn described(key: &str, f: std::fs::File) -> Result<(std::fs::File, std::fs::Metadata)> {
    let md = f.metadata().map_err(|e| Error::io(key, e))?;
    if md.is_dir() {
        return Err(Error::not_found(key));
    }
    Ok((f, md))
}

fn resolve(key: &str, range: Option<ByteRange>, len: u64) -> Result<std::ops::Range<u64>> {
    range
        .unwrap_or(ByteRange::All)
        .resolve(len)
        .ok_or_else(|| Error::Invalid(format!("{key}: range not satisfiable")))
}

fn one_chunk(meta: ObjectMeta, range: std::ops::Range<u64>, chunk: Bytes) -> GetResult {
    GetResult {
        meta,
        range,
        body: Box::pin(futures::stream::once(std::future::ready(Ok(chunk)))),
    }
}

impl LocalStore {
    /// A bounded read of at most `INLINE_READ_MAX` bytes, through a kept
    /// handle when there is one. A kept handle whose version is not the one
    /// asked for may just be older than the file: it is reopened once before
    /// the precondition is declared failed. What the kernel's caches hold is
    /// opened and read here; what needs the disk goes to the blocking pool.
    async fn small_get(&self, key: &str, path: PathBuf, opts: &GetOptions) -> Result<GetResult> {
        let (mut file, kept) = match self.files.get(&path) {
            Some(f) => (f, true),
            None => (self.open_and_keep(key, path.clone()).await?, false),
        };
        if let Some(want) = &opts.if_match
            && *want != file.etag
        {
            let failed = || Error::PreconditionFailed { key: key.into() };
            if !kept {
                return Err(failed());
            }
            self.files.forget(&path);
            file = self.open_and_keep(key, path).await?;
            if *want != file.etag {
                return Err(failed());
            }
        }
        let range = resolve(key, opts.range, file.len)?;
        let len = usize::try_from(range.end - range.start)
            .map_err(|_| Error::Invalid(format!("{key}: range too long")))?;
        let mut buf = vec![0u8; len];
        let cached =
            read_cached(&file.file, &mut buf, range.start).map_err(|e| Error::io(key, e))?;
        let meta = ObjectMeta {
            key: key.to_string(),
            size: file.len,
            etag: Some(file.etag.clone()),
        };
        if cached < len {
            let (k, start) = (key.to_string(), range.start);
            buf = blocking(move || {
                std::os::unix::fs::FileExt::read_exact_at(
                    &file.file,
                    &mut buf[cached..],
                    start + cached as u64,
                )
                .map_err(|e| Error::io(&k, e))?;
                Ok(buf)
            })
            .await?;
        }
        Ok(one_chunk(meta, range, Bytes::from(buf)))
    }

    async fn open_and_keep(&self, key: &str, path: PathBuf) -> Result<Arc<OpenFile>> {
        // Taken before the open: a write that finishes while we open must
        // not find its path's old inode kept after it (see `OpenFiles::insert`).
        let seen = self.files.generation();
        let (f, md) = match open_cached(&path).map_err(|e| Error::io(key, e))? {
            Some(f) => described(key, f)?,
            None => {
                let (k, p) = (key.to_string(), path.clone());
                blocking(move || open_file(&k, &p)).await?
            }
        };
        let file = Arc::new(OpenFile::new(f, md.len(), etag_of(&md)));
        self.files.insert(path, Arc::clone(&file), seen);
        Ok(file)
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        let path = self.path(key)?;
        // Small reads (index suffixes, typical payloads) are a few
        // microseconds from the page cache, less than a hand-off to the
        // blocking pool and back (docs/BENCHMARKS.md §2), so they are done
        // on the calling task, through a kept handle, as far as the page
        // cache holds them (`small_get`). Larger or unbounded
        // reads go to the pool so a worker never stalls for long.
        if is_small(opts.range) {
            return self.small_get(key, path, &opts).await;
        }
        let k = key.to_string();
        let p = path.clone();
        let opened = blocking(move || {
            let (mut f, md) = open_file(&k, &p)?;
            let meta = meta_of(&k, &md);
            if opts
                .if_match
                .as_ref()
                .is_some_and(|m| Some(m) != meta.etag.as_ref())
            {
                return Err(Error::PreconditionFailed { key: k });
            }
            let range = resolve(&k, opts.range, md.len())?;
            f.seek(SeekFrom::Start(range.start))
                .map_err(|e| Error::io(&k, e))?;
            // A read that fits in one chunk is done here, so it needs no
            // second trip to the blocking pool.
            let len = range.end - range.start;
            let first = if len <= READ_CHUNK as u64 {
                Some(read_chunk(&mut f, &k, len)?)
            } else {
                None
            };
            Ok((meta, range, f, first))
        })
        .await;
        if opened
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::PreconditionFailed)
        {
            // The caller's ETag came from an older version, maybe through a
            // kept handle: its retry must not be served that version again.
            self.files.forget(&path);
        }
        let (meta, range, file, first) = opened?;
        if let Some(chunk) = first {
            return Ok(one_chunk(meta, range, chunk));
        }
        let key = key.to_string();
        let remaining = range.end - range.start;
        let body = futures::stream::try_unfold((file, remaining), move |(mut f, left)| {
            let key = key.clone();
            async move {
                if left == 0 {
                    return Ok(None);
                }
                let (f, chunk) = blocking(move || {
                    let c = read_chunk(&mut f, &key, left)?;
                    Ok((f, c))
                })
                .await?;
                let n = chunk.len() as u64;
                Ok(Some((chunk, (f, left - n))))
            }
        });
        Ok(GetResult {
            meta,
            range,
            body: Box::pin(body),
        })
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let path = self.path(key)?;
        let k = key.to_string();
        blocking(move || {
            let md = std::fs::metadata(&path).map_err(|e| Error::io(&k, e))?;
            if md.is_dir() {
                return Err(Error::not_found(&k));
            }
            Ok(meta_of(&k, &md))
        })
        .await
    }

    async fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<PutResult> {
        let mut w = self.put_writer(key, opts).await?;
        w.write(data).await?;
        w.finish().await
    }

    async fn put_writer(&self, key: &str, opts: PutOptions) -> Result<Box<dyn ObjectWriter>> {
        let dst = self.path(key)?;
        let k = key.to_string();
        let d = dst.clone();
        let (tmp, file) = blocking(move || open_for_write(&k, &d)).await?;
        Ok(Box::new(LocalWriter {
            key: key.to_string(),
            dst,
            tmp: tmp.clone(),
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            mode: opts.mode,
            files: Arc::clone(&self.files),
            cleanup: TempGuard(Some(tmp)),
        }))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        let k = key.to_string();
        let files = Arc::clone(&self.files);
        blocking(move || {
            // Locked like a commit, so a delete cannot fall between a
            // conditional writer's check and its rename, and be undone by it.
            let Some(_lock) = lock_parent(&k, &path)? else {
                return Ok(());
            };
            let removed = std::fs::remove_file(&path);
            // After the unlink: a read that opened the old file before it
            // must not keep that handle.
            files.forget(&path);
            match removed {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io(&k, e)),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<ListPage> {
        let root = Arc::clone(&self.root);
        let prefix = prefix.to_string();
        let after = start_after.map(str::to_string);
        blocking(move || list_blocking(&root, &prefix, after.as_deref())).await
    }

    async fn sweep_leftovers(&self, older_than: Duration) -> Result<u64> {
        let store = self.clone();
        blocking(move || store.sweep_temp_files(older_than).map(|n| n as u64)).await
    }
}

fn list_blocking(root: &Path, prefix: &str, after: Option<&str>) -> Result<ListPage> {
    // Only the directory named by the prefix's complete segments can hold matches.
    let base = prefix.rfind('/').map_or("", |i| &prefix[..i]);
    let mut keys = Vec::new();
    let mut stack = vec![base.to_string()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&rel, e)),
        };
        for ent in rd {
            let ent = ent.map_err(|e| Error::io(&rel, e))?;
            let Some(name) = ent.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let key = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ft = ent.file_type().map_err(|e| Error::io(&key, e))?;
            if ft.is_dir() {
                // Descend only where keys under this directory can still match.
                let as_prefix = format!("{key}/");
                if as_prefix.starts_with(prefix) || prefix.starts_with(&as_prefix) {
                    stack.push(key);
                }
            } else if key.starts_with(prefix) && after.is_none_or(|a| key.as_str() > a) {
                keys.push((key, ent));
            }
        }
    }
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    let more = keys.len() > LIST_PAGE;
    keys.truncate(LIST_PAGE);
    let mut objects = Vec::with_capacity(keys.len());
    for (key, ent) in keys {
        match ent.metadata() {
            Ok(md) => objects.push(meta_of(&key, &md)),
            // Deleted between readdir and stat: simply not there any more.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&key, e)),
        }
    }
    let next_start_after = if more {
        objects.last().map(|o| o.key.clone())
    } else {
        None
    };
    Ok(ListPage {
        objects,
        next_start_after,
    })
}

/// Removes the temp file if the writer is dropped without finishing.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

struct LocalWriter {
    key: String,
    dst: PathBuf,
    tmp: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
    mode: PutMode,
    files: Arc<OpenFiles>,
    cleanup: TempGuard,
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let mut f = self
            .file
            .take()
            .ok_or_else(|| Error::Invalid("writer closed".into()))?;
        let key = self.key.clone();
        let f = blocking(move || {
            f.write_all(&chunk).map_err(|e| Error::io(&key, e))?;
            Ok(f)
        })
        .await?;
        self.file = Some(f);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<PutResult> {
        let f = self
            .file
            .take()
            .ok_or_else(|| Error::Invalid("writer closed".into()))?;
        let key = self.key.clone();
        // The data fsync is the slow part and needs no lock: concurrent
        // writers' fsyncs run side by side instead of queueing behind one
        // another.
        blocking(move || {
            let f = f
                .into_inner()
                .map_err(|e| Error::io(&key, e.into_error()))?;
            // The ETag is inode, mtime and length. Many kernels stamp mtime
            // from a clock that ticks every few milliseconds, and ext4 hands
            // a freed inode number to the next file at once, so two versions
            // of one length written within a tick would share an ETag and a
            // stale `UpdateIfMatch` would pass; the nanosecond clock keeps
            // them apart.
            f.set_modified(std::time::SystemTime::now())
                .map_err(|e| Error::io(&key, e))?;
            f.sync_all().map_err(|e| Error::io(&key, e))
        })
        .await?;
        let (key, tmp, dst, mode) = (
            self.key.clone(),
            self.tmp.clone(),
            self.dst.clone(),
            self.mode.clone(),
        );
        let files = Arc::clone(&self.files);
        let res = blocking(move || {
            let put = commit_file(&key, &tmp, &dst, &mode);
            // Whatever the outcome, a kept handle of `dst` may now be older
            // than the file: ours replaced it, or a competitor's did and made
            // this commit fail, and that loser is about to re-read it to
            // rebuild; serving it the version it lost on would only make it
            // lose again.
            files.forget(&dst);
            let put = put?;
            // The directory fsync needs no lock.
            sync_parent(&key, &dst)?;
            Ok(put)
        })
        .await;
        if res.is_ok() {
            self.cleanup.0 = None;
        }
        res
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.file = None;
        if let Some(p) = self.cleanup.0.take() {
            let _ = tokio::fs::remove_file(p).await;
        }
        Ok(())
    }
}
