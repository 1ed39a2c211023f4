//! End-to-end deletion against a real S3 server (single-node Garage, which
//! accepts but ignores conditional writes, so the repacker's unconditional
//! publish and the lease's read-back path are the ones exercised):
//! store -> tombstone -> repack -> the deleted bytes are absent from every
//! raw object -> everything else identical -> des-verify clean.
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

    let out = s3(
        &server,
        "des-repack",
        &[
            "--store",
            &url,
            "--json",
            "--min-garbage-ratio",
            "0",
            "--big-file-grace",
            "0s",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        describe(&out),
        server.log()
    );
    let r = json(&out);
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
