//! `des-repack`: removes deleted files' bytes from their shards.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use clap::Parser;
use des_format::Compression;
use des_repack::RepackError;
use des_repack::lease::{DEFAULT_SETTLE, LeaseConfig};
use des_repack::metrics::{JobStatus, RepackMetrics};
use des_repack::open::open_store;
use des_repack::repack::dicts::{ClassDicts, RecompressDict, RecompressDictArg};
use des_repack::repack::{Progress, RepackOptions, RepackReport, repack};
use des_storage::DesStore;
use des_storage::cli::StoreArgs;
use des_storage::push::Pushgateway;
use des_storage::units::{parse_duration, parse_size};
use indicatif::{ProgressBar, ProgressStyle};

const EXIT_CODES: &str = "\
Exit status:
  0  the run completed (also when there was nothing to do, and for --dry-run)
  1  some shards could not be rewritten (listed in the report); the others were
  2  usage error, or the run could not proceed (store unreadable, lease lost)
  3  another repacker holds the store's lease (_des/repack.lease); nothing done

Environment:
  DES_REPACK_CRASH_AT=before_publish|after_publish|after_mark|before_delete|after_delete
     abort at that point (crash-safety tests only)";

/// Physically remove deleted files: rewrite shards holding files with
/// pending tombstones into a new generation without them, publish it
/// atomically, mark the tombstones applied, then delete big-file objects
/// nothing references any more (after a grace period).
///
/// A shard is rewritten when at least --min-garbage-ratio of its bytes are
/// deleted, or when one of its tombstones is older than --max-delay, or when
/// named with --shard. Files the store's retention rules expired
/// (des-tombstones retention set) go at once, without tombstones; a shard
/// left with nothing live or held is deleted instead of rewritten. Only one
/// repacker runs per store at a time.
#[derive(Debug, Parser)]
#[command(name = "des-repack", version, after_help = des_storage::units::after_help(EXIT_CODES))]
#[command(group = StoreArgs::required_group())]
struct Cli {
    #[command(flatten)]
    store: StoreArgs,
    /// Rewrite a shard when this share (0..=1) of its stored bytes is deleted.
    #[arg(long, default_value_t = 0.2, value_parser = parse_ratio)]
    min_garbage_ratio: f64,
    /// Rewrite regardless of ratio once a tombstone is this old (bounds the
    /// time deleted bytes stay on disk).
    #[arg(long, default_value = "24h", value_name = "DURATION", value_parser = parse_duration)]
    max_delay: Duration,
    /// Start no more rewrites once this many shard bytes were taken on
    /// (e.g. 50G); the first rewrite always runs.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_bytes: Option<u64>,
    /// Rewrite this shard whatever the rules say: DATE/HEX (e.g. 20240517/5C).
    #[arg(long = "shard", value_name = "DATE/HEX")]
    shards: Vec<String>,
    /// Also rewrite every shard with a flat index (format version 3) too
    /// large for one suffix read, giving it a paged index (SPEC §5.10), so
    /// a cold lookup reads one page instead of the whole index.
    #[arg(long)]
    reindex: bool,
    /// Print the plan; change nothing (takes no lease).
    #[arg(long)]
    dry_run: bool,
    /// Re-encode copied entries with this policy (auto|zstd|lz4|none)
    /// instead of copying their stored bytes.
    #[arg(long, value_name = "POLICY")]
    recompress: Option<String>,
    /// With --recompress: where the policy says zstd, compress with this
    /// stored dictionary (its id, hex), or with `auto` each entry's content
    /// class's latest dictionary (plain zstd where the class has none),
    /// moving old entries to dictionaries.
    #[arg(long, value_name = "ID|auto", requires = "recompress")]
    recompress_dict: Option<RecompressDictArg>,
    /// zstd level for --recompress.
    #[arg(long, default_value_t = des_format::codec::DEFAULT_ZSTD_LEVEL)]
    zstd_level: i32,
    /// Delete an unreferenced big file only this long after its last
    /// reference was dropped.
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = parse_duration)]
    big_file_grace: Duration,
    /// Read the legal holds again before a shard once the last read is this
    /// old (0: before every shard). A hold placed during a run binds every
    /// rewrite that starts this long after it.
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = parse_duration)]
    holds_refresh: Duration,
    /// Lease lifetime; renewed every third of it while running.
    #[arg(long, default_value = "15m", value_name = "DURATION", value_parser = parse_duration)]
    lease_ttl: Duration,
    /// At the start of each run, remove temp files (`.des-tmp-*`, local
    /// stores) not modified for this long: writers killed mid-write leave
    /// them. Must exceed the longest write of any packer still running.
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = parse_duration)]
    sweep_temp_after: Duration,
    /// Run as a daemon on this cron schedule ("0 3 * * *", or with seconds
    /// "0 0 3 * * *"; UTC) instead of once.
    #[arg(long, value_name = "CRON")]
    schedule: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Write Prometheus metrics to this file after each run (counters
    /// accumulate across runs).
    #[arg(long, value_name = "PATH", env = "DES_METRICS_FILE")]
    metrics_file: Option<PathBuf>,
    /// After each run PUT the same metrics to this Prometheus Pushgateway
    /// (http:// or https://), group job="des-repack"; a failed push is a
    /// warning and does not change the exit status.
    #[arg(long, value_name = "URL", env = "DES_PUSHGATEWAY_URL", value_parser = Pushgateway::parse)]
    pushgateway: Option<Pushgateway>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?}: expected a ratio between 0 and 1")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("des-repack: error: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        let mut opts = options(&cli)?;
        let started = Instant::now();
        let store = match open_store(&cli.store, !cli.dry_run)
            .await
            .context("opening the store")
        {
            Ok(store) => store,
            Err(e) => {
                // An unreachable store is a failed run: without it in the
                // metrics a CronJob that can never start would look idle.
                let mut metrics = RepackMetrics::default();
                let elapsed = started.elapsed().as_secs_f64();
                publish_metrics(&cli, &mut metrics, JobStatus::Failed, None, elapsed).await;
                return Err(e);
            }
        };
        opts.recompress_dict = match cli.recompress_dict {
            Some(RecompressDictArg::Id(id)) => Some(RecompressDict::One(
                recompress_dict(&store, id, cli.zstd_level).await?,
            )),
            Some(RecompressDictArg::Auto) => Some(RecompressDict::ByClass(std::sync::Arc::new(
                ClassDicts::new(cli.zstd_level),
            ))),
            None => None,
        };
        match &cli.schedule {
            Some(cron) => scheduled(&cli, store, opts, cron).await,
            None => Ok(once(&cli, &store, &opts, &mut RepackMetrics::default()).await),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("des-repack: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn options(cli: &Cli) -> Result<RepackOptions> {
    let mut o = RepackOptions::default();
    o.min_garbage_ratio = cli.min_garbage_ratio;
    o.max_delay = cli.max_delay;
    o.max_bytes = cli.max_bytes;
    o.force_shards = cli
        .shards
        .iter()
        .map(|s| {
            let s = s.trim_end_matches(des_storage::store::SHARD_EXT);
            format!("{s}{}", des_storage::store::SHARD_EXT)
        })
        .collect();
    o.reindex = cli.reindex;
    o.dry_run = cli.dry_run;
    o.recompress = cli
        .recompress
        .as_deref()
        .map(|p| Compression::parse(p, cli.zstd_level))
        .transpose()
        .map_err(|e| anyhow!("--recompress: {e}"))?;
    o.big_file_grace = cli.big_file_grace;
    o.holds_refresh = cli.holds_refresh;
    o.lease = LeaseConfig {
        ttl: cli.lease_ttl,
        settle: DEFAULT_SETTLE,
    };
    Ok(o)
}

/// One run: report, metrics, exit code. `metrics` carries the counters from
/// run to run in daemon mode when there is no --metrics-file to keep them.
async fn once(
    cli: &Cli,
    store: &DesStore,
    opts: &RepackOptions,
    metrics: &mut RepackMetrics,
) -> u8 {
    let started = Instant::now();
    if !cli.dry_run {
        sweep_temp_files(store, cli.sweep_temp_after).await;
    }
    let bar = progress_bar(cli.quiet);
    let on_progress = |p: Progress<'_>| match p {
        Progress::Planned { shards } => bar.set_length(shards as u64),
        Progress::ShardDone(s) => {
            bar.set_message(s.key.clone());
            bar.inc(1);
        }
    };
    let result = repack(store, opts, on_progress).await;
    bar.finish_and_clear();
    let (status, code, report) = match result {
        Ok(r) => {
            let code = r.exit_code();
            let status = if code == 0 {
                JobStatus::Success
            } else {
                JobStatus::Failed
            };
            (status, code, Some(r))
        }
        Err(RepackError::LeaseHeld {
            key,
            holder,
            expires_at,
        }) => {
            eprintln!(
                "des-repack: another repacker is running ({holder} holds {key} until \
                 {expires_at}); nothing to do"
            );
            (JobStatus::LeaseHeld, 3, None)
        }
        Err(e) => {
            eprintln!("des-repack: error: {e}");
            (JobStatus::Failed, 2, None)
        }
    };
    if let Some(r) = &report
        && let Err(e) = print_report(cli, r)
    {
        eprintln!("des-repack: error: writing the report: {e:#}");
    }
    let elapsed = started.elapsed().as_secs_f64();
    if publish_metrics(cli, metrics, status, report.as_ref(), elapsed).await {
        code
    } else {
        code.max(2)
    }
}

