//! des-migrate: archives the files a business database (PostgreSQL) lists
//! into a DES store, as the original DES's migration did, in two modes:
//!
//! - **per-record** ([`modes::per_record`]): rows older than an age with
//!   `archived = false` are packed a batch at a time and marked archived
//!   once their files are durable;
//! - **watermark** ([`modes::watermark`]): a one-row table holds
//!   `archived_until`; each cycle packs the rows created since, up to
//!   `now - lag_days`, and advances it once the window is durable.
//!
//! Packing is the packer library's ([`des_packer::pack_into`]) over a JSON
//! Lines manifest written from the rows, so everything des-pack guarantees
//! (idempotence, atomic shard publication, bounded memory) holds here too.
//! The `des-migrate` binary is a thin CLI over [`run`].

pub mod config;
pub mod db;
pub mod error;
pub mod manifest;
pub mod metrics;
pub mod modes;
pub mod pack;
pub mod pause;
pub mod report;
pub mod sources;
pub mod tls;

pub use config::{Args, Config, Mode};
pub use error::{ErrorKind, MigrateError};
pub use modes::run;
pub use report::MigrationReport;
