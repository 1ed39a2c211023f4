//! `des-migrate`: see `des-migrate --help` and README.md.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use des_migrate::metrics::{CycleStatus, MigrationMetrics};
use des_migrate::{Args, Config, MigrationReport};

fn main() -> ExitCode {
    let args = Args::parse();
    // Two workers: the database connection and the store's I/O; the
    // packer brings its own threads.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("des-migrate: error: starting the runtime: {e}");
            return ExitCode::from(des_migrate::error::EXIT_STORE);
        }
    };
    let mut report = MigrationReport::default();
    let result =
        Config::from_args(&args).and_then(|cfg| des_migrate::run(&cfg, rt.handle(), &mut report));
    let mut code = match &result {
        Ok(()) => report.exit_code(),
        Err(e) => {
            eprintln!("des-migrate: error: {e}");
            e.exit_code()
        }
    };
    if let Err(e) = print_report(&args, &report) {
        eprintln!("des-migrate: error: writing the report: {e:#}");
    }
    let mut metrics = args
        .metrics_file
        .as_deref()
        .map(MigrationMetrics::load)
        .unwrap_or_default();
    metrics.record(CycleStatus::from_exit_code(code), &report);
    // Pushed before the file is written, so a file that cannot be written
    // does not cost the push too. Metrics are secondary to the run: a
    // failed push is reported, the exit status stays the run's.
    if let Some(gateway) = &args.pushgateway
        && let Err(e) = rt.block_on(gateway.push(env!("CARGO_BIN_NAME"), &metrics.render()))
    {
        eprintln!(
            "des-migrate: warning: pushing the metrics to the Pushgateway: {e} (the exit status is not affected)"
        );
    }
    if let Some(path) = &args.metrics_file
        && let Err(e) = metrics.write(path)
    {
        eprintln!("des-migrate: error: writing {}: {e}", path.display());
        code = code.max(des_migrate::error::EXIT_STORE);
    }
    ExitCode::from(code)
}

fn print_report(args: &Args, report: &MigrationReport) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, report)?;
        writeln!(out)?;
    } else {
        write!(out, "{report}")?;
    }
    Ok(())
}
