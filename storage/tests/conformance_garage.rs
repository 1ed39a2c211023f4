//! The shared conformance suite and the S3-only checks against a real,
//! single-node Garage. Needs the `garage` binary (2.5.0):
//! `scripts/garage.sh install`, then
//! `cargo test -p des-storage --features testing --test conformance_garage`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod conformance;
mod s3_suite;

use std::sync::OnceLock;

use des_storage::testing::S3Server;

static SERVER: OnceLock<Result<S3Server, String>> = OnceLock::new();

fn server() -> &'static S3Server {
    s3_suite::shared(&SERVER, S3Server::garage)
}

conformance_tests!(async s3_suite::conformance_store(server()));

/// The suite again with GETs through the SDK (the HTTPS and AWS path).
mod sdk_get {
    use super::*;
    conformance_tests!(async s3_suite::conformance_store_sdk_get(server()));
}

#[tokio::test]
async fn multipart_uploads_are_cleaned_up() {
    s3_suite::multipart_uploads_cleaned(server(), true).await;
}

/// Garage 2.5 accepts `If-None-Match: *` and `If-Match` on PUT but ignores them.
#[tokio::test]
async fn conditional_put_is_not_enforced() {
    s3_suite::conditional_put_probe(server(), false).await;
}

#[tokio::test]
async fn prefixes_are_isolated() {
    s3_suite::prefixes_are_isolated(server()).await;
}

#[tokio::test]
async fn errors_are_mapped() {
    s3_suite::errors_are_mapped(server(), true).await;
}

#[tokio::test]
async fn outage_and_restart() {
    s3_suite::outage_and_restart(S3Server::garage().unwrap()).await;
}

#[tokio::test]
async fn open_location_from_env() {
    s3_suite::open_location_from_env("open_location_from_env", server).await;
}
