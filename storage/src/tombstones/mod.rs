//! Tombstones: the durable, append-only record of deleted files.
//!
//! # Model
//!
//! A tombstone deletes the file `(uid, date)`, `date` being the UTC day of
//! its `created_at` (`YYYYMMDD`), the same pair the index routes by: a read
//! of `uid` with *any* `created_at` on that day must answer "gone" (HTTP 410).
//! Readers hide tombstoned files at once; the bytes stay in their shard
//! until the repacker (`des-repack`) writes a generation without them and
//! records that with an "applied" marker.
//!
//! # Layout
//!
//! ```text
//! _tombstones/<logged time>-<YYYYMMDD>-u<uid>.json          one record per tombstone
//! _tombstones_applied/<same name>                            written once the bytes are gone
//! ```
//!
//! Names begin with the writer's clock at append time
//! (`20240601T080000123456Z`, fixed width) so listings are in time order,
//! then the date and the percent-encoded uid (or `h<hash>` for uids too long
//! for a file name), so the set of deleted pairs is built from listings
//! alone. Objects are created once (`PutMode::Create`) and never rewritten:
//! no object is shared between writers, so there is no read-modify-write.
//!
//! With zones, a tombstone lives in the store holding its shard
//! (`DesStore::objects_for_shard(shard_index(uid))`), so each zone is
//! self-contained; readers list every store of the placement.
//!
//! # Reading incrementally
//!
//! [`TombstoneLog::list_since`] / [`TombstoneSet::refresh`] re-list the last
//! [`DEFAULT_OVERLAP`] (configurable) of each store's log on every poll and
//! skip names already seen, so a tombstone written by a host whose clock is
//! behind, or whose write landed late, is still picked up if it is within
//! the overlap. [`TombstoneSet::refresh_full`] re-lists everything, for
//! larger skews.
//!
//! # Typical use (a reader)
//!
//! ```no_run
//! # async fn demo(store: des_storage::DesStore) -> des_storage::Result<()> {
//! use des_format::Timestamp;
//! use des_storage::tombstones::{DeleteReason, Tombstone, TombstoneLog, TombstoneSet};
//!
//! let log = TombstoneLog::new(&store);
//! let mut deleted = TombstoneSet::load(&log).await?;
//! let created_at = Timestamp::parse_rfc3339("2024-05-17T10:00:00Z").unwrap();
//! if deleted.contains_at("u1", created_at) { /* 410 Gone */ }
//!
//! // DELETE: log it, then hide it at once without waiting for the next poll.
//! let t = Tombstone::new("u1", created_at, DeleteReason::UserRequest, "api:alice");
//! log.append(&t).await?;
//! deleted.insert_tombstone(&t);
//!
//! // Periodically:
//! deleted.refresh(&log).await?;
//! # Ok(()) }
//! ```

mod applied;
mod key;
mod log;
mod record;
mod set;
#[cfg(test)]
mod tests;

pub use applied::{AppliedMarker, AppliedOutcome};
pub use key::{APPLIED_PREFIX, LOG_PREFIX, LogName, format_time, parse_name};
pub use log::{DEFAULT_OVERLAP, LogCursor, LoggedName, LoggedTombstone, TombstoneLog};
pub use record::{DeleteReason, MAX_LABEL_LEN, Tombstone, parse_date, start_of_date};
pub use set::{SetUpdate, TombstoneSet};
