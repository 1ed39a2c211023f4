//! `--layout auto`: a Python-DES store in the middle of an in-place
//! `des-upgrade` (some (date, shard)s only in v3, some only in legacy parts,
//! some in both), the same store before the upgrade created `store.json`,
//! and what auto costs on a pure v3 store.
// Helpers outside #[test] fns unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;

use actix_web::test::{TestRequest, init_service};
use actix_web::web;
use common::*;
use des_repack::upgrade::{Locations, UpgradeOptions, UpgradeReport, upgrade};
use des_storage::{LocalStore, ObjectStore};

fn auto_settings(root: &Path, n_bits: Option<u8>) -> des_retriever::Settings {
    let mut s = settings(root);
    s.layout_auto = true;
    s.n_bits = n_bits;
    s
}

macro_rules! app {
    ($root:expr, $settings:expr) => {{
        let (r, counts) = counted($root, &$settings).await;
        (
            init_service(des_retriever::server::app(web::Data::new(r))).await,
            counts,
        )
    }};
}

struct File {
    uid: String,
    created_at: String,
    sha256: String,
}

fn fixture_files() -> Vec<File> {
    let fixture = workspace_root().join("testdata/legacy-des/store");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("expected.json")).unwrap()).unwrap();
    expected["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| File {
            uid: f["uid"].as_str().unwrap().into(),
            created_at: f["created_at"].as_str().unwrap().into(),
            sha256: f["sha256"].as_str().unwrap().into(),
        })
        .collect()
}

fn copy_fixture_store(dst: &Path) {
    let src = workspace_root().join("testdata/legacy-des/store/shards");
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

/// Runs des-upgrade in place (on its own runtime: it blocks).
fn run_upgrade(root: &Path, keep_legacy: bool) -> UpgradeReport {
    upgrade_objects(Arc::new(LocalStore::new(root).unwrap()), keep_legacy)
}

fn upgrade_objects(objects: Arc<dyn ObjectStore>, keep_legacy: bool) -> UpgradeReport {
    let locs = Locations {
        source: Arc::clone(&objects),
        target: objects,
        in_place: true,
    };
    let mut opts = UpgradeOptions::new(4);
    opts.keep_legacy = keep_legacy;
    let report = std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(upgrade(&locs, &opts, |_| {}))
    })
    .join()
    .unwrap()
    .unwrap();
    assert!(!report.failed(), "{report}");
    report
}

/// GETs every file: 200 and its exact bytes.
macro_rules! get_all {
    ($app:expr, $files:expr) => {
        for f in $files {
            let r = call(
                $app,
                TestRequest::get()
                    .uri(&file_uri(&f.uid, &f.created_at))
                    .to_request(),
            )
            .await;
            assert_eq!(r.status, 200, "{}", f.uid);
            assert_eq!(sha256_hex(r.bytes()), f.sha256, "{}", f.uid);
        }
    };
}

#[actix_web::test]
async fn serves_a_half_upgraded_store() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture_store(dir.path());
    let files = fixture_files();
    // Converted everywhere, legacy kept; then undone in thirds: a third of
    // the (date, shard)s only in legacy parts (not converted yet), a third
    // only in v3 (converted, parts deleted), the rest in both (published,
    // parts not deleted yet).
    let report = run_upgrade(dir.path(), true);
    assert!(dir.path().join("_des/legacy.json").exists());
    let n = report.groups.len();
    assert!(n >= 9);
    for (i, g) in report.groups.iter().enumerate() {
        match i % 3 {
            0 => std::fs::remove_file(dir.path().join(&g.shard)).unwrap(),
            1 => {
                for p in &g.parts {
                    std::fs::remove_file(dir.path().join(p)).unwrap();
                }
            }
            _ => {}
        }
    }
    let (app, counts) = app!(dir.path(), auto_settings(dir.path(), None));
    get_all!(&app, &files);
    // Twice: the second pass is served from cached indexes and part lists.
    let before = counts.counts();
    get_all!(&app, &files);
    let after = counts.counts();
    assert_eq!(after.list, before.list);
    assert_eq!(after.write, 0);
    let r = call(
        &app,
        TestRequest::get()
            .uri(&file_uri("no-such-file", "2025-03-01T00:00:00Z"))
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        call(&app, TestRequest::get().uri("/ready").to_request())
            .await
            .status,
        200
    );
}

