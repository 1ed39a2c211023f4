//! The zones file: which S3 location holds which shard indexes. YAML or TOML
//! (by extension), compatible with the original DES format
//!
//! ```yaml
//! n_bits: 8
//! zones:
//!   - name: a
//!     range: {start: 0, end: 127}
//!     s3: {bucket: des-a, prefix: des, region_name: eu-west-1, endpoint_url: "https://..."}
//! ```
//!
//! and extended with per-zone `replicas` (more `s3`-like locations, read in
//! order after the primary), `allow_gaps`, `fallback_on_not_found`, and
//! resilience settings (`retry`, `breaker`, `rate_limit`, `hedge_after_ms`)
//! at the top level or per zone. A zone's setting replaces the top-level one
//! as a whole (fields it leaves out take their defaults, not the top
//! level's), so what a zone runs with can be read off the zone alone.
//!
//! Unknown keys are errors: a misspelt `alow_gaps` or `retires` must not
//! be silently ignored in a file that decides where data goes.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::resilience::{BreakerConfig, RateLimit, RetryPolicy};

pub const MIN_N_BITS: u32 = 4;
pub const MAX_N_BITS: u32 = 16;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZonesFile {
    pub n_bits: u32,
    #[serde(default)]
    pub allow_gaps: bool,
    #[serde(default)]
    pub fallback_on_not_found: bool,
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    #[serde(default)]
    pub breaker: Option<BreakerConfig>,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub hedge_after_ms: Option<u64>,
    pub zones: Vec<ZoneSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSpec {
    pub name: String,
    pub range: ShardRange,
    pub s3: S3Location,
    #[serde(default)]
    pub replicas: Vec<S3Location>,
    #[serde(default)]
    pub fallback_on_not_found: Option<bool>,
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    #[serde(default)]
    pub breaker: Option<BreakerConfig>,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub hedge_after_ms: Option<u64>,
}

/// Shard indexes `start..=end` (both inclusive, as in the original format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardRange {
    pub start: u32,
    pub end: u32,
}

impl ShardRange {
    pub fn contains(&self, index: u32) -> bool {
        self.start <= index && index <= self.end
    }
}

impl std::fmt::Display for ShardRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..={}", self.start, self.end)
    }
}

/// One bucket (and key prefix) on one S3 endpoint; turning it into a client
/// is the job of the factory handed to [`super::Zones::build`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Location {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub region_name: Option<String>,
    #[serde(default)]
    pub endpoint_url: Option<String>,
}

impl S3Location {
    /// `s3://bucket/prefix`, plus `@endpoint` when not AWS's default; used
    /// as the location's label in metrics and errors.
    pub fn label(&self) -> String {
        let prefix = self.prefix.trim_matches('/');
        let mut s = format!("s3://{}", self.bucket);
        if !prefix.is_empty() {
            s = format!("{s}/{prefix}");
        }
        match &self.endpoint_url {
            Some(url) => format!("{s}@{url}"),
            None => s,
        }
    }

    /// Whether the two locations share objects: the same bucket on the same
    /// endpoint, with one prefix equal to the other or nested in it (`des`
    /// and `des/x` do, `des` and `desx` do not; an empty prefix is the whole
    /// bucket). Big-file clean-up and stray checks in one location would
    /// then act on objects the other still uses.
    pub fn overlaps(&self, other: &Self) -> bool {
        let (a, b) = (self.segments(), other.segments());
        let common = a.len().min(b.len());
        self.bucket == other.bucket
            && self.endpoint_key() == other.endpoint_key()
            && a.get(..common) == b.get(..common)
    }

    /// The endpoint as compared for overlaps: lower case, no trailing `/`.
    /// No endpoint is AWS's default one; and since AWS bucket names are
    /// global, every AWS S3 endpoint (regional, dual-stack) reaches the same
    /// buckets, so they all compare equal to it.
    fn endpoint_key(&self) -> String {
        let url = self
            .endpoint_url
            .as_deref()
            .map(|u| u.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|u| !u.is_empty());
        match url {
            Some(url) if !is_aws_s3(&url) => url,
            _ => AWS_ENDPOINT.to_string(),
        }
    }

    /// The prefix as the S3 store uses it (trimmed of `/`), by segment.
    fn segments(&self) -> Vec<&str> {
        let prefix = self.prefix.trim_matches('/');
        if prefix.is_empty() {
            Vec::new()
        } else {
            prefix.split('/').collect()
        }
    }
}

/// What a location without `endpoint_url` talks to, for overlap checks.
const AWS_ENDPOINT: &str = "https://s3.amazonaws.com";

/// `https://s3.amazonaws.com`, `https://s3.eu-west-1.amazonaws.com`,
/// `https://s3.dualstack.eu-west-1.amazonaws.com`, … (`url` lower case).
/// Other partitions (`amazonaws.com.cn`) have buckets of their own.
fn is_aws_s3(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    host.ends_with(".amazonaws.com") && (host.starts_with("s3.") || host.starts_with("s3-"))
}

