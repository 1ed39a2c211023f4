//! Verifying one shard object: its index (parsed and fully validated by the
//! format layer), what its trailer claims, and its entries' payloads.

use des_format::AnyIndex;
use des_format::routing;
use des_format::shard::Located;
use des_format::v3::Trailer;
use des_storage::{DesStore, ErrorKind, Layout, LoadedIndex, Result};

use super::VerifyOptions;
use super::entry::{EntryFailure, check_entry};
use super::layout::{ShardPlace, ShardTarget};
use super::report::{FindingKind, ShardFormat, ShardReport};

enum Outcome {
    Done(ShardReport),
    /// The object was replaced while we read it; its old report is moot.
    Changed,
}

/// Verifies one shard. `Err` only when it could not be checked at all (I/O);
/// everything wrong with the shard itself is a finding in the report.
pub async fn verify_shard(
    store: &DesStore,
    target: &ShardTarget,
    opts: &VerifyOptions,
) -> Result<ShardReport> {
    // A shard rewritten mid-check is re-read once; twice in a row is reported
    // as a problem rather than chased forever.
    for _ in 0..2 {
        if let Outcome::Done(report) = verify_once(store, target, opts).await? {
            return Ok(report);
        }
    }
    let mut report = ShardReport::new(&target.key);
    report.problem(None, "shard kept changing while it was being verified");
    Ok(report)
}

async fn verify_once(
    store: &DesStore,
    target: &ShardTarget,
    opts: &VerifyOptions,
) -> Result<Outcome> {
    let mut report = ShardReport::new(&target.key);
    let loaded = match store.load_index(&target.key).await {
        Ok(Some(loaded)) => loaded,
        Ok(None) => {
            report.vanished = true;
            return Ok(Outcome::Done(report));
        }
        // Invalid covers well-formed objects this version cannot read (e.g. an
        // unknown legacy version): as far as readers go, just as unreadable.
        Err(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Invalid) => {
            report.find(None, FindingKind::Shard, e.to_string());
            return Ok(Outcome::Done(report));
        }
        Err(e) => return Err(e),
    };
    report.entries = loaded.index.len() as u64;
    report.bytes_read = index_bytes(store, &loaded);
    // Charged once read, at what was read: a small shard's suffix read is
    // the shard, not the 64 KiB asked for.
    if let Some(rate) = &opts.rate {
        rate.take(report.bytes_read).await;
    }
    match loaded.index.trailer() {
        Some(t) => {
            report.format = Some(ShardFormat::V3);
            report.generation = Some(t.generation);
        }
        None => report.format = Some(ShardFormat::Legacy),
    }
    if let Some(d) = &opts.deleted {
        report.pending_tombstones = d.pending_by_shard.get(&target.key).copied().unwrap_or(0);
        let found = d.assess(&target.key, &loaded.index, opts.max_delay);
        report.deleted_entries = found.deleted_entries;
        report.garbage_ratio = found.garbage_ratio;
        report.overdue_deletions = found.overdue;
        report.held_deletions = found.held;
    }
    check_placement(store, target.place, &loaded.index, &mut report);
    for located in loaded.index.located() {
        check_route(&loaded.index, target.place, &located, &mut report);
        if opts
            .sample
            .is_some_and(|s| !s.selects(&target.key, &located.uid))
        {
            continue;
        }
        report.checked += 1;
        report.bytes_read += located.stored_len;
        if let Some(rate) = &opts.rate {
            rate.take(located.stored_len).await;
        }
        let uid = Some(located.uid.as_str());
        match check_entry(store, &loaded, &located).await {
            Ok(()) => {}
            Err(EntryFailure::Corrupt(reason)) => report.find(uid, FindingKind::Entry, reason),
            Err(EntryFailure::MissingExternal(reason)) => {
                report.find(uid, FindingKind::MissingExternal, reason);
            }
            Err(EntryFailure::BadChunkTable(reason)) => {
                report.find(uid, FindingKind::ChunkTable, reason);
            }
            Err(EntryFailure::Unverifiable(msg)) => report.problem(uid, msg),
            Err(EntryFailure::ShardChanged) => return Ok(Outcome::Changed),
            // Storage trouble now likely means trouble for the rest of the shard too.
            Err(EntryFailure::Io(e)) => {
                report.problem(uid, format!("read failed, rest of the shard skipped: {e}"));
                break;
            }
        }
    }
    Ok(Outcome::Done(report))
}

