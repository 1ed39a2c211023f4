//! Which object store holds which shard: one store, or zones split by shard
//! index (each zone possibly replicated). Big files live beside the shard
//! that references them, so a zone is self-contained.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::object::ObjectStore;

pub trait Placement: Send + Sync + fmt::Debug {
    /// The store holding shard `shard_index` and its big files.
    fn for_shard(&self, shard_index: u32) -> Result<Arc<dyn ObjectStore>>;
    /// Every distinct store, in a stable order (first = where store settings are read).
    fn stores(&self) -> Vec<Arc<dyn ObjectStore>>;
    fn describe(&self) -> String;
    /// Shard bits fixed by the placement itself (a zones file), if any.
    fn n_bits(&self) -> Option<u8> {
        None
    }
}

/// Everything in one object store.
#[derive(Debug, Clone)]
pub struct Single(pub Arc<dyn ObjectStore>);

impl Placement for Single {
    fn for_shard(&self, _: u32) -> Result<Arc<dyn ObjectStore>> {
        Ok(Arc::clone(&self.0))
    }
    fn stores(&self) -> Vec<Arc<dyn ObjectStore>> {
        vec![Arc::clone(&self.0)]
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
}

/// Shard index encoded in a shard key: `<date>/<HEX>.des` (v3) or
/// `<date>_<HEX>_<NNNN>.des` (legacy).
pub fn shard_index_of_key(key: &str) -> Result<u32> {
    let bad = || Error::Invalid(format!("{key:?} is not a shard key"));
    let name = key.strip_suffix(super::SHARD_EXT).ok_or_else(bad)?;
    let hex = match name.split_once('/') {
        Some((_, hex)) => hex,
        None => name.split('_').nth(1).ok_or_else(bad)?,
    };
    if hex.is_empty() || hex.len() > 4 {
        return Err(bad());
    }
    u32::from_str_radix(hex, 16).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(shard_index_of_key("20240517/5C.des").unwrap(), 0x5C);
        assert_eq!(
            shard_index_of_key("20240517_BB5C_0003.des").unwrap(),
            0xBB5C
        );
        assert!(shard_index_of_key("_big/abc").is_err());
        assert!(shard_index_of_key("20240517/.des").is_err());
        assert!(shard_index_of_key("20240517/XYZ.des").is_err());
    }
}
