//! The DES retriever: an HTTP service that serves single files of a DES store
//! by `(uid, created_at)`.
//!
//! * [`lookup`] routes a request to its shard, keeps shard indexes in a
//!   byte-bounded cache (concurrent misses coalesced, absent shards remembered
//!   briefly) and reloads a stale index once before giving up.
//! * [`payload`] and [`stream`] read an entry's bytes and never hand out
//!   bytes that fail their CRC or digest.
//! * [`http`] maps requests to responses; [`error`] holds the one table from
//!   error kinds to HTTP statuses; [`server`] wires routes, request ids and logs.

pub mod config;
pub mod counting;
pub mod error;
pub mod http;
pub mod lookup;
pub mod payload;
pub mod range;
pub mod server;
pub mod stream;

pub use config::Settings;
pub use counting::{CountingStore, Counts};
pub use error::{ApiError, ErrorKind};
pub use lookup::{CacheConfig, Hit, Retriever};
