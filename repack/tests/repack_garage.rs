//! End-to-end deletion against a real S3 server (single-node Garage, which
//! accepts but ignores conditional writes, so the repacker's unconditional
//! publish and the lease's read-back path are the ones exercised):
//! store -> tombstone -> repack -> the deleted bytes are absent from every
//! raw object -> everything else identical -> des-verify clean.
//!
//! The store's invariants on S3 too: a deleted file never comes back with a
//! re-run of the packer, and a packer frozen next to big-file clean-up keeps
//! the big file it relies on (docs/CONCURRENCY.md, I2 and I3).
//!
//! Needs `garage` 2.5.0 (`scripts/garage.sh install`); fails, never skips,
//! without it. Run: `cargo test -p des-repack --features s3-tests --test repack_garage`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::sync::Arc;

use common::*;
use des_storage::testing::S3Server;
use des_storage::{ByteRange, ObjectStore, ObjectStoreExt, S3Store};

const PREFIX: &str = "e2e";
const INV_PREFIX: &str = "inv";

fn with_s3_env(mut c: Command, server: &S3Server) -> Command {
    c.env("AWS_ENDPOINT_URL", server.endpoint())
        .env("AWS_ACCESS_KEY_ID", server.access_key())
        .env("AWS_SECRET_ACCESS_KEY", server.secret_key())
        .env("AWS_REGION", server.region())
        // Nothing may wander off to instance metadata or profiles.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_ENDPOINT_URL_S3")
        .env_remove("AWS_PROFILE")
        .env_remove("DES_S3_CONDITIONAL_PUT")
        .env_remove("DES_S3_FORCE_PATH_STYLE");
    c
}

fn s3(server: &S3Server, name: &str, args: &[&str]) -> std::process::Output {
    let mut c = with_s3_env(bin(name), server);
    c.args(args).output().unwrap()
}

/// Every object of the store, whole, searched for `needle`.
async fn raw_contains(objects: &dyn ObjectStore, needle: &[u8]) -> Option<String> {
    for meta in objects.list_all("").await.unwrap() {
        let (_, body) = objects.get_range(&meta.key, ByteRange::All).await.unwrap();
        if contains(&body, needle) {
            return Some(meta.key);
        }
    }
    None
}

