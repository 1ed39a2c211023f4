//! Opening a store from the command line's `--store LOCATION` / `--zones FILE`.

use des_storage::cli::StoreArgs;
use des_storage::{DesStore, ObjectStore};

use crate::error::{RepackError, Result};

/// An existing v3 store, single or zoned. With `probe`, every S3 location
/// is first asked whether it enforces conditional writes (a throw-away
/// `_des/.probe-*` object, unless `DES_S3_CONDITIONAL_PUT` says so): the
/// repacker publishes and takes its lease differently where it does not,
/// and an unprobed location counts as "does not".
pub async fn open_store(args: &StoreArgs, probe: bool) -> Result<DesStore> {
    let opened = args.open()?;
    if probe {
        for s in opened
            .s3
            .iter()
            .filter(|s| s.config().conditional_put.is_none())
        {
            s.probe_conditional_put().await.map_err(|e| {
                RepackError::Invalid(format!(
                    "probing conditional writes on {}: {e}",
                    s.describe()
                ))
            })?;
        }
    }
    Ok(DesStore::open_placed(opened.placement).await?)
}