/// Adds a run to the metrics, writes --metrics-file and pushes to
/// --pushgateway. False when the file could not be written (exit 2, as
/// before); a failed push is only a warning: metrics are secondary to the
/// run, and a Pushgateway that stops receiving is an alert's business.
async fn publish_metrics(
    cli: &Cli,
    metrics: &mut RepackMetrics,
    status: JobStatus,
    report: Option<&RepackReport>,
    seconds: f64,
) -> bool {
    if cli.metrics_file.is_none() && cli.pushgateway.is_none() {
        return true;
    }
    // The file is where the counters accumulate across one-shot runs.
    if let Some(path) = &cli.metrics_file {
        *metrics = RepackMetrics::load(path);
    }
    metrics.record(status, report, seconds);
    let mut written = true;
    if let Some(path) = &cli.metrics_file
        && let Err(e) = metrics.write(path)
    {
        eprintln!("des-repack: error: writing {}: {e}", path.display());
        written = false;
    }
    if let Some(gateway) = &cli.pushgateway
        && let Err(e) = gateway
            .push(env!("CARGO_BIN_NAME"), &metrics.render())
            .await
            .context("pushing the metrics to the Pushgateway")
    {
        eprintln!("des-repack: warning: {e:#} (the exit status is not affected)");
    }
    written
}

