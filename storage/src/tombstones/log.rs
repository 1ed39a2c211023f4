//! The append-only tombstone log: one object per tombstone (or per bundle
//! of them), written once with create-only semantics and never modified.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use des_format::{Timestamp, routing};
use futures::{StreamExt, TryStreamExt};

use super::bundle::{expand, read_bundle};
use super::key::{
    LOG_PREFIX, LogName, encode_name, format_time, lower_bound, parse_bundle_name, parse_name,
};
use super::record::Tombstone;
use crate::error::{Error, ErrorKind, Result};
use crate::object::{ByteRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use crate::store::DesStore;

/// How far back an incremental poll re-lists, to pick up tombstones whose
/// writer's clock was behind or whose write landed late. Must exceed the
/// worst clock skew plus write latency between writers and readers.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(600);

/// Tombstone objects fetched at once when full records are needed.
const FETCH_CONCURRENCY: usize = 16;

/// A log object's name and which store of the placement holds it
/// (index into [`crate::store::Placement::stores`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LoggedName {
    pub store: usize,
    pub name: LogName,
}

/// A tombstone and where it is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedTombstone {
    pub at: LoggedName,
    pub tombstone: Tombstone,
}

/// Where an incremental reader is in each store's log. Start from
/// `LogCursor::default()` (everything); keep the returned cursor.
#[derive(Debug, Clone, Default)]
pub struct LogCursor {
    stores: Vec<StoreCursor>,
    /// Segments already read, as `(store, key)`.
    pub(crate) segments: BTreeSet<(usize, String)>,
}

#[derive(Debug, Clone, Default)]
struct StoreCursor {
    /// Newest time seen, capped at the reader's clock so one writer with a
    /// clock far ahead cannot drag the window past everyone else's writes.
    high: Option<Timestamp>,
    /// Names seen at or after `high - overlap`: those are listed again on
    /// the next poll and must not be reported twice.
    recent: BTreeSet<String>,
}

/// The tombstone log of a store (every zone of it).
#[derive(Debug, Clone)]
pub struct TombstoneLog {
    store: DesStore,
    overlap: Duration,
}

impl TombstoneLog {
    pub fn new(store: &DesStore) -> Self {
        Self {
            store: store.clone(),
            overlap: DEFAULT_OVERLAP,
        }
    }

    pub fn with_overlap(mut self, overlap: Duration) -> Self {
        self.overlap = overlap;
        self
    }

    pub fn store(&self) -> &DesStore {
        &self.store
    }

    pub(crate) fn stores(&self) -> Vec<Arc<dyn ObjectStore>> {
        self.store.placement().stores()
    }

    /// The store holding `uid`'s tombstones: the one holding its shard, so a
    /// zone's deletions travel with its data. Returns its position too.
    pub fn objects_for(&self, uid: &str) -> Result<(usize, Arc<dyn ObjectStore>)> {
        let index = routing::shard_index(uid, self.store.n_bits())
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let owner = self.store.objects_for_shard(index)?;
        let pos = self
            .stores()
            .iter()
            .position(|s| Arc::ptr_eq(s, &owner))
            .ok_or_else(|| Error::Invalid(format!("no store of the placement holds {uid:?}")))?;
        Ok((pos, owner))
    }