#[actix_web::test]
async fn serves_the_python_store_before_and_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture_store(dir.path());
    let files = fixture_files();
    // No store.json yet: auto is a legacy reader and needs n_bits.
    let storage =
        des_retriever::Storage::single(Arc::new(LocalStore::new(dir.path()).unwrap()), "local");
    let no_n_bits = des_retriever::AppState::open(&storage, &auto_settings(dir.path(), None)).await;
    assert!(no_n_bits.is_err());
    let (before, _) = app!(dir.path(), auto_settings(dir.path(), Some(4)));
    get_all!(&before, &files);
    assert_eq!(
        call(&before, TestRequest::get().uri("/ready").to_request())
            .await
            .status,
        200
    );

    // After a complete upgrade the same retriever still serves everything
    // (its cached legacy indexes point at deleted parts: each read reloads
    // and finds the file in v3), and a new one needs no n_bits.
    let report = run_upgrade(dir.path(), false);
    assert_eq!(report.marker, des_repack::upgrade::MarkerState::Removed);
    get_all!(&before, &files);
    let (after, counts) = app!(dir.path(), auto_settings(dir.path(), None));
    let opened = counts.counts();
    get_all!(&after, &files);
    assert_eq!(
        counts.counts().list,
        opened.list,
        "no legacy part is ever listed"
    );
}

#[actix_web::test]
async fn python_deletions_answer_410_though_their_parts_remain() {
    // A deletion the Python DES kept in its `.meta` sidecar becomes a v3
    // tombstone; with the legacy parts kept, the auto reader would find the
    // bytes in the part after the v3 miss, so the tombstone must win.
    let dir = tempfile::tempdir().unwrap();
    copy_fixture_store(dir.path());
    let files = fixture_files();
    let gone = &files[0];
    let ts = des_format::Timestamp::parse_rfc3339(&gone.created_at).unwrap();
    let hex =
        des_format::routing::shard_hex(des_format::routing::shard_index(&gone.uid, 4).unwrap(), 4);
    let sidecar = serde_json::json!({
        "version": 1, "shard_file": "x.des", "shard_size": 1, "index": {},
        "created_at": "2025-03-05T00:00:00Z", "last_updated": "2025-04-01T00:00:00Z",
        "tombstones": {format!("{}:{}", gone.uid, gone.created_at): {
            "uid": gone.uid, "created_at": gone.created_at, "deleted_at": "2025-04-01T00:00:00Z",
            "deleted_by": "dpo", "reason": "GDPR", "ticket_id": null}},
    });
    let meta = dir
        .path()
        .join(format!("{}_{hex}_0000.meta", ts.date_dir()));
    std::fs::write(&meta, serde_json::to_vec(&sidecar).unwrap()).unwrap();

    let report = run_upgrade(dir.path(), true);
    assert_eq!(report.sidecars.tombstones_logged, 1);
    assert!(meta.exists());
    let (app, _) = app!(dir.path(), auto_settings(dir.path(), None));
    let r = call(
        &app,
        TestRequest::get()
            .uri(&file_uri(&gone.uid, &gone.created_at))
            .to_request(),
    )
    .await;
    assert_eq!(r.status, 410, "{}", gone.uid);
    get_all!(&app, &files[1..]);
}