/// What one zone runs with, after top-level defaults are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneSettings {
    pub retry: RetryPolicy,
    pub breaker: BreakerConfig,
    pub rate_limit: Option<RateLimit>,
    pub hedge_after: Option<Duration>,
    pub fallback_on_not_found: bool,
}

impl ZoneSettings {
    /// What a single `s3://` store runs with: the same defaults as a zone
    /// that sets nothing.
    pub fn default_for_single() -> Self {
        Self {
            retry: RetryPolicy::default(),
            breaker: BreakerConfig::default(),
            rate_limit: None,
            hedge_after: None,
            fallback_on_not_found: false,
        }
    }
}

enum Format {
    Yaml,
    Toml,
}

impl ZonesFile {
    /// Reads, parses (`.yaml`/`.yml` or `.toml`) and validates a zones file.
    pub fn from_path(path: &Path) -> Result<Self> {
        let shown = path.display();
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Format::Yaml,
            Some("toml") => Format::Toml,
            _ => {
                return Err(Error::Invalid(format!(
                    "{shown}: zones file must end in .yaml, .yml or .toml"
                )));
            }
        };
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(&shown.to_string(), e))?;
        let parsed = match format {
            Format::Yaml => Self::from_yaml_str(&text),
            Format::Toml => Self::from_toml_str(&text),
        };
        parsed.map_err(|e| Error::Invalid(format!("{shown}: {e}")))
    }

    pub fn from_yaml_str(text: &str) -> Result<Self> {
        let file: Self = serde_norway::from_str(text)
            .map_err(|e| Error::Invalid(format!("zones file (YAML): {e}")))?;
        file.validate()?;
        Ok(file)
    }

    pub fn from_toml_str(text: &str) -> Result<Self> {
        let file: Self =
            toml::from_str(text).map_err(|e| Error::Invalid(format!("zones file (TOML): {e}")))?;
        file.validate()?;
        Ok(file)
    }

    /// The highest shard index, `2^n_bits - 1` (n_bits must be valid).
    pub fn max_shard(&self) -> u32 {
        (1u32 << self.n_bits.clamp(MIN_N_BITS, MAX_N_BITS)) - 1
    }

    pub fn settings(&self, zone: &ZoneSpec) -> ZoneSettings {
        ZoneSettings {
            retry: zone
                .retry
                .clone()
                .or_else(|| self.retry.clone())
                .unwrap_or_default(),
            breaker: zone
                .breaker
                .clone()
                .or_else(|| self.breaker.clone())
                .unwrap_or_default(),
            rate_limit: zone.rate_limit.clone().or_else(|| self.rate_limit.clone()),
            hedge_after: zone
                .hedge_after_ms
                .or(self.hedge_after_ms)
                .map(Duration::from_millis),
            fallback_on_not_found: zone
                .fallback_on_not_found
                .unwrap_or(self.fallback_on_not_found),
        }
    }

    fn n_bits_ok(&self) -> bool {
        (MIN_N_BITS..=MAX_N_BITS).contains(&self.n_bits)
    }

    /// Every problem in the file, each naming its zone, in one `Invalid`.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if !(MIN_N_BITS..=MAX_N_BITS).contains(&self.n_bits) {
            problems.push(format!(
                "n_bits {} is outside {MIN_N_BITS}..={MAX_N_BITS}",
                self.n_bits
            ));
        }
        if self.zones.is_empty() {
            problems.push("no zones".into());
        }
        let top = [
            self.retry.as_ref().map(RetryPolicy::validate),
            self.breaker.as_ref().map(BreakerConfig::validate),
            self.rate_limit.as_ref().map(RateLimit::validate),
        ];
        problems.extend(
            top.into_iter()
                .flatten()
                .filter_map(|r| r.err())
                .map(|e| format!("top level: {e}")),
        );
        if self.hedge_after_ms == Some(0) {
            problems.push(
                "top level: hedge_after_ms must be positive (omit it to disable hedging)".into(),
            );
        }
        let mut seen = HashSet::new();
        for zone in &self.zones {
            if !seen.insert(zone.name.as_str()) {
                problems.push(format!("zone {:?}: duplicate name", zone.name));
            }
            self.check_zone(zone, &mut problems);
        }
        if self.n_bits_ok() {
            self.check_layout(&mut problems);
        }
        self.check_locations(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "zones file: {}",
                problems.join("; ")
            )))
        }
    }

    fn check_zone(&self, zone: &ZoneSpec, problems: &mut Vec<String>) {
        let mut say = |what: String| problems.push(format!("zone {:?}: {what}", zone.name));
        if zone.name.trim().is_empty() {
            say("empty name".into());
        }
        if zone.range.start > zone.range.end {
            say(format!(
                "range start {} is after end {}",
                zone.range.start, zone.range.end
            ));
        }
        if self.n_bits_ok() && zone.range.end > self.max_shard() {
            say(format!(
                "range {} is outside 0..={} (n_bits {})",
                zone.range,
                self.max_shard(),
                self.n_bits
            ));
        }
        if zone.s3.bucket.trim().is_empty() {
            say("s3.bucket is empty".into());
        }
        for (i, r) in zone.replicas.iter().enumerate() {
            if r.bucket.trim().is_empty() {
                say(format!("replicas[{i}].bucket is empty"));
            }
            if *r == zone.s3 || zone.replicas[..i].contains(r) {
                say(format!("replicas[{i}] ({}) is listed twice", r.label()));
            }
        }
        let own = [
            zone.retry.as_ref().map(RetryPolicy::validate),
            zone.breaker.as_ref().map(BreakerConfig::validate),
            zone.rate_limit.as_ref().map(RateLimit::validate),
        ];
        for e in own.into_iter().flatten().filter_map(|r| r.err()) {
            say(e.to_string());
        }
        if zone.hedge_after_ms == Some(0) {
            say("hedge_after_ms must be positive (omit it to disable hedging)".into());
        }
    }

    /// No two locations (primaries and replicas, of any zones) may share
    /// objects: each zone cleans up its own big files, which would delete
    /// objects another zone (or copy) still references. Sorted by endpoint,
    /// bucket and prefix segments, every location a given one nests in (or
    /// equals) comes before it and forms a chain, so a stack of those finds
    /// every overlapping pair without comparing all pairs (a file may have
    /// one zone per shard, 65536 of them).
    fn check_locations(&self, problems: &mut Vec<String>) {
        struct Place<'a> {
            /// Position in the file, so messages name the later one first.
            order: usize,
            zone: &'a str,
            role: String,
            loc: &'a S3Location,
            key: (String, &'a str, Vec<&'a str>),
        }
        let mut places: Vec<Place<'_>> = Vec::new();
        for zone in &self.zones {
            let replicas = zone
                .replicas
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("replicas[{i}]"), r));
            for (role, loc) in std::iter::once(("s3".to_string(), &zone.s3)).chain(replicas) {
                // An empty bucket is reported on its own.
                if loc.bucket.trim().is_empty() {
                    continue;
                }
                places.push(Place {
                    order: places.len(),
                    zone: &zone.name,
                    role,
                    loc,
                    key: (loc.endpoint_key(), &loc.bucket, loc.segments()),
                });
            }
        }
        places.sort_by(|a, b| a.key.cmp(&b.key).then(a.order.cmp(&b.order)));
        let mut chain: Vec<&Place<'_>> = Vec::new();
        let mut found = Vec::new();
        for place in &places {
            while chain.last().is_some_and(|top| !top.loc.overlaps(place.loc)) {
                chain.pop();
            }
            for &other in &chain {
                // The same location twice in one zone is reported as listed twice.
                if other.zone == place.zone && other.loc == place.loc {
                    continue;
                }
                let (first, second) = if other.order < place.order {
                    (other, place)
                } else {
                    (place, other)
                };
                let whose = if first.zone == second.zone {
                    "its".to_string()
                } else {
                    format!("zone {:?}'s", first.zone)
                };
                found.push((
                    second.order,
                    first.order,
                    format!(
                        "zone {:?}: {} ({}) overlaps {whose} {} ({}): one bucket and \
                         prefix (or one inside the other), so clean-up in either would \
                         delete objects the other still uses",
                        second.zone,
                        second.role,
                        second.loc.label(),
                        first.role,
                        first.loc.label()
                    ),
                ));
            }
            chain.push(place);
        }
        found.sort();
        problems.extend(found.into_iter().map(|(_, _, msg)| msg));
    }

    /// Overlaps always, gaps unless `allow_gaps`; on the zones sorted by start.
    fn check_layout(&self, problems: &mut Vec<String>) {
        let mut sorted: Vec<&ZoneSpec> = self
            .zones
            .iter()
            .filter(|z| z.range.start <= z.range.end)
            .collect();
        sorted.sort_by_key(|z| (z.range.start, z.range.end));
        // The zone reaching furthest so far, and the first index after it.
        let mut reach: Option<(&ZoneSpec, u32)> = None;
        for zone in sorted {
            let next = reach.map_or(0, |(_, n)| n);
            match reach {
                Some((prev, _)) if zone.range.start < next => problems.push(format!(
                    "zone {:?}: range {} overlaps zone {:?} ({})",
                    zone.name, zone.range, prev.name, prev.range
                )),
                _ if zone.range.start > next && !self.allow_gaps => {
                    let after =
                        reach.map_or(String::new(), |(p, _)| format!(" after zone {:?}", p.name));
                    problems.push(format!(
                        "shards {next}..={} are in no zone (gap before zone {:?}{after})",
                        zone.range.start - 1,
                        zone.name
                    ));
                }
                _ => {}
            }
            if reach.is_none_or(|(_, n)| zone.range.end >= n) {
                reach = Some((zone, zone.range.end.saturating_add(1)));
            }
        }
        let max = self.max_shard();
        if let Some((last, next)) = reach
            && next <= max
            && !self.allow_gaps
        {
            problems.push(format!(
                "shards {next}..={max} are in no zone (gap after zone {:?})",
                last.name
            ));
        }
    }
}
