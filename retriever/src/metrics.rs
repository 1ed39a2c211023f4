//! Prometheus metrics, one registry per service instance (so tests running
//! several apps in one process do not share counts).
//!
//! Values owned by the storage layer (breaker states, retry totals) and the
//! cache sizes are read when `/metrics` is scraped rather than pushed.

use std::sync::Mutex;

use des_storage::resilience::BreakerState;
use des_storage::zones::Zones;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, core::Collector,
};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// Bytes held by the caches, as their weighers count them.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheSizes {
    pub index: u64,
    /// Pages of paged shard indexes.
    pub pages: u64,
    pub payload: u64,
    /// Shared zstd dictionaries held, and read from storage so far.
    pub dictionaries: u64,
    pub dictionary_loads: u64,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub retrievals: IntCounterVec,
    pub retrieval_seconds: Histogram,
    pub range_calls: IntCounterVec,
    pub cache_bytes: IntGauge,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub page_cache_bytes: IntGauge,
    pub page_cache_hits: IntCounter,
    pub page_cache_misses: IntCounter,
    pub read_bytes: IntCounterVec,
    pub cache_evictions: IntCounterVec,
    pub payload_cache_bytes: IntGauge,
    pub dictionary_cache_bytes: IntGauge,
    pub dictionary_loads: IntCounter,
    pub payload_cache_hits: IntCounter,
    pub payload_cache_misses: IntCounter,
    pub breaker_state: IntGaugeVec,
    pub storage_retries: IntCounterVec,
    pub storage_failovers: IntCounterVec,
    pub storage_hedges: IntCounterVec,
    pub corruption: IntCounter,
    pub http_requests: IntCounterVec,
    pub tombstones_known: IntGauge,
    pub tombstones_segments: IntGauge,
    pub tombstones_appended: IntCounter,
    pub tombstones_poll_failures: IntCounter,
    pub retention_rules_version: IntGauge,
    pub retention_poll_failures: IntCounter,
    pub http_connections: IntGauge,
    pub http_connections_max: IntGauge,
    pub http_connections_without_request: IntCounter,
    pub big_streams_active: IntGauge,
    pub payload_bytes_in_flight: IntGauge,
    pub overload_rejections: IntCounterVec,
    /// Serialises the scrape-time copy of storage counters, so two
    /// concurrent scrapes cannot both add the same increment.
    sync: Mutex<()>,
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let r = Registry::new();
        let retrieval_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "des_retrieval_seconds",
                "Time from request to response headers for file requests.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
        )?;
        r.register(Box::new(retrieval_seconds.clone()))?;
        let cache_bytes = IntGauge::new(
            "des_index_cache_bytes",
            "Heap bytes held by cached shard indexes.",
        )?;
        r.register(Box::new(cache_bytes.clone()))?;
        let page_cache_bytes = IntGauge::new(
            "des_index_page_cache_bytes",
            "Heap bytes held by cached pages of paged shard indexes.",
        )?;
        r.register(Box::new(page_cache_bytes.clone()))?;
        let payload_cache_bytes = IntGauge::new(
            "des_payload_cache_bytes",
            "Bytes held by the hot payload cache (decoded small files).",
        )?;
        r.register(Box::new(payload_cache_bytes.clone()))?;
        let dictionary_cache_bytes = IntGauge::new(
            "des_dictionary_cache_bytes",
            "Bytes held by loaded shared zstd dictionaries (prepared for decoding).",
        )?;
        r.register(Box::new(dictionary_cache_bytes.clone()))?;
        let dictionary_loads = IntCounter::new(
            "des_dictionary_loads_total",
            "Shared zstd dictionaries read from storage and verified (cache misses).",
        )?;
        r.register(Box::new(dictionary_loads.clone()))?;
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "des_circuit_breaker_state",
                "Circuit breaker per zone location: 0 closed, 1 open, 2 half-open.",
            ),
            &["zone", "location"],
        )?;
        r.register(Box::new(breaker_state.clone()))?;
        let tombstones_known = IntGauge::new(
            "des_tombstones_known",
            "Deleted (uid, date) pairs this replica knows of.",
        )?;
        r.register(Box::new(tombstones_known.clone()))?;
        let tombstones_segments = IntGauge::new(
            "des_tombstones_segments",
            "Tombstone segments (compacted applied deletions) in the store as of this replica's last poll.",
        )?;
        r.register(Box::new(tombstones_segments.clone()))?;
        Ok(Self {
            http_connections: gauge(
                &r,
                "des_http_connections",
                "Connections open on the public port (bound: des_http_connections_max).",
            )?,
            http_connections_without_request: counter(
                &r,
                "des_http_connections_without_request_total",
                "Connections closed before a complete request arrived (slow or idle heads cut off by client_request_timeout_secs).",
            )?,
            http_connections_max: gauge(
                &r,
                "des_http_connections_max",
                "max_connections: beyond it, new connections wait to be accepted.",
            )?,
            big_streams_active: gauge(
                &r,
                "des_big_streams_active",
                "Big-file (external) responses streaming now (bound: max_big_streams).",
            )?,
            payload_bytes_in_flight: gauge(
                &r,
                "des_payload_bytes_in_flight",
                "Bytes of small-file payloads held by responses now (bound: max_payload_bytes_in_flight).",
            )?,
            overload_rejections: counter_vec(
                &r,
                "des_overload_rejections_total",
                "Requests answered 503 because a bound was reached, by resource (big_streams, payload_bytes).",
                &["resource"],
            )?,
            retrievals: counter_vec(
                &r,
                "des_retrievals_total",
                "File requests answered, by backend and HTTP status.",
                &["backend", "status"],
            )?,
            retrieval_seconds,
            range_calls: counter_vec(
                &r,
                "des_s3_range_calls_total",
                "Reads sent to storage: index (shard suffix), payload (range of a shard: a payload, an index page or the rest of an index), big (external object).",
                &["backend", "type"],
            )?,
            cache_bytes,
            cache_hits: counter(
                &r,
                "des_index_cache_hits_total",
                "Shard index lookups served from the cache.",
            )?,
            cache_misses: counter(
                &r,
                "des_index_cache_misses_total",
                "Shard index lookups that read storage.",
            )?,
            page_cache_bytes,
            page_cache_hits: counter(
                &r,
                "des_index_page_cache_hits_total",
                "Lookups in paged shards whose index page was cached.",
            )?,
            page_cache_misses: counter(
                &r,
                "des_index_page_cache_misses_total",
                "Lookups in paged shards that read an index page from storage.",
            )?,
            read_bytes: counter_vec(
                &r,
                "des_storage_read_bytes_total",
                "Bytes of the reads counted by des_s3_range_calls_total, by the same labels.",
                &["backend", "type"],
            )?,
            cache_evictions: counter_vec(
                &r,
                "des_index_cache_evictions_total",
                "Shard indexes dropped from the cache, by cause (size, expired, explicit, replaced).",
                &["cause"],
            )?,
            payload_cache_bytes,
            dictionary_cache_bytes,
            dictionary_loads,
            payload_cache_hits: counter(
                &r,
                "des_payload_cache_hits_total",
                "Small inline payloads served from the hot payload cache, without a storage read.",
            )?,
            payload_cache_misses: counter(
                &r,
                "des_payload_cache_misses_total",
                "Small inline payloads not in the hot payload cache, so read from storage.",
            )?,
            breaker_state,
            storage_retries: counter_vec(
                &r,
                "des_storage_retries_total",
                "Storage requests retried, per zone.",
                &["zone"],
            )?,
            storage_failovers: counter_vec(
                &r,
                "des_storage_failovers_total",
                "Reads a zone served from a replica after its primary failed or missed.",
                &["zone"],
            )?,
            storage_hedges: counter_vec(
                &r,
                "des_storage_hedges_total",
                "Second (hedged) read requests, per zone, by outcome: won (it answered) or lost.",
                &["zone", "outcome"],
            )?,
            corruption: counter(
                &r,
                "des_corruption_detected_total",
                "Stored bytes that failed a CRC, digest or length check.",
            )?,
            http_requests: counter_vec(
                &r,
                "http_requests_total",
                "HTTP requests by route pattern and status.",
                &["route", "status"],
            )?,
            tombstones_known,
            tombstones_segments,
            tombstones_appended: counter(
                &r,
                "des_tombstones_appended_total",
                "Tombstones this replica wrote (accepted DELETEs).",
            )?,
            tombstones_poll_failures: counter(
                &r,
                "des_tombstones_poll_failures_total",
                "Polls of the tombstone log that failed.",
            )?,
            retention_rules_version: gauge(
                &r,
                "des_retention_rules_version",
                "Version of the store's retention rules this replica applies (0: none).",
            )?,
            retention_poll_failures: counter(
                &r,
                "des_retention_poll_failures_total",
                "Re-reads of the retention rules or legal holds that failed (the last ones read stay in force).",
            )?,
            registry: r,
            sync: Mutex::new(()),
        })
    }

    /// The text exposition, after copying in what storage and the caches hold.
    pub fn render(&self, sizes: CacheSizes, zones: Option<&Zones>) -> Result<String, MetricsError> {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.cache_bytes.set(gauge(sizes.index));
        self.page_cache_bytes.set(gauge(sizes.pages));
        self.payload_cache_bytes.set(gauge(sizes.payload));
        self.dictionary_cache_bytes.set(gauge(sizes.dictionaries));
        {
            // Scrapes may overlap; the counter only moves forward.
            let _guard = self.sync.lock().unwrap_or_else(|p| p.into_inner());
            let seen = self.dictionary_loads.get();
            self.dictionary_loads
                .inc_by(sizes.dictionary_loads.saturating_sub(seen));
        }
        if let Some(zones) = zones {
            self.copy_zones(zones);
        }
        let families = self.registry.gather();
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out)?;
        let mut text = String::from_utf8_lossy(&out).into_owned();
        let labelled: [(&dyn Collector, &str); 8] = [
            (&self.http_requests, "counter"),
            (&self.retrievals, "counter"),
            (&self.range_calls, "counter"),
            (&self.cache_evictions, "counter"),
            (&self.breaker_state, "gauge"),
            (&self.storage_retries, "counter"),
            (&self.storage_failovers, "counter"),
            (&self.storage_hedges, "counter"),
        ];
        declare_empty_families(&mut text, &families, &labelled);
        Ok(text)
    }

    fn copy_zones(&self, zones: &Zones) {
        // A poisoned lock only means another scrape panicked; the data is counters.
        let _guard = self.sync.lock().unwrap_or_else(|p| p.into_inner());
        for zone in zones {
            for (location, breaker) in &zone.breakers {
                self.breaker_state
                    .with_label_values(&[zone.name.as_str(), location.as_str()])
                    .set(breaker_gauge(breaker.state()));
            }
            let name = zone.name.as_str();
            let load =
                |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            let c = &zone.counters;
            let totals = [
                (&self.storage_retries, vec![name], load(&c.retries)),
                (&self.storage_failovers, vec![name], load(&c.failovers)),
                (&self.storage_hedges, vec![name, "won"], load(&c.hedges_won)),
                (
                    &self.storage_hedges,
                    vec![name, "lost"],
                    load(&c.hedges_lost),
                ),
            ];
            // The storage counters only grow: the exported ones catch up.
            for (family, labels, total) in totals {
                let counter = family.with_label_values(&labels);
                counter.inc_by(total.saturating_sub(counter.get()));
            }
        }
    }
}