#[actix_web::test]
async fn auto_costs_a_pure_v3_store_no_listing() {
    let dir = tempfile::tempdir().unwrap();
    pack(
        dir.path(),
        &[Spec::new("a.txt", text(300)), Spec::new("b.txt", text(500))],
        8,
        1 << 20,
    );
    let (v3, v3_counts) = app!(dir.path(), settings(dir.path()));
    let (auto, auto_counts) = app!(dir.path(), auto_settings(dir.path(), None));
    let opened = (v3_counts.counts(), auto_counts.counts());
    // Opening: one request more, for the upgrade marker.
    assert_eq!(opened.1.total(), opened.0.total() + 1);
    for uid in ["a.txt", "b.txt", "missing-1", "missing-2", "missing-3"] {
        let uri = file_uri(uid, CREATED);
        let a = call(&v3, TestRequest::get().uri(&uri).to_request()).await;
        let b = call(&auto, TestRequest::get().uri(&uri).to_request()).await;
        assert_eq!(a.status, b.status, "{uid}");
        assert_eq!(a.body.unwrap(), b.body.unwrap(), "{uid}");
    }
    let (v3_now, auto_now) = (v3_counts.counts(), auto_counts.counts());
    // (Opening lists the tombstone log, in both modes.)
    assert_eq!(auto_now.list, opened.1.list);
    assert_eq!(
        auto_now.total() - opened.1.total(),
        v3_now.total() - opened.0.total(),
        "auto made other requests than v3 for the same lookups"
    );
}

/// A retriever that read the store before the upgrade converted it
/// remembers the v3 shards as absent and the parts as present: once the
/// parts are gone, it must look in the v3 shards again at once, not 404
/// until its negative cache expires. In memory, so no open file keeps a
/// deleted part readable; with an index cache too small to keep any index,
/// the lookup also meets parts that vanished from a cached part list.
#[actix_web::test]
async fn a_retriever_running_through_the_upgrade_never_misses() {
    for cache_bytes in [64 << 20, 1] {
        let objects = Arc::new(des_storage::MemoryStore::new());
        let src = workspace_root().join("testdata/legacy-des/store/shards");
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            let key = e.file_name().into_string().unwrap();
            let body = bytes::Bytes::from(std::fs::read(e.path()).unwrap());
            objects
                .put(&key, body, des_storage::PutOptions::default())
                .await
                .unwrap();
        }
        let files = fixture_files();
        let mut s = auto_settings(Path::new("memory"), Some(4));
        s.cache_bytes = cache_bytes;
        let state = state_on(objects.clone(), &s).await;
        let app = init_service(des_retriever::server::app(web::Data::new(state))).await;
        get_all!(&app, &files);
        let report = upgrade_objects(objects.clone(), false);
        assert_eq!(report.totals.parts_deleted, report.groups.len() as u64);
        get_all!(&app, &files);
    }
}

#[test]
fn auto_from_the_command_line_environment_and_file() {
    use clap::Parser;
    use des_retriever::config::Cli;
    let resolve = |args: &[&str], env: &[(&str, &str)]| {
        let cli = Cli::try_parse_from(
            ["des-retriever", "--store", "/data", "--no-auth"]
                .iter()
                .chain(args),
        )
        .unwrap();
        let env: std::collections::HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        des_retriever::Settings::resolve(cli.opts, &|k| env.get(k).cloned())
    };
    let s = resolve(&["--layout", "auto"], &[]).unwrap();
    assert_eq!(
        (s.layout, s.layout_auto, s.n_bits),
        (des_storage::Layout::V3, true, None)
    );
    let s = resolve(&["--layout", "AUTO", "--n-bits", "4"], &[]).unwrap();
    assert_eq!((s.layout_auto, s.n_bits), (true, Some(4)));
    let s = resolve(&[], &[("DES_RETRIEVER_LAYOUT", "auto")]).unwrap();
    assert!(s.layout_auto);
    assert!(resolve(&["--layout", "auto", "--n-bits", "3"], &[]).is_err());
    // The default stays v3, without the fallback.
    let s = resolve(&[], &[]).unwrap();
    assert_eq!((s.layout, s.layout_auto), (des_storage::Layout::V3, false));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "layout = \"auto\"\nn_bits = 4\n").unwrap();
    let s = resolve(&["--config", file.path().to_str().unwrap()], &[]).unwrap();
    assert_eq!((s.layout_auto, s.n_bits), (true, Some(4)));
}
