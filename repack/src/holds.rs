//! Legal holds: placing and releasing them. The model and the loader are
//! `des_storage::holds` (readers need them too) and are re-exported here, so
//! `des_repack::holds::{Hold, HoldSet}` keep working.
//!
//! A hold is one object per name under `_legal_holds/`, in every store of
//! the placement: created once, released by deleting, never rewritten.

use bytes::Bytes;
use des_storage::{DesStore, ErrorKind, ObjectStore, PutMode, PutOptions};

use crate::error::{RepackError, Result};

pub use des_storage::holds::{HOLDS_PREFIX, Hold, HoldSet, key_of};

/// Places a hold in every store; an existing hold of that name is an error.
pub async fn place(store: &DesStore, hold: &Hold) -> Result<()> {
    hold.validate()?;
    let body = Bytes::from(
        serde_json::to_vec_pretty(hold).map_err(|e| RepackError::Invalid(e.to_string()))?,
    );
    for objects in store.placement().stores() {
        let put = PutOptions {
            mode: PutMode::Create,
        };
        match objects.put(&hold.key(), body.clone(), put).await {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::PreconditionFailed => {
                return Err(RepackError::Invalid(format!(
                    "a hold named {:?} exists already",
                    hold.name
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Releases a hold (from every store); `false` if there was none.
pub async fn release(store: &DesStore, name: &str) -> Result<bool> {
    let key = key_of(name);
    let mut found = false;
    for objects in store.placement().stores() {
        found |= exists(objects.as_ref(), &key).await?;
        objects.delete(&key).await?;
    }
    Ok(found)
}

async fn exists(objects: &dyn ObjectStore, key: &str) -> Result<bool> {
    match objects.head(key).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn place_list_release() {
        let mem = des_storage::MemoryStore::new();
        let (store, _) = DesStore::open_or_create(Arc::new(mem), Default::default())
            .await
            .unwrap();
        let h = Hold::new("case-1", "", "legal");
        place(&store, &h).await.unwrap();
        assert!(place(&store, &h).await.is_err(), "names are unique");
        let set = HoldSet::load(&store).await.unwrap();
        assert_eq!(set.holds(), std::slice::from_ref(&h));
        assert!(set.holding("anything", 20240101).is_some());
        assert!(release(&store, "case-1").await.unwrap());
        assert!(!release(&store, "case-1").await.unwrap());
        assert!(HoldSet::load(&store).await.unwrap().is_empty());
        let mut bad = Hold::new("../x", "", "legal");
        assert!(place(&store, &bad).await.is_err());
        bad.name = "ok".into();
        bad.created_by = String::new();
        assert!(place(&store, &bad).await.is_err());
    }
}
