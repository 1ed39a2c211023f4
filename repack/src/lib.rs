//! Maintenance tools for DES stores: `verify` (corruption checks), tombstone
//! management and retention (`des-tombstones`), the repacker
//! (`des-repack`), which physically removes deleted files from their shards,
//! and `upgrade` (`des-upgrade`), which turns a Python-DES store into a v3 one.

pub mod crash;
pub mod error;
pub mod holds;
pub mod lease;
pub mod metrics;
pub mod open;
pub mod repack;
pub mod retention;
pub mod tombstones_cli;
pub mod upgrade;
pub mod verify;

pub use error::{RepackError, Result};
