//! `des-upgrade`: converts a Python-DES store (flat `<date>_<HEX>_<NNNN>.des`
//! parts, v1/v2 shards, `_bigFiles/`) into a v3 store, in place or into
//! another location, through the store's write protocol.
//!
//! A run lists the legacy store once, checks on a sample that n_bits routes
//! its entries where their parts are (n_bits is recorded nowhere, and
//! `store.json` can be written only once), then, in place, writes
//! `_des/legacy.json` *before* creating `_des/store.json`: from then on a
//! reader opened with `--layout auto` searches v3 shards first and legacy
//! parts second, so every file is readable throughout (see
//! `des_storage::store` `auto`). Each legacy (date, HEX) group becomes the v3
//! shard of the same (date, HEX) — the two layouts route identically for the
//! same n_bits — and its parts are deleted only after that shard was read
//! back and verified (`group`). At the end, `_bigFiles/` objects no remaining
//! part refers to are deleted, and the marker once no part is left.
//!
//! Crash safety: nothing legacy is deleted before the v3 copy of its files
//! is verified, and every step is idempotent, so a re-run after a crash at
//! any point finishes the job (already converted groups are verified and
//! their parts deleted). One run per store at a time is assumed (two would
//! not lose files on stores that enforce conditional writes, but would do
//! the work twice). The Python DES must have stopped writing.
//!
//! Deletions: the Python DES kept them in `.meta` sidecars beside its parts.
//! They are read before anything is written (one not understood stops the
//! run), logged as v3 tombstones before any group is converted, and each
//! sidecar is deleted only once its part is (`sidecar`).

pub mod copy;
pub mod error;
mod group;
mod pause;
pub mod plan;
pub mod report;
pub mod sidecar;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use des_format::legacy::{BIG_FILES_DIR, LegacyPayload};
use des_format::shard::AnyIndex;
use des_format::{DigestAlgorithm, Timestamp, routing};
use des_storage::protocol::{DeletionGuard, holder_id};
use des_storage::store::{LEGACY_MARKER_KEY, LegacyMarker};
use des_storage::{CreateOptions, DesStore, ObjectStore, PutMode, PutOptions};
use futures::StreamExt;

pub use error::{GroupError, UpgradeError};
pub use pause::PausePoint;
pub use plan::Group;
pub use report::{GroupReport, GroupStatus, MarkerState, UpgradeReport};

pub const DEFAULT_JOBS: usize = 4;

/// Where the legacy store is and where its v3 version goes.
#[derive(Debug, Clone)]
pub struct Locations {
    pub source: Arc<dyn ObjectStore>,
    /// The same object store as `source` for an in-place upgrade.
    pub target: Arc<dyn ObjectStore>,
    pub in_place: bool,
}

/// Non-exhaustive: start from `new(n_bits)` and set fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpgradeOptions {
    /// Routing bits of the legacy store; also the v3 store's.
    pub n_bits: u8,
    /// Digest of a v3 store created now (an existing one keeps its own and
    /// must match when this is given).
    pub digest: Option<DigestAlgorithm>,
    /// Delete nothing of the legacy store.
    pub keep_legacy: bool,
    pub dry_run: bool,
    /// Groups converted concurrently.
    pub jobs: usize,
    /// Leave `.meta` objects that are not Python DES sidecars as they are,
    /// instead of stopping (see `sidecar`).
    pub ignore_meta_files: bool,
    /// Rebuilds of a v3 shard replaced under us before a group gives up.
    pub conflict_retries: u32,
}

impl UpgradeOptions {
    pub fn new(n_bits: u8) -> Self {
        Self {
            n_bits,
            digest: None,
            keep_legacy: false,
            dry_run: false,
            jobs: DEFAULT_JOBS,
            ignore_meta_files: false,
            conflict_retries: 3,
        }
    }
}

/// Reported while a run goes on.
#[derive(Debug)]
pub enum Progress<'a> {
    Listed { groups: usize },
    GroupDone(&'a GroupReport),
}

