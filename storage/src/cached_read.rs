//! Reading and opening what the kernel's caches already hold, without
//! waiting for the disk.
//!
//! Small local reads run on the calling task because a hand-off to the
//! blocking pool costs more than a read from the page cache. A read the
//! cache cannot serve waits for the disk, though, and would stall every
//! other request of that HTTP worker, and it caps the disk's queue depth at
//! the number of workers. `preadv2(RWF_NOWAIT)` (Linux ≥ 4.14) reads only
//! what is cached and says `EAGAIN` otherwise, so the caller can take the
//! rest to the blocking pool. Opening a shard file is the same trade:
//! `openat2(RESOLVE_CACHED)` (Linux ≥ 5.12) opens only a path whose lookup
//! needs no I/O.

use std::fs::File;
use std::path::Path;

/// `path` opened read-only if that needs no I/O; `Ok(None)` means it must be
/// opened by a call that may block (also where the kernel cannot tell).
#[cfg(target_os = "linux")]
pub(crate) fn open_cached(path: &Path) -> std::io::Result<Option<File>> {
    use rustix::fs::{CWD, Mode, OFlags, ResolveFlags, openat2};
    use rustix::io::Errno;
    let flags = OFlags::RDONLY | OFlags::CLOEXEC;
    match openat2(CWD, path, flags, Mode::empty(), ResolveFlags::CACHED) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(Errno::AGAIN | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn open_cached(_: &Path) -> std::io::Result<Option<File>> {
    Ok(None)
}

/// Reads into `buf` from `offset` as much as can be read without blocking on
/// I/O; `Ok(n)` with `n < buf.len()` means the rest must be read by a call
/// that may block. Filesystems without `RWF_NOWAIT` report nothing read.
#[cfg(target_os = "linux")]
pub(crate) fn read_cached(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    use rustix::io::{Errno, ReadWriteFlags, preadv2};
    let mut done = 0;
    while done < buf.len() {
        let at = offset + done as u64;
        let mut slice = [std::io::IoSliceMut::new(&mut buf[done..])];
        match preadv2(file, &mut slice, at, ReadWriteFlags::NOWAIT) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN | Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn read_cached(_: &File, _: &mut [u8], _: u64) -> std::io::Result<usize> {
    Ok(0)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::io::Write;

    /// Drops the file's clean pages from the page cache; false where the
    /// filesystem keeps them anyway (tmpfs).
    fn evict(file: &File, len: u64) -> bool {
        use rustix::fs::{Advice, fadvise};
        file.sync_all().unwrap();
        fadvise(file, 0, std::num::NonZeroU64::new(len), Advice::DontNeed).unwrap();
        let mut probe = [0u8; 1];
        read_cached(file, &mut probe, len / 2).unwrap() == 0
    }

    #[test]
    fn reads_what_is_cached_and_stops_where_the_disk_would_be_needed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        let file = File::open(&path).unwrap();

        let mut buf = vec![0u8; 8192];
        assert_eq!(read_cached(&file, &mut buf, 4096).unwrap(), 8192);
        assert_eq!(buf, data[4096..4096 + 8192]);
        // Past the end: a short count, never an error or a wait.
        let mut tail = vec![0u8; 100];
        assert_eq!(
            read_cached(&file, &mut tail, data.len() as u64 - 10).unwrap(),
            10
        );

        if !evict(&file, data.len() as u64) {
            eprintln!("page cache not evictable here (tmpfs?): uncached case not checked");
            return;
        }
        let mut cold = vec![0u8; 8192];
        let got = read_cached(&file, &mut cold, 128 * 1024).unwrap();
        assert!(
            got < cold.len(),
            "{got} bytes read from an evicted file without waiting"
        );
        assert_eq!(cold[..got], data[128 * 1024..128 * 1024 + got]);
    }

    #[test]
    fn opens_a_cached_path_and_reports_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        // Just written: every component of the path is in the dentry cache.
        let file = open_cached(&path).unwrap().expect("a cached path opens");
        let mut buf = [0u8; 3];
        assert_eq!(read_cached(&file, &mut buf, 0).unwrap(), 3);
        assert_eq!(&buf, b"abc");
        // A name never looked up may need the disk to be found missing
        // (ext4), or not (tmpfs); it is never opened.
        let missing = dir.path().join("nope");
        match open_cached(&missing) {
            Ok(None) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
            Ok(Some(_)) => panic!("a missing file opened"),
        }
        // Once a lookup has failed, the cache knows the name is not there.
        assert!(std::fs::File::open(&missing).is_err());
        let known_missing = open_cached(&missing).unwrap_err();
        assert_eq!(known_missing.kind(), std::io::ErrorKind::NotFound);
    }
}
