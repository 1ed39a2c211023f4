//! The repacker: physically removes deleted files from their shards.
//!
//! A run takes the store's lease, works out which shards hold files with
//! pending tombstones, and for each one decides: rewrite it now (forced,
//! enough garbage, or a tombstone older than `max_delay`), defer it, or just
//! record that the files are already gone. Shards are taken in windows: the
//! indexes of a window are read ahead and what their rewrites drop is
//! journaled in one request ([`window`]); each rewrite then publishes a new
//! generation atomically, and the tombstones it applied are held in memory
//! until the end of the run, where they are written as one batch marker and
//! merged into a segment; only then do the journals go (then, after a grace
//! period, possibly in a later run, big-file objects nothing references any
//! more are deleted). A crash anywhere leaves the old or the new generation
//! in place, both complete; a re-run finishes the job, and the journal
//! keeps its proofs exact. A rewrite costs about four requests (index,
//! data, upload, a share of a journal write; the legal holds are listed
//! again at most once per `holds_refresh`), whatever the number of files it
//! drops.
//!
//! Then it re-checks every shard that some tombstone routes to and that
//! changed since it was last checked (`des_storage::protocol::checked`): a
//! packer racing a tombstone may have published deleted bytes again after
//! they were proven gone, and such bytes are removed now.
//!
//! Retention rules (`des_storage::retention`) expire files by date, with no
//! tombstone: a shard of an expired date is processed like one with pending
//! tombstones, its expired entries dropped at once (their day is their
//! deadline), and a shard left with no live entry is deleted with one
//! request instead of rewritten ([`expiry`] says which shards are looked at).
//! Legal holds win over both: a held entry is never dropped.

pub mod bigfiles;
mod capture;
pub mod dicts;
mod expiry;
mod holds_view;
mod journals;
mod recheck;
pub mod report;
mod rewrite;
pub mod state;
#[cfg(test)]
mod tests;
mod window;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use des_format::shard::{AnyIndex, Tail};
use des_format::v3::{IndexLayout, TRAILER_LEN};
use des_format::{Compression, Timestamp};
use des_storage::keys::ShardKey;
use des_storage::protocol::{RepackJournal, big_ref_ttl};
use des_storage::retention::{self as rules_store, Cutoffs};
use des_storage::tombstones::{AppliedOutcome, RunMarkers, TombstoneLog};
use des_storage::{DesStore, Layout, LoadedIndex, ObjectMeta};
use tokio::runtime::Handle;

pub use report::{Action, RepackReport, ShardOutcome};
pub use rewrite::MAX_RECOMPRESS;

use crate::crash::CrashPoint;
use crate::error::{RepackError, Result};
use crate::holds::HoldSet;
use crate::lease::{Lease, LeaseConfig, LeaseKeeper, holder_id};
use crate::verify::place_of;
use rewrite::{RewriteInput, Rewritten};
use state::{PendingTomb, TombState};

pub const DEFAULT_MIN_GARBAGE_RATIO: f64 = 0.2;
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(24 * 3600);
/// The repacker's first read of a shard: its last this many bytes.
const INDEX_READ: u64 = 4 << 20;
pub const DEFAULT_BIG_FILE_GRACE: Duration = Duration::from_secs(3600);
pub const DEFAULT_HOLDS_REFRESH: Duration = Duration::from_secs(1);

/// Non-exhaustive: start from `default()` and set fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RepackOptions {
    /// Rewrite a shard when at least this share of its inline bytes is deleted.
    pub min_garbage_ratio: f64,
    /// ... or when one of its tombstones is older than this, whatever the ratio.
    pub max_delay: Duration,
    /// Stop starting rewrites once this many shard bytes were taken on (the
    /// first rewrite always runs, so a huge shard cannot starve).
    pub max_bytes: Option<u64>,
    /// Shard keys (`YYYYMMDD/HEX.des`) to rewrite regardless of the rules.
    pub force_shards: Vec<String>,
    /// Also rewrite every flat-index (format version 3) shard whose index
    /// does not fit the suffix read, so it gets a paged index (SPEC §5.10).
    pub reindex: bool,
    pub dry_run: bool,
    /// Re-encode copied entries with this policy instead of copying them.
    pub recompress: Option<Compression>,
    /// With `recompress`: where it says zstd, use this stored dictionary,
    /// or each entry's class's latest (moves old entries to a dictionary,
    /// SPEC §6.7).
    pub recompress_dict: Option<dicts::RecompressDict>,
    /// Age a dropped big file's candidate must reach before it is collected.
    pub big_file_grace: Duration,
    pub lease: LeaseConfig,
    /// Rebuilds of a shard replaced under us (e.g. by a packer) before giving up.
    pub conflict_retries: u32,
    /// The packers' big-file ref TTL: refs younger than this keep their
    /// big file (`des_storage::protocol::bigrefs`).
    pub big_ref_ttl: Duration,
    /// The run's clock (retention's "today", tombstone ages); `None` reads
    /// the system clock. For simulations and benchmarks that replay days.
    pub now: Option<Timestamp>,
    /// Legal holds are read again before a shard once the last read is this
    /// old (zero: before every shard); a hold binds every rewrite that
    /// starts this long after it is placed (I5).
    pub holds_refresh: Duration,
}