/// Labelled families with no series yet (no zones, no eviction so far) are
/// left out by the encoder; declaring them anyway lets dashboards, alerts
/// and the deployment check see every name this service can export. Names
/// and help come from the registered collectors, so nothing is restated.
fn declare_empty_families(
    text: &mut String,
    present: &[prometheus::proto::MetricFamily],
    labelled: &[(&dyn Collector, &str)],
) {
    use std::fmt::Write as _;
    for (collector, kind) in labelled {
        for desc in collector.desc() {
            let name = &desc.fq_name;
            if !present.iter().any(|f| f.name() == name) {
                let _ = write!(text, "# HELP {name} {}\n# TYPE {name} {kind}\n", desc.help);
            }
        }
    }
}

/// The gauge this service documents (0 closed, 1 open, 2 half-open).
pub fn breaker_gauge(state: BreakerState) -> i64 {
    match state {
        BreakerState::Closed => 0,
        BreakerState::Open => 1,
        BreakerState::HalfOpen => 2,
    }
}

pub fn breaker_name(state: BreakerState) -> &'static str {
    match state {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declares_labelled_families_before_their_first_series() {
        let text = Metrics::new()
            .unwrap()
            .render(CacheSizes::default(), None)
            .unwrap();
        for (name, kind) in [
            ("des_circuit_breaker_state", "gauge"),
            ("des_storage_retries_total", "counter"),
            ("des_storage_failovers_total", "counter"),
            ("des_storage_hedges_total", "counter"),
            ("des_index_cache_evictions_total", "counter"),
            ("http_requests_total", "counter"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} in\n{text}"
            );
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
        }
    }

    #[test]
    fn renders_every_family() {
        let m = Metrics::new().unwrap();
        m.retrievals.with_label_values(&["local", "200"]).inc();
        m.retrieval_seconds.observe(0.01);
        m.range_calls.with_label_values(&["local", "index"]).inc();
        m.cache_hits.inc();
        m.cache_misses.inc();
        m.cache_evictions.with_label_values(&["size"]).inc();
        m.page_cache_hits.inc();
        m.page_cache_misses.inc();
        m.read_bytes
            .with_label_values(&["local", "index"])
            .inc_by(4096);
        m.payload_cache_hits.inc();
        m.payload_cache_misses.inc();
        m.corruption.inc();
        m.http_requests.with_label_values(&["/health", "200"]).inc();
        let sizes = CacheSizes {
            index: 1234,
            pages: 4321,
            payload: 567,
            dictionaries: 89,
            dictionary_loads: 2,
        };
        let text = m.render(sizes, None).unwrap();
        for name in [
            "des_retrievals_total{backend=\"local\",status=\"200\"} 1",
            "des_retrieval_seconds_bucket",
            "des_s3_range_calls_total{backend=\"local\",type=\"index\"} 1",
            "des_index_cache_bytes 1234",
            "des_index_cache_hits_total 1",
            "des_index_cache_misses_total 1",
            "des_index_cache_evictions_total{cause=\"size\"} 1",
            "des_index_page_cache_bytes 4321",
            "des_index_page_cache_hits_total 1",
            "des_index_page_cache_misses_total 1",
            "des_storage_read_bytes_total{backend=\"local\",type=\"index\"} 4096",
            "des_payload_cache_bytes 567",
            "des_dictionary_cache_bytes 89",
            "des_dictionary_loads_total 2",
            "des_payload_cache_hits_total 1",
            "des_payload_cache_misses_total 1",
            "des_corruption_detected_total 1",
            "http_requests_total{route=\"/health\",status=\"200\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
