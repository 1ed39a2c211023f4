use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use des_packer::PackReport;
use des_packer::cli::{Args, EXIT_FATAL, EXIT_OK, EXIT_PARTIAL};
use des_packer::metrics::{self, RunStatus};
use des_storage::metrics_file::write_atomically;
use std::io::IsTerminal;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn main() -> ExitCode {
    let args = Args::parse();
    let started = Instant::now();
    let (code, report) = match run(&args) {
        Ok((code, report)) => (code, Some(report)),
        Err(e) => {
            eprintln!("des-pack: error: {e:#}");
            (EXIT_FATAL, None)
        }
    };
    if args.metrics_file.is_some() || args.pushgateway.is_some() {
        let status = match code {
            EXIT_OK => RunStatus::Success,
            EXIT_PARTIAL => RunStatus::Partial,
            _ => RunStatus::Failed,
        };
        publish_metrics(
            &args,
            report.as_ref(),
            status,
            started.elapsed().as_secs_f64(),
        );
    }
    ExitCode::from(code as u8)
}

/// Writes --metrics-file and pushes to --pushgateway. Metrics are secondary
/// to the run: a failure is a warning, not a change of the exit status.
fn publish_metrics(args: &Args, report: Option<&PackReport>, status: RunStatus, seconds: f64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let path = args.metrics_file.as_deref();
    let text = metrics::render_run(path, report, status, seconds, now);
    if let Some(path) = path
        && let Err(e) = write_atomically(path, &text)
    {
        eprintln!("des-pack: warning: writing metrics {}: {e}", path.display());
    }
    if let Some(gateway) = &args.pushgateway {
        let pushed = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a runtime for the push")
            .and_then(|rt| {
                rt.block_on(gateway.push(env!("CARGO_BIN_NAME"), &text))
                    .context("pushing the metrics to the Pushgateway")
            });
        if let Err(e) = pushed {
            eprintln!("des-pack: warning: {e:#} (the exit status is not affected)");
        }
    }
}

fn run(args: &Args) -> Result<(i32, PackReport)> {
    let input = args.input()?;
    let opts = args.options()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let progress = !args.quiet && !args.json && std::io::stderr().is_terminal();
    let report = des_packer::pack(&input, &opts, rt.handle(), progress)?;
    if let Some(path) = &args.report {
        let body = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, body).with_context(|| format!("writing report {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report);
    }
    let code = if report.any_failed() {
        EXIT_PARTIAL
    } else {
        EXIT_OK
    };
    Ok((code, report))
}

fn print_summary(r: &PackReport) {
    println!(
        "{}: {} files packed, {} already present, {} failed; {} shards written, {} unchanged",
        r.store,
        r.files_packed,
        r.files_already_present,
        r.files_failed,
        r.shards_written,
        r.shards_unchanged
    );
    println!(
        "{:.1} MB in -> {:.1} MB stored (ratio {:.3}), {} big files, {:.1}s ({:.0} files/s)",
        r.bytes_in as f64 / 1e6,
        r.bytes_stored as f64 / 1e6,
        r.ratio(),
        r.big_files,
        r.elapsed_seconds,
        r.files_packed as f64 / r.elapsed_seconds.max(1e-9)
    );
    if r.stale_uploads_aborted > 0 {
        println!(
            "{} stale multipart uploads of crashed runs aborted",
            r.stale_uploads_aborted
        );
    }
    if r.temp_files_swept > 0 {
        println!("{} temp files of crashed runs removed", r.temp_files_swept);
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    if r.files_outside_shard_range > 0 {
        println!(
            "{} files skipped: outside --shard-range",
            r.files_outside_shard_range
        );
    }
    if r.files_deleted > 0 {
        println!(
            "{} files not packed: deleted (a tombstone exists for their uid and day)",
            r.files_deleted
        );
    }
    if let Some(s) = &r.from_s3 {
        println!(
            "{}: {} objects listed in {} batches ({} folder markers skipped); {} originals deleted, {} kept, {} failed verification",
            s.source,
            s.objects_listed,
            s.batches,
            s.objects_skipped,
            s.sources_deleted,
            s.sources_kept,
            s.sources_failed_verification
        );
        if s.checkpoint_held_back {
            eprintln!(
                "warning: the listing checkpoint stayed at {:?} because of failures; a re-run retries from there",
                s.checkpoint.as_ref().or(s.resumed_after.as_ref())
            );
        }
        for f in s.verification_failures.iter().take(50) {
            eprintln!("kept: {}: {}", f.source.as_deref().unwrap_or("?"), f.reason);
        }
    }
    for f in r.failures.iter().take(50) {
        eprintln!(
            "failed: line {} uid {:?}: {}",
            f.line,
            f.uid.as_deref().unwrap_or("?"),
            f.reason
        );
    }
    if r.files_failed > 50 {
        eprintln!("... {} more failures (see --report)", r.files_failed - 50);
    }
}
