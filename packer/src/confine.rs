//! `--source-root`: confining what a run may read to directories and S3
//! prefixes the operator names.
//!
//! A manifest comes from producers; without confinement its `source` can be
//! any path the packer can read (`/proc/self/environ`, a mounted secret, a
//! `../` escape) or any object its credentials can get, and the retriever
//! then serves those bytes to whoever knows the uid. With roots given, every
//! source is checked when it is opened, on what is actually opened:
//!
//! - a local source is resolved (`..` and symlinks, `std::fs::canonicalize`)
//!   and must lie inside one of the canonicalized local roots, compared by
//!   path components (`/data2/x` is not inside `/data`); the resolved path is
//!   what gets opened, and on Linux the kernel is asked afterwards where the
//!   opened file really is (see [`SourceRoots::open_local`] for the races);
//! - an `s3://bucket/key` source must name a root's bucket and a key under the
//!   root's prefix at a `/` boundary, with no empty, `.` or `..` segments
//!   (which some S3-compatible servers backed by a filesystem would resolve).
//!
//! Confinement is by path: a hard link inside a root to a file elsewhere on
//! the same filesystem is inside. Whoever can write inside a root can
//! already put there any bytes they can read, so this only matters for files
//! they cannot read but the packer can, and Linux's `protected_hardlinks`
//! (on by default) keeps them from linking files they neither own nor can
//! read and write.
//!
//! Without roots nothing is checked (the behaviour before `--source-root`).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// The roots of a run; the default (no roots) allows every source.
#[derive(Debug, Clone, Default)]
pub struct SourceRoots {
    /// Canonical directories.
    local: Vec<PathBuf>,
    s3: Vec<S3Root>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct S3Root {
    bucket: String,
    /// Without leading or trailing `/`; empty for the whole bucket.
    prefix: String,
}

/// A `--source-root` that cannot be used; the run does not start (an
/// unusable root must not quietly turn into "no confinement").
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("--source-root {root:?}: {reason}")]
    Invalid { root: String, reason: String },
    #[error("--source-root {root:?}: cannot resolve: {err}")]
    Unresolvable { root: String, err: io::Error },
}

/// Why a source was not read; a per-file failure, the run goes on.
#[derive(Debug, thiserror::Error)]
pub enum SourceRefused {
    #[error("source {shown} is outside every --source-root{}", resolved_note(.shown, .resolved.as_deref()))]
    Outside {
        shown: String,
        /// Where a local source really is, when that differs from how it
        /// was given (a `..` or a symlink).
        resolved: Option<PathBuf>,
    },
    #[error("source {shown}: object key has an empty, \".\" or \"..\" segment")]
    UnsafeKey { shown: String },
    #[error("cannot open {}: {err}", path.display())]
    Open { path: PathBuf, err: io::Error },
}

fn resolved_note(shown: &str, resolved: Option<&Path>) -> String {
    match resolved {
        Some(r) if r != Path::new(shown) => format!(" (resolves to {})", r.display()),
        _ => String::new(),
    }
}