/// `--recompress-dict ID`: the stored dictionary, verified and prepared.
async fn recompress_dict(
    store: &DesStore,
    id: u32,
    level: i32,
) -> Result<std::sync::Arc<des_format::dict::EncoderDict>> {
    let dict = store
        .stored_dictionary(id)
        .await
        .with_context(|| format!("--recompress-dict {}", des_format::dict::id_hex(id)))?;
    Ok(std::sync::Arc::new(dict.encoder(level)?))
}

/// Nothing else removes crashed writers' temp files between packer runs; a
/// failure only leaves them for the next run, so it is a warning.
async fn sweep_temp_files(store: &DesStore, older_than: Duration) {
    for s in store.placement().stores() {
        match s.sweep_leftovers(older_than).await {
            Ok(0) => {}
            Ok(n) => eprintln!(
                "des-repack: removed {n} temp files of crashed writers from {}",
                s.describe()
            ),
            Err(e) => eprintln!(
                "des-repack: warning: removing temp files from {}: {e}",
                s.describe()
            ),
        }
    }
}

fn print_report(cli: &Cli, r: &RepackReport) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if cli.json {
        serde_json::to_writer(&mut out, r)?;
    } else {
        write!(out, "{r}")?;
    }
    writeln!(out)?;
    Ok(())
}

/// Daemon mode: a run per cron tick until SIGINT/SIGTERM. A tick arriving
/// while a run is still going is skipped.
async fn scheduled(cli: &Cli, store: DesStore, opts: RepackOptions, cron: &str) -> Result<u8> {
    use tokio_cron_scheduler::{Job, JobScheduler};
    // The scheduler wants seconds; a classic 5-field crontab line starts at second 0.
    let cron = if cron.split_whitespace().count() == 5 {
        format!("0 {cron}")
    } else {
        cron.to_string()
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let job = Job::new_async(cron.as_str(), move |_, _| {
        let tx = tx.clone();
        // A full channel means a run is pending or going: drop this tick.
        Box::pin(async move {
            let _ = tx.try_send(());
        })
    })
    .map_err(|e| anyhow!("--schedule {cron:?}: {e}"))?;
    let mut sched = JobScheduler::new()
        .await
        .map_err(|e| anyhow!("starting the scheduler: {e}"))?;
    sched
        .add(job)
        .await
        .map_err(|e| anyhow!("scheduling: {e}"))?;
    sched
        .start()
        .await
        .map_err(|e| anyhow!("starting the scheduler: {e}"))?;
    eprintln!("des-repack: running on schedule {cron:?} (UTC)");
    let store = Arc::new(store);
    let mut metrics = RepackMetrics::default();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            Some(()) = rx.recv() => {
                let code = once(cli, &store, &opts, &mut metrics).await;
                eprintln!("des-repack: run finished with status {code}");
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    let _ = sched.shutdown().await;
    Ok(0)
}

fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} shards {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
