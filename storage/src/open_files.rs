//! Open file handles kept between small reads of the local store.
//!
//! A warm GET reads a few KiB from a shard that was read a moment ago; opening,
//! stat-ing and closing it each time costs more system calls than the read
//! itself (docs/BENCHMARKS.md §2). A handle is kept for at most `ttl`, so a
//! shard replaced by another process (repack, re-pack) is noticed within that
//! time, and its old inode — which may hold files that were deleted from the
//! new one — is closed by the first read of any key after that. Until then a kept handle still reads the
//! version it was opened on, whose etag is what an `If-Match` is compared with,
//! so a reader never mixes two versions.
//!
//! A path this store writes or deletes is forgotten at once, also when the
//! write lost a compare-and-swap: the loser re-reads to rebuild on the
//! winner's version and must not be handed the version it lost on. A read that
//! opened the path before such a forget does not keep its handle (see
//! [`OpenFiles::insert`]).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Handles kept at least, and where the fd limit is unknown: enough for
/// every shard of a day at `n_bits` 8 (and all that a limit of 1024 allows).
const MIN_CAPACITY: usize = 256;
/// Handles kept at most however high the fd limit: reads spread over
/// several days' shards reopen files less the more are kept.
const MAX_CAPACITY: usize = 16_384;

/// A quarter of the soft fd limit, between [`MIN_CAPACITY`] and
/// [`MAX_CAPACITY`]: the rest stays for connections and writes.
fn default_capacity() -> usize {
    capacity_for(fd_limit())
}

fn capacity_for(fd_limit: Option<u64>) -> usize {
    fd_limit
        .and_then(|n| usize::try_from(n / 4).ok())
        .unwrap_or(MIN_CAPACITY)
        .clamp(MIN_CAPACITY, MAX_CAPACITY)
}

fn fd_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}
/// How long a handle is trusted without looking at the path again.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(1);

/// A file opened for reading with what `stat` said at that moment.
#[derive(Debug)]
pub(crate) struct OpenFile {
    pub file: File,
    pub len: u64,
    pub etag: String,
    opened: Instant,
}

impl OpenFile {
    pub fn new(file: File, len: u64, etag: String) -> Self {
        Self {
            file,
            len,
            etag,
            opened: Instant::now(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct OpenFiles {
    inner: Mutex<Kept>,
    capacity: usize,
    ttl: Duration,
    /// Bumped by every `forget`, under `inner`'s lock.
    generation: AtomicU64,
}

#[derive(Debug)]
struct Kept {
    files: HashMap<PathBuf, Arc<OpenFile>>,
    /// When expired handles of every path were last dropped.
    swept: Instant,
}

impl Default for OpenFiles {
    fn default() -> Self {
        Self::new(default_capacity(), DEFAULT_TTL)
    }
}

impl OpenFiles {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Kept {
                files: HashMap::new(),
                swept: Instant::now(),
            }),
            capacity,
            ttl,
            generation: AtomicU64::new(0),
        }
    }

    /// To be read before opening a file that will be passed to `insert`.
    pub fn generation(&self) -> u64 {
        // Acquire: a reader that sees a forget's bump also sees the rename or
        // unlink made before it, so its open finds the new file.
        self.generation.load(Ordering::Acquire)
    }

    /// The kept handles, with every expired one closed if that was last done
    /// more than `ttl` ago: a replaced file's old inode is released by the
    /// next read of any key, not only by the next read of its own path.
    fn map(&self) -> std::sync::MutexGuard<'_, Kept> {
        // The map holds no invariant a panicking holder could break halfway.
        let mut kept = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.swept.elapsed() >= self.ttl {
            // One clock read for the sweep: up to MAX_CAPACITY handles are visited.
            let (now, ttl) = (Instant::now(), self.ttl);
            kept.files
                .retain(|_, f| now.saturating_duration_since(f.opened) < ttl);
            kept.swept = now;
        }
        kept
    }

    /// A kept handle for `path` that is still within its time.
    pub fn get(&self, path: &Path) -> Option<Arc<OpenFile>> {
        let mut kept = self.map();
        let fresh = kept.files.get(path)?.opened.elapsed() < self.ttl;
        if fresh {
            kept.files.get(path).cloned()
        } else {
            kept.files.remove(path);
            None
        }
    }