/// The suffix read, plus the index when it did not fit the suffix. Legacy
/// shards needing a second read are not counted exactly: their index range
/// is not kept, and they are small enough to fit the suffix in practice.
fn index_bytes(store: &DesStore, loaded: &LoadedIndex) -> u64 {
    let size = loaded.object.size;
    let suffix = store.suffix_len().min(size);
    match loaded.index.trailer() {
        Some(t) if t.index_offset < size - suffix => suffix + t.index_len,
        _ => suffix,
    }
}

/// What the trailer (or the object's format) says against the key and the store.
fn check_placement(
    store: &DesStore,
    place: Option<ShardPlace>,
    index: &AnyIndex,
    report: &mut ShardReport,
) {
    let Some(place) = place else { return };
    match (store.layout(), index.trailer()) {
        (Layout::V3, Some(t)) => {
            let wrong = trailer_mismatches(t, place, store);
            if !wrong.is_empty() {
                report.find(
                    None,
                    FindingKind::Placement,
                    format!("trailer does not match its key: {}", wrong.join(", ")),
                );
            }
        }
        (Layout::V3, None) => {
            report.find(
                None,
                FindingKind::Placement,
                "legacy-format object under a v3 shard key",
            );
        }
        (Layout::Legacy, Some(_)) => {
            report.find(None, FindingKind::Placement, "v3 shard in a legacy store");
        }
        (Layout::Legacy, None) => {}
    }
}

fn trailer_mismatches(t: &Trailer, place: ShardPlace, store: &DesStore) -> Vec<String> {
    let mut wrong = Vec::new();
    if t.date != place.date {
        wrong.push(format!("date {} (key says {})", t.date, place.date));
    }
    if u32::from(t.shard_index) != place.shard_index {
        wrong.push(format!(
            "shard {:X} (key says {:X})",
            t.shard_index, place.shard_index
        ));
    }
    if t.n_bits != place.n_bits {
        wrong.push(format!("n_bits {} (store has {})", t.n_bits, place.n_bits));
    }
    if t.digest_alg != store.digest() {
        wrong.push(format!(
            "digest {} (store uses {})",
            t.digest_alg.name(),
            store.digest().name()
        ));
    }
    wrong
}

/// An entry that routes elsewhere can never be found by a reader. v3 entries
/// are checked against their own trailer (so a trailer/key mismatch is one
/// finding, not one per entry); legacy ones against the key, when there is one.
fn check_route(
    index: &AnyIndex,
    place: Option<ShardPlace>,
    located: &Located,
    report: &mut ShardReport,
) {
    let (date, shard_index, n_bits) = match (index.trailer(), place) {
        (Some(t), _) => (Some(t.date), u32::from(t.shard_index), t.n_bits),
        (None, Some(p)) => (None, p.shard_index, p.n_bits),
        (None, None) => return,
    };
    let got_shard = routing::shard_index(&located.uid, n_bits);
    let got_date = located.created_at.map(|c| c.date_number());
    let shard_ok = got_shard.as_ref().is_ok_and(|s| *s == shard_index);
    let date_ok = date.is_none() || got_date == date;
    if !(shard_ok && date_ok) {
        let routed = match got_shard {
            Ok(s) => routing::shard_hex(s, n_bits),
            Err(e) => e.to_string(),
        };
        let when = got_date.map(|d| format!("{d}/")).unwrap_or_default();
        report.find(
            Some(&located.uid),
            FindingKind::Misrouted,
            format!("routes to {when}{routed}, not this shard"),
        );
    }
}
