//! Benchmark tools for DES (issue 17: benchmarks users can trust).
//!
//! - [`proxy`]: `des-latency-proxy`, a TCP proxy that delays every byte by a
//!   fixed time in each direction and can cap bandwidth, so loopback
//!   benchmarks see the round trips of a real network to object storage.
//! - [`loadgen`]: `des-loadgen`, an HTTP/1.1 keep-alive load generator that
//!   checks every status, verifies bodies against local files, and in
//!   open-loop mode measures latency from the scheduled send time (no
//!   coordinated omission).
//! - [`deletion_scale`]: `des-deletion-scale`, deletions and retention over
//!   simulated days with every storage request counted.

pub mod deletion_scale;
pub mod loadgen;
pub mod proxy;
pub mod units;

/// Exit codes of both binaries (also in their `--help`).
pub const EXIT_CODES: &str = "Exit codes: 0 ok; 1 the run failed (a failed check, an I/O or connection \
     error); 2 usage error (bad option or value, unreadable input file).";

/// A runtime of `threads` threads; 1 (or 0) keeps the tool on one core, out
/// of the way of what it measures.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}
