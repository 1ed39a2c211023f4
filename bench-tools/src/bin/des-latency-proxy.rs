//! `des-latency-proxy`: a TCP proxy adding a fixed delay in each direction
//! and optionally a bandwidth cap (see des_bench_tools::proxy).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use des_bench_tools::units::{GRAMMAR, RATES, parse_duration, parse_rate, parse_size};
use des_bench_tools::{EXIT_CODES, proxy};

/// A TCP proxy that delays every byte by DELAY in each direction (a round
/// trip gains 2 × DELAY) and optionally caps each connection's bandwidth per
/// direction. Prints "listening HOST:PORT" on stdout once it accepts
/// connections, then runs until killed.
#[derive(Parser)]
#[command(name = "des-latency-proxy", version, after_help = format!("{GRAMMAR} {RATES}\n\n{EXIT_CODES}"))]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Where to forward connections (HOST:PORT).
    #[arg(long)]
    upstream: String,
    /// One-way delay added in each direction.
    #[arg(long, value_parser = parse_duration, default_value = "10ms")]
    delay: Duration,
    /// Bandwidth cap per connection per direction (e.g. 100MB/s); none by default.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<u64>,
    /// Bytes in flight per connection per direction before the proxy stops
    /// reading from the sender.
    #[arg(long, value_parser = parse_size, default_value = "64MiB")]
    max_in_flight: u64,
    /// Runtime threads: 1 (default) keeps the proxy on one core, out of the
    /// way of what is being measured.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> ExitCode {
    // clap exits 2 on a usage error and 0 after --help / --version.
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("des-latency-proxy: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let runtime = des_bench_tools::runtime(args.threads)?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen).await?;
        let mut config = proxy::Config::new(args.upstream, args.delay);
        config.rate = args.rate;
        config.max_in_flight = usize::try_from(args.max_in_flight)?;
        // Scripts wait for this line, so it goes out (flushed) only once
        // the socket accepts.
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {}", listener.local_addr()?)?;
        out.flush()?;
        drop(out);
        proxy::serve(listener, config).await?;
        Ok(())
    })
}
