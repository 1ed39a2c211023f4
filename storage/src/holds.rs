//! Legal holds: files that must be kept whatever deletes them. A hold names
//! a uid prefix (empty: every uid) and optionally a range of dates. Nothing
//! removes a held file's bytes: the repacker keeps them (its tombstones stay
//! pending, reported as held, until the hold is released), and a retention
//! rule never expires it (readers keep serving it).
//!
//! Stored in the store itself, one object per hold under `_legal_holds/`
//! (in every store of the placement), so every tool honours them without
//! extra configuration. Created once, released by deleting: no object is
//! ever rewritten. Placing and releasing live with the tools that do it
//! (`des_repack::holds`); the model and the loader are here because readers
//! (the retriever, for retention) need them as much as writers.

use std::collections::BTreeMap;

use des_format::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::object::{ByteRange, ObjectStoreExt};
use crate::store::DesStore;
use crate::tombstones::parse_date;

pub use crate::keys::HOLDS_PREFIX;

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
            return Err(Error::Invalid(format!(
                "hold name {:?}: use 1-100 of A-Z a-z 0-9 . _ -",
                self.name
            )));
        }
        for d in [&self.date_from, &self.date_to].into_iter().flatten() {
            parse_date(d)?;
        }
        if self.created_by.trim().is_empty() {
            return Err(Error::Invalid("a hold needs created_by".into()));
        }
        Ok(())
    }

    pub fn covers(&self, uid: &str, date: u32) -> bool {
        let num = |d: &Option<String>| d.as_deref().and_then(|s| s.parse::<u32>().ok());
        uid.starts_with(&self.uid_prefix)
            && num(&self.date_from).is_none_or(|f| date >= f)
            && num(&self.date_to).is_none_or(|t| date <= t)
    }

    /// The hold's object key, `_legal_holds/<name>.json`.
    pub fn key(&self) -> String {
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

/// The key of the hold named `name`.
pub fn key_of(name: &str) -> String {
    crate::keys::StoreKey::Hold {
        name: name.to_string(),
    }
    .to_string()
}

/// Every hold of a store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HoldSet {
    holds: Vec<Hold>,
}

impl HoldSet {
    pub fn new(holds: Vec<Hold>) -> Self {
        Self { holds }
    }

    /// Reads the holds of every store of the placement (union by name). An
    /// object that is not a hold is an error, not skipped: it might be one
    /// written by a newer tool, and ignoring a hold could delete held files.
    pub async fn load(store: &DesStore) -> Result<Self> {
        let mut by_name = BTreeMap::new();
        for objects in store.placement().stores() {
            for meta in objects.list_all(HOLDS_PREFIX).await? {
                let body = match objects.get_range(&meta.key, ByteRange::All).await {
                    Ok((_, b)) => b,
                    // Released between the listing and the read.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                let hold: Hold = serde_json::from_slice(&body).map_err(|e| {
                    Error::Invalid(format!(
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

    /// Holds in name order.
    pub fn holds(&self) -> &[Hold] {
        &self.holds
    }

    pub fn is_empty(&self) -> bool {
        self.holds.is_empty()
    }

    /// A short digest of what the holds cover (names, prefixes, dates), so a
    /// tool can tell cheaply whether they changed since it last looked.
    pub fn fingerprint(&self) -> String {
        let mut text = String::new();
        for h in &self.holds {
            let d = |x: &Option<String>| x.clone().unwrap_or_default();
            text.push_str(&format!(
                "{}\n{}\n{}\n{}\n",
                h.name,
                h.uid_prefix,
                d(&h.date_from),
                d(&h.date_to)
            ));
        }
        format!(
            "{:016x}",
            crate::protocol::checked::fnv1a64(text.as_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

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

    #[test]
    fn fingerprint_follows_coverage() {
        let a = HoldSet::new(vec![Hold::new("a", "x/", "legal")]);
        let mut other = Hold::new("a", "x/", "someone else");
        assert_eq!(
            a.fingerprint(),
            HoldSet::new(vec![other.clone()]).fingerprint()
        );
        other.date_to = Some("20240101".into());
        assert_ne!(a.fingerprint(), HoldSet::new(vec![other]).fingerprint());
        assert_ne!(a.fingerprint(), HoldSet::default().fingerprint());
    }
}
