//! Deleted `(uid, date)` pairs in memory, kept current by polling the log.

use std::collections::HashMap;

use des_format::Timestamp;

use super::log::{LogCursor, LoggedName, TombstoneLog};
use super::record::Tombstone;
use super::segment::{AppliedHashes, SegmentLookup, list_segments, read_lookup};
use crate::error::Result;

/// Every deleted `(uid, date)`: tombstones still logged as small objects
/// exactly (about 100 bytes each), those merged into segments as 64-bit
/// hashes per day (8 bytes each). Lookups by `&str` allocate nothing.
#[derive(Debug, Clone, Default)]
pub struct TombstoneSet {
    /// Usually one date per uid; a short list beats a set of pairs, which
    /// would need an owned key per lookup.
    by_uid: HashMap<String, Vec<u32>>,
    exact: usize,
    /// From segments; never shrinks, like `by_uid`.
    applied: AppliedHashes,
    segments: usize,
    cursor: LogCursor,
}

/// New pairs found by [`TombstoneSet::fetch_updates`], to [`TombstoneSet::apply`].
#[derive(Debug, Clone, Default)]
pub struct SetUpdate {
    pub pairs: Vec<(String, u32)>,
    /// Lookup sections of segments not read before.
    pub segments: Vec<SegmentLookup>,
    pub cursor: LogCursor,
}

impl TombstoneSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// The whole log, read now.
    pub async fn load(log: &TombstoneLog) -> Result<Self> {
        let mut set = Self::new();
        set.refresh(log).await?;
        Ok(set)
    }

    /// Is the file `uid` of the UTC day `date` (`20240517`) deleted?
    pub fn contains(&self, uid: &str, date: u32) -> bool {
        self.by_uid.get(uid).is_some_and(|d| d.contains(&date)) || self.applied.contains(uid, date)
    }

    /// Is the file `(uid, created_at)` deleted? Any time on that UTC day matches.
    pub fn contains_at(&self, uid: &str, created_at: Timestamp) -> bool {
        self.contains(uid, created_at.date_number())
    }

    /// Adds a pair; `false` if it was already there.
    pub fn insert(&mut self, uid: &str, date: u32) -> bool {
        let dates = self.by_uid.entry(uid.to_string()).or_default();
        if dates.contains(&date) {
            return false;
        }
        dates.push(date);
        self.exact += 1;
        true
    }

    /// Adds the hashes of a segment's lookup section.
    pub fn insert_segment(&mut self, segment: &SegmentLookup) {
        self.applied.extend(&segment.entries);
        self.segments += 1;
    }

    /// Segments in the store as of the last poll (or inserted by hand).
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// Heap bytes held by the hashes of segments (the part that grows
    /// with applied deletions): 8 per deletion plus a little per day.
    pub fn applied_heap_bytes(&self) -> usize {
        self.applied.heap_bytes()
    }

    /// Heap bytes held, estimated: exact entries (key, dates, table slot)
    /// plus [`applied_heap_bytes`](Self::applied_heap_bytes).
    pub fn heap_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(String, Vec<u32>)>() + 1;
        let exact: usize = self
            .by_uid
            .iter()
            .map(|(k, v)| k.capacity() + v.capacity() * 4)
            .sum();
        exact + self.by_uid.capacity() * slot + self.applied.heap_bytes()
    }

    /// Adds a tombstone just appended (so it takes effect before the next poll).
    pub fn insert_tombstone(&mut self, t: &Tombstone) -> bool {
        self.insert(&t.uid, t.date)
    }

    /// Pairs known: exact ones plus distinct segment hashes (a pair both
    /// still logged and already merged counts twice until the next load).
    pub fn len(&self) -> usize {
        self.exact + self.applied.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn cursor(&self) -> &LogCursor {
        &self.cursor
    }

    /// Polls the log past `cursor` without touching a set: lets a server
    /// do the I/O outside its lock, then [`apply`](Self::apply) briefly.
    /// Only names are listed; objects are read only for uids too long to
    /// be embedded in their names.
    pub async fn fetch_updates(log: &TombstoneLog, cursor: &LogCursor) -> Result<SetUpdate> {
        // Small records first, segments second: compaction writes a
        // segment before deleting what it merged, so a record missing from
        // this listing is in a segment the next listing finds.
        let (names, mut cursor) = log.poll_names(cursor).await?;
        let mut segments = Vec::new();
        // Segments merged away drop out of the cursor: what they held is in
        // the merged segment, read when it first appeared.
        let mut listed = std::collections::BTreeSet::new();
        for (store, objects) in log.stores().iter().enumerate() {
            for key in list_segments(objects.as_ref()).await? {
                listed.insert((store, key.clone()));
                if cursor.segments.contains(&(store, key.clone())) {
                    continue;
                }
                let entries = read_lookup(objects.as_ref(), &key).await?;
                segments.push(SegmentLookup {
                    store,
                    key,
                    entries,
                });
            }
        }
        cursor.segments = listed;
        let (known, unnamed): (Vec<LoggedName>, Vec<LoggedName>) =
            names.into_iter().partition(|n| n.name.uid.is_some());
        let mut pairs: Vec<(String, u32)> = known
            .into_iter()
            .filter_map(|n| n.name.uid.map(|u| (u, n.name.date)))
            .collect();
        for logged in log.read_all(unnamed).await? {
            pairs.push((logged.tombstone.uid, logged.tombstone.date));
        }
        Ok(SetUpdate {
            pairs,
            segments,
            cursor,
        })
    }

    /// Adds an update's pairs and adopts its cursor; returns how many were new.
    pub fn apply(&mut self, update: SetUpdate) -> usize {
        let mut new = update
            .pairs
            .iter()
            .filter(|(uid, date)| self.insert(uid, *date))
            .count();
        for seg in &update.segments {
            let before = self.applied.len();
            self.applied.extend(&seg.entries);
            new += self.applied.len() - before;
        }
        self.cursor = update.cursor;
        self.segments = self.cursor.segments.len();
        new
    }

    /// Polls the log for tombstones since the last refresh; returns how many
    /// pairs were new. A reader that may have missed writes older than the
    /// log's overlap window (a writer's clock far behind) can call
    /// [`refresh_full`](Self::refresh_full) now and then.
    pub async fn refresh(&mut self, log: &TombstoneLog) -> Result<usize> {
        let update = Self::fetch_updates(log, &self.cursor).await?;
        Ok(self.apply(update))
    }

    /// Re-lists the whole log (pairs already present are kept).
    pub async fn refresh_full(&mut self, log: &TombstoneLog) -> Result<usize> {
        let mut from = LogCursor::default();
        from.segments = self.cursor.segments.clone();
        let update = Self::fetch_updates(log, &from).await?;
        Ok(self.apply(update))
    }
}
