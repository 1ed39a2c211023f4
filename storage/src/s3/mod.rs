//! S3 backend (AWS and S3-compatible servers: Garage, MinIO, Ceph, s3s).
//!
//! No aws-sdk type crosses the [`ObjectStore`](crate::ObjectStore) trait:
//! errors become [`ErrorKind`](crate::ErrorKind)s in one mapping function,
//! bodies become byte streams. The SDK's own retries are off; a wrapper store
//! retries, so each trait call here is exactly the requests it needs.
//! Object GETs on plain-`http://` path-style endpoints skip the SDK's
//! request pipeline (`lean.rs`; `DES_S3_LEAN_GET=0` turns that off).
//!
//! Conditional writes (`PutMode::Create`, `PutMode::UpdateIfMatch`) are sent
//! as `If-None-Match: *` / `If-Match`, but not every server enforces them
//! (Garage ignores both), so [`S3Store::probe_conditional_put`] finds out and
//! [`capabilities`](crate::ObjectStore::capabilities) reports it.

mod config;
mod error;
mod lean;
mod quickack;
mod read;
mod store;
mod writer;

pub use config::{DEFAULT_PART_SIZE, MAX_PART_SIZE, MIN_PART_SIZE, S3Config, S3Credentials};
pub use store::{PendingUpload, S3Store, TimedPage};