impl Default for RepackOptions {
    fn default() -> Self {
        Self {
            min_garbage_ratio: DEFAULT_MIN_GARBAGE_RATIO,
            max_delay: DEFAULT_MAX_DELAY,
            max_bytes: None,
            force_shards: Vec::new(),
            reindex: false,
            dry_run: false,
            recompress: None,
            recompress_dict: None,
            big_file_grace: DEFAULT_BIG_FILE_GRACE,
            lease: LeaseConfig::default(),
            conflict_retries: 3,
            big_ref_ttl: big_ref_ttl(),
            now: None,
            holds_refresh: DEFAULT_HOLDS_REFRESH,
        }
    }
}

/// Reported while a run goes on.
#[derive(Debug)]
pub enum Progress<'a> {
    Planned { shards: usize },
    ShardDone(&'a ShardOutcome),
}

struct Ctx<'a> {
    store: &'a DesStore,
    log: TombstoneLog,
    state: TombState,
    opts: &'a RepackOptions,
    lease_lost: Arc<AtomicBool>,
    now: Timestamp,
    /// The shard versions last checked (`des_storage::protocol::checked`),
    /// saved at the end of the run.
    checked: Mutex<recheck::Checked>,
    /// The retention rules as of the run's start, if any expire files.
    expiry: Option<expiry::Expiry>,
    /// Some shard was processed under other rules or holds than the run
    /// chose its candidates with: its record must not say otherwise.
    expiry_stale: AtomicBool,
    /// Tombstones applied this run, merged into segments at its end.
    applied: Mutex<RunMarkers>,
    /// Journal entries found and written; an object goes once `applied` is
    /// merged (it proves its shards' tombstones removed until then).
    journals: journals::RunJournals,
    holds: holds_view::HoldsView,
}

