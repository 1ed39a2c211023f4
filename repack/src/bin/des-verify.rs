//! `des-verify`: checks a DES store or one shard file for corruption.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use des_repack::verify::open::{self, Scope};
use des_repack::verify::{
    ByteRate, DEFAULT_JOBS, Progress, Sample, VerifyOptions, VerifyReport, verify_key, verify_store,
};
use des_storage::cli::StoreArgs;
use des_storage::push::Pushgateway;
use des_storage::units::{parse_duration, parse_size};
use des_storage::{DesStore, Layout};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

const EXIT_CODES: &str = "\
Exit status:
  0  clean: every check passed (deleted files still within --max-delay, or
     kept by a legal hold, are reported but are not errors)
  1  corruption found, or deleted files still in a shard more than --max-delay
     after their tombstone; the summary (or --json report) names each shard
     and uid
  2  usage error, I/O error, or store not found; also when some objects could
     not be checked (tombstones or legal holds included) and nothing above was
     found";

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LayoutArg {
    /// `<root>/_des/store.json` and `<root>/YYYYMMDD/HEX.des` (the default).
    V3,
    /// Python DES: flat `<root>/YYYYMMDD_HEX_NNNN.des`; needs --n-bits.
    Legacy,
}

impl From<LayoutArg> for Layout {
    fn from(l: LayoutArg) -> Self {
        match l {
            LayoutArg::V3 => Layout::V3,
            LayoutArg::Legacy => Layout::Legacy,
        }
    }
}

/// Verify DES shards: trailer, index, and every entry's CRC32C, decoding and digest.
///
/// PATH is a shard file (`…/YYYYMMDD/HEX.des`, or any legacy `.des` file) or
/// a store root (a directory or `file://` URL). A shard file's layout is read
/// from its tail; v3 big files are looked up at its store root (two levels
/// up), legacy ones in `_bigFiles/` beside it. Legacy inline entries carry no
/// checksums, so for them only structure and decoding can be checked.
///
/// For v3 stores the report also lists shards that still hold deleted files
/// (pending tombstones) with their garbage ratio; those are not errors. A
/// deleted file whose tombstone (pending, or marked applied: then the bytes
/// came back) was logged more than --max-delay ago and that a shard still
/// lists is an error, unless a legal hold keeps it (reported as held).
#[derive(Debug, Parser)]
#[command(name = "des-verify", version, after_help = des_storage::units::after_help(EXIT_CODES))]
struct Cli {
    /// Shard file or store root (or --store, DES_STORE; or --zones: every
    /// zone). Given, it wins over DES_STORE.
    path: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    /// Read at most this many bytes per second, over all concurrent shards
    /// (e.g. 50M), to leave bandwidth to readers.
    #[arg(long, value_name = "BYTES_PER_SEC", value_parser = parse_rate)]
    rate: Option<u64>,
    /// Store layout; without it the store must be v3 (`_des/store.json`).
    #[arg(long, value_enum, requires_if("legacy", "n_bits"))]
    layout: Option<LayoutArg>,
    /// Routing bits of a legacy store (v3 stores record theirs).
    #[arg(long, value_parser = clap::value_parser!(u8).range(4..=16))]
    n_bits: Option<u8>,
    /// Check the payloads of only this percentage of entries, chosen at random.
    #[arg(long, value_name = "PCT", value_parser = parse_percent)]
    sample: Option<f64>,
    /// Seed for --sample; the same seed checks the same entries.
    #[arg(long, requires = "sample")]
    seed: Option<u64>,
    /// Deletion deadline (90s, 15m, 24h, 7d): a deleted file still in a
    /// shard this long after its tombstone was logged, and not under a legal
    /// hold, is an error. Give the bound the repacker keeps: its --max-delay
    /// plus the time between its runs. Judged from the index, for every
    /// entry, whatever --sample says.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    max_delay: Duration,
    /// Shards checked concurrently.
    #[arg(long, default_value_t = DEFAULT_JOBS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    jobs: usize,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// Print a machine-readable report on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// Write Prometheus metrics of this run here (for a node-exporter
    /// textfile collector): `des_verify_corrupt_entries_total`,
    /// `des_verify_last_run_timestamp_seconds`, …
    #[arg(long, value_name = "PATH", env = "DES_METRICS_FILE")]
    metrics_file: Option<PathBuf>,
    /// PUT the same metrics to this Prometheus Pushgateway (http:// or
    /// https://) when a run completes, group job="des-verify"; a failed
    /// push is a warning and does not change the exit status.
    #[arg(long, value_name = "URL", env = "DES_PUSHGATEWAY_URL", value_parser = Pushgateway::parse)]
    pushgateway: Option<Pushgateway>,
}

