//! Deleted `(uid, date)` pairs in memory, kept current by polling the log.

use std::collections::HashMap;

use des_format::Timestamp;

use super::log::{LogCursor, LoggedName, TombstoneLog};
use super::record::Tombstone;
use crate::error::Result;

/// Every deleted `(uid, date)`. About 100 bytes per tombstone. Lookups by
/// `&str` allocate nothing.
#[derive(Debug, Clone, Default)]
pub struct TombstoneSet {
    /// Usually one date per uid; a short list beats a set of pairs, which
    /// would need an owned key per lookup.
    by_uid: HashMap<String, Vec<u32>>,
    len: usize,
    cursor: LogCursor,
}

/// New pairs found by [`TombstoneSet::fetch_updates`], to [`TombstoneSet::apply`].
#[derive(Debug, Clone, Default)]
pub struct SetUpdate {
    pub pairs: Vec<(String, u32)>,
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
        self.by_uid.get(uid).is_some_and(|d| d.contains(&date))
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
        self.len += 1;
        true
    }

    /// Adds a tombstone just appended (so it takes effect before the next poll).
    pub fn insert_tombstone(&mut self, t: &Tombstone) -> bool {
        self.insert(&t.uid, t.date)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn cursor(&self) -> &LogCursor {
        &self.cursor
    }

    /// Polls the log past `cursor` without touching a set: lets a server
    /// do the I/O outside its lock, then [`apply`](Self::apply) briefly.
    /// Only names are listed; objects are read only for uids too long to
    /// be embedded in their names.
    pub async fn fetch_updates(log: &TombstoneLog, cursor: &LogCursor) -> Result<SetUpdate> {
        let (names, cursor) = log.poll_names(cursor).await?;
        let (known, unnamed): (Vec<LoggedName>, Vec<LoggedName>) =
            names.into_iter().partition(|n| n.name.uid.is_some());
        let mut pairs: Vec<(String, u32)> = known
            .into_iter()
            .filter_map(|n| n.name.uid.map(|u| (u, n.name.date)))
            .collect();
        for logged in log.read_all(unnamed).await? {
            pairs.push((logged.tombstone.uid, logged.tombstone.date));
        }
        Ok(SetUpdate { pairs, cursor })
    }

    /// Adds an update's pairs and adopts its cursor; returns how many were new.
    pub fn apply(&mut self, update: SetUpdate) -> usize {
        let new = update
            .pairs
            .iter()
            .filter(|(uid, date)| self.insert(uid, *date))
            .count();
        self.cursor = update.cursor;
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
        let update = Self::fetch_updates(log, &LogCursor::default()).await?;
        Ok(self.apply(update))
    }
}
