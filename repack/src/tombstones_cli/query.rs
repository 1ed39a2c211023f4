//! Listing and showing tombstones.

use des_format::Timestamp;
use des_storage::tombstones::{
    AppliedMarker, DeleteReason, LOG_PREFIX, LoggedName, SegmentRecord, Tombstone, TombstoneLog,
    parse_name,
};
use serde::Serialize;

use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TombstoneState {
    /// Hidden from readers; bytes still in the shard.
    Pending,
    /// The repacker removed the bytes (or found them gone).
    Applied,
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub uid: Option<String>,
    pub uid_prefix: Option<String>,
    pub date: Option<u32>,
    pub reason: Option<DeleteReason>,
    /// Logged at or after this.
    pub since: Option<Timestamp>,
    pub state: Option<TombstoneState>,
    pub limit: Option<usize>,
}

impl ListFilter {
    /// What can be decided from the name alone (uid may be unknown).
    fn name_passes(&self, n: &LoggedName, state: TombstoneState) -> bool {
        let uid = n.name.uid.as_deref();
        self.state.is_none_or(|s| s == state)
            && self.date.is_none_or(|d| d == n.name.date)
            && self.since.is_none_or(|s| n.name.logged_at >= s)
            && uid.is_none_or(|u| self.uid_passes(u))
    }

    fn uid_passes(&self, uid: &str) -> bool {
        self.uid.as_deref().is_none_or(|x| x == uid)
            && self
                .uid_prefix
                .as_deref()
                .is_none_or(|p| uid.starts_with(p))
    }

    fn record_passes(&self, t: &Tombstone) -> bool {
        self.uid_passes(&t.uid) && self.reason.is_none_or(|r| r == t.reason)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ListedTombstone {
    /// The log object's key: a bundle's for its members; for a tombstone
    /// merged into a segment, `_tombstones/<name>`.
    pub key: String,
    /// The tombstone's log name (a bundle member's differs from its key).
    pub name: String,
    pub logged_at: String,
    pub state: TombstoneState,
    #[serde(flatten)]
    pub tombstone: Tombstone,
    /// The repacker's marker (only from `show`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<AppliedMarker>,
}

/// Tombstones matching `filter`, oldest logged first: small log objects
/// and, unless only pending ones are asked for, segments.
pub async fn list(log: &TombstoneLog, filter: &ListFilter) -> Result<Vec<ListedTombstone>> {
    let small = list_small(log, filter).await?;
    if filter.state == Some(TombstoneState::Pending) {
        return Ok(small);
    }
    // Segments without an entry of the asked date are not read.
    let merged = log
        .segment_records_where(|e| filter.date.is_none_or(|d| d == e.date))
        .await?;
    Ok(merge_segments(small, merged, filter))
}

/// Adds segment records passing `filter`, each name once.
fn merge_segments(
    mut out: Vec<ListedTombstone>,
    merged: Vec<SegmentRecord>,
    filter: &ListFilter,
) -> Vec<ListedTombstone> {
    // Names already listed: a record may be both logged and merged (after a
    // crashed compaction), or in two segments (after a crashed merge).
    let mut seen: std::collections::HashSet<String> = out.iter().map(|t| t.name.clone()).collect();
    for r in merged {
        let key = format!("{LOG_PREFIX}{}", r.name);
        let Some(name) = parse_name(&r.name) else {
            continue;
        };
        let at = LoggedName {
            store: r.store,
            name,
        };
        if !seen.insert(r.name.clone())
            || !filter.name_passes(&at, TombstoneState::Applied)
            || !filter.record_passes(&r.tombstone)
        {
            continue;
        }
        out.push(ListedTombstone {
            key,
            name: r.name,
            logged_at: at.name.logged_at.to_rfc3339(),
            state: TombstoneState::Applied,
            tombstone: r.tombstone,
            applied: Some(r.applied),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(l) = filter.limit {
        out.truncate(l);
    }
    out
}

/// Tombstones still logged as small objects matching `filter`.
async fn list_small(log: &TombstoneLog, filter: &ListFilter) -> Result<Vec<ListedTombstone>> {
    Ok(list_small_at(log, filter)
        .await?
        .into_iter()
        .map(|(_, t)| t)
        .collect())
}

/// [`list_small`], each with where it is logged.
async fn list_small_at(
    log: &TombstoneLog,
    filter: &ListFilter,
) -> Result<Vec<(LoggedName, ListedTombstone)>> {
    let (pending, applied) = log.names_by_state().await?;
    let mut names: Vec<(LoggedName, TombstoneState)> = pending
        .into_iter()
        .map(|n| (n, TombstoneState::Pending))
        .chain(applied.into_iter().map(|n| (n, TombstoneState::Applied)))
        .filter(|(n, s)| filter.name_passes(n, *s))
        .collect();
    names.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let states: std::collections::HashMap<LoggedName, TombstoneState> =
        names.iter().cloned().collect();
    let mut out = Vec::new();
    // Read in slices so a `--limit` does not read the whole log.
    for chunk in names.chunks(256) {
        let wanted = chunk.iter().map(|(n, _)| n.clone()).collect();
        for logged in log.read_all(wanted).await? {
            if !filter.record_passes(&logged.tombstone) {
                continue;
            }
            let state = states
                .get(&logged.at)
                .copied()
                .unwrap_or(TombstoneState::Pending);
            let listed = ListedTombstone {
                key: logged.at.name.log_key(),
                name: logged.at.name.name.clone(),
                logged_at: logged.at.name.logged_at.to_rfc3339(),
                state,
                tombstone: logged.tombstone,
                applied: None,
            };
            out.push((logged.at, listed));
            if filter.limit.is_some_and(|l| out.len() >= l) {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// Every tombstone of `(uid, date)` with its applied marker.
pub async fn show(log: &TombstoneLog, uid: &str, date: u32) -> Result<Vec<ListedTombstone>> {
    let filter = ListFilter {
        uid: Some(uid.to_string()),
        date: Some(date),
        ..ListFilter::default()
    };
    let mut found = Vec::new();
    for (at, mut t) in list_small_at(log, &filter).await? {
        if t.state == TombstoneState::Applied {
            t.applied = log.applied_marker(&at).await?;
        }
        found.push(t);
    }
    // Only segments whose lookup section holds the pair are read in full.
    let merged = log.segment_records_of(uid, date).await?;
    Ok(merge_segments(found, merged, &filter))
}
