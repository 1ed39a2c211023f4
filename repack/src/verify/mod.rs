//! Store and shard verification.
//!
//! Every shard's trailer and index are always checked (the format parser
//! validates checksums, geometry, order and payload bounds); payloads of every
//! entry, or of a reproducible random sample, are then read and checked
//! against their CRC32C, codec and content digest. Findings name the shard
//! key and uid; nothing is modified.
//!
//! In a v3 store, deleted files are judged from the index alone: a file
//! whose oldest tombstone (pending or marked applied) was logged more than
//! [`VerifyOptions::max_delay`] ago, that no legal hold keeps, and that a
//! shard still lists, is a finding too (the deletion deadline is broken).

mod deleted;
mod entry;
pub mod layout;
mod listing;
pub mod open;
mod rate;
mod report;
mod sample;
mod shard;
mod summary;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use des_storage::{DesStore, Layout, Result};

pub use deleted::{Deleted, ShardDeletions};
pub use entry::MAX_BUFFERED;
pub use layout::{Listed, ShardPlace, ShardTarget, classify, place_of};
pub use listing::list_targets;
pub use rate::ByteRate;
pub use report::{
    Finding, FindingKind, KeptDeletion, PendingShard, Problem, ShardFormat, ShardReport,
    VerifyReport,
};
pub use sample::Sample;
pub use shard::verify_shard;

pub const DEFAULT_JOBS: usize = 2;

/// Non-exhaustive so knobs (a `--rate` limit) can be added without breaking
/// callers: start from `default()` and set fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifyOptions {
    /// `None` checks every entry's payload.
    pub sample: Option<Sample>,
    /// Shards checked concurrently.
    pub jobs: usize,
    /// Shared read budget (bytes per second) over all concurrent shards.
    pub rate: Option<Arc<ByteRate>>,
    /// Deletion state to report per shard; v3 store runs load it when unset.
    pub deleted: Option<Arc<Deleted>>,
    /// A deleted file still in a shard this long after its tombstone was
    /// logged (and not held) is a finding. Defaults to des-repack's own
    /// `--max-delay`.
    pub max_delay: Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            sample: None,
            jobs: DEFAULT_JOBS,
            rate: None,
            deleted: None,
            max_delay: crate::repack::DEFAULT_MAX_DELAY,
        }
    }
}

/// `opts` with the store's deletion state loaded, when it is a v3 store. A
/// log that cannot be read leaves the run incomplete, not wrong.
async fn with_deletions(
    store: &DesStore,
    opts: &VerifyOptions,
    report: &mut VerifyReport,
) -> VerifyOptions {
    let mut opts = opts.clone();
    if opts.deleted.is_none() && store.layout() == Layout::V3 {
        match Deleted::load(store).await {
            Ok(d) => opts.deleted = Some(Arc::new(d)),
            Err(e) => report.add_problem(
                des_storage::tombstones::LOG_PREFIX,
                format!("tombstones could not be read: {e}"),
            ),
        }
    }
    report.tombstones_pending = opts.deleted.as_ref().map_or(0, |d| d.pending_total);
    if let Some(d) = &opts.deleted {
        match &d.holds_error {
            // Without the holds, a held file would look overdue: judge none.
            Some(e) => report.add_problem(
                crate::holds::HOLDS_PREFIX,
                format!(
                    "legal holds could not be read, so deleted files kept past their \
                     deadline were not looked for: {e}"
                ),
            ),
            None => report.max_delay_seconds = Some(opts.max_delay.as_secs()),
        }
    }
    opts
}

/// Reported while a run goes on, for progress bars and logs.
#[derive(Debug)]
pub enum Progress<'a> {
    /// The shards to check are known.
    Planned {
        shards: usize,
    },
    ShardDone(&'a ShardReport),
    /// The shard could not be checked at all (recorded as a problem).
    ShardFailed {
        key: &'a str,
        error: &'a des_storage::Error,
    },
}

/// Verifies every shard of `store`, and reports objects in the shard layout
/// that are not shards. `Err` only if the store cannot even be listed.
pub async fn verify_store(
    store: &DesStore,
    opts: &VerifyOptions,
    progress: impl Fn(Progress<'_>) + Send + Sync,
) -> Result<VerifyReport> {
    let (targets, strays) = listing::list_targets(store).await?;
    let mut report = VerifyReport::new(store, opts.sample, false);
    for finding in strays {
        report.add_finding(finding);
    }
    let opts = with_deletions(store, opts, &mut report).await;
    verify_targets(store, &targets, &opts, &mut report, &progress).await;
    report.finish();
    Ok(report)
}

/// Verifies the one shard at `key`. A `standalone` shard (a lone file, not at
/// its place in a v3 store) is checked only against itself; otherwise its
/// key must be a shard key of the store, or that is reported as a stray.
pub async fn verify_key(
    store: &DesStore,
    key: &str,
    standalone: bool,
    opts: &VerifyOptions,
    progress: impl Fn(Progress<'_>) + Send + Sync,
) -> VerifyReport {
    let mut report = VerifyReport::new(store, opts.sample, standalone);
    report.only_key = Some(key.to_string());
    let unplaced = ShardTarget {
        key: key.to_string(),
        place: None,
    };
    let target = if standalone {
        unplaced
    } else {
        match classify(store.layout(), key, store.n_bits()) {
            Listed::Shard(target) => target,
            Listed::Stray(finding) => {
                report.add_finding(finding);
                unplaced
            }
            Listed::Ignored => unplaced,
        }
    };
    let opts = &if standalone {
        opts.clone()
    } else {
        with_deletions(store, opts, &mut report).await
    };
    verify_targets(
        store,
        std::slice::from_ref(&target),
        opts,
        &mut report,
        &progress,
    )
    .await;
    report.finish();
    report
}

async fn verify_targets(
    store: &DesStore,
    targets: &[ShardTarget],
    opts: &VerifyOptions,
    report: &mut VerifyReport,
    progress: &(impl Fn(Progress<'_>) + Send + Sync),
) {
    progress(Progress::Planned {
        shards: targets.len(),
    });
    // A hand-rolled refill loop rather than `buffer_unordered` over a mapping
    // closure: the closure's higher-ranked lifetime would make this future
    // non-`Send`, and callers spawn it.
    let mut pending = FuturesUnordered::new();
    let mut queue = targets.iter();
    loop {
        while pending.len() < opts.jobs.max(1) {
            match queue.next() {
                Some(t) => pending.push(verify_one(store, t, opts)),
                None => break,
            }
        }
        let Some((target, result)) = pending.next().await else {
            break;
        };
        match result {
            Ok(shard) => {
                progress(Progress::ShardDone(&shard));
                report.add_shard(shard);
            }
            Err(error) => {
                progress(Progress::ShardFailed {
                    key: &target.key,
                    error: &error,
                });
                report.add_problem(&target.key, format!("could not be verified: {error}"));
            }
        }
    }
}

async fn verify_one<'a>(
    store: &DesStore,
    target: &'a ShardTarget,
    opts: &VerifyOptions,
) -> (&'a ShardTarget, Result<ShardReport>) {
    (target, verify_shard(store, target, opts).await)
}

#[cfg(test)]
mod tests;