    pub(crate) fn objects(&self, store: usize) -> Result<Arc<dyn ObjectStore>> {
        self.stores()
            .get(store)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("no store #{store} in the placement")))
    }

    /// Logs a tombstone; returns its key. Never overwrites: a name collision
    /// (same uid, same microsecond) with different content moves on by one
    /// microsecond, and one with identical content is a retried append that
    /// already succeeded.
    pub async fn append(&self, t: &Tombstone) -> Result<String> {
        self.append_at(t, Timestamp::now()).await
    }

    /// [`append`](Self::append) as a writer whose clock reads `at` would.
    pub(crate) async fn append_at(&self, t: &Tombstone, mut at: Timestamp) -> Result<String> {
        t.validate()?;
        let (_, objects) = self.objects_for(&t.uid)?;
        let body = Bytes::from(t.to_json()?);
        for _ in 0..16 {
            let key = format!("{LOG_PREFIX}{}", encode_name(at, t.date, &t.uid));
            let create = PutOptions {
                mode: PutMode::Create,
            };
            match objects.put(&key, body.clone(), create).await {
                Ok(_) => return Ok(key),
                Err(e) if e.kind() == ErrorKind::PreconditionFailed => {
                    let existing = objects.get_range(&key, ByteRange::All).await?.1;
                    if existing == body {
                        return Ok(key);
                    }
                    at = Timestamp::from_micros(at.micros() + 1);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Invalid(format!(
            "could not find a free log name for {:?}",
            t.uid
        )))
    }

    /// Reads one logged tombstone.
    pub async fn read(&self, at: &LoggedName) -> Result<Tombstone> {
        let key = at.name.log_key();
        let objects = self.objects(at.store)?;
        if let Some(bundle) = &at.name.bundle {
            return read_bundle(objects.as_ref(), bundle)
                .await?
                .into_iter()
                .find(|t| t.date == at.name.date && at.name.uid.as_ref() == Some(&t.uid))
                .ok_or_else(|| Error::corrupt(&key, format!("bundle lacks {}", at.name.name)));
        }
        let (_, body) = objects.get_range(&key, ByteRange::All).await?;
        let t: Tombstone = serde_json::from_slice(&body).map_err(|e| Error::corrupt(&key, e))?;
        if t.date != at.name.date || at.name.uid.as_ref().is_some_and(|u| *u != t.uid) {
            return Err(Error::corrupt(&key, "record does not match its name"));
        }
        Ok(t)
    }

    /// Names logged since `cursor` (no object reads), and the next cursor.
    pub async fn poll_names(&self, cursor: &LogCursor) -> Result<(Vec<LoggedName>, LogCursor)> {
        let stores = self.stores();
        let now = Timestamp::now();
        let overlap = i64::try_from(self.overlap.as_micros()).unwrap_or(i64::MAX);
        let mut next = LogCursor {
            segments: cursor.segments.clone(),
            ..LogCursor::default()
        };
        let mut out = Vec::new();
        for (i, objects) in stores.iter().enumerate() {
            let mut sc = cursor.stores.get(i).cloned().unwrap_or_default();
            let from = sc
                .high
                .map(|h| lower_bound(Timestamp::from_micros(h.micros().saturating_sub(overlap))));
            // `recent` holds object names, so a bundle listed again inside
            // the overlap is not read again.
            let mut fresh = Vec::new();
            for name in list_raw(objects.as_ref(), LOG_PREFIX, from).await? {
                let Some(logged_at) = logged_at_of(&name) else {
                    continue;
                };
                if sc.recent.insert(name.clone()) {
                    let capped = logged_at.min(now);
                    sc.high = Some(sc.high.map_or(capped, |h| h.max(capped)));
                    fresh.push(name);
                }
            }
            for name in expand(objects.as_ref(), fresh).await? {
                out.push(LoggedName { store: i, name });
            }
            if let Some(h) = sc.high {
                let keep = format_time(Timestamp::from_micros(h.micros().saturating_sub(overlap)));
                sc.recent = sc.recent.split_off(keep.as_str());
            }
            next.stores.push(sc);
        }
        Ok((out, next))
    }

    /// Tombstones logged since `cursor`, with where each is logged.
    pub async fn list_since_logged(
        &self,
        cursor: &LogCursor,
    ) -> Result<(Vec<LoggedTombstone>, LogCursor)> {
        let (names, next) = self.poll_names(cursor).await?;
        Ok((self.read_all(names).await?, next))
    }

    /// Tombstones logged since `cursor` (`LogCursor::default()`: all of
    /// them), and the cursor for the next call. A tombstone is returned once
    /// per cursor chain even though recent names are listed again.
    pub async fn list_since(&self, cursor: &LogCursor) -> Result<(Vec<Tombstone>, LogCursor)> {
        let (logged, next) = self.list_since_logged(cursor).await?;
        Ok((logged.into_iter().map(|l| l.tombstone).collect(), next))
    }

    /// Every logged tombstone, in log order per store.
    pub async fn list_all(&self) -> Result<Vec<LoggedTombstone>> {
        Ok(self.list_since_logged(&LogCursor::default()).await?.0)
    }

    /// Every log name (no object reads), per store in log order.
    pub async fn list_all_names(&self) -> Result<Vec<LoggedName>> {
        Ok(self.poll_names(&LogCursor::default()).await?.0)
    }

    /// Reads the records behind `names` (each bundle once); a tombstone
    /// removed meanwhile (compacted, or by an operator) is skipped.
    pub async fn read_all(&self, names: Vec<LoggedName>) -> Result<Vec<LoggedTombstone>> {
        let (members, names): (Vec<_>, Vec<_>) =
            names.into_iter().partition(|n| n.name.bundle.is_some());
        let mut out = self.read_members(members).await?;
        let read = futures::stream::iter(names)
            .map(|at| async move {
                match self.read(&at).await {
                    Ok(tombstone) => Ok(Some(LoggedTombstone { at, tombstone })),
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .buffered(FETCH_CONCURRENCY);
        let all: Vec<Option<LoggedTombstone>> = read.try_collect().await?;
        out.extend(all.into_iter().flatten());
        Ok(out)
    }

    /// Members of bundles, grouped so each bundle is read once.
    async fn read_members(&self, members: Vec<LoggedName>) -> Result<Vec<LoggedTombstone>> {
        let mut groups: BTreeMap<(usize, String), Vec<LoggedName>> = BTreeMap::new();
        for m in members {
            let bundle = m.name.object().to_string();
            groups.entry((m.store, bundle)).or_default().push(m);
        }
        let mut out = Vec::new();
        for ((store, bundle), names) in groups {
            let ts = match read_bundle(self.objects(store)?.as_ref(), &bundle).await {
                Ok(ts) => ts,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let by_pair: HashMap<(&str, u32), &Tombstone> =
                ts.iter().map(|t| ((t.uid.as_str(), t.date), t)).collect();
            for at in names {
                let uid = at.name.uid.as_deref().unwrap_or_default();
                if let Some(t) = by_pair.get(&(uid, at.name.date)) {
                    out.push(LoggedTombstone {
                        tombstone: (*t).clone(),
                        at,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// When a record or bundle name (prefix removed) was logged; `None` for
/// anything else under the prefix (segments, foreign objects).
fn logged_at_of(name: &str) -> Option<Timestamp> {
    parse_name(name)
        .map(|n| n.logged_at)
        .or_else(|| parse_bundle_name(name).map(|b| b.logged_at))
}

/// Names (prefix removed) of the objects under `prefix`, strictly after
/// `start_after` when given.
pub(crate) async fn list_raw(
    objects: &dyn ObjectStore,
    prefix: &str,
    start_after: Option<String>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut after = start_after;
    loop {
        let page = objects.list(prefix, after.as_deref()).await?;
        out.extend(
            page.objects
                .iter()
                .filter_map(|m| m.key.strip_prefix(prefix))
                .map(str::to_string),
        );
        match page.next_start_after {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

/// Parsed names under `prefix`, strictly after `start_after` when given;
/// under [`LOG_PREFIX`], bundles expanded into their members (a GET each).
/// Objects whose names do not parse (not written by this module) are skipped.
pub(crate) async fn list_names(
    objects: &dyn ObjectStore,
    prefix: &str,
    start_after: Option<String>,
) -> Result<Vec<LogName>> {
    let raw = list_raw(objects, prefix, start_after).await?;
    if prefix == LOG_PREFIX {
        return expand(objects, raw).await;
    }
    Ok(raw.iter().filter_map(|n| parse_name(n)).collect())
}
