//! Zones as a [`Placement`], and opening stores from the command line's
//! `--store`/`--zones` options with the production (S3) backend: the one
//! way every tool opens its store.

use std::path::Path;
use std::sync::Arc;

use super::build::location_stack;
use super::file::{S3Location, ZoneSettings, ZonesFile};
use super::{ZoneCounters, Zones};
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

/// The production backend for a zone location.
pub fn s3_factory(loc: &S3Location) -> Result<Arc<dyn ObjectStore>> {
    Ok(Arc::new(S3Store::new(S3Config::from_location(loc)?)?))
}

/// Reads, validates and builds a zones file over S3.
pub fn open_zones_file(path: &Path) -> Result<Zones> {
    let file = ZonesFile::from_path(path)?;
    Zones::build(&file, s3_factory)
}

/// A store opened for a tool: the placement every request goes through
/// (retries and a breaker for each S3 location), and the bare S3 stores
/// behind it, for the S3-only housekeeping that must not be retried or
/// counted as traffic (probing conditional writes, aborting stale uploads).
#[derive(Debug, Clone)]
pub struct Opened {
    pub placement: Arc<dyn Placement>,
    /// Every S3 location (zone primaries and replicas); clones of the
    /// stores inside `placement`, sharing their clients and probed answers.
    pub s3: Vec<S3Store>,
}

/// Where a tool's shards live: `--store LOCATION` (a directory, `file://`
/// or `s3://` URL) or `--zones FILE`, exactly one of them. Every tool opens
/// its store here, so every tool gets the same resilience.
pub fn open(store: Option<&str>, zones: Option<&Path>) -> Result<Opened> {
    let s3 = std::cell::RefCell::new(Vec::new());
    let placement = open_placement_with(store, zones, |loc| {
        let store = S3Store::new(S3Config::from_location(loc)?)?;
        s3.borrow_mut().push(store.clone());
        Ok(Arc::new(store) as Arc<dyn ObjectStore>)
    })?;
    Ok(Opened {
        placement,
        s3: s3.into_inner(),
    })
}

/// [`open`], for callers that need no bare S3 store.
pub fn open_placement(store: Option<&str>, zones: Option<&Path>) -> Result<Arc<dyn Placement>> {
    open_placement_with(store, zones, s3_factory)
}

/// The stack of a single S3 location (`s3://bucket/prefix`, region and
/// endpoint from the environment) over `backend`: retries and a breaker.
pub(crate) fn single_s3_stack(
    location: &str,
    backend: Arc<dyn ObjectStore>,
) -> Result<Arc<dyn ObjectStore>> {
    let settings = ZoneSettings::default_for_single();
    let stack = location_stack(
        "default",
        location,
        backend,
        &settings,
        &ZoneCounters::default(),
    )?;
    Ok(stack.store)
}

fn open_placement_with(
    store: Option<&str>,
    zones: Option<&Path>,
    factory: impl Fn(&S3Location) -> Result<Arc<dyn ObjectStore>>,
) -> Result<Arc<dyn Placement>> {
    match (store, zones) {
        (Some(_), Some(_)) => Err(Error::Invalid(
            "give either a store location or a zones file, not both".into(),
        )),
        (None, None) => Err(Error::Invalid(
            "no store: give a store location or a zones file".into(),
        )),
        (None, Some(path)) => Ok(Arc::new(Zones::build(
            &ZonesFile::from_path(path)?,
            factory,
        )?)),
        (Some(location), None) => {
            if !location.starts_with("s3://") {
                return Ok(Arc::new(Single(crate::open_location(location)?)));
            }
            let cfg = S3Config::from_url(location)?;
            let backend = factory(&S3Location {
                bucket: cfg.bucket,
                prefix: cfg.prefix,
                region_name: None,
                endpoint_url: None,
            })?;
            Ok(Arc::new(Single(single_s3_stack(location, backend)?)))
        }
    }
}
