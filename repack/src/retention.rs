//! Retention: tombstones for files older than a per-uid-prefix age.
//!
//! Rules file (TOML):
//!
//! ```toml
//! deleted_by = "retention"        # optional, recorded in each tombstone
//! ticket_id = "POLICY-7"          # optional
//!
//! [[rule]]
//! uid_prefix = "logs/"
//! max_age_days = 90
//!
//! [[rule]]
//! uid_prefix = "logs/audit/"      # the longest matching prefix wins:
//! # no max_age_days: kept forever   # audit logs are exempt
//! ```
//!
//! A file's age is measured from its `created_at`. Files under a legal hold
//! (see [`crate::holds`]) and files already tombstoned are skipped.

use std::path::Path;

use des_format::Timestamp;
use des_format::shard::AnyIndex;
use des_storage::DesStore;
use des_storage::Layout;
use des_storage::tombstones::{DeleteReason, Tombstone, TombstoneLog, TombstoneSet};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{RepackError, Result};
use crate::holds::HoldSet;
use crate::verify::place_of;

const MICROS_PER_DAY: i64 = 86_400_000_000;
/// Examples of expired files kept in the report.
const MAX_EXAMPLES: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub uid_prefix: String,
    /// `None`: files under this prefix are kept forever (an exception).
    #[serde(default)]
    pub max_age_days: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRules {
    #[serde(default = "default_deleted_by")]
    pub deleted_by: String,
    #[serde(default)]
    pub ticket_id: Option<String>,
    #[serde(rename = "rule", default)]
    pub rules: Vec<Rule>,
}

fn default_deleted_by() -> String {
    "retention".into()
}

impl RetentionRules {
    pub fn from_path(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RepackError::Invalid(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| RepackError::Invalid(format!("{}: {e}", path.display())))
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        let rules: Self = toml::from_str(text).map_err(|e| RepackError::Invalid(e.to_string()))?;
        if rules.rules.is_empty() {
            return Err(RepackError::Invalid("no [[rule]] given".into()));
        }
        if rules.rules.iter().any(|r| r.max_age_days == Some(0)) {
            return Err(RepackError::Invalid(
                "max_age_days must be at least 1 (leave it out to keep forever)".into(),
            ));
        }
        let mut prefixes: Vec<&str> = rules.rules.iter().map(|r| r.uid_prefix.as_str()).collect();
        prefixes.sort_unstable();
        if prefixes.windows(2).any(|w| w.first() == w.get(1)) {
            return Err(RepackError::Invalid("two rules for one uid_prefix".into()));
        }
        Ok(rules)
    }

    /// The rule for `uid`: the one with the longest matching prefix.
    pub fn rule_for(&self, uid: &str) -> Option<&Rule> {
        self.rules
            .iter()
            .filter(|r| uid.starts_with(&r.uid_prefix))
            .max_by_key(|r| r.uid_prefix.len())
    }

    fn youngest_expiry_days(&self) -> Option<u32> {
        self.rules.iter().filter_map(|r| r.max_age_days).min()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expired {
    pub uid: String,
    pub created_at: String,
    pub rule: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RetentionReport {
    pub store: String,
    pub dry_run: bool,
    pub shards_scanned: u64,
    pub entries_scanned: u64,
    pub expired: u64,
    pub held: u64,
    pub already_tombstoned: u64,
    pub tombstones_created: u64,
    pub failures: Vec<String>,
    /// Up to 100 of the expired files (created or, dry, to create).
    pub examples: Vec<Expired>,
}

/// Scans shards old enough to hold expired files and logs a
/// `retention_expired` tombstone for each (unless `dry_run`).
pub async fn apply(
    store: &DesStore,
    rules: &RetentionRules,
    now: Timestamp,
    dry_run: bool,
) -> Result<RetentionReport> {
    let mut report = RetentionReport {
        store: store.describe(),
        dry_run,
        ..RetentionReport::default()
    };
    let Some(min_days) = rules.youngest_expiry_days() else {
        return Ok(report);
    };
    let log = TombstoneLog::new(store);
    let holds = HoldSet::load(store).await?;
    let deleted = TombstoneSet::load(&log).await?;
    let newest_date = days_before(now, min_days).date_number();
    for meta in store.list_shards().await? {
        let Some(place) = place_of(Layout::V3, &meta.key, store.n_bits()) else {
            continue;
        };
        if place.date > newest_date {
            continue;
        }
        let Some(loaded) = store.load_index(&meta.key).await? else {
            continue;
        };
        let AnyIndex::V3(ix) = &loaded.index else {
            continue;
        };
        report.shards_scanned += 1;
        let mut due = Vec::new();
        for e in ix.view().iter() {
            report.entries_scanned += 1;
            let Some(rule) = rules.rule_for(e.uid) else {
                continue;
            };
            let Some(days) = rule.max_age_days else {
                continue;
            };
            if e.created_at() >= days_before(now, days) {
                continue;
            }
            report.expired += 1;
            if deleted.contains(e.uid, place.date) {
                report.already_tombstoned += 1;
            } else if holds.holding(e.uid, place.date).is_some() {
                report.held += 1;
            } else {
                if report.examples.len() < MAX_EXAMPLES {
                    report.examples.push(Expired {
                        uid: e.uid.to_string(),
                        created_at: e.created_at().to_rfc3339(),
                        rule: rule.uid_prefix.clone(),
                    });
                }
                let mut t = Tombstone::new(
                    e.uid,
                    e.created_at(),
                    DeleteReason::RetentionExpired,
                    rules.deleted_by.as_str(),
                );
                t.ticket_id.clone_from(&rules.ticket_id);
                due.push(t);
            }
        }
        if dry_run {
            report.tombstones_created += due.len() as u64;
        } else {
            append_all(&log, due, &mut report).await;
        }
    }
    Ok(report)
}

async fn append_all(log: &TombstoneLog, due: Vec<Tombstone>, report: &mut RetentionReport) {
    let results = futures::stream::iter(due)
        .map(|t| async move { (log.append(&t).await, t.uid) })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    for (r, uid) in results {
        match r {
            Ok(_) => report.tombstones_created += 1,
            Err(e) => report.failures.push(format!("{uid}: {e}")),
        }
    }
}

fn days_before(now: Timestamp, days: u32) -> Timestamp {
    Timestamp::from_micros(
        now.micros()
            .saturating_sub(i64::from(days).saturating_mul(MICROS_PER_DAY)),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn longest_prefix_wins_and_bad_files_are_refused() {
        let rules = RetentionRules::from_toml(
            r#"
            [[rule]]
            uid_prefix = "logs/"
            max_age_days = 30
            [[rule]]
            uid_prefix = "logs/audit/"
            [[rule]]
            uid_prefix = ""
            max_age_days = 3650
            "#,
        )
        .unwrap();
        assert_eq!(rules.rule_for("logs/x").unwrap().max_age_days, Some(30));
        assert_eq!(rules.rule_for("logs/audit/x").unwrap().max_age_days, None);
        assert_eq!(rules.rule_for("img/1").unwrap().max_age_days, Some(3650));
        assert_eq!(rules.deleted_by, "retention");
        assert!(RetentionRules::from_toml("").is_err());
        assert!(RetentionRules::from_toml("[[rule]]\nuid_prefix=\"a\"\nmax_age_days=0").is_err());
        assert!(RetentionRules::from_toml("[[rule]]\nuid_prefix=\"a\"\nmaxage=1").is_err());
        let dup = "[[rule]]\nuid_prefix=\"a\"\n[[rule]]\nuid_prefix=\"a\"";
        assert!(RetentionRules::from_toml(dup).is_err());
    }
}