#[test]
fn delete_repack_verify_on_garage() {
    let server = S3Server::garage().unwrap_or_else(|e| panic!("garage is required: {e}"));
    let objects: Arc<dyn ObjectStore> =
        Arc::new(S3Store::new(server.config().with_prefix(PREFIX)).unwrap());
    let specs = standard_specs();
    let rt = rt();
    rt.block_on(write_store(Arc::clone(&objects), &specs));
    let url = format!("s3://{}/{PREFIX}", server.bucket());
    let spec = |uid: &str| specs.iter().find(|s| s.uid == uid).unwrap();

    let deleted = ["file-09", "big-b"];
    for uid in deleted {
        let found = rt.block_on(raw_contains(objects.as_ref(), &needle(spec(uid))));
        assert!(found.is_some(), "{uid} must be present before");
        let out = s3(
            &server,
            "des-tombstones",
            &[
                "--store",
                &url,
                "add",
                "--uid",
                uid,
                "--created-at",
                &spec(uid).created_at,
                "--reason",
                "gdpr",
                "--deleted-by",
                "e2e",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    }

    let mut repack = bin("des-repack");
    repack.args(["--store", &url, "--json", "--min-garbage-ratio", "0"]);
    repack.args(["--big-file-grace", "0s"]);
    let r = ok_json(repack, &server);
    assert_eq!(r["entries_dropped"], 2, "{r:#}");
    assert_eq!(r["tombstones_pending"], 0);
    assert_eq!(r["big_files"]["deleted"].as_array().unwrap().len(), 1);
    assert!(
        !rt.block_on(objects.list_all("_des/repack.lease"))
            .unwrap()
            .iter()
            .any(|m| m.key == "_des/repack.lease"),
        "lease released"
    );

    for uid in deleted {
        let found = rt.block_on(raw_contains(objects.as_ref(), &needle(spec(uid))));
        assert_eq!(found, None, "{uid}'s bytes are still in an object");
    }
    check_files(Arc::clone(&objects), &specs, &deleted);

    let verify = s3(&server, "des-verify", &[&url, "--json"]);
    assert_eq!(verify.status.code(), Some(0), "{}", describe(&verify));
    let v = json(&verify);
    assert_eq!(v["clean"], true);
    assert_eq!(v["tombstones_pending"], 0);
}

/// A Garage server and the store (objects and URL) under [`INV_PREFIX`].
fn garage_store() -> (S3Server, Arc<dyn ObjectStore>, String) {
    let server = S3Server::garage().unwrap_or_else(|e| panic!("garage is required: {e}"));
    let objects: Arc<dyn ObjectStore> =
        Arc::new(S3Store::new(server.config().with_prefix(INV_PREFIX)).unwrap());
    let url = format!("s3://{}/{INV_PREFIX}", server.bucket());
    (server, objects, url)
}

fn ok_json(c: Command, server: &S3Server) -> serde_json::Value {
    let out = with_s3_env(c, server).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        describe(&out),
        server.log()
    );
    json(&out)
}

#[test]
fn deleted_files_never_come_back_on_garage() {
    let (server, objects, url) = garage_store();
    let src = tempfile::tempdir().unwrap();
    let mut specs: Vec<FileSpec> = (0..10)
        .map(|i| FileSpec::new(&format!("g-{i}"), "2024-05-17T10:00:00Z", 5_000 + i * 10))
        .collect();
    specs.push(FileSpec::new("g-big", "2024-05-17T11:00:00Z", 300_000));
    let mut lines = String::new();
    for s in &specs {
        let path = src.path().join(&s.uid);
        std::fs::write(&path, content(&s.uid, s.size)).unwrap();
        let rec = serde_json::json!({"uid": s.uid, "created_at": s.created_at, "source": path});
        lines.push_str(&format!("{rec}\n"));
    }
    let manifest = src.path().join("m.jsonl");
    std::fs::write(&manifest, lines).unwrap();
    let pack = || {
        let mut c = des_pack();
        c.arg("--manifest").arg(&manifest);
        c.args(["--out", &url, "--n-bits", "4", "--json", "--quiet"]);
        c.args(["--big-file-threshold", "100K"]);
        // Its refs to big files expire in 1 s (1 h by default).
        c.env("DES_BIG_REF_TTL_SECS", "1");
        ok_json(c, &server)
    };
    assert_eq!(pack()["files_packed"], 11);
    let deleted = [specs[3].clone(), specs[10].clone()];
    for s in &deleted {
        let mut c = bin("des-tombstones");
        c.args(["--store", &url, "add", "--uid", &s.uid]);
        c.args(["--created-at", &s.created_at, "--reason", "gdpr"]);
        c.args(["--deleted-by", "e2e", "--json"]);
        ok_json(c, &server);
    }
    // The packer's ref to the big file (1 s here) must have expired.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let repack = || {
        let mut c = bin("des-repack");
        c.args(["--store", &url, "--json", "--max-delay", "0s"]);
        c.args(["--big-file-grace", "0s"]);
        ok_json(c, &server)
    };
    let r = repack();
    assert_eq!(r["entries_dropped"], 2, "{r:#}");
    assert_eq!(
        r["big_files"]["deleted"].as_array().unwrap().len(),
        1,
        "{r:#}"
    );

    let again = pack();
    assert_eq!(again["files_packed"], 0, "{again:#}");
    assert_eq!(again["files_deleted"], 2, "{again:#}");
    let r = repack();
    assert_eq!(
        r["shards_considered"], 0,
        "every shard already checked: {r:#}"
    );
    let rt = rt();
    for s in &deleted {
        let found = rt.block_on(raw_contains(objects.as_ref(), &needle(s)));
        assert_eq!(found, None, "{}'s bytes are in an object", s.uid);
    }
    let gone: Vec<&str> = deleted.iter().map(|s| s.uid.as_str()).collect();
    check_files(Arc::clone(&objects), &specs, &gone);
}

/// Scenario 3 on S3: a packer frozen (SIGSTOP) right after it found a big
/// file present while clean-up with no grace runs: the object survives and
/// the packer's reference to it reads back.
#[test]
fn a_frozen_packer_keeps_its_big_file_on_garage() {
    let (server, objects, url) = garage_store();
    let src = tempfile::tempdir().unwrap();
    let data = content("big-1", 300_000);
    let manifest = |uid: &str| {
        let path = src.path().join(uid);
        std::fs::write(&path, &data).unwrap();
        let rec =
            serde_json::json!({"uid": uid, "created_at": "2024-05-17T09:00:00Z", "source": path});
        let m = src.path().join(format!("{uid}.jsonl"));
        std::fs::write(&m, format!("{rec}\n")).unwrap();
        m
    };
    let pack_cmd = |m: &std::path::Path| {
        let mut c = des_pack();
        c.arg("--manifest").arg(m);
        c.args(["--out", &url, "--n-bits", "4", "--json", "--quiet"]);
        c.args(["--big-file-threshold", "100K"]);
        with_s3_env(c, &server)
    };
    let out = pack_cmd(&manifest("big-1")).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let mut c = bin("des-tombstones");
    c.args(["--store", &url, "add", "--uid", "big-1"]);
    c.args(["--created-at", "2024-05-17T09:00:00Z", "--reason", "gdpr"]);
    c.args(["--deleted-by", "e2e", "--json"]);
    ok_json(c, &server);
    let repack = |grace: &str| {
        let mut c = bin("des-repack");
        c.args(["--store", &url, "--json", "--max-delay", "0s"]);
        c.args(["--big-file-grace", grace]);
        ok_json(c, &server)
    };
    repack("1h");

    let child = spawn_paused_at_big_file(&mut pack_cmd(&manifest("big-2")));
    let r = repack("0s");
    assert_eq!(
        r["big_files"]["deleted"].as_array().unwrap().len(),
        0,
        "{r:#}"
    );
    let cont = Command::new("kill")
        .args(["-CONT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(cont.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    rt().block_on(async {
        let store = des_storage::DesStore::open(objects).await.unwrap();
        let at = des_format::Timestamp::parse_rfc3339("2024-05-17T09:00:00Z").unwrap();
        let (_, got) = store.get_file("big-2", at).await.unwrap();
        assert!(got == data);
    });
}

