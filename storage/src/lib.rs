//! Object storage for DES: a small async object-store trait with local
//! directory and in-memory backends, and DES store access on top of it.

pub mod bridge;
mod error;
pub mod local;
pub mod memory;
pub mod object;
pub mod store;

pub use error::{Error, ErrorKind, Result};
pub use local::LocalStore;
pub use memory::MemoryStore;
pub use object::{
    ByteRange, GetOptions, GetResult, ListPage, ObjectMeta, ObjectStore, ObjectStoreExt,
    ObjectWriter, PutMode, PutOptions, PutResult,
};
pub use store::{CreateOptions, DesStore, Layout, LoadedIndex, StoreConfig};

use std::sync::Arc;

/// Opens an object store from a location string: a local path (or
/// `file://` URL). `s3://bucket/prefix` arrives with the S3 backend.
pub fn open_location(location: &str) -> Result<Arc<dyn ObjectStore>> {
    if let Some(rest) = location.strip_prefix("s3://") {
        return Err(Error::Invalid(format!(
            "s3://{rest}: the S3 backend is not built into this version"
        )));
    }
    let path = location.strip_prefix("file://").unwrap_or(location);
    Ok(Arc::new(LocalStore::new(path)?))
}