impl SourceRoots {
    /// Parses and resolves `--source-root` values: local directories (which
    /// must exist) and `s3://bucket[/prefix]`.
    pub fn new<I, S>(roots: I) -> Result<Self, RootError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Self::default();
        for root in roots {
            let root = root.as_ref();
            let invalid = |reason: &str| RootError::Invalid {
                root: root.to_string(),
                reason: reason.to_string(),
            };
            if root.is_empty() {
                return Err(invalid("empty"));
            }
            if let Some(rest) = root.strip_prefix("s3://") {
                out.s3.push(parse_s3_root(rest).map_err(|r| invalid(&r))?);
                continue;
            }
            // A URL of another scheme would otherwise be taken for a relative
            // directory that happens not to exist, or worse, that does.
            if root.contains("://") {
                return Err(invalid("only local directories and s3:// are supported"));
            }
            let canonical = fs::canonicalize(root).map_err(|err| RootError::Unresolvable {
                root: root.to_string(),
                err,
            })?;
            if !canonical.is_dir() {
                return Err(invalid("not a directory"));
            }
            out.local.push(canonical);
        }
        Ok(out)
    }

    /// No roots: every source is allowed.
    pub fn is_unconfined(&self) -> bool {
        self.local.is_empty() && self.s3.is_empty()
    }

    fn contains_local(&self, canonical: &Path) -> bool {
        // `Path::starts_with` compares whole components: `/data2` is not
        // under `/data`.
        self.local.iter().any(|root| canonical.starts_with(root))
    }

    /// Opens a local source if it resolves inside a root (any path when
    /// there are no roots).
    ///
    /// The file opened is the canonical path that was checked, not the path
    /// given, so a symlink on the way there re-pointed after the check is
    /// not followed again. What is left is a race on the canonical path
    /// itself: the file or one of its directories replaced by a symlink
    /// between `canonicalize` and `open` redirects the open (std cannot
    /// open with `O_NOFOLLOW` or `openat2(RESOLVE_BENEATH)` without a
    /// `libc`/`rustix` fs dependency). On Linux that is caught after the
    /// open by asking the kernel where the opened file is (`/proc/self/fd`),
    /// so the bytes read are always those of a file inside a root;
    /// elsewhere, or without `/proc`, that narrow window remains, open to
    /// whoever can write to a directory inside a root.
    pub fn open_local(&self, path: &Path) -> Result<File, SourceRefused> {
        let open_err = |err| SourceRefused::Open {
            path: path.to_path_buf(),
            err,
        };
        if self.is_unconfined() {
            return File::open(path).map_err(open_err);
        }
        let canonical = fs::canonicalize(path).map_err(open_err)?;
        let outside = |resolved: PathBuf| SourceRefused::Outside {
            shown: path.display().to_string(),
            resolved: Some(resolved),
        };
        if !self.contains_local(&canonical) {
            return Err(outside(canonical));
        }
        let file = File::open(&canonical).map_err(open_err)?;
        // Roots are absolute, so an answer that is not a path (`pipe:[…]`)
        // is outside too; a file unlinked since shows as `… (deleted)` in
        // its old directory, which is still judged by that directory.
        if let Some(opened) = opened_path(&file)
            && !self.contains_local(&opened)
        {
            return Err(outside(opened));
        }
        Ok(file)
    }

    /// Checks an `s3://bucket/key` source (always passes when there are no
    /// roots).
    pub fn check_s3(&self, bucket: &str, key: &str) -> Result<(), SourceRefused> {
        if self.is_unconfined() {
            return Ok(());
        }
        let shown = format!("s3://{bucket}/{key}");
        // Checked here although manifests already refuse such keys: a
        // `SourceRef` can be built by any library caller, and the prefix
        // test below is only sound on normal segments.
        if !safe_segments(key) {
            return Err(SourceRefused::UnsafeKey { shown });
        }
        let inside = self.s3.iter().any(|root| {
            root.bucket == bucket
                && (root.prefix.is_empty()
                    || key
                        .strip_prefix(root.prefix.as_str())
                        .is_some_and(|rest| rest.starts_with('/')))
        });
        if inside {
            Ok(())
        } else {
            Err(SourceRefused::Outside {
                shown,
                resolved: None,
            })
        }
    }
}

/// `bucket` or `bucket/prefix` (one trailing `/` allowed).
fn parse_s3_root(rest: &str) -> Result<S3Root, String> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err("not s3://bucket[/prefix]".into());
    }
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    if !prefix.is_empty() && !safe_segments(prefix) {
        return Err("the prefix has an empty, \".\" or \"..\" segment".into());
    }
    Ok(S3Root {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
    })
}

/// Non-empty `/`-separated segments, none `.` or `..`, and no `\` or NUL
/// (which servers storing objects as files may take for separators or
/// terminators). Kept here rather than borrowed from des-storage's key check
/// so that loosening that one cannot loosen confinement.
fn safe_segments(key: &str) -> bool {
    !key.contains(['\\', '\0'])
        && key
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// Where the kernel says an open file is, or `None` where that cannot be
/// asked (no `/proc`, not Linux).
#[cfg(target_os = "linux")]
fn opened_path(file: &File) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}

