//! Readiness: every store (each zone) is asked one cheap question, and each
//! zone's circuit breakers are reported. Ready while at least one store
//! answers: with zones, a replica that is taken out of rotation because one
//! zone is down would not help (every replica sees the same zone), and
//! would stop serving the zones that work. A partial outage is "degraded".
//!
//! A probe costs storage requests, and `/ready` is reachable by anyone who
//! can reach the port: one probe's answer is reused for [`FRESH`], and
//! callers arriving while a probe runs wait for it instead of starting their
//! own, so any number of `/ready` requests sends at most one probe a second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::lookup::Retriever;
use crate::metrics::breaker_name;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one probe's answer is reused.
pub const FRESH: Duration = Duration::from_secs(1);

/// The outcome of one probe.
#[derive(Debug)]
pub struct Report {
    /// `ready`, `degraded` or `unavailable`.
    pub status: &'static str,
    /// At least one store answered.
    pub up: bool,
    /// Per backend: name, ok, error text, breaker states. Names buckets,
    /// endpoints and errors: for the admin port (or a metrics key) only.
    pub backends: serde_json::Value,
}

#[derive(Debug)]
pub struct Readiness {
    fresh: Duration,
    last: tokio::sync::Mutex<Option<(Instant, Arc<Report>)>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::fresh_for(FRESH)
    }
}

impl Readiness {
    /// Reuses a probe's answer for `fresh` (zero: probe on every call).
    pub fn fresh_for(fresh: Duration) -> Self {
        Self {
            fresh,
            last: tokio::sync::Mutex::default(),
        }
    }

    /// The latest report, probing again if it is older than [`FRESH`].
    pub async fn report(&self, retriever: &Retriever) -> Arc<Report> {
        // Held across the probe: that is what makes concurrent callers share it.
        let mut last = self.last.lock().await;
        if let Some((at, report)) = last.as_ref()
            && at.elapsed() < self.fresh
        {
            return Arc::clone(report);
        }
        let report = Arc::new(probe(retriever).await);
        *last = Some((Instant::now(), Arc::clone(&report)));
        report
    }
}

async fn probe(r: &Retriever) -> Report {
    let probes = r.probe(PROBE_TIMEOUT).await;
    let up = probes.iter().filter(|p| p.result.is_ok()).count();
    let zones = r.backends().zones();
    let backends: Vec<serde_json::Value> = probes
        .iter()
        .map(|p| {
            let breakers: Vec<serde_json::Value> = zones
                .and_then(|z| z.get(&p.backend))
                .map(|zone| {
                    zone.breakers
                        .iter()
                        .map(|(location, b)| {
                            serde_json::json!({"location": location, "state": breaker_name(b.state())})
                        })
                        .collect()
                })
                .unwrap_or_default();
            serde_json::json!({
                "backend": p.backend,
                "ok": p.result.is_ok(),
                "error": p.result.as_ref().err().map(ToString::to_string),
                "breakers": breakers,
            })
        })
        .collect();
    let status = match up {
        0 => "unavailable",
        n if n == probes.len() => "ready",
        _ => "degraded",
    };
    Report {
        status,
        up: up > 0,
        backends: serde_json::Value::Array(backends),
    }
}
