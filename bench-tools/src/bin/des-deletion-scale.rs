//! `des-deletion-scale`: a synthetic store of many files over many days
//! under a retention rule, with individual deletions each day; counts every
//! storage request of adding tombstones and repacking, and measures what
//! loading the tombstones costs at start-up (see des_bench_tools::deletion_scale
//! and bench/deletion_scale.sh).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use des_bench_tools::EXIT_CODES;
use des_bench_tools::deletion_scale::counting::CountingStore;
use des_bench_tools::deletion_scale::model;
use des_bench_tools::deletion_scale::report::{self, OLD_LABEL};
use des_bench_tools::deletion_scale::sim::{Sampled, Settings, Sim};
use des_bench_tools::units::GRAMMAR;
use des_packer::Target;
use des_storage::{CreateOptions, DesStore, LocalStore, ObjectStore};

/// Packs `--files-per-day` files for each of `--days` days (the last one
/// today, UTC) into a local v3 store under a rule "keep `--retention-days`
/// days", and each day logs its share of `--deletions` individual
/// deletions with add_batch (as `des-tombstones add --from`) and runs one
/// repack with that day's clock, max_delay 0 (every pending deletion
/// applied each run: the strict GDPR setting). Every request of those two
/// steps is counted; packing is not. Then logs `--startup-deletions` more,
/// applies them with one repack and times `TombstoneSet::load` (what the
/// retriever does before it listens). Writes the GET targets for
/// des-loadgen into --out. Exit 1 only when a step fails.
#[derive(Parser)]
#[command(name = "des-deletion-scale", version, after_help = format!("{GRAMMAR}\n\n{EXIT_CODES}"))]
struct Args {
    /// Store root (a local directory; created if missing, must not hold a store).
    #[arg(long)]
    dir: PathBuf,
    /// Where to write the targets, expected bytes and summary.json
    /// (default: DIR.out next to --dir).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    days: usize,
    #[arg(long, default_value_t = 10_000)]
    files_per_day: usize,
    /// Individual deletions, spread evenly over the days.
    #[arg(long, default_value_t = 100_000)]
    deletions: usize,
    #[arg(long, default_value_t = 30)]
    retention_days: usize,
    /// Shard bits of the new store (4..=16). Every uid is a multiple of
    /// 2^n_bits, so all of a day's files share one shard whatever this is.
    #[arg(long, default_value_t = 4)]
    n_bits: u8,
    /// Deletions added after the days, before the start-up measurement.
    #[arg(long, default_value_t = 1_000_000)]
    startup_deletions: usize,
    /// Live files set aside for the script's GETs (never deleted).
    #[arg(long, default_value_t = 200)]
    sample: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// One JSON summary on stdout (the table then goes to stderr).
    #[arg(long)]
    json: bool,
    /// Print every counted request (`REQ <op> <key>`) on stderr, in order.
    #[arg(long)]
    trace_requests: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.days == 0 || args.files_per_day == 0 || args.retention_days == 0 {
        eprintln!(
            "des-deletion-scale: --days, --files-per-day and --retention-days must be above 0"
        );
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("des-deletion-scale: FAILED {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let settings = Settings {
        days: args.days,
        files_per_day: args.files_per_day,
        deletions: args.deletions,
        retention_days: args.retention_days,
        n_bits: args.n_bits,
        startup_deletions: args.startup_deletions,
        seed: args.seed,
        sample: args.sample,
    };
    if args.files_per_day < 10_000 {
        eprintln!(
            "des-deletion-scale: note: {} entries per shard and day (the goal assumes ≥ 10,000)",
            args.files_per_day
        );
    }
    let out = args.out.clone().unwrap_or_else(|| {
        let mut o = args.dir.clone().into_os_string();
        o.push(".out");
        PathBuf::from(o)
    });
    fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    fs::create_dir_all(out.join("expected"))
        .with_context(|| format!("creating {}", out.display()))?;
    // Two threads: the repacker's shard rewrites and the packer's jobs use both cores.
    let rt = des_bench_tools::runtime(2)?;
    let raw: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(&args.dir)?);
    let counting = CountingStore::new(Arc::clone(&raw)).traced(args.trace_requests);
    let create = CreateOptions {
        n_bits: Some(args.n_bits),
        digest: None,
    };
    let (store, created) = rt
        .block_on(DesStore::open_or_create(Arc::new(counting.clone()), create))
        .context("creating the store")?;
    anyhow::ensure!(
        created,
        "{} already holds a store: give an empty --dir",
        args.dir.display()
    );
    // Packing is not counted: the packer writes to the store directly.
    let pack_target = Target::single(raw);
    let mut sim = Sim::new(&settings, &rt, &store, &counting, &pack_target);
    let version = sim.set_retention()?;
    eprintln!(
        "store {}: n_bits {}, retention rule version {version}: {} days for every uid; \
         repack with max_delay 0 (every pending deletion applied each run: the strict GDPR setting)",
        args.dir.display(),
        args.n_bits,
        args.retention_days
    );
    let mut days = Vec::with_capacity(args.days);
    for k in 0..args.days {
        let d = sim.day(k, &out)?;
        eprintln!(
            "day {k:>3} {}: packed {} in {:.1} s, {} deletions ({} requests, {:.1} s), {} expired, \
             repack {:.2} s ({} shards touched, {} requests)",
            d.date,
            d.files_packed,
            d.pack_seconds,
            d.deletions,
            d.add.requests(),
            d.add_seconds,
            d.expired,
            d.repack_seconds,
            d.shards_touched(),
            d.repack.requests()
        );
        days.push(d);
    }
    let sample = sim.set_aside(settings.sample);
    let startup = if args.startup_deletions > 0 {
        Some(sim.startup()?)
    } else {
        None
    };
    write_targets(&out, args.seed, &sample, &sim.deleted_sample)?;
    let summary = report::summarize(&days);
    let mut human = String::new();
    human += &format!(
        "deletion scale: {} days × {} files, {} deletions, rule {} days, n_bits {}, seed {}; \
         repack max_delay 0 (strict GDPR setting: every pending deletion applied each run)\n",
        args.days, args.files_per_day, args.deletions, args.retention_days, args.n_bits, args.seed
    );
    human += &format!("per day, requests of add_batch + repack; {OLD_LABEL} on the right\n");
    human += &report::table(&days);
    human += "\n";
    if let Some(last) = days.last() {
        human += &report::breakdown(
            &format!(
                "requests of day {} (add_batch + repack) by operation and key:",
                last.day
            ),
            &last.by_class,
        );
    }
    if let Some(st) = &startup {
        human += &report::breakdown(
            "requests of one TombstoneSet::load after the start-up deletions:",
            &st.load_by_class,
        );
    }
    human += &report::text(&summary, startup.as_ref());
    let json = serde_json::json!({
        "settings": {
            "days": args.days, "files_per_day": args.files_per_day, "deletions": args.deletions,
            "retention_days": args.retention_days, "n_bits": args.n_bits,
            "startup_deletions": args.startup_deletions, "seed": args.seed,
        },
        "days": days,
        "old": days.iter().map(report::old).collect::<Vec<_>>(),
        "summary": summary,
        "startup": startup,
        "targets": sample.len(),
        "out": out,
    });
    fs::write(out.join("summary.json"), serde_json::to_vec_pretty(&json)?)?;
    if args.json {
        eprint!("{human}");
        println!("{json}");
    } else {
        print!("{human}");
    }
    std::io::stdout().flush()?;
    Ok(())
}

/// The set-aside files as des-loadgen's --paths and --verify take them
/// (their expected bytes under OUT/expected/), and a few deleted files'
/// paths (OUT/deleted: each must answer 410).
fn write_targets(
    out: &Path,
    seed: u64,
    sample: &[Sampled],
    deleted: &[Sampled],
) -> anyhow::Result<()> {
    let path_of =
        |s: &Sampled| format!("/files/{}?created_at={}", s.uid, s.created_at.to_rfc3339());
    let mut paths = String::new();
    let mut verify = String::new();
    for s in sample {
        let file = out.join("expected").join(&s.uid);
        fs::write(&file, model::content(seed, &s.uid))?;
        paths += &format!("{}\n", path_of(s));
        verify += &format!("{}\t{}\n", path_of(s), file.display());
    }
    fs::write(out.join("paths"), paths)?;
    fs::write(out.join("verify"), verify)?;
    let gone: String = deleted
        .iter()
        .map(|s| format!("{}\n", path_of(s)))
        .collect();
    fs::write(out.join("deleted"), gone)?;
    Ok(())
}