#[cfg(not(target_os = "linux"))]
fn opened_path(_: &File) -> Option<PathBuf> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(r: &[&Path]) -> SourceRoots {
        SourceRoots::new(r.iter().map(|p| p.to_str().unwrap())).unwrap()
    }

    fn refused(r: Result<File, SourceRefused>) -> String {
        r.map(|_| ()).unwrap_err().to_string()
    }

    /// A temp dir with `data/in.txt`, `data2/x.txt` and `secret.txt`.
    fn tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(dir.path()).unwrap();
        fs::create_dir_all(base.join("data/sub")).unwrap();
        fs::create_dir_all(base.join("data2")).unwrap();
        fs::write(base.join("data/in.txt"), b"in").unwrap();
        fs::write(base.join("data/sub/deep.txt"), b"deep").unwrap();
        fs::write(base.join("data2/x.txt"), b"x").unwrap();
        fs::write(base.join("secret.txt"), b"secret").unwrap();
        (dir, base)
    }

    #[test]
    fn local_inside_and_outside() {
        let (_dir, base) = tree();
        let r = roots(&[&base.join("data")]);
        assert!(!r.is_unconfined());
        assert!(r.open_local(&base.join("data/in.txt")).is_ok());
        assert!(r.open_local(&base.join("data/sub/deep.txt")).is_ok());
        assert!(r.open_local(&base.join("data/sub/../in.txt")).is_ok());
        let e = refused(r.open_local(&base.join("secret.txt")));
        assert!(e.contains("is outside every --source-root"), "{e}");
        assert!(!e.contains("resolves to"), "nothing to resolve: {e}");
        // Missing files are an open error, as without roots.
        let e = refused(r.open_local(&base.join("data/nope")));
        assert!(e.starts_with("cannot open"), "{e}");
    }

    #[test]
    fn dot_dot_escape_is_refused() {
        let (_dir, base) = tree();
        let r = roots(&[&base.join("data")]);
        let escape = base.join("data/../secret.txt");
        let e = refused(r.open_local(&escape));
        assert!(e.contains("outside every --source-root"), "{e}");
        assert!(
            e.contains(&format!(
                "resolves to {}",
                base.join("secret.txt").display()
            )),
            "{e}"
        );
    }

    #[test]
    fn sibling_with_a_longer_name_is_not_inside() {
        let (_dir, base) = tree();
        let r = roots(&[&base.join("data")]);
        let e = refused(r.open_local(&base.join("data2/x.txt")));
        assert!(e.contains("outside"), "{e}");
        let both = roots(&[&base.join("data"), &base.join("data2")]);
        assert!(both.open_local(&base.join("data2/x.txt")).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn symlink_escapes_are_refused() {
        use std::os::unix::fs::symlink;
        let (_dir, base) = tree();
        symlink(base.join("secret.txt"), base.join("data/link")).unwrap();
        symlink(&base, base.join("data/up")).unwrap();
        symlink(base.join("data/in.txt"), base.join("data/inner-link")).unwrap();
        let r = roots(&[&base.join("data")]);
        for p in ["data/link", "data/up/secret.txt"] {
            let e = refused(r.open_local(&base.join(p)));
            assert!(e.contains("outside"), "{p}: {e}");
        }
        assert!(r.open_local(&base.join("data/inner-link")).is_ok());
        // A root given through a symlink is its real directory.
        symlink(base.join("data"), base.join("data-link")).unwrap();
        let via_link = roots(&[&base.join("data-link")]);
        assert!(via_link.open_local(&base.join("data/in.txt")).is_ok());
        assert!(via_link.open_local(&base.join("secret.txt")).is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_kernel_names_the_opened_file() {
        let (_dir, base) = tree();
        let f = File::open(base.join("data/in.txt")).unwrap();
        assert_eq!(opened_path(&f), Some(base.join("data/in.txt")));
    }

    #[test]
    fn unconfined_allows_everything() {
        let (_dir, base) = tree();
        let r = SourceRoots::default();
        assert!(r.is_unconfined());
        assert!(r.open_local(&base.join("data/../secret.txt")).is_ok());
        assert!(r.check_s3("any", "thing/at/all").is_ok());
        assert!(
            SourceRoots::new(Vec::<String>::new())
                .unwrap()
                .is_unconfined()
        );
    }

    #[test]
    fn s3_bucket_and_prefix_boundary() {
        let r = SourceRoots::new(["s3://bkt/in/", "s3://whole"]).unwrap();
        assert!(r.check_s3("bkt", "in/a.bin").is_ok());
        assert!(r.check_s3("bkt", "in/deep/a.bin").is_ok());
        assert!(r.check_s3("whole", "any/key").is_ok());
        for (bucket, key) in [
            ("bkt", "inx/a.bin"),
            ("bkt", "in"),
            ("bkt", "other/in/a.bin"),
            ("other", "in/a.bin"),
            ("bk", "t/in/a.bin"),
        ] {
            let e = r.check_s3(bucket, key).unwrap_err().to_string();
            assert_eq!(
                e,
                format!("source s3://{bucket}/{key} is outside every --source-root")
            );
        }
        // Only S3 roots: every local source is outside.
        let (_dir, base) = tree();
        assert!(refused(r.open_local(&base.join("data/in.txt"))).contains("outside"));
        // Only local roots: every S3 source is outside.
        let local = roots(&[&base.join("data")]);
        assert!(local.check_s3("bkt", "in/a.bin").is_err());
    }

    #[test]
    fn s3_dot_segments_cannot_escape() {
        let r = SourceRoots::new(["s3://bkt/in"]).unwrap();
        for key in [
            "in/../secret",
            "in/./a",
            "in//a",
            "in/a/..",
            "/in/a",
            "in/a/",
            "in/..",
            "in\\..\\secret",
        ] {
            let e = r.check_s3("bkt", key).unwrap_err();
            assert!(matches!(e, SourceRefused::UnsafeKey { .. }), "{key}: {e}");
        }
    }

    #[test]
    fn bad_roots_stop_the_run() {
        let (_dir, base) = tree();
        let missing = base.join("missing");
        let file = base.join("secret.txt");
        for bad in [
            "",
            "s3://",
            "s3:///prefix",
            "s3://bkt/a/../b",
            "s3://bkt/a//b",
            "https://host/x",
            missing.to_str().unwrap(),
            file.to_str().unwrap(),
        ] {
            assert!(SourceRoots::new([bad]).is_err(), "{bad:?}");
        }
        let e = SourceRoots::new([missing.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--source-root") && e.contains("missing"), "{e}");
        let ok = SourceRoots::new(["s3://bkt", "s3://bkt/", "s3://bkt/a/b/"]).unwrap();
        assert_eq!(
            ok.s3.iter().map(|r| r.prefix.as_str()).collect::<Vec<_>>(),
            ["", "", "a/b"]
        );
    }
}
