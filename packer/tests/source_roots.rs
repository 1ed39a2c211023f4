#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! End-to-end: `des-pack --source-root` packs what lies inside its roots and
//! fails, per file, every source that escapes them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use common::{CREATED, assert_exit, report};
use des_format::Timestamp;
use des_packer::cli::{EXIT_FATAL, EXIT_OK, EXIT_PARTIAL};
use des_storage::{DesStore, LocalStore};
use serde_json::Value;

const OUTSIDE: &str = "is outside every --source-root";

/// `des-pack` with `args`, `DES_PACK_SOURCE_ROOT` set to `env_root` or
/// removed (so a value in the test's own environment changes nothing).
fn des_pack(args: &[&str], env_root: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_des-pack"));
    cmd.args(args);
    match env_root {
        Some(r) => cmd.env("DES_PACK_SOURCE_ROOT", r),
        None => cmd.env_remove("DES_PACK_SOURCE_ROOT"),
    };
    cmd.output().unwrap()
}

fn get(store: &Path, uid: &str) -> Option<Vec<u8>> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt
        .block_on(DesStore::open(Arc::new(LocalStore::new(store).unwrap())))
        .unwrap();
    let ts = Timestamp::parse_rfc3339(CREATED).unwrap();
    rt.block_on(s.get_file(uid, ts)).ok().map(|(_, data)| data)
}

