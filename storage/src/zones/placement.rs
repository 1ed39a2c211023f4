//! Zones as a [`Placement`], and opening stores from the command line's
//! `--store`/`--zones` options with the production (S3) backend: the one
//! way every tool opens its store.

use std::path::Path;
use std::sync::Arc;

use super::build::location_stack;
use super::file::{S3Location, ZoneSettings, ZonesFile};
use super::{ZoneCounters, Zones};
use crate::cli::Connection;
use crate::error::{Error, Result};
use crate::object::ObjectStore;
use crate::s3::{S3Config, S3Store};
use crate::store::{Placement, Single};

impl Placement for Zones {
    fn for_shard(&self, shard_index: u32) -> Result<Arc<dyn ObjectStore>> {
        // A gap (allow_gaps) holds nothing by configuration, so it reads as
        // "not found" rather than as a broken store.
        self.for_shard(shard_index)
            .map(|z| Arc::clone(&z.store))
            .ok_or_else(|| Error::not_found(format!("shard index {shard_index} (in no zone)")))
    }

    fn stores(&self) -> Vec<Arc<dyn ObjectStore>> {
        self.iter().map(|z| Arc::clone(&z.store)).collect()
    }

    fn describe(&self) -> String {
        let zones: Vec<String> = self
            .iter()
            .map(|z| format!("{}[{}-{}]", z.name, z.range.start, z.range.end))
            .collect();
        format!("zones {}", zones.join(","))
    }

    fn n_bits(&self) -> Option<u8> {
        Some(Zones::n_bits(self))
    }
}

impl S3Config {
    /// The client settings for one zone location: the location's own bucket,
    /// prefix, region and endpoint, and the same `DES_S3_*` environment
    /// overrides as `s3://` URLs.
    pub fn from_location(loc: &S3Location) -> Result<Self> {
        let mut cfg = Self::from_url(&format!("s3://{}", loc.bucket))?.with_prefix(&loc.prefix);
        cfg.region.clone_from(&loc.region_name);
        if let Some(endpoint) = &loc.endpoint_url {
            cfg.endpoint = Some(endpoint.clone());
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// A store opened for a tool: the placement every request goes through
/// (retries and a breaker for each S3 location), the zones behind it (for
/// their breakers and counters), and the bare S3 stores, for the S3-only
/// housekeeping that must not be retried or counted as traffic (probing
/// conditional writes, aborting stale uploads).
#[derive(Debug, Clone)]
pub struct Opened {
    pub placement: Arc<dyn Placement>,
    /// `Some` when the store is a zones file.
    pub zones: Option<Arc<Zones>>,
    /// Every S3 location (zone primaries and replicas); clones of the
    /// stores inside `placement`, sharing their clients and probed answers.
    pub s3: Vec<S3Store>,
}

/// Where a tool's shards live: `store` (a directory, `file://` or `s3://`
/// URL) or a `zones` file, exactly one of them, reached with `connection`'s
/// settings. Every tool opens its store here (most through
/// [`crate::cli::StoreArgs`]), so every tool gets the same resilience.
pub fn open(store: Option<&str>, zones: Option<&Path>, connection: &Connection) -> Result<Opened> {
    let s3 = std::cell::RefCell::new(Vec::new());
    let factory = |loc: &S3Location| {
        let store = s3_store(loc, connection)?;
        s3.borrow_mut().push(store.clone());
        Ok(Arc::new(store) as Arc<dyn ObjectStore>)
    };
    let (placement, zones): (Arc<dyn Placement>, _) = match (store, zones) {
        (Some(_), Some(_)) => {
            return Err(Error::Invalid(
                "give either a store location or a zones file, not both".into(),
            ));
        }
        (None, None) => {
            return Err(Error::Invalid(
                "no store: give a store location or a zones file".into(),
            ));
        }
        (None, Some(path)) => {
            let zones = Arc::new(Zones::build_with(
                &ZonesFile::from_path(path)?,
                connection,
                factory,
            )?);
            (zones.clone(), Some(zones))
        }
        (Some(location), None) => (
            Arc::new(Single(single(location, connection, factory)?)),
            None,
        ),
    };
    Ok(Opened {
        placement,
        zones,
        s3: s3.into_inner(),
    })
}

/// One location: a local directory as it is; an `s3://bucket/prefix` URL's
/// `factory` store with retries and a breaker, as a zone that sets nothing,
/// tuned by `connection`.
pub(crate) fn single(
    location: &str,
    connection: &Connection,
    factory: impl Fn(&S3Location) -> Result<Arc<dyn ObjectStore>>,
) -> Result<Arc<dyn ObjectStore>> {
    if !location.starts_with("s3://") {
        return crate::open_location_raw(location);
    }
    let cfg = S3Config::from_url(location)?;
    let backend = factory(&S3Location {
        bucket: cfg.bucket,
        prefix: cfg.prefix,
        region_name: None,
        endpoint_url: None,
    })?;
    let mut settings = ZoneSettings::default_for_single();
    connection.tune(&mut settings)?;
    let stack = location_stack(
        "default",
        location,
        backend,
        &settings,
        &ZoneCounters::default(),
    )?;
    Ok(stack.store)
}

/// The production backend for a location, `connection` filling in what
/// the location does not name.
pub(crate) fn s3_store(loc: &S3Location, connection: &Connection) -> Result<S3Store> {
    S3Store::new(S3Config::from_location(&connection.fill(loc.clone()))?)
}
