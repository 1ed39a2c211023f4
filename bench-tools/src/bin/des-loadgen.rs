//! `des-loadgen`: HTTP/1.1 keep-alive load generator that checks every
//! answer (see des_bench_tools::loadgen).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use des_bench_tools::units::{GRAMMAR, parse_duration};
use des_bench_tools::{EXIT_CODES, loadgen};

/// HTTP/1.1 load generator with keep-alive connections. GETs paths picked
/// at random (fixed seed) from --paths for --warmup then --duration.
/// Closed loop by default (each connection sends as soon as it has its
/// answer: the saturation rate); with --rate, open loop at that many
/// requests per second in total: a request that had to wait for its
/// connection is timed from its scheduled time, so stalls are charged to
/// every request they delay (no coordinated omission, as wrk2); one sent on
/// time is timed from its send (the client's timer slack is not the
/// server's latency). Any non-2xx answer, connection error,
/// timeout or --verify mismatch fails the run (exit 1); the first few are
/// printed on stderr.
#[derive(Parser)]
#[command(name = "des-loadgen", version, after_help = format!("{GRAMMAR}\n\n{EXIT_CODES}"))]
struct Args {
    /// Server to load: http://HOST[:PORT][/PREFIX].
    #[arg(long)]
    base: String,
    /// Request paths, one per line (e.g. /files/a/b.txt?created_at=2024-05-17T10:00:00Z);
    /// a line PATH<TAB>RANGE also sends "Range: RANGE".
    #[arg(long)]
    paths: PathBuf,
    /// Lines PATH<TAB>LOCAL_FILE: answers to PATH must be LOCAL_FILE's bytes.
    /// Paths listed only here are requested too.
    #[arg(long)]
    verify: Option<PathBuf>,
    /// Host header to send (default: HOST:PORT of --base), e.g. des.web.garage
    /// for Garage's web endpoint.
    #[arg(long)]
    host: Option<String>,
    /// Keep-alive connections, all open before the clock starts.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Measured period.
    #[arg(long, value_parser = parse_duration, default_value = "15s")]
    duration: Duration,
    /// Load before the measured period (not in the latency figures; errors count).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    warmup: Duration,
    /// Open loop: requests per second over all connections.
    #[arg(long)]
    rate: Option<f64>,
    /// Seed of the random choice of paths.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Longest wait for one answer before it counts as an error.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    timeout: Duration,
    /// Runtime threads: 1 (default) keeps the generator on one core.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print a JSON object on stdout (the human line then goes to stderr).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    // clap exits 2 on a usage error and 0 after --help / --version.
    let args = Args::parse();
    let config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("des-loadgen: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(&args, config) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("des-loadgen: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn config(args: &Args) -> anyhow::Result<loadgen::Config> {
    let text = std::fs::read_to_string(&args.paths)
        .with_context(|| format!("reading {}", args.paths.display()))?;
    let mut targets: Vec<_> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(loadgen::Target::parse)
        .collect();
    let mut verify = HashMap::new();
    if let Some(file) = &args.verify {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (path, local) = line
                .split_once('\t')
                .with_context(|| format!("{}: {line:?} is not PATH<TAB>FILE", file.display()))?;
            let bytes = std::fs::read(local).with_context(|| format!("reading {local}"))?;
            verify.insert(path.to_owned(), Bytes::from(bytes));
        }
        let listed: std::collections::HashSet<_> = targets.iter().map(|t| t.path.clone()).collect();
        let mut extra: Vec<_> = verify.keys().filter(|p| !listed.contains(*p)).collect();
        // Sorted, so the same files give the same mix (HashMap order is random).
        extra.sort();
        targets.extend(extra.into_iter().map(|p| loadgen::Target::parse(p)));
    }
    if targets.is_empty() {
        anyhow::bail!("{}: no paths", args.paths.display());
    }
    if args.connections == 0 {
        anyhow::bail!("--connections must be at least 1");
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        anyhow::bail!("--rate must be a number above zero");
    }
    let mut config = loadgen::Config::new(&args.base, targets)?;
    config.verify = verify;
    config.host = args.host.clone();
    config.connections = args.connections;
    config.duration = args.duration;
    config.warmup = args.warmup;
    config.rate = args.rate;
    config.seed = args.seed;
    config.timeout = args.timeout;
    Ok(config)
}

/// Runs and prints; Ok(false) when the run failed its checks.
fn run(args: &Args, config: loadgen::Config) -> anyhow::Result<bool> {
    let runtime = des_bench_tools::runtime(args.threads)?;
    let report = runtime.block_on(loadgen::run(config))?;
    for f in &report.failures {
        eprintln!("des-loadgen: FAILED {f}");
    }
    if report.verifying && report.verified == 0 {
        eprintln!("des-loadgen: FAILED no answer was verified (--verify paths never requested?)");
    }
    if args.json {
        eprintln!("{}", report.human());
        println!("{}", report.json());
    } else {
        println!("{}", report.human());
    }
    Ok(report.ok())
}
