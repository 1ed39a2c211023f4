//! The per-day table, the old approach's computed counts, the summary and
//! its PASS / MISS lines.

use std::fmt::Write as _;

use serde::Serialize;

use super::sim::{DayRecord, Startup};

/// LIST page size of S3 (and of `ObjectStore::list`).
const PAGE: u64 = 1000;
pub const OLD_LABEL: &str = "old approach (computed: 2 PUTs per deleted or expired file + same shard \
     writes + full-log LIST)";

/// The old approach's counts for one day, computed from the run's numbers.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Old {
    pub objects_written: u64,
    pub list: u64,
    pub requests: u64,
}

/// Before the compacted log (1d80521^): a tombstone object per deleted
/// file (add) and per expired file (retention), an applied marker per each
/// (repack), the same shard rewrites, a LIST of the whole log when adding
/// (the set load) and of records and markers on each repack run (1,000
/// keys per page). Reads of shards are taken to be the new run's GETs and
/// HEADs (which also read segments: in the old approach's favour).
pub fn old(d: &DayRecord) -> Old {
    let gone = d.deletions + d.expired;
    let before = d.old_log_records - gone;
    let objects_written = 2 * gone + d.shards_touched();
    let list = before.div_ceil(PAGE) + 2 * d.old_log_records.div_ceil(PAGE);
    let c = d.counts();
    Old {
        objects_written,
        list,
        requests: objects_written + list + c.get + c.head,
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        f64::INFINITY
    } else {
        a as f64 / b as f64
    }
}

/// The per-day table.
pub fn table(days: &[DayRecord]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>4} {:>8} {:>6} {:>5} {:>6} {:>6} | {:>6} {:>6} {:>6} {:>5} {:>5} | {:>7} {:>7} | {:>8} {:>8} | {:>7} {:>7} | {:>7}",
        "day",
        "date",
        "packed",
        "del",
        "exp",
        "shards",
        "PUT",
        "DELETE",
        "GET",
        "HEAD",
        "LIST",
        "written",
        "reqs",
        "old wr",
        "old reqs",
        "x wr",
        "x reqs",
        "repack s"
    );
    for d in days {
        let c = d.counts();
        let o = old(d);
        let _ = writeln!(
            s,
            "{:>4} {:>8} {:>6} {:>5} {:>6} {:>6} | {:>6} {:>6} {:>6} {:>5} {:>5} | {:>7} {:>7} | {:>8} {:>8} | {:>7.1} {:>7.1} | {:>7.2}",
            d.day,
            d.date,
            d.files_packed,
            d.deletions,
            d.expired,
            d.shards_touched(),
            c.objects_written(),
            c.delete,
            c.get,
            c.head,
            c.list,
            c.objects_written(),
            c.requests(),
            o.objects_written,
            o.requests,
            ratio(o.objects_written, c.objects_written()),
            ratio(o.requests, c.requests()),
            d.repack_seconds
        );
    }
    s
}

/// Totals and verdicts over the days.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub deletions: u64,
    pub expired: u64,
    pub shards_touched: u64,
    pub objects_written: u64,
    pub requests: u64,
    pub add_requests: u64,
    pub repack_requests: u64,
    pub old_objects_written: u64,
    pub old_requests: u64,
    pub ratio_objects_written: f64,
    pub ratio_requests: f64,
    pub add_requests_per_deletion: f64,
    /// Objects add_batch wrote per deletion (1 with one object per tombstone).
    pub add_objects_per_deletion: f64,
    pub repack_requests_per_shard_touched: f64,
    pub repack_requests_per_file_gone: f64,
    /// Repack requests per shard touched, median over days with a file
    /// of an expired date and over days without one (when both exist):
    /// requests that followed files would jump on expiry days.
    pub per_shard_expiry_days: Option<f64>,
    pub per_shard_other_days: Option<f64>,
    pub repack_seconds_median: f64,
    pub repack_seconds_max: f64,
    /// Days whose repack did not drop exactly their deletions and expiries.
    pub mismatched_days: Vec<usize>,
    /// Over the days the rule expires files (the archive's steady state):
    /// how many, the ratios of their sums, and the lowest day's ratio.
    pub steady_days: usize,
    pub steady_ratio_objects_written: f64,
    pub steady_ratio_requests: f64,
    pub steady_min_day_ratio_requests: f64,
}