/// (uid, reason) of every failure in a `--json` report.
fn failures(r: &Value) -> Vec<(String, String)> {
    r["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["uid"].as_str().unwrap_or("?").to_string(),
                f["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `base/root/inside.txt`, `base/outside/secret.txt`, `base/root/link` →
/// the secret, and a file in another temp dir altogether; the manifest
/// (in `base`) names all four, the second through `root/../`.
struct Setup {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    base: PathBuf,
    root: PathBuf,
    elsewhere: PathBuf,
    manifest: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let root = base.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(base.join("outside")).unwrap();
    std::fs::write(root.join("inside.txt"), b"inside bytes").unwrap();
    std::fs::write(base.join("outside/secret.txt"), b"secret bytes").unwrap();
    let elsewhere = other.path().join("elsewhere.txt");
    std::fs::write(&elsewhere, b"elsewhere bytes").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(base.join("outside/secret.txt"), root.join("link")).unwrap();
    let line = |uid: &str, source: &str| {
        serde_json::json!({"uid": uid, "created_at": CREATED, "source": source}).to_string()
    };
    let mut lines = vec![
        line("inside", "root/inside.txt"),
        line("escape", "root/../outside/secret.txt"),
        line("absolute", elsewhere.to_str().unwrap()),
    ];
    if cfg!(unix) {
        lines.push(line("symlink", "root/link"));
    }
    let manifest = base.join("m.jsonl");
    std::fs::write(&manifest, lines.join("\n")).unwrap();
    Setup {
        _dirs: (dir, other),
        base,
        root,
        elsewhere,
        manifest,
    }
}

#[test]
fn only_sources_inside_the_root_are_packed() {
    let s = setup();
    let out = tempfile::tempdir().unwrap();
    let o = des_pack(
        &[
            "--manifest",
            s.manifest.to_str().unwrap(),
            "--out",
            out.path().to_str().unwrap(),
            "--source-root",
            s.root.to_str().unwrap(),
            "--json",
        ],
        None,
    );
    assert_exit(&o, EXIT_PARTIAL);
    let r = report(&o);
    let escapes = if cfg!(unix) { 3 } else { 2 };
    assert_eq!(r["files_packed"].as_u64(), Some(1), "{r:#}");
    assert_eq!(r["files_failed"].as_u64(), Some(escapes), "{r:#}");
    let mut failed = failures(&r);
    failed.sort();
    let secret = s.base.join("outside/secret.txt");
    let mut want = vec![
        (
            "absolute".to_string(),
            format!("source {} {OUTSIDE}", s.elsewhere.display()),
        ),
        (
            "escape".to_string(),
            format!(
                "source {} {OUTSIDE} (resolves to {})",
                s.base.join("root/../outside/secret.txt").display(),
                secret.display()
            ),
        ),
    ];
    if cfg!(unix) {
        want.push((
            "symlink".to_string(),
            format!(
                "source {} {OUTSIDE} (resolves to {})",
                s.root.join("link").display(),
                secret.display()
            ),
        ));
    }
    // The temp dir of `elsewhere` may itself sit behind a symlink (macOS
    // /var): compare up to the resolution note.
    let trimmed: Vec<(String, String)> = failed
        .iter()
        .map(|(u, reason)| {
            (
                u.clone(),
                reason.split(" (resolves to").next().unwrap().into(),
            )
        })
        .collect();
    let want_trimmed: Vec<(String, String)> = want
        .iter()
        .map(|(u, reason)| {
            (
                u.clone(),
                reason.split(" (resolves to").next().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(trimmed, want_trimmed);
    assert_eq!(failed[1], want[1], "the `..` escape names its real path");
    if cfg!(unix) {
        assert_eq!(failed[2], want[2], "the symlink names its target");
    }

    assert_eq!(
        get(out.path(), "inside").as_deref(),
        Some(&b"inside bytes"[..])
    );
    for uid in ["escape", "absolute", "symlink"] {
        assert_eq!(get(out.path(), uid), None, "{uid} must not be stored");
    }
}

#[test]
fn without_a_root_every_readable_source_is_packed() {
    let s = setup();
    let out = tempfile::tempdir().unwrap();
    let args = [
        "--manifest",
        s.manifest.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
        "--json",
    ];
    let o = des_pack(&args, None);
    assert_exit(&o, EXIT_OK);
    let packed = if cfg!(unix) { 4 } else { 3 };
    assert_eq!(report(&o)["files_packed"].as_u64(), Some(packed));
    assert_eq!(
        get(out.path(), "escape").as_deref(),
        Some(&b"secret bytes"[..])
    );

    // The same run with the root from the environment instead of the flag
    // packs nothing new and fails the escapes.
    let o = des_pack(&args, Some(&s.root));
    assert_exit(&o, EXIT_PARTIAL);
    let r = report(&o);
    assert_eq!(r["files_already_present"].as_u64(), Some(1), "{r:#}");
    assert_eq!(r["files_failed"].as_u64(), Some(packed - 1), "{r:#}");
    assert!(
        failures(&r).iter().all(|(_, why)| why.contains(OUTSIDE)),
        "{r:#}"
    );
}

#[test]
fn a_dir_walk_obeys_the_roots() {
    let dir = tempfile::tempdir().unwrap();
    let tree = std::fs::canonicalize(dir.path()).unwrap().join("tree");
    std::fs::create_dir_all(tree.join("pub")).unwrap();
    std::fs::create_dir_all(tree.join("priv")).unwrap();
    std::fs::write(tree.join("pub/a.txt"), b"public").unwrap();
    std::fs::write(tree.join("priv/b.txt"), b"private").unwrap();
    // Inside the walked tree (the walk itself takes it), outside the root.
    #[cfg(unix)]
    std::os::unix::fs::symlink(tree.join("priv/b.txt"), tree.join("pub/link")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = des_pack(
        &[
            "--dir",
            tree.to_str().unwrap(),
            "--created-at",
            CREATED,
            "--out",
            out.path().to_str().unwrap(),
            "--source-root",
            tree.join("pub").to_str().unwrap(),
            "--json",
        ],
        None,
    );
    assert_exit(&o, EXIT_PARTIAL);
    let r = report(&o);
    assert_eq!(r["files_packed"].as_u64(), Some(1), "{r:#}");
    let mut failed: Vec<String> = failures(&r).into_iter().map(|(uid, _)| uid).collect();
    failed.sort();
    let want: &[&str] = if cfg!(unix) {
        &["priv/b.txt", "pub/link"]
    } else {
        &["priv/b.txt"]
    };
    assert_eq!(failed, want, "{r:#}");
    assert!(
        failures(&r).iter().all(|(_, why)| why.contains(OUTSIDE)),
        "{r:#}"
    );
    assert_eq!(
        get(out.path(), "pub/a.txt").as_deref(),
        Some(&b"public"[..])
    );
    assert_eq!(get(out.path(), "pub/link"), None);
}

#[test]
fn an_unusable_root_stops_the_run() {
    let s = setup();
    let out = tempfile::tempdir().unwrap();
    let missing = s.base.join("no-such-dir");
    let file_root = s.root.join("inside.txt");
    for root in [
        missing.to_str().unwrap(),
        file_root.to_str().unwrap(),
        "s3://",
    ] {
        let o = des_pack(
            &[
                "--manifest",
                s.manifest.to_str().unwrap(),
                "--out",
                out.path().to_str().unwrap(),
                "--source-root",
                root,
                "-q",
            ],
            None,
        );
        assert_exit(&o, EXIT_FATAL);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--source-root"), "{root}: {err}");
    }
    // Roots are checked before the store is even created.
    assert!(!out.path().join("_des").exists(), "the run must not start");
}
