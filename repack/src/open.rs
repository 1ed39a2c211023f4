//! Opening a store from the command line's `--store LOCATION` / `--zones FILE`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use des_storage::s3::{S3Config, S3Store};
use des_storage::zones::open_placement_with;
use des_storage::{DesStore, ObjectStore};

use crate::error::{RepackError, Result};

/// An existing v3 store, single or zoned. With `probe`, every S3 location
/// is first asked whether it enforces conditional writes (a throw-away
/// `_des/.probe-*` object, unless `DES_S3_CONDITIONAL_PUT` says so): the
/// repacker publishes and takes its lease differently where it does not,
/// and an unprobed location counts as "does not".
pub async fn open_store(
    store: Option<&str>,
    zones: Option<&Path>,
    probe: bool,
) -> Result<DesStore> {
    let s3 = Mutex::new(Vec::new());
    let placement = open_placement_with(store, zones, |loc| {
        let store = S3Store::new(S3Config::from_location(loc)?)?;
        // A clone shares the client and the probed answer.
        s3.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(store.clone());
        Ok(Arc::new(store) as Arc<dyn ObjectStore>)
    })?;
    if probe {
        let s3 = s3.into_inner().unwrap_or_else(|p| p.into_inner());
        for s in s3.iter().filter(|s| s.config().conditional_put.is_none()) {
            s.probe_conditional_put().await.map_err(|e| {
                RepackError::Invalid(format!(
                    "probing conditional writes on {}: {e}",
                    s.describe()
                ))
            })?;
        }
    }
    Ok(DesStore::open_placed(placement).await?)
}
