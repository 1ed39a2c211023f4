//! A whole pack run: open (or create) the store, plan the input into
//! per-shard groups, build groups on `jobs` threads, collect the report.

use std::path::Path;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::error::{Context, PackError, Result};
use des_storage::protocol::{DeletionGuard, holder_id};
use des_storage::{CreateOptions, DesStore};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::runtime::Handle;

use crate::build::{GroupResult, build_group};
use crate::dicts::{Dictionaries, MAX_DICT_FILE, Sampler};
use crate::ingest::Ingest;
use crate::options::PackOptions;
use crate::plan::{PlanConfig, PlanIter, Planner, ShardGroup};
use crate::reader::SourceStores;
use crate::report::{Failure, PackReport};
use crate::source::{FileRecord, Input, RecordFailure, Sink, read_input};
use crate::target::Target;

/// Runs a pack into `opts.store`. Must be called outside the
/// runtime's worker threads (it blocks on `handle`). Per-file problems land
/// in the report; `Err` means the run as a whole could not proceed.
pub fn pack(
    input: &Input,
    opts: &PackOptions,
    handle: &Handle,
    progress: bool,
) -> Result<PackReport> {
    let target = Target::open(&opts.store)?;
    pack_into(input, opts, &target, handle, progress)
}

/// As [`pack`], into a target opened by the caller (`opts.store` is
/// not used).
pub fn pack_into(
    input: &Input,
    opts: &PackOptions,
    target: &Target,
    handle: &Handle,
    progress: bool,
) -> Result<PackReport> {
    let started = Instant::now();
    let housekeeping = handle.block_on(target.housekeeping(opts.abort_stale_uploads_after))?;
    let create = CreateOptions {
        n_bits: opts.n_bits,
        digest: opts.digest(),
    };
    let shown = target.placement.describe();
    let (store, created) = handle
        .block_on(DesStore::open_or_create_placed(
            Arc::clone(&target.placement),
            create,
        ))
        .with_context(|| format!("opening store {shown}"))?;
    let mut report = PackReport {
        store: shown,
        store_created: created,
        n_bits: store.n_bits(),
        stale_uploads_aborted: housekeeping.stale_uploads_aborted,
        temp_files_swept: housekeeping.temp_files_swept,
        warnings: housekeeping.warnings,
        ..PackReport::default()
    };
    let spill_holder;
    let spill_dir = match &opts.spill_dir {
        Some(d) => d.clone(),
        None => {
            spill_holder = tempfile::tempdir().context("creating a spill directory")?;
            spill_holder.path().to_path_buf()
        }
    };
    let sources = SourceStores::new(opts.source_roots.clone());
    let deletions = handle
        .block_on(DeletionGuard::load_at(
            &store,
            opts.now.unwrap_or_else(des_format::Timestamp::now),
        ))
        .context("reading the tombstone log")?;
    let holder = holder_id();
    let dicts = Dictionaries::new(opts.dict_settings(), opts.zstd_level(), &store, handle)
        .with_context(|| format!("loading the dictionary of {:?}", opts.dict.mode))?;
    let ingest = Ingest {
        store: &store,
        handle,
        opts,
        sources: &sources,
        deletions: &deletions,
        holder: &holder,
        dicts: &dicts,
    };
    match input {
        // A listing is packed in batches, each one a plan and build like
        // this whole run (src/from_s3.rs).
        Input::FromS3(spec) => {
            crate::from_s3::pack_listing(spec, &ingest, &spill_dir, progress, &mut report)?;
        }
        _ => pack_batch(&ingest, &spill_dir, progress, &mut report, |sink| {
            read_input(input, sink)
        })?,
    }
    report.dictionaries = dicts.trained();
    report.shards.sort_by(|a, b| a.key.cmp(&b.key));
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Plans the records `read` hands to its sink and builds their shards,
/// adding to `report`; returns what `read` returned. `read` runs on its own
/// thread (see [`plan_input`]).
pub(crate) fn pack_batch<T: Send>(
    ingest: &Ingest<'_>,
    spill_dir: &Path,
    progress: bool,
    report: &mut PackReport,
    read: impl FnOnce(Sink<'_>) -> Result<T> + Send,
) -> Result<T> {
    let seen_before = report.files_seen;
    let mut sampler = ingest.dicts.sampler();
    let (plan, read) = plan_input(
        read,
        ingest.opts,
        ingest.store,
        spill_dir,
        report,
        sampler.as_mut(),
    )?;
    if let Some(sampler) = sampler {
        let read = |rec: &FileRecord| ingest.read_small(rec, MAX_DICT_FILE);
        ingest
            .dicts
            .train_from(sampler, read, ingest.store, ingest.handle);
    }
    let bar = progress_bar(progress, report.files_seen - seen_before);
    run_groups(ingest, plan, &bar, report)?;
    bar.finish_and_clear();
    Ok(read)
}

/// Records handed from the reader thread to the planner at a time: enough
/// to make the channel's cost per record negligible, small enough to bound
/// what sits between the two.
const RECORD_BATCH: usize = 1024;

type Batch = Vec<Result<FileRecord, RecordFailure>>;

/// Reads the input on its own thread while this one routes and buffers the
/// records: the two halves of planning (system calls of the walk or manifest
/// parsing; routing and sorting) overlap instead of adding up, and planning
/// is the serial part of a run.
fn plan_input<T: Send>(
    read: impl FnOnce(Sink<'_>) -> Result<T> + Send,
    opts: &PackOptions,
    store: &DesStore,
    spill_dir: &Path,
    report: &mut PackReport,
    sampler: Option<&mut Sampler>,
) -> Result<(PlanIter, T)> {
    let mut planner = Planner::new(PlanConfig {
        n_bits: store.n_bits(),
        memory_budget: opts.plan_memory,
        spill_dir: spill_dir.to_path_buf(),
        shard_filter: opts.shard_filter(store.n_bits())?,
    })?;
    let (tx, rx) = mpsc::sync_channel::<Batch>(4);
    let (read, planned) = std::thread::scope(|s| {
        let reader = s.spawn(move || read_batches(read, &tx));
        let planned = plan_batches(&mut planner, rx, report, sampler);
        // If planning failed, `rx` is gone and the reader stops at its next batch.
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(PackError::Internal("the input reader panicked".into())));
        (read, planned)
    });
    planned?;
    let read = read?;
    let stats = planner.stats();
    // Added, not set: a listing is planned batch after batch into one report.
    report.files_seen += stats.accepted;
    report.files_outside_shard_range += stats.skipped_by_filter;
    Ok((planner.finish()?, read))
}

fn read_batches<T>(
    read: impl FnOnce(Sink<'_>) -> Result<T>,
    tx: &mpsc::SyncSender<Batch>,
) -> Result<T> {
    let send = |batch| {
        tx.send(batch)
            .map_err(|_| PackError::Internal("planning stopped".into()))
    };
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    let read = read(&mut |r| {
        batch.push(r);
        if batch.len() >= RECORD_BATCH {
            send(std::mem::replace(
                &mut batch,
                Vec::with_capacity(RECORD_BATCH),
            ))?;
        }
        Ok(())
    })?;
    if !batch.is_empty() {
        send(batch)?;
    }
    Ok(read)
}

fn plan_batches(
    planner: &mut Planner,
    rx: Receiver<Batch>,
    report: &mut PackReport,
    mut sampler: Option<&mut Sampler>,
) -> Result<()> {
    for r in rx.into_iter().flatten() {
        match r {
            Err(f) => report.fail(f.into()),
            Ok(rec) => {
                if let Some(s) = sampler.as_deref_mut() {
                    s.observe(&rec);
                }
                if let Err(f) = planner.push(rec)? {
                    report.fail(f.into());
                }
            }
        }
    }
    Ok(())
}

fn progress_bar(enabled: bool, total: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {pos}/{len} files ({per_sec}, eta {eta}) {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}

enum Msg {
    Done(usize, GroupResult),
    Duplicates(Vec<Failure>),
}

fn run_groups(
    ingest: &Ingest<'_>,
    plan: PlanIter,
    bar: &ProgressBar,
    report: &mut PackReport,
) -> Result<()> {
    let jobs = ingest.opts.jobs.max(1);
    // A small queue keeps at most a few groups' records in memory at once.
    let (group_tx, group_rx) = mpsc::sync_channel::<ShardGroup>(jobs);
    let group_rx = Arc::new(Mutex::new(group_rx));
    let (res_tx, res_rx) = mpsc::channel::<Msg>();
    let mut plan_error = None;
    std::thread::scope(|s| {
        for _ in 0..jobs {
            let rx = Arc::clone(&group_rx);
            let tx = res_tx.clone();
            s.spawn(move || worker(ingest, &rx, &tx));
        }
        let feeder_tx = res_tx.clone();
        let feeder = s.spawn(move || feed(plan, &group_tx, &feeder_tx));
        drop(res_tx);
        for msg in res_rx {
            merge(msg, bar, report);
        }
        plan_error = feeder.join().ok().and_then(|r| r.err());
    });
    match plan_error {
        Some(e) => Err(crate::error::IntoPackError::with(
            e,
            "reading the plan".into(),
        )),
        None => Ok(()),
    }
}

fn worker(ingest: &Ingest<'_>, rx: &Mutex<Receiver<ShardGroup>>, tx: &mpsc::Sender<Msg>) {
    loop {
        // Hold the lock only to receive, not while building.
        let next = rx.lock().map(|r| r.recv());
        let Ok(Ok(group)) = next else { return };
        let n = group.files.len();
        if tx.send(Msg::Done(n, build_group(ingest, &group))).is_err() {
            return;
        }
    }
}

fn feed(
    plan: PlanIter,
    groups: &mpsc::SyncSender<ShardGroup>,
    results: &mpsc::Sender<Msg>,
) -> Result<()> {
    for item in plan {
        let (group, dups) = item?;
        if !dups.is_empty() {
            let _ = results.send(Msg::Duplicates(
                dups.into_iter().map(Failure::from).collect(),
            ));
        }
        if groups.send(group).is_err() {
            break;
        }
    }
    Ok(())
}

fn merge(msg: Msg, bar: &ProgressBar, report: &mut PackReport) {
    match msg {
        Msg::Duplicates(fs) => fs.into_iter().for_each(|f| report.fail(f)),
        Msg::Done(n, r) => {
            report.files_packed += r.packed;
            report.files_already_present += r.already_present;
            report.big_files += r.big_files;
            report.bytes_in += r.bytes_in;
            report.bytes_stored += r.bytes_stored;
            match r.stat {
                Some(stat) => {
                    report.shards_written += 1;
                    report.shards.push(stat);
                }
                None => report.shards_unchanged += 1,
            }
            r.failures.into_iter().for_each(|f| report.fail(f));
            r.deleted.into_iter().for_each(|f| report.skip_deleted(f));
            bar.inc(n as u64);
            bar.set_message(format!("{} MB in", report.bytes_in / 1_000_000));
        }
    }
}