pub fn summarize(days: &[DayRecord]) -> Summary {
    let mut s = Summary::default();
    let mut repack_requests = 0;
    let mut secs: Vec<f64> = days.iter().map(|d| d.repack_seconds).collect();
    for d in days {
        let c = d.counts();
        let o = old(d);
        s.deletions += d.deletions;
        s.expired += d.expired;
        s.shards_touched += d.shards_touched();
        s.objects_written += c.objects_written();
        s.requests += c.requests();
        s.add_requests += d.add.requests();
        repack_requests += d.repack.requests();
        s.old_objects_written += o.objects_written;
        s.old_requests += o.requests;
        if d.entries_expired != d.expired || d.entries_dropped != d.expired + d.deletions {
            s.mismatched_days.push(d.day);
        }
    }
    s.repack_requests = repack_requests;
    s.ratio_objects_written = ratio(s.old_objects_written, s.objects_written);
    s.ratio_requests = ratio(s.old_requests, s.requests);
    s.add_requests_per_deletion = s.add_requests as f64 / s.deletions.max(1) as f64;
    let add_objects: u64 = days.iter().map(|d| d.add.objects_written()).sum();
    s.add_objects_per_deletion = add_objects as f64 / s.deletions.max(1) as f64;
    s.repack_requests_per_shard_touched = repack_requests as f64 / s.shards_touched.max(1) as f64;
    s.repack_requests_per_file_gone =
        repack_requests as f64 / (s.deletions + s.expired).max(1) as f64;
    let per_shard = |expiry: bool| {
        let mut v: Vec<f64> = days
            .iter()
            .filter(|d| (d.expired > 0) == expiry && d.shards_touched() > 0)
            .map(|d| d.repack.requests() as f64 / d.shards_touched() as f64)
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    s.per_shard_expiry_days = per_shard(true);
    s.per_shard_other_days = per_shard(false);
    let steady: Vec<&DayRecord> = days.iter().filter(|d| d.expired > 0).collect();
    s.steady_days = steady.len();
    let sum = |f: &dyn Fn(&DayRecord) -> u64| steady.iter().map(|d| f(d)).sum::<u64>();
    s.steady_ratio_objects_written = ratio(
        sum(&|d| old(d).objects_written),
        sum(&|d| d.counts().objects_written()),
    );
    s.steady_ratio_requests = ratio(sum(&|d| old(d).requests), sum(&|d| d.counts().requests()));
    s.steady_min_day_ratio_requests = steady
        .iter()
        .map(|d| ratio(old(d).requests, d.counts().requests()))
        .fold(f64::INFINITY, f64::min);
    secs.sort_by(f64::total_cmp);
    s.repack_seconds_median = secs.get(secs.len() / 2).copied().unwrap_or(0.0);
    s.repack_seconds_max = secs.last().copied().unwrap_or(0.0);
    s
}

fn verdict(ok: bool, what: &str) -> String {
    format!("{} {what}\n", if ok { "PASS" } else { "MISS" })
}

/// The summary block and PASS / MISS lines.
pub fn text(s: &Summary, st: Option<&Startup>) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "totals: {} deletions, {} files expired by the rule, {} shards touched (rewritten + deleted)",
        s.deletions, s.expired, s.shards_touched
    );
    let _ = writeln!(
        t,
        "new: {} objects written, {} requests (add_batch {}, repack {})",
        s.objects_written, s.requests, s.add_requests, s.repack_requests
    );
    let _ = writeln!(
        t,
        "{OLD_LABEL}: {} objects written, {} requests",
        s.old_objects_written, s.old_requests
    );
    let _ = writeln!(
        t,
        "ratio old/new: objects written {:.1}x, requests {:.1}x",
        s.ratio_objects_written, s.ratio_requests
    );
    if s.steady_days > 0 {
        let _ = writeln!(
            t,
            "on the {} days the rule expires files (steady state): objects written {:.1}x, requests {:.1}x fewer (lowest day {:.1}x)",
            s.steady_days,
            s.steady_ratio_objects_written,
            s.steady_ratio_requests,
            s.steady_min_day_ratio_requests
        );
    }
    let _ = writeln!(
        t,
        "add_batch: {:.2} requests per deletion; repack: {:.1} requests per shard touched, {:.3} per file deleted or expired",
        s.add_requests_per_deletion,
        s.repack_requests_per_shard_touched,
        s.repack_requests_per_file_gone
    );
    let _ = writeln!(
        t,
        "repack run time per day: median {:.2} s, max {:.2} s",
        s.repack_seconds_median, s.repack_seconds_max
    );
    if !s.mismatched_days.is_empty() {
        let _ = writeln!(
            t,
            "NOTE: on days {:?} the repacker's dropped/expired entries differ from the deletions/expiries submitted",
            s.mismatched_days
        );
    }
    if let Some(st) = st {
        let per = ratio(st.applied_heap_bytes, st.set_len);
        let _ = writeln!(
            t,
            "start-up: {} more deletions ({} for files never packed) added in {:.1} s ({} requests), applied and compacted by one repack in {:.1} s ({} requests)",
            st.deletions_added,
            st.synthetic,
            st.add_seconds,
            st.add.requests(),
            st.repack_seconds,
            st.repack.requests()
        );
        let _ = writeln!(
            t,
            "TombstoneSet::load: median {:.3} s of {:?} ({} requests, {} LIST), {} deletions known in {} segments, applied {} B ({:.2} B per deletion), total {} B",
            st.load_seconds_median,
            st.load_seconds
                .iter()
                .map(|x| (x * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>(),
            st.load.requests(),
            st.load.list,
            st.set_len,
            st.segments,
            st.applied_heap_bytes,
            per,
            st.heap_bytes
        );
        let _ = writeln!(
            t,
            "objects: _tombstones/ {} (of which segments/ {}), _tombstones_applied/ {}",
            st.objects_tombstones, st.objects_segments, st.objects_applied
        );
        t += &verdict(
            per <= 16.0,
            &format!("tombstone memory ≤ 16 B per applied deletion ({per:.2} B)"),
        );
        t += &verdict(
            st.load_seconds_median <= 2.0,
            &format!(
                "tombstone load ≤ 2 s with {} deletions, in process ({:.3} s)",
                st.set_len, st.load_seconds_median
            ),
        );
    }
    t += &verdict(
        s.ratio_objects_written >= 100.0,
        &format!(
            "objects written ≥ 100x fewer than the old approach ({:.1}x)",
            s.ratio_objects_written
        ),
    );
    t += &verdict(
        s.ratio_requests >= 100.0,
        &format!(
            "requests ≥ 100x fewer than the old approach, all days ({:.1}x)",
            s.ratio_requests
        ),
    );
    if s.steady_days > 0 {
        t += &verdict(
            s.steady_ratio_requests >= 100.0,
            &format!(
                "requests ≥ 100x fewer than the old approach on the days the rule expires files ({:.1}x)",
                s.steady_ratio_requests
            ),
        );
    }
    let shards_explain = match (s.per_shard_expiry_days, s.per_shard_other_days) {
        (Some(e), Some(o)) => (
            e <= 1.5 * o,
            format!("repack requests per shard touched {e:.1} on expiry days vs {o:.1} on others"),
        ),
        _ => (
            true,
            "no days both with and without expiries to compare".to_string(),
        ),
    };
    t += &verdict(
        s.add_objects_per_deletion < 0.1 && shards_explain.0,
        &format!(
            "requests follow shards, not files (add_batch writes {:.3} objects per deletion, goal < 0.1; {})",
            s.add_objects_per_deletion, shards_explain.1
        ),
    );
    t
}

/// `title` then one line per "operation key-class" and its requests.
pub fn breakdown(title: &str, by_class: &std::collections::BTreeMap<String, u64>) -> String {
    let mut t = format!("{title}\n");
    for (class, n) in by_class {
        let _ = writeln!(t, "  {n:>8}  {class}");
    }
    t
}
