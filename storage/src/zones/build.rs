//! Building [`Zones`] from a validated [`ZonesFile`]: per location the
//! resilience stack (see [`crate::resilience`] for the order and why), then
//! a [`ReplicatedStore`] over a zone's locations.

use std::sync::Arc;

use super::file::{S3Location, ZoneSettings, ZoneSpec, ZonesFile};
use super::{Zone, ZoneCounters, Zones};
use crate::cli::Connection;
use crate::error::{Error, Result};
use crate::object::ObjectStore;
use crate::resilience::{
    BreakerStore, CircuitBreaker, HedgedStore, RateLimitedStore, RateLimiter, ReplicatedStore,
    RetryStore,
};

impl Zones {
    /// Validates `file` and builds every zone. `factory` turns a location
    /// into its backend (the S3 client in production; memory or scripted
    /// stores in tests), so zones do not depend on any one backend.
    pub fn build(
        file: &ZonesFile,
        factory: impl Fn(&S3Location) -> Result<Arc<dyn ObjectStore>>,
    ) -> Result<Self> {
        Self::build_with(file, &Connection::default(), factory)
    }

    /// [`Zones::build`], with `connection`'s settings over the file's.
    pub fn build_with(
        file: &ZonesFile,
        connection: &Connection,
        factory: impl Fn(&S3Location) -> Result<Arc<dyn ObjectStore>>,
    ) -> Result<Self> {
        file.validate()?;
        let n_bits = u8::try_from(file.n_bits)
            .map_err(|_| Error::Invalid(format!("n_bits {} out of range", file.n_bits)))?;
        let mut zones = file
            .zones
            .iter()
            .map(|spec| {
                let mut settings = file.settings(spec);
                connection.tune(&mut settings)?;
                build_zone(spec, &settings, &factory)
            })
            .collect::<Result<Vec<_>>>()?;
        zones.sort_by_key(|z| z.range.start);
        Ok(Self { n_bits, zones })
    }
}

fn build_zone(
    spec: &ZoneSpec,
    settings: &ZoneSettings,
    factory: &impl Fn(&S3Location) -> Result<Arc<dyn ObjectStore>>,
) -> Result<Zone> {
    let counters = ZoneCounters::default();
    let mut stores = Vec::with_capacity(1 + spec.replicas.len());
    let mut breakers = Vec::new();
    for location in std::iter::once(&spec.s3).chain(&spec.replicas) {
        let label = location.label();
        let backend = factory(location).map_err(|e| {
            Error::Invalid(format!("zone {:?}: cannot open {label}: {e}", spec.name))
        })?;
        let stack = location_stack(&spec.name, &label, backend, settings, &counters)?;
        stores.push(stack.store);
        breakers.extend(stack.breaker.map(|b| (label, b)));
    }
    let store: Arc<dyn ObjectStore> = if stores.len() == 1 {
        stores.swap_remove(0)
    } else {
        Arc::new(
            ReplicatedStore::new(stores)?
                .fallback_on_not_found(settings.fallback_on_not_found)
                .with_counter(Arc::clone(&counters.failovers)),
        )
    };
    Ok(Zone {
        name: spec.name.clone(),
        range: spec.range,
        store,
        breakers,
        counters,
    })
}

/// One location's wrapped store and its breaker (if enabled).
pub(super) struct LocationStack {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) breaker: Option<Arc<CircuitBreaker>>,
}

/// backend → rate limit → retry → breaker → hedge, each only if configured
/// (retry always: `max_attempts: 1` turns it off).
pub(super) fn location_stack(
    zone: &str,
    label: &str,
    backend: Arc<dyn ObjectStore>,
    settings: &ZoneSettings,
    counters: &ZoneCounters,
) -> Result<LocationStack> {
    let name = format!("zone {zone} {label}");
    let mut store = backend;
    if let Some(limit) = &settings.rate_limit {
        let limiter = Arc::new(RateLimiter::new(name.clone(), limit)?);
        store = Arc::new(RateLimitedStore::new(store, limiter));
    }
    store = Arc::new(
        RetryStore::new(store, settings.retry.clone()).with_counter(Arc::clone(&counters.retries)),
    );
    let mut breaker = None;
    if settings.breaker.enabled {
        let b = Arc::new(CircuitBreaker::new(name, settings.breaker.clone()));
        store = Arc::new(BreakerStore::new(store, Arc::clone(&b)));
        breaker = Some(b);
    }
    if settings.hedge_after.is_some() {
        store = Arc::new(
            HedgedStore::new(store, settings.hedge_after)
                .with_counter(Arc::clone(&counters.hedges))
                .with_outcome_counters(
                    Arc::clone(&counters.hedges_won),
                    Arc::clone(&counters.hedges_lost),
                ),
        );
    }
    Ok(LocationStack { store, breaker })
}
