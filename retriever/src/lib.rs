//! The DES retriever: an HTTP service that serves single files of a DES store
//! by `(uid, created_at)`.
//!
//! * [`lookup`] routes a request to its shard, keeps shard indexes in a
//!   byte-bounded cache (concurrent misses coalesced, absent shards remembered
//!   briefly) and reloads a stale index once before giving up; [`hot`]
//!   keeps the verified bytes of small popular files in memory.
//! * [`payload`] and [`stream`] read an entry's bytes and never hand out
//!   bytes that fail their CRC or digest.
//! * [`http`] maps requests to responses; [`error`] holds the one table from
//!   error kinds to HTTP statuses; [`server`] wires routes, request ids and logs.
//! * [`auth`] checks API keys, [`limits`] rate-limits clients; [`state`]
//!   applies both before any lookup. [`delete`] logs deletes as tombstones;
//!   [`tombstones`] keeps the set of deleted files current (410 Gone), and
//!   [`retention`] the store's retention rules and legal holds (410 for
//!   expired files, by date arithmetic).
//! * [`backend`] opens one store or zones and meters their reads;
//!   [`metrics`] is the Prometheus registry behind `/metrics`.

pub mod admission;
pub mod auth;
pub mod backend;
pub mod config;
pub mod counting;
pub mod delete;
pub mod error;
pub mod healthcheck;
pub mod hot;
pub mod http;
pub mod limits;
pub mod lookup;
pub mod metrics;
pub mod payload;
pub mod range;
pub mod ready;
pub mod representation;
pub mod retention;
pub mod server;
pub mod state;
pub mod stream;
pub mod stream_raw;
pub mod tombstones;

pub use backend::Storage;
pub use config::Settings;
pub use counting::{CountingStore, Counts};
pub use error::{ApiError, ErrorKind};
pub use lookup::{CacheConfig, Hit, Retriever};
pub use state::AppState;
