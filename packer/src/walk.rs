//! Packing a directory as-is: every regular file (and every symlink to one
//! inside the root) becomes a record whose uid is its path relative to the
//! root, `/`-separated, all with the same `created_at`.
//!
//! Order is depth-first, each directory's entries sorted by name bytes, so
//! uids and failure line numbers are deterministic. This walk is the serial
//! part of a run, so it does little per entry: the type comes from readdir
//! (no stat of regular files: the builder stats each file when it opens it)
//! and a uid is its parent's uid plus the name, not re-derived from the path.
//! `--source-root` is not checked here but when each file is opened
//! (`crate::confine`, through `reader`): that is where a symlink is
//! resolved for real, and it keeps this serial walk free of extra syscalls.

use std::ffi::OsString;
use std::fs::{self, FileType};
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::error::{Context, bail};
use des_format::Timestamp;

use crate::report::FailureKind;
use crate::source::{FileRecord, RecordFailure, Sink, SourceRef, check_uid};

pub(crate) fn read_dir(
    root: &Path,
    created_at: Timestamp,
    f: Sink<'_>,
) -> crate::error::Result<()> {
    let md =
        fs::metadata(root).with_context(|| format!("cannot read directory {}", root.display()))?;
    if !md.is_dir() {
        bail!("{} is not a directory", root.display());
    }
    let canonical_root =
        fs::canonicalize(root).with_context(|| format!("cannot resolve {}", root.display()))?;
    let top = list(root).with_context(|| format!("cannot read directory {}", root.display()))?;
    let mut walk = Walk {
        root,
        canonical_root: &canonical_root,
        created_at,
        line: 0,
        sink: f,
    };
    // One listing per directory on the way down: memory is the listings of
    // the current path, as with any sorted walk.
    let mut stack = vec![(Some(String::new()), top.into_iter())];
    while let Some((prefix, entries)) = stack.last_mut() {
        let Some(entry) = entries.next() else {
            stack.pop();
            continue;
        };
        let entry = match entry {
            Ok(e) => e,
            Err(failure) => {
                walk.emit(Err(failure))?;
                continue;
            }
        };
        let uid = prefix.as_ref().and_then(|p| child_uid(p, &entry.name));
        if entry.file_type.as_ref().is_ok_and(FileType::is_dir) {
            match list(&entry.path) {
                Ok(children) => stack.push((uid, children.into_iter())),
                Err(e) => walk.fail(None, &entry.path, format!("cannot read: {e}"))?,
            }
            continue;
        }
        walk.file(entry, uid)?;
    }
    Ok(())
}

struct Entry {
    name: OsString,
    path: PathBuf,
    file_type: io::Result<FileType>,
}

type Listing = Vec<Result<Entry, RecordFailure>>;

/// A directory's entries, sorted by name; entries that could not be read
/// come first (their line numbers are then stable too).
fn list(dir: &Path) -> io::Result<Listing> {
    let mut out: Listing = Vec::new();
    for e in fs::read_dir(dir)? {
        out.push(match e {
            Ok(e) => Ok(Entry {
                name: e.file_name(),
                path: e.path(),
                file_type: e.file_type(),
            }),
            Err(e) => Err(RecordFailure {
                line: 0,
                uid: None,
                source: Some(dir.display().to_string()),
                kind: FailureKind::SourceUnreadable,
                reason: format!("cannot read: {e}"),
            }),
        });
    }
    out.sort_unstable_by(|a, b| match (a, b) {
        (Ok(a), Ok(b)) => a.name.cmp(&b.name),
        (Err(_), Err(_)) => std::cmp::Ordering::Equal,
        (Err(_), Ok(_)) => std::cmp::Ordering::Less,
        (Ok(_), Err(_)) => std::cmp::Ordering::Greater,
    });
    Ok(out)
}

/// `None` when the name (or an ancestor's) is not UTF-8; the slow path in
/// [`relative_uid`] then says which part is wrong.
fn child_uid(prefix: &str, name: &std::ffi::OsStr) -> Option<String> {
    let name = name.to_str()?;
    if prefix.is_empty() {
        return Some(name.to_string());
    }
    let mut uid = String::with_capacity(prefix.len() + 1 + name.len());
    uid.push_str(prefix);
    uid.push('/');
    uid.push_str(name);
    Some(uid)
}

struct Walk<'a, 's> {
    root: &'a Path,
    canonical_root: &'a Path,
    created_at: Timestamp,
    /// Records and failures handed out so far (directories are neither).
    line: u64,
    sink: Sink<'s>,
}

impl Walk<'_, '_> {
    /// Hands out a record or failure, numbered here (its own `line` is ignored).
    fn emit(&mut self, item: Result<FileRecord, RecordFailure>) -> crate::error::Result<()> {
        self.line += 1;
        let line = self.line;
        let item = item
            .map(|r| FileRecord { line, ..r })
            .map_err(|f| RecordFailure { line, ..f });
        (self.sink)(item)
    }

    fn fail(
        &mut self,
        uid: Option<String>,
        path: &Path,
        reason: String,
    ) -> crate::error::Result<()> {
        self.emit(Err(RecordFailure {
            line: 0,
            uid,
            source: Some(path.display().to_string()),
            kind: FailureKind::Record,
            reason,
        }))
    }

