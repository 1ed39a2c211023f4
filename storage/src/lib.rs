//! Object storage for DES: a small async object-store trait with local
//! directory and in-memory backends, and DES store access on top of it.

pub mod bigchunks;
pub mod bridge;
mod cached_read;
pub mod cli;
mod error;
pub mod forward;
pub mod holds;
pub mod keys;
pub mod local;
pub mod memory;
pub mod metrics_file;
pub mod object;
mod open_files;
pub mod protocol;
pub mod push;
pub mod resilience;
pub mod retention;
pub mod s3;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tombstones;
pub mod units;
pub mod zones;

pub use error::{Error, ErrorKind, Result};
pub use local::LocalStore;
pub use memory::MemoryStore;
pub use object::{
    ByteRange, Capabilities, GetOptions, GetResult, ListPage, ObjectMeta, ObjectStore,
    ObjectStoreExt, ObjectWriter, PutMode, PutOptions, PutResult,
};
pub use s3::{S3Config, S3Store};
pub use store::{
    CreateOptions, DesStore, Layout, LoadedIndex, OpenedShard, Route, ShardLookup, ShardVersion,
    StoreConfig,
};

use std::sync::Arc;

/// Opens an object store from a location string: a local path, a `file://`
/// URL, or `s3://bucket/prefix` (settings from the AWS environment, see
/// [`S3Config::from_url`]), with the retries and circuit breaker every tool's
/// S3 requests get (see [`zones::open`]). S3 clients are built lazily on
/// first use, so this stays synchronous.
pub fn open_location(location: &str) -> Result<Arc<dyn ObjectStore>> {
    open_location_with(location, &cli::Connection::default())
}

/// [`open_location`] with `connection`'s endpoint, region, retry and
/// breaker settings.
pub fn open_location_with(
    location: &str,
    connection: &cli::Connection,
) -> Result<Arc<dyn ObjectStore>> {
    zones::single(location, connection, |loc| {
        Ok(Arc::new(zones::s3_store(loc, connection)?) as Arc<dyn ObjectStore>)
    })
}

/// [`open_location`] without the resilience stack: for S3-only housekeeping
/// and for tests that count requests.
pub fn open_location_raw(location: &str) -> Result<Arc<dyn ObjectStore>> {
    if location.starts_with("s3://") {
        return Ok(Arc::new(S3Store::new(S3Config::from_url(location)?)?));
    }
    let path = location.strip_prefix("file://").unwrap_or(location);
    Ok(Arc::new(LocalStore::new(path)?))
}
