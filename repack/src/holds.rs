//! Legal holds: files that must be kept whatever deletes them. A hold names
//! a uid prefix (empty: every uid) and optionally a range of dates. Retention
//! creates no tombstone for a held file, and the repacker never removes a
//! held file's bytes (its tombstones stay pending, reported as held, until
//! the hold is released).
//!
//! Stored in the store itself, one object per hold under `_legal_holds/`
//! (in every store of the placement), so every tool honours them without
//! extra configuration. Created once, released by deleting: no object is
//! ever rewritten.

use std::collections::BTreeMap;

use bytes::Bytes;
use des_format::Timestamp;
use des_storage::tombstones::parse_date;
use des_storage::{
    ByteRange, DesStore, ErrorKind, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
};
use serde::{Deserialize, Serialize};

use crate::error::{RepackError, Result};

pub use des_storage::keys::HOLDS_PREFIX;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    /// Unique name, e.g. the legal case: `[A-Za-z0-9._-]{1,100}`.
    pub name: String,
    /// Files whose uid starts with this are held; `""` holds every uid.
    pub uid_prefix: String,
    /// First held date (`YYYYMMDD`), inclusive; `None`: no lower bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_from: Option<String>,
    /// Last held date, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_to: Option<String>,
    pub created_by: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_id: Option<String>,
}

impl Hold {
    pub fn validate(&self) -> Result<()> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 100
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            && !self.name.starts_with('.');
        if !name_ok {
            return Err(RepackError::Invalid(format!(
                "hold name {:?}: use 1-100 of A-Z a-z 0-9 . _ -",
                self.name
            )));
        }
        for d in [&self.date_from, &self.date_to].into_iter().flatten() {
            parse_date(d)?;
        }
        if self.created_by.trim().is_empty() {
            return Err(RepackError::Invalid("a hold needs created_by".into()));
        }
        Ok(())
    }

    pub fn covers(&self, uid: &str, date: u32) -> bool {
        let num = |d: &Option<String>| d.as_deref().and_then(|s| s.parse::<u32>().ok());
        uid.starts_with(&self.uid_prefix)
            && num(&self.date_from).is_none_or(|f| date >= f)
            && num(&self.date_to).is_none_or(|t| date <= t)
    }

    fn key(&self) -> String {
        key_of(&self.name)
    }

    pub fn new(name: &str, uid_prefix: &str, created_by: &str) -> Self {
        Self {
            name: name.to_string(),
            uid_prefix: uid_prefix.to_string(),
            date_from: None,
            date_to: None,
            created_by: created_by.to_string(),
            created_at: Timestamp::now().to_rfc3339(),
            ticket_id: None,
        }
    }
}

/// Every hold of a store.
#[derive(Debug, Clone, Default)]
pub struct HoldSet {
    holds: Vec<Hold>,
}

impl HoldSet {
    pub fn new(holds: Vec<Hold>) -> Self {
        Self { holds }
    }

    /// Reads the holds of every store of the placement (union by name).
    pub async fn load(store: &DesStore) -> Result<Self> {
        let mut by_name = BTreeMap::new();
        for objects in store.placement().stores() {
            for meta in objects.list_all(HOLDS_PREFIX).await? {
                let body = match objects.get_range(&meta.key, ByteRange::All).await {
                    Ok((_, b)) => b,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                let hold: Hold = serde_json::from_slice(&body).map_err(|e| {
                    RepackError::Invalid(format!(
                        "{} in {} is not a hold: {e}",
                        meta.key,
                        objects.describe()
                    ))
                })?;
                by_name.insert(hold.name.clone(), hold);
            }
        }
        Ok(Self {
            holds: by_name.into_values().collect(),
        })
    }

    /// The first hold covering the file, if any.
    pub fn holding(&self, uid: &str, date: u32) -> Option<&Hold> {
        self.holds.iter().find(|h| h.covers(uid, date))
    }

    pub fn holds(&self) -> &[Hold] {
        &self.holds
    }

    pub fn is_empty(&self) -> bool {
        self.holds.is_empty()
    }
}

fn key_of(name: &str) -> String {
    des_storage::keys::StoreKey::Hold {
        name: name.to_string(),
    }
    .to_string()
}

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

    #[test]
    fn coverage_by_prefix_and_dates() {
        let mut h = Hold::new("case-1", "cust42/", "legal");
        assert!(h.covers("cust42/a", 20240101));
        assert!(!h.covers("cust43/a", 20240101));
        h.date_from = Some("20240101".into());
        h.date_to = Some("20240131".into());
        assert!(h.covers("cust42/a", 20240131));
        assert!(!h.covers("cust42/a", 20240201));
        assert!(!h.covers("cust42/a", 20231231));
        h.validate().unwrap();
        h.name = "../x".into();
        assert!(h.validate().is_err());
    }

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
    }
}
