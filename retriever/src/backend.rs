//! Where the shards are (one store or zones), what each store is called in
//! metrics, and a wrapper that counts the reads sent to each store.

use std::sync::Arc;

use async_trait::async_trait;
use des_storage::cli::Connection;
use des_storage::store::{Placement, SHARD_EXT, Single};
use des_storage::zones::{Zones, open};
use des_storage::{ByteRange, GetOptions, GetResult, ObjectStore, Result};
use prometheus::IntCounter;

use crate::config::Source;
use crate::metrics::Metrics;

const STORE_META_PREFIX: &str = "_des/";

/// The opened storage: the placement reads go through, and the names (and,
/// for zones, breakers and counters) metrics and `/ready` report.
#[derive(Debug, Clone)]
pub struct Storage {
    pub placement: Arc<dyn Placement>,
    pub backends: Backends,
}

#[derive(Debug, Clone)]
pub enum Backends {
    /// One store, named by its kind (`local`, `s3`).
    Single(String),
    Zones(Arc<Zones>),
}

impl Backends {
    /// The metrics label of the store holding `shard_index`.
    pub fn label_for_shard(&self, shard_index: u32) -> &str {
        match self {
            Self::Single(label) => label,
            Self::Zones(z) => z.for_shard(shard_index).map_or("none", |z| z.name.as_str()),
        }
    }

    /// Labels in the order of `Placement::stores()`.
    fn labels(&self) -> Vec<String> {
        match self {
            Self::Single(label) => vec![label.clone()],
            Self::Zones(z) => z.iter().map(|z| z.name.clone()).collect(),
        }
    }

    pub fn zones(&self) -> Option<&Zones> {
        match self {
            Self::Single(_) => None,
            Self::Zones(z) => Some(z),
        }
    }
}

impl Storage {
    /// A single store, as tests build it (any backend, any wrapper).
    pub fn single(objects: Arc<dyn ObjectStore>, label: &str) -> Self {
        Self {
            placement: Arc::new(Single(objects)),
            backends: Backends::Single(label.into()),
        }
    }

    pub fn zones(zones: Arc<Zones>) -> Self {
        Self {
            placement: zones.clone(),
            backends: Backends::Zones(zones),
        }
    }

    /// Opens the configured source. S3 locations (`s3://` or zones) get the
    /// storage crate's retry and circuit-breaker stack.
    pub fn open(source: &Source, connection: &Connection) -> Result<Self> {
        let opened = match source {
            Source::Zones(path) => open(None, Some(path), connection)?,
            Source::Location(location) => open(Some(location), None, connection)?,
        };
        Ok(match (opened.zones, source) {
            (Some(zones), _) => Self::zones(zones),
            (None, Source::Location(l)) if l.starts_with("s3://") => Self {
                placement: opened.placement,
                backends: Backends::Single("s3".into()),
            },
            (None, _) => Self {
                placement: opened.placement,
                backends: Backends::Single("local".into()),
            },
        })
    }

    /// The same placement with every store's reads counted in `metrics`.
    pub fn metered(&self, metrics: &Metrics) -> Arc<dyn Placement> {
        let stores = self.placement.stores();
        let wrapped = stores
            .iter()
            .zip(self.backends.labels())
            .map(|(inner, label)| {
                let metered: Arc<dyn ObjectStore> =
                    Arc::new(MeteredStore::new(Arc::clone(inner), &label, metrics));
                (Arc::clone(inner), metered)
            })
            .collect();
        Arc::new(MeteredPlacement {
            inner: Arc::clone(&self.placement),
            wrapped,
        })
    }
}

/// A placement whose stores are [`MeteredStore`]s; routing stays the inner one's.
#[derive(Debug)]
struct MeteredPlacement {
    inner: Arc<dyn Placement>,
    /// (inner store, its metered wrapper), in `stores()` order.
    wrapped: Vec<(Arc<dyn ObjectStore>, Arc<dyn ObjectStore>)>,
}

impl Placement for MeteredPlacement {
    fn for_shard(&self, shard_index: u32) -> Result<Arc<dyn ObjectStore>> {
        let inner = self.inner.for_shard(shard_index)?;
        // Few stores (one per zone): a scan beats a map.
        Ok(self
            .wrapped
            .iter()
            .find(|(i, _)| Arc::ptr_eq(i, &inner))
            .map_or(inner, |(_, m)| Arc::clone(m)))
    }

    fn stores(&self) -> Vec<Arc<dyn ObjectStore>> {
        self.wrapped.iter().map(|(_, m)| Arc::clone(m)).collect()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn n_bits(&self) -> Option<u8> {
        self.inner.n_bits()
    }
}

/// Counts `get`s by what they fetch: a suffix is an index read, a range of a
/// shard a payload read, anything else (an external object) a big-file read.
/// An index too large for the suffix needs a second, ranged read; it is
/// counted as a payload read, which is rare enough not to mislead.
#[derive(Debug)]
struct MeteredStore {
    inner: Arc<dyn ObjectStore>,
    /// (calls, bytes) per kind of read.
    index: (IntCounter, IntCounter),
    payload: (IntCounter, IntCounter),
    big: (IntCounter, IntCounter),
}

impl MeteredStore {
    fn new(inner: Arc<dyn ObjectStore>, label: &str, metrics: &Metrics) -> Self {
        let c = |kind: &str| {
            (
                metrics.range_calls.with_label_values(&[label, kind]),
                metrics.read_bytes.with_label_values(&[label, kind]),
            )
        };
        Self {
            inner,
            index: c("index"),
            payload: c("payload"),
            big: c("big"),
        }
    }
}

#[async_trait]
impl ObjectStore for MeteredStore {
    des_storage::forward_methods!(inner =>
        describe, capabilities, head, put, put_writer, delete, list, sweep_leftovers);

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        let counters = match opts.range {
            // Store settings (`_des/…`), read once at start: none of the three.
            _ if key.starts_with(STORE_META_PREFIX) => None,
            Some(ByteRange::Suffix(_)) => Some(&self.index),
            _ if key.ends_with(SHARD_EXT) => Some(&self.payload),
            _ => Some(&self.big),
        };
        if let Some((calls, _)) = counters {
            calls.inc();
        }
        let got = self.inner.get(key, opts).await?;
        // The range the store answered with: what the body will carry.
        if let Some((_, bytes)) = counters {
            bytes.inc_by(got.range.end.saturating_sub(got.range.start));
        }
        Ok(got)
    }
}