/// One run. `Err` when the run could not proceed at all (lease held, store
/// unreadable); per-shard failures are in the report.
pub async fn repack(
    store: &DesStore,
    opts: &RepackOptions,
    progress: impl Fn(Progress<'_>) + Send + Sync,
) -> Result<RepackReport> {
    if store.layout() != Layout::V3 {
        return Err(RepackError::Invalid(
            "only v3 stores can be repacked".into(),
        ));
    }
    for key in &opts.force_shards {
        place_of(Layout::V3, key, store.n_bits()).ok_or_else(|| {
            RepackError::Invalid(format!("{key:?} is not a shard key (YYYYMMDD/HEX.des)"))
        })?;
    }
    // A dry run writes nothing, so it needs no lease and never blocks a real one.
    let keeper = if opts.dry_run {
        None
    } else {
        let lease = Lease::acquire(store.placement().stores(), &holder_id(), opts.lease).await?;
        Some(LeaseKeeper::start(lease))
    };
    let lost = keeper
        .as_ref()
        .map_or_else(|| Arc::new(AtomicBool::new(false)), LeaseKeeper::lost);
    let result = run_locked(store, opts, lost, &progress).await;
    if let Some(k) = keeper
        && let Err(e) = k.release().await
    {
        eprintln!("des-repack: releasing the lease: {e}");
    }
    result
}

/// Merges applied tombstones into segments (what a run does at its end),
/// under the repacker's lease: compaction must have a single writer.
pub async fn compact_tombstones(
    store: &DesStore,
    lease: LeaseConfig,
) -> Result<des_storage::tombstones::CompactReport> {
    let lease = Lease::acquire(store.placement().stores(), &holder_id(), lease).await?;
    let keeper = LeaseKeeper::start(lease);
    let hook = |step| {
        if let Some(point) = CrashPoint::of_compaction(step) {
            point.check();
        }
    };
    let result = TombstoneLog::new(store).compact_with(&hook).await;
    let lost = keeper.lost().load(Ordering::SeqCst);
    if let Err(e) = keeper.release().await {
        eprintln!("des-tombstones: releasing the lease: {e}");
    }
    let report = result?;
    if lost {
        return Err(RepackError::LeaseLost {
            key: crate::lease::LEASE_KEY.into(),
            detail: "lost while compacting tombstones".into(),
        });
    }
    Ok(report)
}

async fn run_locked(
    store: &DesStore,
    opts: &RepackOptions,
    lease_lost: Arc<AtomicBool>,
    progress: &(impl Fn(Progress<'_>) + Send + Sync),
) -> Result<RepackReport> {
    let started = Instant::now();
    let now = opts.now.unwrap_or_else(Timestamp::now);
    let flat = if opts.reindex {
        flat_shards(store).await?
    } else {
        Vec::new()
    };
    // A rewrite reads the whole index anyway: one suffix read that holds it
    // (up to about 50,000 entries) saves a request per shard.
    let store = &store
        .clone()
        .with_suffix_len(INDEX_READ.max(store.suffix_len()));
    let log = TombstoneLog::new(store);
    let (holds_view, holds) = holds_view::HoldsView::load(store, opts.holds_refresh).await?;
    let state = state::load(&log, &holds).await?;
    let mut report = RepackReport {
        store: store.describe(),
        dry_run: opts.dry_run,
        started_at: now.to_rfc3339(),
        tombstones_total: state.total,
        tombstones_pending_before: state.by_shard.values().map(|v| v.len() as u64).sum::<u64>()
            + state.held.len() as u64,
        ..RepackReport::default()
    };
    let checked = recheck::Checked::load(store).await?;
    let pending_shards = state
        .by_shard
        .keys()
        .filter_map(|k| ShardKey::parse(k, Some(store.n_bits())))
        .collect();
    let journals = journals::RunJournals::load(store, pending_shards).await?;
    let expiry = expiry::load(store, &holds, rules_store::today(now)).await?;
    let expiring = match &expiry {
        Some(e) => expiry::candidates(store, e, &checked).await?,
        None => Vec::new(),
    };
    report.retention_rules_version = expiry.as_ref().map(|e| e.stored.version);
    let mut ctx = Ctx {
        store,
        log,
        state,
        opts,
        lease_lost,
        now,
        checked: Mutex::new(checked),
        expiry,
        expiry_stale: AtomicBool::new(false),
        applied: Mutex::default(),
        journals,
        holds: holds_view,
    };
    let order = plan_order(&mut ctx, flat, expiring);
    progress(Progress::Planned {
        shards: order.len(),
    });
    let mut budget = 0u64;
    let mut done = HashSet::new();
    let mut rest = order.as_slice();
    while !rest.is_empty() {
        let (mut ahead, taken) = window::read_ahead(&ctx, rest).await;
        let (window, after) = rest.split_at(taken.min(rest.len()));
        rest = after;
        for (key, pending, trigger) in window {
            let first = ahead.remove(key);
            let outcome = process_shard(&ctx, key, pending, *trigger, &mut budget, first).await;
            done.insert(key.clone());
            progress(Progress::ShardDone(&outcome));
            report.add(outcome);
            check_lease(&ctx)?;
        }
    }
    for key in recheck::changed(&ctx, &done).await? {
        let outcome = process_shard(&ctx, &key, &[], Trigger::Recheck, &mut budget, None).await;
        progress(Progress::ShardDone(&outcome));
        report.add(outcome);
        check_lease(&ctx)?;
    }
    let gc = bigfiles::GcOptions {
        grace: opts.big_file_grace,
        ref_ttl: opts.big_ref_ttl,
        dry_run: opts.dry_run,
    };
    // A hold placed during the run keeps its big files too.
    let holds = ctx.holds.current(store).await?;
    report.big_files = bigfiles::collect(store, &holds, gc).await?;
    record_expiry_applied(&ctx, &holds, &report).await?;
    if !opts.dry_run {
        check_lease(&ctx)?;
        report.tombstones_compacted = compact_run(&ctx).await?;
    }
    finish_counts(&ctx, &mut report).await?;
    report.duration_seconds = started.elapsed().as_secs_f64();
    report.read_mb_per_second = if report.duration_seconds > 0.0 {
        report.bytes_read as f64 / 1e6 / report.duration_seconds
    } else {
        0.0
    };
    Ok(report)
}

/// Merges the tombstones applied (this run's, from memory, and any others)
/// into segments, then removes the journals that proved this run's.
async fn compact_run(ctx: &Ctx<'_>) -> Result<u64> {
    let hook = |step| {
        if let Some(point) = CrashPoint::of_compaction(step) {
            point.check();
        }
    };
    let applied = std::mem::take(&mut *lock(&ctx.applied));
    let merged = ctx.log.compact_applied(applied, &hook).await?;
    ctx.journals.clear_finished().await?;
    let mut checked = std::mem::take(&mut *lock(&ctx.checked));
    checked.save().await?;
    Ok(merged.records_merged)
}

/// A poisoned lock only means another task panicked holding it; what the
/// locks guard (markers, checked versions, finished shards) is only ever
/// added to or replaced whole, so it is still sound.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The uids of `pending` in `dropped`: what a journal entry must name.
fn tombstoned(pending: &[PendingTomb], dropped: &HashSet<String>) -> Vec<String> {
    let mut uids: Vec<String> = pending
        .iter()
        .filter(|p| dropped.contains(&p.uid))
        .map(|p| p.uid.clone())
        .collect();
    uids.sort();
    uids.dedup();
    uids
}

/// After a run that processed every expiry candidate, under the rules and
/// holds it chose them with, records that (see [`expiry`]).
async fn record_expiry_applied(
    ctx: &Ctx<'_>,
    holds: &HoldSet,
    report: &RepackReport,
) -> Result<()> {
    let Some(e) = &ctx.expiry else {
        return Ok(());
    };
    let complete = report
        .shards
        .iter()
        .all(|s| s.action != Action::Failed && s.reason != "max_bytes");
    let stale = ctx.expiry_stale.load(Ordering::SeqCst);
    if ctx.opts.dry_run || !complete || stale || holds.fingerprint() != e.holds {
        return Ok(());
    }
    let now = rules_store::load(ctx.store).await?;
    if now.is_some_and(|s| s.version == e.stored.version) {
        expiry::write_applied(ctx.store, e).await?;
    }
    Ok(())
}

fn check_lease(ctx: &Ctx<'_>) -> Result<()> {
    if ctx.lease_lost.load(Ordering::SeqCst) {
        return Err(RepackError::LeaseLost {
            key: crate::lease::LEASE_KEY.into(),
            detail: "stopped the run".into(),
        });
    }
    Ok(())
}

/// Why a shard is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// It has pending tombstones.
    Pending,
    /// `--shard`: rewritten whatever the rules say.
    Forced,
    /// `--reindex`: a flat index too large for the suffix read; rewritten
    /// (with a paged index) whatever the rules say.
    Reindex,
    /// It changed since it was last checked: deleted bytes found in it are
    /// past their proof and go now.
    Recheck,
    /// Its date is expired for some retention rule.
    Expiry,
}

/// Forced shards first, then the rest by their oldest pending tombstone, so
/// the deletions closest to their deadline go first when the budget runs out,
/// then shards of expired dates (oldest date first).
fn plan_order(
    ctx: &mut Ctx<'_>,
    flat: Vec<String>,
    expiring: Vec<String>,
) -> Vec<(String, Vec<PendingTomb>, Trigger)> {
    let mut by_shard = std::mem::take(&mut ctx.state.by_shard);
    let mut order = Vec::new();
    for key in &ctx.opts.force_shards {
        let pending = by_shard.remove(key).unwrap_or_default();
        order.push((key.clone(), pending, Trigger::Forced));
    }
    for key in flat {
        if !ctx.opts.force_shards.contains(&key) {
            let pending = by_shard.remove(&key).unwrap_or_default();
            order.push((key, pending, Trigger::Reindex));
        }
    }
    let mut rest: Vec<(String, Vec<PendingTomb>, Trigger)> = by_shard
        .into_iter()
        .map(|(k, p)| (k, p, Trigger::Pending))
        .collect();
    rest.sort_by_key(|(k, p, _)| (p.iter().map(PendingTomb::logged_at).min(), k.clone()));
    order.extend(rest);
    let planned: HashSet<String> = order.iter().map(|(k, _, _)| k.clone()).collect();
    for key in expiring {
        if !planned.contains(&key) {
            order.push((key, Vec::new(), Trigger::Expiry));
        }
    }
    order
}

/// Shards whose flat index a lookup must read whole: one suffix read each.
async fn flat_shards(store: &DesStore) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    for meta in store.list_shards().await? {
        if let Some(Tail::V3(t)) = store.shard_tail(&meta.key).await?
            && t.layout == IndexLayout::Flat
            && t.index_len + TRAILER_LEN as u64 > store.suffix_len()
        {
            keys.push(meta.key);
        }
    }
    Ok(keys)
}

fn age_seconds(now: Timestamp, then: Timestamp) -> f64 {
    (now.micros().saturating_sub(then.micros())).max(0) as f64 / 1e6
}

async fn process_shard(
    ctx: &Ctx<'_>,
    key: &str,
    pending: &[PendingTomb],
    trigger: Trigger,
    budget: &mut u64,
    first: Option<Option<LoadedIndex>>,
) -> ShardOutcome {
    let started = Instant::now();
    let mut out = ShardOutcome::new(key, Action::Failed, "error");
    out.pending_tombstones = pending.len() as u64;
    out.oldest_pending_age_seconds = pending
        .iter()
        .map(|p| age_seconds(ctx.now, p.logged_at()))
        .fold(0.0, f64::max);
    if let Err(e) = try_process(ctx, key, pending, trigger, budget, first, &mut out).await {
        out.action = Action::Failed;
        out.reason = "error".into();
        out.error = Some(e.to_string());
    }
    out.seconds = started.elapsed().as_secs_f64();
    out
}

/// What a loaded shard holds of the deleted and expired files.
struct Garbage {
    drop: HashSet<String>,
    ratio: f64,
    /// Stored bytes of the inline entries to drop.
    inline_bytes: u64,
    /// Entries dropped because a retention rule expired them (and no
    /// tombstone names them).
    expired: u64,
    /// Every entry is dropped: nothing live or held remains.
    whole: bool,
    /// Some dropped entry is expired by a rule (tombstoned or not).
    rule_expired: bool,
    /// `_big/<hex>` keys of dropped external entries, with the uid of each.
    big: Vec<(String, String)>,
}

/// Which entries go: tombstoned or rule-expired (`cutoffs`), and not held.
fn assess(
    ctx: &Ctx<'_>,
    holds: &HoldSet,
    cutoffs: Option<&Cutoffs>,
    loaded: &LoadedIndex,
) -> Result<Garbage> {
    let AnyIndex::V3(ix) = &loaded.index else {
        return Err(RepackError::shard(&loaded.key, "not a v3 shard"));
    };
    let date = ix.trailer().date;
    let (mut inline, mut gone_inline, mut count, mut expired) = (0u64, 0u64, 0u64, 0u64);
    let mut rule_expired = false;
    let mut drop = HashSet::new();
    let mut big = Vec::new();
    for e in ix.view().iter() {
        count += 1;
        let tombstoned = ctx.state.set.contains(e.uid, date);
        let by_rule = cutoffs.is_some_and(|c| c.expired(e.uid, date));
        let expiring = by_rule && !tombstoned;
        let deleted = (tombstoned || by_rule) && holds.holding(e.uid, date).is_none();
        if !e.is_external() {
            inline += e.stored_len();
            if deleted {
                gone_inline += e.stored_len();
            }
        }
        if deleted {
            expired += u64::from(expiring);
            rule_expired |= by_rule;
            drop.insert(e.uid.to_string());
            if e.is_external() {
                big.push((des_format::v3::external_key(&e.digest()), e.uid.to_string()));
            }
        }
    }
    let ratio = if inline > 0 {
        gone_inline as f64 / inline as f64
    } else if count > 0 {
        drop.len() as f64 / count as f64
    } else {
        0.0
    };
    Ok(Garbage {
        whole: count > 0 && drop.len() as u64 == count,
        rule_expired,
        drop,
        ratio,
        inline_bytes: gone_inline,
        expired,
        big,
    })
}

/// `first`: the shard's index if it was read ahead (used by the first
/// attempt only: a rebuild after a conflict reads it again).
async fn try_process(
    ctx: &Ctx<'_>,
    key: &str,
    pending: &[PendingTomb],
    trigger: Trigger,
    budget: &mut u64,
    mut first: Option<Option<LoadedIndex>>,
    out: &mut ShardOutcome,
) -> Result<()> {
    // Holds read again once `holds_refresh` old: one placed while the run
    // goes on binds every shard the run starts that long after it (I5). A
    // tombstone it covers stays pending, unmarked.
    let holds = ctx.holds.current(ctx.store).await?;
    let pending = holds_view::unheld(pending, &holds);
    let pending = pending.as_slice();
    // The rules as of the run's start: a rule change binds runs that start
    // after it (a hold, the shards started `holds_refresh` after it).
    // Re-reading them here would cost a request per shard.
    let cutoffs = match &ctx.expiry {
        Some(e) => {
            // A hold placed and released within the run changed what this
            // shard kept: the next run looks again.
            if holds.fingerprint() != e.holds {
                ctx.expiry_stale.store(true, Ordering::SeqCst);
            }
            Some(e.cutoffs.clone())
        }
        None => None,
    };
    for _ in 0..=ctx.opts.conflict_retries {
        let loaded = match first.take() {
            Some(read) => read,
            None => ctx.store.load_index(key).await?,
        };
        let Some(loaded) = loaded else {
            out.action = Action::NothingToRemove;
            out.reason = "no_shard".into();
            out.tombstones_marked = mark_without_shard(ctx, key, pending).await?;
            return Ok(());
        };
        out.generation_before = loaded.index.trailer().map(|t| t.generation);
        out.entries_before = loaded.index.len() as u64;
        out.bytes_before = loaded.object.size;
        let garbage = assess(ctx, &holds, cutoffs.as_ref(), &loaded)?;
        out.garbage_ratio = garbage.ratio;
        out.entries_dropped = garbage.drop.len() as u64;
        out.entries_expired = garbage.expired;
        if garbage.drop.is_empty() && !matches!(trigger, Trigger::Forced | Trigger::Reindex) {
            return nothing_to_remove(ctx, key, pending, &loaded, out).await;
        }
        let Some(reason) = decide(ctx, pending, trigger, &garbage) else {
            out.action = Action::Deferred;
            out.reason = "below_ratio".into();
            return Ok(());
        };
        out.reason = reason.into();
        if garbage.whole && garbage.rule_expired {
            // Nothing to copy: one delete request, no bytes read, no budget.
            // (Only where a rule expired something: a shard emptied by
            // tombstones alone keeps the proof of an empty generation.)
            match delete_shard(ctx, key, pending, &loaded, garbage, out).await {
                Err(RepackError::Conflict { .. }) => continue,
                other => return other,
            }
        }
        let over = ctx
            .opts
            .max_bytes
            .is_some_and(|max| *budget > 0 && *budget + loaded.object.size > max);
        if over {
            out.action = Action::Deferred;
            out.reason = "max_bytes".into();
            return Ok(());
        }
        if ctx.opts.dry_run {
            out.action = Action::WouldRewrite;
            out.bytes_read = loaded.object.size;
            out.entries_after = out.entries_before - out.entries_dropped;
            // The index shrinks too; the data region is what counts.
            out.bytes_after = loaded.object.size.saturating_sub(garbage.inline_bytes);
            return Ok(());
        }
        *budget += loaded.object.size;
        match rewrite_on_thread(ctx, loaded, pending, garbage.drop).await {
            Err(RepackError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
            Ok(r) => return finish_rewrite(ctx, key, pending, r, out).await,
        }
    }
    Err(RepackError::shard(
        key,
        "kept changing under concurrent writers; retry later",
    ))
}

/// The shard object is gone. Tombstones a journal names (a run deleted the
/// whole shard, then crashed before marking) were removed by it; the rest
/// were never there.
async fn mark_without_shard(ctx: &Ctx<'_>, key: &str, pending: &[PendingTomb]) -> Result<u64> {
    if ctx.opts.dry_run {
        return Ok(0);
    }
    let (objects, shard) = shard_store(ctx, key)?;
    let journal = ctx.journals.entry(&objects, &shard).await;
    let removed: HashSet<String> = journal
        .map(|j| j.dropped.into_iter().collect())
        .unwrap_or_default();
    let marked = mark(ctx, key, pending, None, &removed);
    ctx.journals.done(&shard);
    Ok(marked)
}

/// Deletes a shard none of whose entries is live or held, with one request.
///
/// Crash-safe like a rewrite: the big files its entries referenced are
/// registered for collection and, when tombstones are pending, the journal
/// names the dropped uids, before the delete; a crash after it leaves a
/// missing shard whose tombstones the next run marks removed. Right before
/// the delete the index is read again: a shard that changed since it was
/// assessed (a packer added files) is a conflict, assessed again by the
/// caller. The store has no conditional delete, so a packer publishing
/// within the round trip between that re-read and the delete would lose its
/// files (docs/CONCURRENCY.md).
async fn delete_shard(
    ctx: &Ctx<'_>,
    key: &str,
    pending: &[PendingTomb],
    loaded: &LoadedIndex,
    garbage: Garbage,
    out: &mut ShardOutcome,
) -> Result<()> {
    out.entries_after = 0;
    out.bytes_after = 0;
    if ctx.opts.dry_run {
        out.action = Action::WouldDelete;
        return Ok(());
    }
    let (objects, shard) = shard_store(ctx, key)?;
    bigfiles::register(objects.as_ref(), &garbage.big, key, shard.date).await?;
    let generation = out.generation_before.unwrap_or(0);
    let entry = RepackJournal {
        generation: generation + 1,
        dropped: tombstoned(pending, &garbage.drop),
    };
    ctx.journals
        .write_many(&[(Arc::clone(&objects), shard.clone(), entry)])
        .await?;
    CrashPoint::BeforeDelete.check();
    let now = ctx.store.load_index(key).await?;
    let unchanged = now.as_ref().is_none_or(|n| {
        n.object.etag == loaded.object.etag
            && n.object.size == loaded.object.size
            && n.index.trailer().map(|t| t.generation) == out.generation_before
    });
    if !unchanged {
        return Err(RepackError::Conflict {
            key: key.to_string(),
        });
    }
    check_lease(ctx)?;
    if now.is_some() {
        objects.delete(key).await?;
    }
    CrashPoint::AfterDelete.check();
    out.action = Action::Deleted;
    let dropped = garbage.drop;
    out.tombstones_marked = mark(ctx, key, pending, None, &dropped);
    ctx.journals.done(&shard);
    // Its checked record describes an object that no longer exists.
    lock(&ctx.checked).remove(&objects, &shard);
    Ok(())
}

/// The shard holds none of the deleted files. Those a journal of a run that
/// crashed after publishing names were removed by it (in the journal's
/// generation); the rest were never there.
async fn nothing_to_remove(
    ctx: &Ctx<'_>,
    key: &str,
    pending: &[PendingTomb],
    loaded: &LoadedIndex,
    out: &mut ShardOutcome,
) -> Result<()> {
    out.action = Action::NothingToRemove;
    out.reason = "not_in_shard".into();
    out.entries_after = out.entries_before;
    out.bytes_after = out.bytes_before;
    let generation = out.generation_before;
    let (objects, shard) = shard_store(ctx, key)?;
    let journal = ctx.journals.entry(&objects, &shard).await;
    let mut removed = HashSet::new();
    let mut marked_in = generation;
    if let Some(j) = journal.filter(|j| generation.is_some_and(|g| g >= j.generation)) {
        removed = j.dropped.into_iter().collect();
        marked_in = Some(j.generation);
    }
    if ctx.opts.dry_run {
        return Ok(());
    }
    let (absent, gone): (Vec<PendingTomb>, Vec<PendingTomb>) = pending
        .iter()
        .cloned()
        .partition(|p| !removed.contains(&p.uid));
    out.tombstones_marked = mark(ctx, key, &absent, generation, &HashSet::new())
        + mark(ctx, key, &gone, marked_in, &removed);
    ctx.journals.done(&shard);
    record_checked(ctx, &objects, &shard, &loaded.object);
    Ok(())
}

/// The store holding `key` and the key parsed.
fn shard_store(ctx: &Ctx<'_>, key: &str) -> Result<(Arc<dyn des_storage::ObjectStore>, ShardKey)> {
    let shard = ShardKey::parse(key, Some(ctx.store.n_bits()))
        .ok_or_else(|| RepackError::Invalid(format!("{key:?} is not a shard key")))?;
    Ok((ctx.store.objects_for_key(key)?, shard))
}

/// Records that `version` of the shard was checked against every tombstone
/// (saved at the end of the run).
fn record_checked(
    ctx: &Ctx<'_>,
    objects: &Arc<dyn des_storage::ObjectStore>,
    shard: &ShardKey,
    version: &ObjectMeta,
) {
    if !ctx.opts.dry_run {
        lock(&ctx.checked).set(objects, shard, version);
    }
}

fn decide(
    ctx: &Ctx<'_>,
    pending: &[PendingTomb],
    trigger: Trigger,
    garbage: &Garbage,
) -> Option<&'static str> {
    let ratio = garbage.ratio;
    let max_delay = i64::try_from(ctx.opts.max_delay.as_micros()).unwrap_or(i64::MAX);
    let overdue = pending
        .iter()
        .any(|p| ctx.now.micros().saturating_sub(p.logged_at().micros()) >= max_delay);
    if trigger == Trigger::Forced {
        Some("forced")
    } else if trigger == Trigger::Reindex {
        Some("reindex")
    } else if trigger == Trigger::Recheck {
        Some("recheck")
    } else if garbage.rule_expired {
        // An expired file's day is its deadline: no waiting for garbage.
        Some("retention_expired")
    } else if ratio >= ctx.opts.min_garbage_ratio {
        Some("garbage_ratio")
    } else if overdue {
        Some("max_delay")
    } else {
        None
    }
}

async fn rewrite_on_thread(
    ctx: &Ctx<'_>,
    loaded: LoadedIndex,
    pending: &[PendingTomb],
    drop: HashSet<String>,
) -> Result<Rewritten> {
    let key = loaded.key.clone();
    let journaled = tombstoned(pending, &drop);
    let input = RewriteInput {
        store: ctx.store.clone(),
        loaded,
        drop,
        recompress: ctx.opts.recompress,
        recompress_dict: ctx.opts.recompress_dict.clone(),
        lease_lost: Arc::clone(&ctx.lease_lost),
        journal: ctx.journals.writer(&ctx.store.objects_for_key(&key)?),
        journaled,
    };
    let handle = Handle::current();
    tokio::task::spawn_blocking(move || rewrite::rewrite(&handle, &input))
        .await
        .map_err(|e| RepackError::Invalid(format!("rewrite task failed: {e}")))?
}

async fn finish_rewrite(
    ctx: &Ctx<'_>,
    key: &str,
    pending: &[PendingTomb],
    r: Rewritten,
    out: &mut ShardOutcome,
) -> Result<()> {
    CrashPoint::AfterPublish.check();
    out.action = Action::Rewritten;
    out.generation_after = Some(r.generation);
    out.entries_after = r.entries_after;
    out.entries_dropped = r.dropped.len() as u64;
    out.bytes_after = r.bytes_after;
    out.bytes_read = r.bytes_read;
    let dropped: HashSet<String> = r.dropped.iter().cloned().collect();
    out.tombstones_marked = mark(ctx, key, pending, Some(r.generation), &dropped);
    CrashPoint::AfterMark.check();
    let (objects, shard) = shard_store(ctx, key)?;
    ctx.journals.done(&shard);
    let published = ObjectMeta {
        key: key.to_string(),
        size: r.bytes_after,
        etag: r.etag.clone(),
    };
    record_checked(ctx, &objects, &shard, &published);
    Ok(())
}

/// Marks `pending` applied: those whose uid is in `removed` as removed in
/// `generation`, the rest as absent from it. In memory until the run's
/// compaction merges them (a crash before leaves them pending, and the
/// shard's journal proves which were removed). Returns how many were marked.
fn mark(
    ctx: &Ctx<'_>,
    key: &str,
    pending: &[PendingTomb],
    generation: Option<u64>,
    removed: &HashSet<String>,
) -> u64 {
    if ctx.opts.dry_run {
        return 0;
    }
    let mut by_store: std::collections::BTreeMap<usize, Vec<(String, AppliedOutcome)>> =
        std::collections::BTreeMap::new();
    for p in pending {
        let outcome = if removed.contains(&p.uid) {
            AppliedOutcome::Removed
        } else {
            AppliedOutcome::Absent
        };
        by_store
            .entry(p.at.store)
            .or_default()
            .push((p.at.name.name.clone(), outcome));
    }
    let mut applied = lock(&ctx.applied);
    for (store, names) in by_store {
        applied.add(store, key, generation, &names);
    }
    pending.len() as u64
}

/// Pending and held counts after the run, from a fresh listing.
async fn finish_counts(ctx: &Ctx<'_>, report: &mut RepackReport) -> Result<()> {
    let pending = ctx.log.pending().await?;
    let (held, open): (Vec<_>, Vec<_>) = pending
        .into_iter()
        .partition(|n| ctx.state.held.contains(&(n.store, n.name.name.clone())));
    report.tombstones_held = held.len() as u64;
    report.tombstones_pending = open.len() as u64;
    report.oldest_pending_age_seconds = open
        .iter()
        .map(|n| age_seconds(Timestamp::now(), n.name.logged_at))
        .fold(0.0, f64::max);
    Ok(())
}