    fn file(&mut self, entry: Entry, uid: Option<String>) -> crate::error::Result<()> {
        let uid = match uid.map_or_else(|| relative_uid(self.root, &entry.path), Ok) {
            Ok(u) => u,
            Err(reason) => return self.fail(None, &entry.path, reason),
        };
        if let Err(reason) = check_uid(&uid) {
            return self.fail(None, &entry.path, reason);
        }
        let size_hint = match &entry.file_type {
            Ok(ft) if ft.is_symlink() => self.symlink_size(&entry.path).map(Some),
            Ok(ft) if ft.is_file() => Ok(None),
            Ok(_) => Err("not a regular file".to_string()),
            Err(e) => Err(format!("cannot read: {e}")),
        };
        match size_hint {
            Ok(size_hint) => self.emit(Ok(FileRecord {
                uid,
                created_at: self.created_at,
                source: SourceRef::Local(entry.path),
                content_type: None,
                meta: None,
                size_hint,
                line: 0,
            })),
            Err(reason) => self.fail(Some(uid), &entry.path, reason),
        }
    }

    /// Links are packed only when they stay inside the root, so a walk can
    /// never pull in files the caller did not hand over.
    fn symlink_size(&self, path: &Path) -> Result<u64, String> {
        let target = fs::canonicalize(path).map_err(|e| format!("broken symlink: {e}"))?;
        if !target.starts_with(self.canonical_root) {
            return Err(format!(
                "symlink points outside the input directory ({})",
                target.display()
            ));
        }
        let md = fs::metadata(&target).map_err(|e| format!("cannot stat symlink target: {e}"))?;
        if md.is_dir() {
            return Err("symlink to a directory is not followed".into());
        }
        if !md.is_file() {
            return Err("symlink target is not a regular file".into());
        }
        Ok(md.len())
    }
}

fn relative_uid(root: &Path, path: &Path) -> Result<String, String> {
    let rel = path
        .strip_prefix(root)
        .map_err(|_| "entry is outside the walked root".to_string())?;
    let mut parts = Vec::new();
    for c in rel.components() {
        let Component::Normal(part) = c else {
            return Err(format!("unexpected path component in {}", rel.display()));
        };
        parts.push(
            part.to_str()
                .ok_or_else(|| format!("path {} is not valid UTF-8", rel.display()))?,
        );
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Input;
    use crate::source::tests::{collect, failed, ok, ts};

    #[test]
    fn dir_walk_uids() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("sub/c")).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        fs::write(root.join("b.txt"), b"bb").unwrap();
        fs::write(root.join("a.txt"), b"a").unwrap();
        fs::write(root.join("sub/z"), b"").unwrap();
        fs::write(root.join("sub/c/d.txt"), b"dddd").unwrap();
        let created_at = ts("2024-05-17T10:00:00Z");
        let items = collect(&Input::Dir {
            root: root.clone(),
            created_at,
        })
        .unwrap();
        let got: Vec<(&str, u64, Option<u64>)> = items
            .iter()
            .map(ok)
            .map(|r| (r.uid.as_str(), r.line, r.size_hint))
            .collect();
        assert_eq!(
            got,
            [
                ("a.txt", 1, None),
                ("b.txt", 2, None),
                ("sub/c/d.txt", 3, None),
                ("sub/z", 4, None)
            ]
        );
        assert!(items.iter().all(|i| ok(i).created_at == created_at));
        assert_eq!(
            ok(&items[2]).source,
            SourceRef::Local(root.join("sub/c/d.txt"))
        );
    }

    #[cfg(unix)]
    #[test]
    fn dir_walk_symlinks_and_bad_names() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::symlink;

        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("d")).unwrap();
        fs::write(dir.path().join("secret"), b"s").unwrap();
        fs::write(root.join("d/real"), b"rr").unwrap();
        symlink(root.join("d/real"), root.join("in")).unwrap();
        symlink(dir.path().join("secret"), root.join("out")).unwrap();
        symlink(root.join("d"), root.join("subdir-link")).unwrap();
        fs::write(root.join(OsStr::from_bytes(b"x\xFF")), b"").unwrap();

        let items = collect(&Input::Dir {
            root: root.clone(),
            created_at: ts("2024-05-17T10:00:00Z"),
        })
        .unwrap();
        let summary: Vec<(u64, Option<&str>, bool)> = items
            .iter()
            .map(|i| match i {
                Ok(r) => (r.line, Some(r.uid.as_str()), true),
                Err(f) => (f.line, f.uid.as_deref(), false),
            })
            .collect();
        assert_eq!(
            summary,
            [
                (1, Some("d/real"), true),
                (2, Some("in"), true),
                (3, Some("out"), false),
                (4, Some("subdir-link"), false),
                (5, None, false),
            ]
        );
        assert_eq!(ok(&items[1]).size_hint, Some(2));
        assert!(failed(&items[2]).reason.contains("outside"));
        assert!(failed(&items[4]).reason.contains("UTF-8"));
    }

    /// The order (and so every uid's line number) is walkdir's sorted
    /// depth-first order, which earlier versions used: names that sort
    /// around a directory's name, nesting, bytes above ASCII.
    #[test]
    fn order_matches_a_sorted_depth_first_walk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        let files = [
            "a",
            "a.b",
            "a-b",
            "ab/x",
            "ab/x.y/z",
            "ab/w",
            "B",
            "b/_",
            "b/a/c/d/e",
            "é",
            "z~",
            "0/1/2",
            "0.0",
        ];
        for f in files {
            let p = root.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, f).unwrap();
        }
        fs::create_dir_all(root.join("empty/deeper")).unwrap();
        let got: Vec<String> = collect(&Input::Dir {
            root: root.clone(),
            created_at: ts("2024-05-17T10:00:00Z"),
        })
        .unwrap()
        .iter()
        .map(|i| ok(i).uid.clone())
        .collect();
        let want: Vec<String> = walkdir::WalkDir::new(&root)
            .sort_by_file_name()
            .into_iter()
            .map(Result::unwrap)
            .filter(|e| e.file_type().is_file())
            .map(|e| relative_uid(&root, e.path()).unwrap())
            .collect();
        assert_eq!(got.len(), files.len());
        assert_eq!(got, want);
    }
}
