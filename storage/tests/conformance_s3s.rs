//! The shared conformance suite and the S3-only checks against s3s-fs, the
//! s3s project's file-backed server. Needs `s3s-fs` 0.14.1:
//! `scripts/s3s-fs.sh install`, then
//! `cargo test -p des-storage --features testing --test conformance_s3s`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod conformance;
mod s3_suite;

use std::sync::OnceLock;

use des_storage::testing::S3Server;

static SERVER: OnceLock<Result<S3Server, String>> = OnceLock::new();

fn server() -> &'static S3Server {
    s3_suite::shared(&SERVER, S3Server::s3s_fs)
}

fn declare_quirks() {
    conformance::declare_quirks(conformance::Quirks {
        suffix_longer_than_object_fails: true,
    });
}

async fn store() -> conformance::Store {
    declare_quirks();
    s3_suite::conformance_store(server()).await
}

conformance_tests!(async store());

/// The suite again with GETs through the SDK (the HTTPS and AWS path).
mod sdk_get {
    use super::*;

    async fn store() -> conformance::Store {
        declare_quirks();
        s3_suite::conformance_store_sdk_get(server()).await
    }

    conformance_tests!(async store());
}

/// s3s-fs 0.14.1 has no ListMultipartUploads, so only abort is checked.
#[tokio::test]
async fn multipart_uploads_are_cleaned_up() {
    s3_suite::multipart_uploads_cleaned(server(), false).await;
}

/// s3s-fs checks `If-None-Match: *` and `If-Match` on PUT (not atomically
/// with the write, but it does refuse).
#[tokio::test]
async fn conditional_put_is_enforced() {
    s3_suite::conditional_put_probe(server(), true).await;
}

#[tokio::test]
async fn prefixes_are_isolated() {
    s3_suite::prefixes_are_isolated(server()).await;
}

#[tokio::test]
async fn errors_are_mapped() {
    s3_suite::errors_are_mapped(server(), false).await;
}

#[tokio::test]
async fn outage_and_restart() {
    s3_suite::outage_and_restart(S3Server::s3s_fs().unwrap()).await;
}

#[tokio::test]
async fn open_location_from_env() {
    s3_suite::open_location_from_env("open_location_from_env", server).await;
}

/// `open_location` takes `s3://` URLs without touching the network.
#[test]
fn open_location_accepts_s3_urls() {
    let s = des_storage::open_location("s3://des-test/some/prefix").unwrap();
    assert_eq!(s.describe(), "s3://des-test/some/prefix");
    assert!(!s.capabilities().conditional_put, "not probed yet");
    assert!(
        des_storage::open_location("s3://x").is_err(),
        "bucket names have 3+ characters"
    );
}