/// `des-upgrade` in place on S3: the Python store's parts and one `.meta`
/// sidecar under a prefix become a v3 store there, published through the
/// protocol's unconditional path (Garage ignores conditions), every file
/// byte-exact, the sidecar's deletion a tombstone, no legacy object left.
#[test]
fn upgrade_in_place_on_garage() {
    const UP: &str = "legacy";
    let server = S3Server::garage().unwrap_or_else(|e| panic!("garage is required: {e}"));
    let objects: Arc<dyn ObjectStore> =
        Arc::new(S3Store::new(server.config().with_prefix(UP)).unwrap());
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/legacy-des/store");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("expected.json")).unwrap()).unwrap();
    let files = expected["files"].as_array().unwrap();
    let gone = &files[0];
    let (uid, created_at) = (
        gone["uid"].as_str().unwrap(),
        gone["created_at"].as_str().unwrap(),
    );
    let ts = des_format::Timestamp::parse_rfc3339(created_at).unwrap();
    let hex = des_format::routing::shard_hex(des_format::routing::shard_index(uid, 4).unwrap(), 4);
    let sidecar = serde_json::json!({
        "version": 1, "shard_file": "x.des", "shard_size": 1, "index": {},
        "created_at": "2025-03-05T00:00:00Z", "last_updated": "2025-04-01T00:00:00Z",
        "tombstones": {format!("{uid}:{created_at}"): {"uid": uid, "created_at": created_at,
            "deleted_at": "2025-04-01T00:00:00Z", "deleted_by": "dpo", "reason": "GDPR",
            "ticket_id": null}},
    });
    let meta_key = format!("{}_{hex}_0000.meta", ts.date_dir());
    rt().block_on(async {
        for e in std::fs::read_dir(fixture.join("shards")).unwrap() {
            let e = e.unwrap();
            let body = std::fs::read(e.path()).unwrap();
            let name = e.file_name().into_string().unwrap();
            objects
                .put(&name, body.into(), Default::default())
                .await
                .unwrap();
        }
        let body = serde_json::to_vec(&sidecar).unwrap();
        objects
            .put(&meta_key, body.into(), Default::default())
            .await
            .unwrap();
    });

    let url = format!("s3://{}/{UP}", server.bucket());
    let mut c = bin("des-upgrade");
    c.args(["--from", &url, "--n-bits", "4", "--json"]);
    let r = ok_json(c, &server);
    assert_eq!(r["totals"]["failed"], 0);
    assert_eq!(r["totals"]["deleted"], 1);
    assert_eq!(r["totals"]["verified"], files.len() as u64 - 1);
    assert_eq!(r["sidecars"]["tombstones_logged"], 1);
    assert_eq!(r["sidecars"]["deleted"], 1);
    assert_eq!(r["marker"], "removed");

    rt().block_on(async {
        let left: Vec<String> = objects
            .list_all("")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .filter(|k| !k.contains('/') || k.starts_with("_bigFiles/"))
            .collect();
        assert!(left.is_empty(), "legacy objects left: {left:?}");
        let store = des_storage::DesStore::open(Arc::clone(&objects))
            .await
            .unwrap();
        for f in &files[1..] {
            let ts =
                des_format::Timestamp::parse_rfc3339(f["created_at"].as_str().unwrap()).unwrap();
            let (_, data) = store
                .get_file(f["uid"].as_str().unwrap(), ts)
                .await
                .unwrap();
            assert_eq!(
                des_format::digest::sha256_hex(&data),
                f["sha256"].as_str().unwrap()
            );
        }
        assert!(store.find(uid, ts).await.is_err(), "{uid} was deleted");
        let log = des_storage::tombstones::TombstoneLog::new(&store);
        let logged = log.list_all().await.unwrap();
        assert_eq!(logged.len(), 1);
        assert_eq!(logged[0].tombstone.uid, uid);
    });
    let mut v = bin("des-verify");
    v.args([url.as_str(), "--json", "--quiet"]);
    let report = ok_json(v, &server);
    assert_eq!(report["layout"], "v3");
}