/// One run. `Err` when it could not proceed at all (nothing of the legacy
/// store was deleted then); groups that failed are in the report.
pub async fn upgrade(
    locs: &Locations,
    opts: &UpgradeOptions,
    progress: impl Fn(Progress<'_>) + Send + Sync,
) -> Result<UpgradeReport, UpgradeError> {
    let started = Instant::now();
    routing::check_n_bits(opts.n_bits).map_err(|e| UpgradeError::Invalid(e.to_string()))?;
    let source = DesStore::legacy(Arc::clone(&locs.source), opts.n_bits)?;
    let listing = plan::list(locs.source.as_ref(), opts.n_bits).await?;
    let mut sidecars = sidecar::SidecarReport::default();
    let sidecar_keys = sidecar::check(
        locs.source.as_ref(),
        &listing.meta_objects,
        opts.ignore_meta_files,
        &mut sidecars,
    )
    .await?;
    plan::check_n_bits(&source, &listing).await?;
    progress(Progress::Listed {
        groups: listing.groups.len(),
    });
    let marker = locs.in_place && !opts.dry_run;
    // Nothing to convert (already done, or an empty store): write nothing,
    // not even store.json; only finish a clean-up a crash interrupted.
    let writes = !opts.dry_run && !listing.groups.is_empty();
    if marker && writes {
        // An existing v3 store must agree with the options (n_bits, digest)
        // before the first write.
        open_target(locs, opts, false).await?;
        write_marker(locs.target.as_ref(), opts.n_bits).await?;
    }
    let (target, store_created) = open_target(locs, opts, writes).await?;
    let deletions = DeletionGuard::load(&target).await?;
    // Before any group, so that none converts a file the Python DES deleted.
    if !opts.dry_run && store_exists(locs).await {
        sidecar::log_tombstones(
            locs.source.as_ref(),
            &sidecar_keys,
            &target,
            &deletions,
            &mut sidecars,
        )
        .await?;
    }
    let ctx = Arc::new(group::Ctx {
        handle: tokio::runtime::Handle::current(),
        source: source.clone(),
        target: target.clone(),
        deletions,
        dry_run: opts.dry_run,
        delete_legacy: !opts.keep_legacy && !opts.dry_run,
        holder: holder_id(),
        conflict_retries: opts.conflict_retries,
    });
    let mut runs = futures::stream::iter(listing.groups.iter().cloned())
        .map(|g| {
            let ctx = Arc::clone(&ctx);
            tokio::task::spawn_blocking(move || group::convert(&ctx, &g))
        })
        .buffer_unordered(opts.jobs.max(1));
    let mut groups = Vec::with_capacity(listing.groups.len());
    while let Some(done) = runs.next().await {
        let r = done.map_err(|e| UpgradeError::Invalid(format!("a group's task failed: {e}")))?;
        progress(Progress::GroupDone(&r));
        groups.push(r);
    }
    groups.sort_by(|a, b| a.shard.cmp(&b.shard));
    let mut report = UpgradeReport {
        from: locs.source.describe(),
        to: locs.target.describe(),
        in_place: locs.in_place,
        n_bits: opts.n_bits,
        // A dry run does not create the store; an existing one was checked
        // against the option by `open_target`.
        digest: opts.digest.unwrap_or(target.digest()).name().to_string(),
        dry_run: opts.dry_run,
        keep_legacy: opts.keep_legacy,
        store_created,
        totals: report::Totals::default(),
        groups,
        strays: listing.strays,
        sidecars,
        legacy_big_files_deleted: 0,
        legacy_big_files_note: None,
        marker: MarkerState::NotUsed,
        seconds: 0.0,
    };
    report.total();
    // Legacy big files are deleted only where an upgrade has happened (a v3
    // store exists): a run on a directory holding nothing but `_bigFiles/`
    // must not empty it.
    let upgraded = store_exists(locs).await;
    if ctx.delete_legacy && upgraded {
        let remaining = plan::list(locs.source.as_ref(), opts.n_bits).await?;
        sidecar::delete_orphans(
            locs.source.as_ref(),
            &sidecar_keys,
            &remaining,
            &mut report.sidecars,
        )
        .await?;
        match clean_big_files(&source, &remaining).await? {
            Ok(n) => report.legacy_big_files_deleted = n,
            Err(note) => report.legacy_big_files_note = Some(note),
        }
        if marker {
            report.marker = if remaining.groups.is_empty() {
                // Last: readers stop looking for legacy parts once it is gone.
                locs.target.delete(LEGACY_MARKER_KEY).await?;
                MarkerState::Removed
            } else {
                MarkerState::Present
            };
        }
    } else if marker && upgraded {
        report.marker = MarkerState::Present;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn store_exists(locs: &Locations) -> bool {
    locs.target
        .head(des_storage::store::STORE_CONFIG_KEY)
        .await
        .is_ok()
}

/// Written before `store.json`, so that no reader sees a v3 store without
/// knowing it still has legacy parts (see `des_storage::store` `auto`).
async fn write_marker(objects: &dyn ObjectStore, n_bits: u8) -> Result<(), UpgradeError> {
    let marker = LegacyMarker {
        n_bits,
        written_at: Timestamp::now().to_rfc3339(),
        writer: format!("des-upgrade {}", env!("CARGO_PKG_VERSION")),
    };
    let body = serde_json::to_vec_pretty(&marker)
        .map_err(|e| UpgradeError::Invalid(format!("encoding {LEGACY_MARKER_KEY}: {e}")))?;
    let put = PutOptions {
        mode: PutMode::Overwrite,
    };
    objects
        .put(LEGACY_MARKER_KEY, Bytes::from(body), put)
        .await?;
    Ok(())
}

/// The v3 store: created (or checked against the options) when the run
/// writes; else only read, and not created.
async fn open_target(
    locs: &Locations,
    opts: &UpgradeOptions,
    writes: bool,
) -> Result<(DesStore, bool), UpgradeError> {
    let create = CreateOptions {
        n_bits: Some(opts.n_bits),
        digest: opts.digest,
    };
    if writes {
        return Ok(DesStore::open_or_create(Arc::clone(&locs.target), create).await?);
    }
    // An auto store reads v3 shards whether or not store.json exists yet;
    // only an existing one has a digest to contradict.
    let store = DesStore::open_auto(Arc::clone(&locs.target), Some(opts.n_bits)).await?;
    let exists = store_exists(locs).await;
    if let Some(d) = opts.digest.filter(|d| exists && *d != store.digest()) {
        return Err(UpgradeError::Invalid(format!(
            "the v3 store uses digest {}, not {}",
            store.digest().name(),
            d.name()
        )));
    }
    Ok((store, false))
}

/// Deletes the `_bigFiles/` objects that no legacy part left refers to.
/// `Ok(Err(note))` when that cannot be known (a part is unreadable).
async fn clean_big_files(
    source: &DesStore,
    remaining: &plan::Listing,
) -> Result<Result<u64, String>, UpgradeError> {
    let mut referenced = HashSet::new();
    let parts = remaining
        .groups
        .iter()
        .flat_map(|g| g.parts.iter())
        .chain(remaining.strays.iter());
    for key in parts {
        let index = match source.load_index(key).await {
            Ok(Some(loaded)) => loaded.index,
            Ok(None) => continue,
            Err(e) => {
                return Ok(Err(format!(
                    "{key} is unreadable ({e}): which big files it needs is unknown"
                )));
            }
        };
        if let AnyIndex::Legacy(ix) = index {
            for e in ix.entries() {
                if let LegacyPayload::BigFile { sha256_hex } = &e.payload {
                    referenced.insert(sha256_hex.clone());
                }
            }
        }
    }
    let prefix = format!("{BIG_FILES_DIR}/");
    let objects = source.objects();
    let mut deleted = 0;
    for key in &remaining.big_files {
        let name = key.strip_prefix(&prefix).unwrap_or(key);
        if !referenced.contains(&name.to_ascii_lowercase()) {
            objects.delete(key).await?;
            deleted += 1;
        }
    }
    Ok(Ok(deleted))
}
