//! Retention rules as tools use them: which shards can hold expired files,
//! what the rules expire now (`des-tombstones retention check`), and why one
//! file is or is not expired (`des-tombstones show`).
//!
//! The rules themselves, their storage and the expiry arithmetic are
//! `des_storage::retention`; legal holds are `des_storage::holds`. Nothing
//! here writes: the repacker (`crate::repack`) removes expired files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use des_format::shard::AnyIndex;
use des_storage::keys::ShardKey;
use des_storage::retention::{self as rules_store, RetentionRules, StoredRules};
use des_storage::{DesStore, ObjectMeta};
use serde::Serialize;

use crate::error::{RepackError, Result};
use crate::holds::HoldSet;

pub use des_storage::retention::{Rule, day_number, today};

/// Reads and checks a rules file.
pub fn rules_from_path(path: &Path) -> Result<RetentionRules> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| RepackError::Invalid(format!("{}: {e}", path.display())))?;
    RetentionRules::from_toml(&text)
        .map_err(|e| RepackError::Invalid(format!("{}: {e}", path.display())))
}

/// Every shard object of a date up to `newest` (inclusive), over every store
/// of the placement, in key order.
///
/// One listing from the start of each store, stopped at the first key after
/// `newest`: date directories sort before every `_`-prefixed key, and a key
/// of date `newest` (`YYYYMMDD/…`, `/` < `0`) before `"{newest}0"`, so the
/// stores' other objects (tombstones, big files) are never listed.
pub async fn shards_through(store: &DesStore, newest: u32) -> Result<Vec<ObjectMeta>> {
    let stop = format!("{newest:08}0");
    let stores = store.placement().stores();
    let mut out = Vec::new();
    for objects in &stores {
        let mut after: Option<String> = None;
        'pages: loop {
            let page = objects.list("", after.as_deref()).await?;
            for meta in page.objects {
                if meta.key.as_str() >= stop.as_str() {
                    break 'pages;
                }
                let Some(shard) = ShardKey::parse(&meta.key, Some(store.n_bits())) else {
                    continue;
                };
                // With zones, a zone lists only the shards it owns.
                let owner = store.objects_for_shard(shard.index)?;
                if stores.len() == 1 || Arc::ptr_eq(&owner, objects) {
                    out.push(meta);
                }
            }
            match page.next_start_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// What one rule expires now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleCheck {
    pub uid_prefix: String,
    /// `None`: kept forever.
    pub max_age_days: Option<u32>,
    /// Files of this date (`YYYYMMDD`) and older are expired.
    pub expired_through: Option<String>,
    /// Files this rule expires (held ones not counted).
    pub files_expired: u64,
    /// Their stored bytes (big files included).
    pub bytes_expired: u64,
    /// Shards holding at least one of them.
    pub shards: u64,
    /// Files it would expire but a legal hold keeps.
    pub files_held: u64,
}

/// `des-tombstones retention check`: what the rules expire on `date`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub store: String,
    /// The day evaluated (`YYYYMMDD`).
    pub date: String,
    pub rules_version: u64,
    pub rules: Vec<RuleCheck>,
    /// Shards of the dates looked at.
    pub shards_scanned: u64,
    pub files_scanned: u64,
    /// Shards every file of which is expired: the repacker deletes them whole.
    pub shards_fully_expired: u64,
    pub files_expired: u64,
    pub files_held: u64,
}

/// Counts what `stored` expires on `today` (and what holds keep), from the
/// listing and the indexes of the shards of expired dates. Writes nothing.
pub async fn check(store: &DesStore, stored: &StoredRules, today: u32) -> Result<CheckReport> {
    let cutoffs = stored.rules.cutoffs(today);
    let mut by_prefix: BTreeMap<String, RuleCheck> = stored
        .rules
        .rules
        .iter()
        .map(|r| {
            let c = RuleCheck {
                uid_prefix: r.uid_prefix.clone(),
                max_age_days: r.max_age_days,
                expired_through: r.last_expired_date(today).map(|d| format!("{d:08}")),
                ..RuleCheck::default()
            };
            (r.uid_prefix.clone(), c)
        })
        .collect();
    let mut report = CheckReport {
        store: store.describe(),
        date: format!("{today:08}"),
        rules_version: stored.version,
        ..CheckReport::default()
    };
    let holds = HoldSet::load(store).await?;
    if let Some(newest) = cutoffs.newest_expired_date() {
        for meta in shards_through(store, newest).await? {
            let Some(loaded) = store.load_index(&meta.key).await? else {
                continue;
            };
            let AnyIndex::V3(ix) = &loaded.index else {
                continue;
            };
            let date = ix.trailer().date;
            report.shards_scanned += 1;
            let (mut entries, mut expired) = (0u64, 0u64);
            let mut touched: Vec<String> = Vec::new();
            for e in ix.view().iter() {
                entries += 1;
                let Some(rule) = cutoffs.expiring(e.uid, date) else {
                    continue;
                };
                let Some(c) = by_prefix.get_mut(&rule.uid_prefix) else {
                    continue;
                };
                if holds.holding(e.uid, date).is_some() {
                    c.files_held += 1;
                    report.files_held += 1;
                    continue;
                }
                expired += 1;
                c.files_expired += 1;
                c.bytes_expired += e.stored_len();
                if !touched.contains(&rule.uid_prefix) {
                    touched.push(rule.uid_prefix.clone());
                    c.shards += 1;
                }
            }
            report.files_scanned += entries;
            report.files_expired += expired;
            if entries > 0 && expired == entries {
                report.shards_fully_expired += 1;
            }
        }
    }
    // In the rules file's order.
    report.rules = stored
        .rules
        .rules
        .iter()
        .filter_map(|r| by_prefix.remove(&r.uid_prefix))
        .collect();
    Ok(report)
}

/// Why a file is, or is not, expired by a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub rules_version: u64,
    pub rules_updated_at: String,
    pub rules_updated_by: String,
    /// The rule that applies (longest matching prefix); `None`: no rule, kept forever.
    pub uid_prefix: Option<String>,
    pub max_age_days: Option<u32>,
    /// The first day (`YYYYMMDD`) the file is expired on (00:00 UTC).
    pub expires_on: Option<String>,
    /// Expired on the day evaluated, and not held.
    pub expired: bool,
    /// The legal hold keeping it, if one does.
    pub held_by: Option<String>,
}

/// Explains the retention of `(uid, date)` on `today`; `None` when the
/// store has no rules.
pub async fn explain(
    store: &DesStore,
    uid: &str,
    date: u32,
    today: u32,
) -> Result<Option<Explanation>> {
    let Some(stored) = rules_store::load(store).await? else {
        return Ok(None);
    };
    let holds = HoldSet::load(store).await?;
    let rule = stored.rules.rule_for(uid);
    let expires_on = rule.and_then(|r| r.expires_on(date));
    let held_by = holds.holding(uid, date).map(|h| h.name.clone());
    Ok(Some(Explanation {
        rules_version: stored.version,
        rules_updated_at: stored.updated_at.clone(),
        rules_updated_by: stored.updated_by.clone(),
        uid_prefix: rule.map(|r| r.uid_prefix.clone()),
        max_age_days: rule.and_then(|r| r.max_age_days),
        expires_on: expires_on.map(|d| format!("{d:08}")),
        expired: expires_on.is_some_and(|on| today >= on) && held_by.is_none(),
        held_by,
    }))
}
