//! Zones: shard indexes split into contiguous ranges, each range stored in
//! its own S3 location (and its replicas), each behind its own resilience
//! stack. [`ZonesFile`] is the configuration, [`Zones`] the built routing
//! table.

mod build;
mod file;
mod placement;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

pub use file::{MAX_N_BITS, MIN_N_BITS, S3Location, ShardRange, ZoneSettings, ZoneSpec, ZonesFile};
pub use placement::{Opened, open};
pub(crate) use placement::{s3_store, single};

use crate::object::ObjectStore;
use crate::resilience::CircuitBreaker;

/// One built zone.
#[derive(Debug)]
pub struct Zone {
    pub name: String,
    pub range: ShardRange,
    /// The whole stack: replicated over one resilient stack per location.
    pub store: Arc<dyn ObjectStore>,
    /// Each location's breaker (primary first), labelled as
    /// [`S3Location::label`], for `des_storage_breaker_state{zone,location}`.
    pub breakers: Vec<(String, Arc<CircuitBreaker>)>,
    pub counters: ZoneCounters,
}

/// Running totals for metrics, shared by every location of a zone.
#[derive(Debug, Default, Clone)]
pub struct ZoneCounters {
    /// Retries (`des_storage_retries_total{zone}`).
    pub retries: Arc<AtomicU64>,
    /// Reads served after moving past the primary
    /// (`des_storage_failovers_total{zone}`).
    pub failovers: Arc<AtomicU64>,
    /// Hedged (second) read requests (`des_storage_hedges_total{zone,outcome}`).
    pub hedges: Arc<AtomicU64>,
    /// Of those, the ones whose second request gave the answer, and the
    /// ones whose first did.
    pub hedges_won: Arc<AtomicU64>,
    pub hedges_lost: Arc<AtomicU64>,
}

/// Zones sorted by range, for routing by shard index.
#[derive(Debug)]
pub struct Zones {
    n_bits: u8,
    zones: Vec<Zone>,
}

impl Zones {
    pub fn n_bits(&self) -> u8 {
        self.n_bits
    }

    /// The zone holding `shard_index`; `None` in a gap (`allow_gaps`) or
    /// beyond the last index.
    pub fn for_shard(&self, shard_index: u32) -> Option<&Zone> {
        let after = self.zones.partition_point(|z| z.range.start <= shard_index);
        let zone = self.zones.get(after.checked_sub(1)?)?;
        zone.range.contains(shard_index).then_some(zone)
    }

    pub fn get(&self, name: &str) -> Option<&Zone> {
        self.zones.iter().find(|z| z.name == name)
    }

    /// In shard-range order.
    pub fn iter(&self) -> std::slice::Iter<'_, Zone> {
        self.zones.iter()
    }

    pub fn len(&self) -> usize {
        self.zones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }
}

impl<'a> IntoIterator for &'a Zones {
    type Item = &'a Zone;
    type IntoIter = std::slice::Iter<'a, Zone>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}
