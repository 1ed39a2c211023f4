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
//! _tombstones/<logged time>-<YYYYMMDD>-u<uid>.json           one record per tombstone (until compacted)
//! _tombstones/<logged time>-bundle-<count>-<crc>.jsonl       many tombstones in one object (until compacted)
//! _tombstones_applied/_run/<time>.json                       a repack run's markers, each name's shard and generation (batch)
//! _tombstones_applied/<shard key>/<generation|none>.json     one marker per shard generation (batch; older runs, still read)
//! _tombstones_applied/<same name as the record>              one marker per tombstone (older stores; still read)
//! _tombstones/segments/<newest logged time>-<crc 8 hex>-<count>.seg
//!                                                            applied tombstones, compacted (crc: the segment's last 4 bytes;
//!                                                            count: its records; older names lack it)
//! ```
//!
//! Names begin with the writer's clock at append time
//! (`20240601T080000123456Z`, fixed width) so listings are in time order,
//! then the date and the percent-encoded uid (or `h<hash>` for uids too long
//! for a file name), so the set of deleted pairs is built from listings
//! alone. Records are created once (`PutMode::Create`) and never rewritten:
//! no record is shared between writers, so there is no read-modify-write.
//! Batch markers are written only by the repacker, under its lease: a run
//! holds the markers of what it applied in memory and writes them as one
//! batch right before compacting them (its journal proves them until then).
//!
//! With zones, a tombstone lives in the store holding its shard
//! (`DesStore::objects_for_shard(shard_index(uid))`), so each zone is
//! self-contained; readers list every store of the placement. Segments and
//! compaction are per store.
//!
//! # Segments
//!
//! A pending tombstone stays a small record (bounded: the repacker applies
//! it within `--max-delay`). Once applied, [`TombstoneLog::compact`] (run by
//! `des-repack` at the end of each run, or `des-tombstones compact`, both
//! under the repacker's lease: a single writer) merges it into a segment,
//! one immutable object, all integers little-endian:
//!
//! ```text
//! "DESTSEG1"            8 bytes magic
//! version u32           1
//! count u32             records
//! count × {date u32, hash u64, shard u32}   lookup, sorted by (date, hash)
//! crc32c u32            of everything above (check the lookup alone)
//! zstd frame            detail: one JSON line per record, in any order:
//!                       {"name":<log name>,"store":<index>,"tombstone":{…},
//!                        "applied":{<marker: shard_key, generation, outcome, …>}}
//! crc32c u32            of everything above
//! ```
//!
//! `hash` is the first 8 bytes (LE) of blake3(uid bytes ‖ date as u32 LE)
//! ([`pair_hash`]); `shard` is the uid's shard index at the store's
//! `n_bits` (so a repack knows which shards applied deletions route to
//! without reading details). A reader fetches the header and lookup section
//! with one ranged read (two when the lookup exceeds 64 KiB); `show` reads
//! the whole segment only if its lookup holds the pair.
//!
//! Compaction, per store: list records, then markers; merge records that
//! have a marker and are not already in a segment (the detail sections of
//! segments whose newest record is at least as new as the oldest candidate
//! say which are); write the segment create-only; read it back and verify;
//! delete the merged records, then their per-tombstone markers, then batch
//! markers none of whose names is still a record. A crash between any two
//! steps loses nothing (a record is deleted only once a verified segment
//! holds it) and duplicates nothing visible (readers dedupe by log name,
//! and the next compaction deletes leftovers instead of merging them again).
//! A record never looks pending after compaction started: it is deleted
//! before its marker.
//!
//! Bundles (`bundle.rs`) hold many tombstones in one object and take part
//! member by member; a bundle is deleted once every member is merged.
//! Segments are merged by size tier (`merge.rs`), so their number follows
//! deletions, not runs.
//!
//! # Reader memory
//!
//! [`TombstoneSet`] keeps small records exactly (about 100 bytes each) and
//! segments as a sorted `Vec<u64>` of hashes per day: 8 bytes per applied
//! deletion plus a few dozen bytes per day ([`TombstoneSet::heap_bytes`]).
//! `contains` checks the exact map, then binary-searches that day's hashes.
//! A 64-bit hash can collide: with `n` deletions on a day, a lookup of a
//! live file on that day answers "deleted" with probability about
//! `n / 2^64` (10⁻¹³ for a million deletions on one day); a deleted file is
//! never reported live.
//!
//! # Reading incrementally
//!
//! [`TombstoneLog::list_since`] / [`TombstoneSet::refresh`] re-list the last
//! [`DEFAULT_OVERLAP`] (configurable) of each store's log on every poll and
//! skip names already seen; [`TombstoneSet::refresh`] then lists the
//! segments and reads the lookup sections of new ones. Records are listed
//! before segments, and compaction writes a segment before deleting what it
//! merged, so a record that moves between polls is always seen in one of
//! them, and nothing is ever dropped from a set. A tombstone written by a
//! host whose clock is behind, or whose write landed late, is still picked
//! up if it is within the overlap. [`TombstoneSet::refresh_full`] re-lists everything, for
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
mod bundle;
#[cfg(test)]
mod bundle_tests;
mod key;
mod log;
mod merge;
#[cfg(test)]
mod merge_tests;
mod record;
mod segment;
mod set;
#[cfg(test)]
mod tests;

pub use applied::{AppliedBatch, AppliedMarker, AppliedOutcome, RunMarkers};
pub use bundle::MAX_BUNDLE;
pub use key::{
    APPLIED_PREFIX, BundleName, LOG_PREFIX, LogName, encode_bundle_name, format_time,
    parse_bundle_name, parse_name,
};
pub use log::{DEFAULT_OVERLAP, LogCursor, LoggedName, LoggedTombstone, TombstoneLog};
pub use merge::{MERGE_FANIN, TIER_BASE};
pub use record::{DeleteReason, MAX_LABEL_LEN, Tombstone, parse_date, start_of_date};
pub use segment::{
    CompactReport, CompactStep, LookupEntry, MAX_SEGMENT_RECORDS, SEGMENT_PREFIX, SegmentLookup,
    SegmentRecord, decode_lookup, decode_segment, encode_segment, pair_hash,
};
pub use set::{SetUpdate, TombstoneSet};
