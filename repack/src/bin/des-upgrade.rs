//! `des-upgrade`: converts a Python-DES store into a v3 store.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use clap::Parser;
use des_format::DigestAlgorithm;
use des_repack::upgrade::{self, Locations, Progress, UpgradeError, UpgradeOptions};
use des_storage::ObjectStore;
use des_storage::cli::Connection;

const EXIT_CODES: &str = "\
Exit status:
  0  every (date, shard) is in the v3 store, verified (and its legacy parts
     deleted unless kept); also when there was nothing to do, and for --dry-run
  1  some (date, shard)s could not be converted (listed with the reason);
     their legacy parts are untouched, the others were converted
  2  usage error, or the run could not proceed (store unreadable, n_bits
     contradicting the store or its entries, `.meta` objects found); nothing
     legacy was deleted

A run interrupted at any point (crash, kill -9) is completed by running the
same command again.

Environment:
  DES_UPGRADE_PAUSE_AT=after_publish|after_delete_part
     stop working at that point (crash-safety tests only)";

/// Convert a Python-DES store (flat YYYYMMDD_HEX_NNNN.des parts, v1/v2
/// shards, _bigFiles/) into a v3 store.
///
/// Each legacy (date, shard) becomes the v3 shard of the same (date, shard):
/// entries are copied as stored bytes (none/zstd/lz4), with CRC32C and
/// content digest computed from what they decode to; big files become
/// _big/<digest> objects with chunk tables. Each new shard is published
/// through the store's write protocol (merged with a v3 shard packed
/// meanwhile), read back and verified before any legacy part of it is
/// deleted. Without --to the store is converted in place; serve it with
/// `des-retriever --layout auto` meanwhile.
#[derive(Debug, Parser)]
#[command(name = "des-upgrade", version, after_help = des_storage::units::after_help(EXIT_CODES))]
struct Cli {
    /// The legacy store: a directory, file:// or s3://bucket/prefix URL.
    #[arg(long, value_name = "LOCATION", env = "DES_UPGRADE_FROM")]
    from: String,
    /// Write the v3 store here instead of in place; the legacy store is then
    /// left as it is unless --delete-legacy.
    #[arg(long, value_name = "LOCATION")]
    to: Option<String>,
    /// S3 and resilience settings for both locations.
    #[command(flatten)]
    connection: Connection,
    /// Routing bits of the legacy store (it does not record them); the v3
    /// store gets the same.
    #[arg(long, value_parser = clap::value_parser!(u8).range(4..=16))]
    n_bits: u8,
    /// In place: delete no legacy part or big file (readers then keep
    /// looking in them after v3 misses).
    #[arg(long, conflicts_with = "delete_legacy")]
    keep_legacy: bool,
    /// With --to: delete each legacy part from --from once its files are
    /// verified in the v3 store.
    #[arg(long, requires = "to")]
    delete_legacy: bool,
    /// A v3 store created now uses SHA-256 content digests instead of BLAKE3.
    #[arg(long)]
    fips: bool,
    /// Report what would be converted; write and delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Convert although some `.meta` objects are not Python DES sidecars
    /// (those are left in place and reported; sidecars understood are
    /// still turned into tombstones).
    #[arg(long)]
    ignore_meta_files: bool,
    /// (date, shard)s converted concurrently.
    #[arg(long, default_value_t = upgrade::DEFAULT_JOBS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    jobs: usize,
    /// Print one line per (date, shard) on stderr as it is done.
    #[arg(long)]
    progress: bool,
    /// Print the report as JSON on stdout instead of the summary.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("des-upgrade: error: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(&cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("des-upgrade: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Opens a location through the same stack as every tool (retries and a
/// breaker for S3); an S3 one that will be written is first asked whether
/// it enforces conditional writes (the write protocol depends on it).
async fn open(
    location: &str,
    connection: &Connection,
    writes: bool,
) -> Result<Arc<dyn ObjectStore>> {
    if !location.starts_with("s3://") {
        let path = location.strip_prefix("file://").unwrap_or(location);
        if !std::path::Path::new(path).is_dir() {
            anyhow::bail!("{location}: no such directory");
        }
    }
    let opened = des_storage::zones::open(Some(location), None, connection)?;
    if writes {
        for s in opened
            .s3
            .iter()
            .filter(|s| s.config().conditional_put.is_none())
        {
            s.probe_conditional_put()
                .await
                .with_context(|| format!("probing conditional writes on {location}"))?;
        }
    }
    opened
        .placement
        .stores()
        .into_iter()
        .next()
        .with_context(|| format!("{location}: no store"))
}

/// Whether two locations name the same store (`/a/b/`, `file:///a/b` and a
/// symlink to it are one directory; S3 prefixes compare without slashes).
fn same_location(a: &str, b: &str) -> bool {
    let local = |l: &str| {
        let p = l.strip_prefix("file://").unwrap_or(l);
        std::fs::canonicalize(p).ok()
    };
    if a.starts_with("s3://") || b.starts_with("s3://") {
        return a.trim_end_matches('/') == b.trim_end_matches('/');
    }
    match (local(a), local(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

async fn run(cli: &Cli) -> Result<u8> {
    let writes = !cli.dry_run;
    let source = open(&cli.from, &cli.connection, writes).await?;
    let (target, in_place) = match &cli.to {
        Some(to) if !same_location(to, &cli.from) => {
            let path = to.strip_prefix("file://").unwrap_or(to);
            let local = !to.starts_with("s3://");
            if local && writes {
                std::fs::create_dir_all(path).with_context(|| format!("creating {to}"))?;
            }
            if local && !writes && !std::path::Path::new(path).is_dir() {
                // A dry run into a new directory: it would start empty.
                let empty: Arc<dyn ObjectStore> = Arc::new(des_storage::MemoryStore::new());
                (empty, false)
            } else {
                (open(to, &cli.connection, writes).await?, false)
            }
        }
        _ => (Arc::clone(&source), true),
    };
    let mut opts = UpgradeOptions::new(cli.n_bits);
    opts.digest = cli.fips.then_some(DigestAlgorithm::Sha256);
    opts.keep_legacy = if in_place {
        cli.keep_legacy
    } else {
        !cli.delete_legacy
    };
    opts.dry_run = cli.dry_run;
    opts.jobs = cli.jobs;
    opts.ignore_meta_files = cli.ignore_meta_files;
    let locs = Locations {
        source,
        target,
        in_place,
    };
    let (done, total) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let on_progress = |p: Progress<'_>| {
        if !cli.progress {
            return;
        }
        match p {
            Progress::Listed { groups } => {
                total.store(groups, Ordering::Relaxed);
                eprintln!("des-upgrade: {groups} (date, shard)s to convert");
            }
            Progress::GroupDone(g) => {
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                let what = match &g.error {
                    Some(e) => format!("FAILED: {e}"),
                    None => format!(
                        "{}: {} added, {} already in v3, {} parts deleted",
                        g.status.name(),
                        g.added,
                        g.already_in_v3,
                        g.parts_deleted
                    ),
                };
                eprintln!(
                    "des-upgrade: [{n}/{}] {} {what}",
                    total.load(Ordering::Relaxed),
                    g.shard
                );
            }
        }
    };
    let report = match upgrade::upgrade(&locs, &opts, on_progress).await {
        Ok(r) => r,
        Err(e @ (UpgradeError::MetaFile { .. } | UpgradeError::Invalid(_))) => {
            eprintln!("des-upgrade: {e}");
            return Ok(2);
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = std::io::stdout().lock();
    if cli.json {
        serde_json::to_writer_pretty(&mut out, &report).context("writing the report")?;
        writeln!(out).context("writing the report")?;
    } else {
        write!(out, "{report}").context("writing the summary")?;
    }
    Ok(u8::from(report.failed()))
}