fn parse_rate(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err("--rate must be positive".into()),
        n => Ok(n),
    }
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let pct: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|e| format!("{s:?}: {e}"))?;
    Sample::new(pct, 0).map(|s| s.percent)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("des-verify: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> Result<u8> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(verify(cli))
}

async fn verify(cli: &Cli) -> Result<u8> {
    let sample = match cli.sample {
        // Without --seed a fresh one is drawn; the report prints it for reruns.
        Some(pct) => Some(
            Sample::new(pct, cli.seed.unwrap_or_else(rand::random)).map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let mut opts = VerifyOptions::default();
    opts.sample = sample;
    opts.jobs = cli.jobs;
    opts.rate = cli.rate.and_then(ByteRate::new).map(Arc::new);
    opts.max_delay = cli.max_delay;
    let connection = &cli.store.connection;
    let opened = match (
        cli.path.as_ref().or(cli.store.store.as_ref()),
        &cli.store.zones,
    ) {
        (Some(_), Some(_)) => {
            anyhow::bail!("give either a PATH (or --store, DES_STORE) or --zones")
        }
        (Some(path), None) => {
            open::open(path, cli.layout.map(Layout::from), cli.n_bits, connection)
                .await
                .with_context(|| format!("cannot open {path}"))?
        }
        (None, Some(zones)) => {
            if cli.layout.is_some() {
                anyhow::bail!("--layout does not apply to --zones (zoned stores are v3)");
            }
            let placement = cli
                .store
                .open()
                .with_context(|| format!("cannot open {}", zones.display()))?
                .placement;
            open::Opened {
                store: DesStore::open_placed(placement)
                    .await
                    .with_context(|| format!("cannot open the store of {}", zones.display()))?,
                scope: Scope::Store,
            }
        }
        (None, None) => anyhow::bail!("give a PATH, --store (DES_STORE) or --zones"),
    };
    let bar = progress_bar(cli.quiet);
    let (entries, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let on_progress = |p: Progress<'_>| match p {
        Progress::Planned { shards } => bar.set_length(shards as u64),
        Progress::ShardDone(shard) => {
            let e = entries.fetch_add(shard.checked, Ordering::Relaxed) + shard.checked;
            let b = bytes.fetch_add(shard.bytes_read, Ordering::Relaxed) + shard.bytes_read;
            bar.set_message(format!("{e} entries, {}", HumanBytes(b)));
            bar.inc(1);
        }
        Progress::ShardFailed { key, error } => {
            bar.suspend(|| eprintln!("des-verify: {key}: {error}"));
            bar.inc(1);
        }
    };
    let report = match &opened.scope {
        Scope::Store => verify_store(&opened.store, &opts, on_progress)
            .await
            .with_context(|| format!("cannot list {}", opened.store.describe()))?,
        Scope::Shard { key, standalone } => {
            verify_key(&opened.store, key, *standalone, &opts, on_progress).await
        }
    };
    bar.finish_and_clear();
    // Pushed first so that a metrics file that cannot be written (exit 2)
    // does not cost the push too. A run that did not complete pushes
    // nothing: des_verify_last_run_timestamp_seconds then ages, which is
    // what DesVerifierNotRunning watches.
    if let Some(gateway) = &cli.pushgateway
        && let Err(e) = push_metrics(gateway, &report).await
    {
        eprintln!("des-verify: warning: {e:#} (the exit status is not affected)");
    }
    if let Some(path) = &cli.metrics_file {
        des_repack::metrics::write_verify_metrics(path, &report)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    if cli.json {
        serde_json::to_writer_pretty(&mut out, &report).context("writing the report")?;
        writeln!(out).context("writing the report")?;
    } else {
        writeln!(out, "{report}").context("writing the summary")?;
    }
    Ok(report.exit_code())
}

async fn push_metrics(gateway: &Pushgateway, report: &VerifyReport) -> Result<()> {
    let text = des_repack::metrics::render_verify_metrics(report);
    gateway
        .push(env!("CARGO_BIN_NAME"), &text)
        .await
        .context("pushing the metrics to the Pushgateway")
}

fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    let style =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} shards, {msg}")
            .map(|s| s.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar
}
