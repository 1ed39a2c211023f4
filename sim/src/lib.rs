//! A deterministic simulation of a DES store, in the style of FoundationDB's
//! and TigerBeetle's simulation tests: packers, the repacker, deleters,
//! legal holds and retention run the product's own code against one
//! in-memory store, every store operation of every actor is granted one at
//! a time by a scheduler driven by a seeded RNG (which also injects failed
//! operations, lost responses and crashes), and the store's promises are
//! checked after every change:
//!
//! - I1: a file reported packed stays readable, byte-exact, until a
//!   tombstone for its (uid, day) exists or a stored retention rule
//!   expires it;
//! - I2: a tombstone is listed at once; once a repack with max-delay 0 has
//!   run to completion after it (and after every packer that was running
//!   when it was written), the file's bytes are in no shard and, with
//!   big-file grace 0, in no `_big/` object that no live entry uses; they
//!   never come back, not even when the same input is packed again; after
//!   the final repack, the same holds for files the retention rules expire;
//! - I3: no published shard references a missing `_big/<digest>`;
//! - I5: a file under a legal hold keeps its bytes;
//! - I6: every shard object parses and is whole; an applied marker for
//!   generation g is true of every version with generation g.
//!
//! [`run`] runs one seed; [`shrink`] looks for a smaller configuration of a
//! failing seed (roles left out, faults off) with the same violation.
//! See `tests/invariants.rs` for how to run and replay seeds.
//!
//! What stays nondeterministic: the libraries read the wall clock for
//! tombstone names, lease and marker contents and shard `written_at`; those
//! change bytes and names but not the schedule (the decisions that depend
//! on the clock are made with max-delay and grace either 0 or a day, and the
//! lease TTL is far beyond a run), so a seed replays the same operations.

mod actors;
pub mod check;
pub mod engine;
pub mod scenario;
pub mod sched;

use std::fmt::Write as _;

pub use check::Violation;
pub use engine::{Config, RunResult, Sabotage, run};

/// Replays `failing` with roles left out and faults off, keeping each
/// reduction under which the violation labelled `label` still occurs.
/// At most `budget` runs; returns the smallest failing run found.
pub fn shrink(failing: &RunResult, label: &str, budget: usize) -> RunResult {
    let mut best = failing.clone();
    let mut runs = 0;
    let still = |r: &RunResult| r.violations.iter().any(|v| v.label == label);
    let mut progress = true;
    while progress && runs < budget {
        progress = false;
        let mut candidates = Vec::new();
        if best.config.faults {
            let mut c = best.config.clone();
            c.faults = false;
            candidates.push(c);
        }
        for role in 0..best.roles.len() {
            if !best.config.drop_roles.contains(&role) {
                let mut c = best.config.clone();
                c.drop_roles.insert(role);
                candidates.push(c);
            }
        }
        for c in candidates {
            if runs >= budget {
                break;
            }
            runs += 1;
            let r = run(&c);
            if still(&r) && r.steps <= best.steps.max(1) * 2 {
                best = r;
                progress = true;
            }
        }
    }
    best
}

/// A failing run for a human: seed, mode, how to replay, the violations
/// and the trace up to the last of them (all of it with `full`).
pub fn describe(r: &RunResult, full: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "seed {} ({}), {} steps, {} faults; replay: {} cargo test -p des-sim --test invariants -- --nocapture",
        r.config.seed,
        r.mode(),
        r.steps,
        r.faults,
        r.config.replay_env()
    );
    for v in &r.violations {
        let _ = writeln!(out, "  step {}: {}: {}", v.step, v.label, v.detail);
    }
    let last = r.violations.iter().map(|v| v.step).max().unwrap_or(0);
    let marker = format!("{last:>7} ");
    let end = if full {
        r.trace.len()
    } else {
        r.trace
            .iter()
            .rposition(|l| l.starts_with(&marker))
            .map_or(r.trace.len(), |i| i + 1)
    };
    for line in r.trace.iter().take(end) {
        let _ = writeln!(out, "{line}");
    }
    if end < r.trace.len() {
        let _ = writeln!(out, "  … {} more lines", r.trace.len() - end);
    }
    out
}