    /// Keeps `file` for later reads, making room if needed, unless a path
    /// was forgotten since `generation` (read before `file` was opened): the
    /// file may then be an inode that a write replaced after the open, and
    /// keeping it would serve the old version after the write. Any forget
    /// counts, not only one of `path`; they are rare next to reads, and a
    /// refused handle is merely opened again by the next read.
    pub fn insert(&self, path: PathBuf, file: Arc<OpenFile>, generation: u64) {
        if self.capacity == 0 {
            return;
        }
        let mut kept = self.map();
        if self.generation.load(Ordering::Relaxed) != generation {
            return;
        }
        let map = &mut kept.files;
        if map.len() >= self.capacity && !map.contains_key(&path) {
            // Full: drop any one. Expired handles go in `map`'s sweep; a scan
            // for them here would run on every open once reads spread over
            // more files than are kept.
            let victim = map.keys().next().cloned();
            if let Some(v) = victim {
                map.remove(&v);
            }
        }
        map.insert(path, file);
    }

    /// Called after this store replaced or deleted `path`, or tried to.
    pub fn forget(&self, path: &Path) {
        let mut kept = self.map();
        kept.files.remove(path);
        // Under the lock, so an `insert` either comes before (and its handle
        // was just removed) or sees the new generation.
        self.generation.fetch_add(1, Ordering::Release);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map().files.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn open(dir: &Path, name: &str) -> (PathBuf, Arc<OpenFile>) {
        let p = dir.join(name);
        std::fs::write(&p, name).unwrap();
        let f = File::open(&p).unwrap();
        (p, Arc::new(OpenFile::new(f, 1, name.into())))
    }

    #[test]
    fn keeps_at_most_capacity_handles() {
        let dir = tempfile::tempdir().unwrap();
        let files = OpenFiles::new(3, Duration::from_secs(60));
        for i in 0..10 {
            let (p, f) = open(dir.path(), &format!("f{i}"));
            files.insert(p.clone(), f, files.generation());
            assert!(files.get(&p).is_some(), "the newest handle is kept");
        }
        assert_eq!(files.len(), 3);
    }

    #[test]
    fn handles_expire_and_can_be_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let files = OpenFiles::new(8, Duration::from_millis(30));
        let (p, f) = open(dir.path(), "a");
        files.insert(p.clone(), f, files.generation());
        assert_eq!(files.get(&p).unwrap().etag, "a");
        std::thread::sleep(Duration::from_millis(40));
        assert!(files.get(&p).is_none(), "expired handles are not used");
        assert_eq!(files.len(), 0, "and are dropped, closing the file");

        let (p, f) = open(dir.path(), "b");
        files.insert(p.clone(), f, files.generation());
        files.forget(&p);
        assert!(files.get(&p).is_none());
    }

    #[test]
    fn expired_handles_close_when_any_other_path_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let files = OpenFiles::new(8, Duration::from_millis(30));
        for name in ["a", "b", "c"] {
            let (p, f) = open(dir.path(), name);
            files.insert(p, f, files.generation());
        }
        std::thread::sleep(Duration::from_millis(40));
        assert!(files.get(&dir.path().join("never-kept")).is_none());
        assert_eq!(
            files.len(),
            0,
            "a, b and c were released without being read"
        );
    }

    #[test]
    fn a_handle_opened_before_a_forget_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let files = OpenFiles::new(8, Duration::from_secs(60));
        let seen = files.generation();
        let (p, f) = open(dir.path(), "a");
        // A write replaces `a` and forgets it between our open and our insert.
        files.forget(&p);
        files.insert(p.clone(), f, seen);
        assert!(
            files.get(&p).is_none(),
            "the old inode would outlive the write"
        );
        let (p, f) = open(dir.path(), "a");
        files.insert(p.clone(), f, files.generation());
        assert!(files.get(&p).is_some(), "opened after the forget: kept");
    }

    #[test]
    fn capacity_follows_the_fd_limit_within_bounds() {
        assert_eq!(capacity_for(None), MIN_CAPACITY);
        assert_eq!(capacity_for(Some(1024)), MIN_CAPACITY);
        assert_eq!(capacity_for(Some(256)), MIN_CAPACITY);
        assert_eq!(capacity_for(Some(20_000)), 5_000);
        assert_eq!(capacity_for(Some(1 << 20)), MAX_CAPACITY);
        assert_eq!(capacity_for(Some(u64::MAX)), MAX_CAPACITY);
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let files = OpenFiles::new(0, DEFAULT_TTL);
        let (p, f) = open(dir.path(), "a");
        files.insert(p.clone(), f, files.generation());
        assert!(files.get(&p).is_none());
    }
}
