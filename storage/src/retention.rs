//! Retention: how long files are kept, as rules stored in the store and
//! applied by date arithmetic, never by one record per file.
//!
//! # Rules
//!
//! ```toml
//! ticket_id = "POLICY-7"          # optional: where the policy comes from
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
//! A uid no rule matches is kept forever.
//!
//! # When a file expires
//!
//! At UTC day granularity, on the same date that routes the file (its
//! `created_at`'s UTC date, the shard's date): a file of day `D` under a rule
//! of `N` days is expired from 00:00 UTC of day `D + N + 1` on. By then every
//! file of day `D`, even one created at 23:59:59.999999, is more than `N`
//! days old; a whole shard's date therefore expires at once, so the repacker
//! can find expired files by listing dates and readers can decide from the
//! request alone, without a storage read. A file under a legal hold
//! ([`crate::holds`]) never expires by a rule.
//!
//! # In the store
//!
//! ```text
//! _des/retention.toml                  the current rules: the TOML above plus
//!                                      version = N, updated_at, updated_by
//! _des/retention/<N, 10 digits>.toml   every version ever set, same bytes, immutable
//! ```
//!
//! in every store of the placement (each zone is self-contained, as with
//! holds); readers take the first store's current file. [`set`] makes
//! version N+1 with a create-only write of its history copy, so of two
//! concurrent setters one fails and is told to retry; where the server
//! ignores create-only writes (Garage) the copy is read back to notice a
//! lost race.

use bytes::Bytes;
use des_format::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::keys::{RETENTION_HISTORY_PREFIX, RETENTION_KEY, StoreKey};
use crate::object::{ByteRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use crate::store::DesStore;
use crate::tombstones::MAX_LABEL_LEN;

/// Versions are spelled with 10 digits in history keys.
pub const MAX_VERSION: u64 = 9_999_999_999;

/// One rule: files whose uid starts with `uid_prefix` (and no longer
/// prefix of another rule) are kept `max_age_days` days.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub uid_prefix: String,
    /// `None`: files under this prefix are kept forever (an exception).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_days: Option<u32>,
}

impl Rule {
    /// The first UTC day (`YYYYMMDD`) on which a file of `date` is expired
    /// under this rule: `date + max_age_days + 1`. `None` when the rule
    /// keeps forever or `date` is not a calendar day.
    pub fn expires_on(&self, date: u32) -> Option<u32> {
        let days = i64::from(self.max_age_days?);
        date_of_day(day_number(date)?.checked_add(days)?.checked_add(1)?)
    }

    /// The newest date whose files are expired on `today`: `today −
    /// max_age_days − 1`. `None` when the rule keeps forever, or no date of
    /// the calendar (years 1–9999) is that old.
    pub fn last_expired_date(&self, today: u32) -> Option<u32> {
        let days = i64::from(self.max_age_days?);
        date_of_day(day_number(today)?.checked_sub(days)?.checked_sub(1)?)
    }
}

/// A rules file as an operator writes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRules {
    /// Where the policy comes from (a ticket, a document); shown with the rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_id: Option<String>,
    #[serde(rename = "rule", default)]
    pub rules: Vec<Rule>,
}

impl RetentionRules {
    /// Parses and checks a rules file.
    pub fn from_toml(text: &str) -> Result<Self> {
        let rules: Self = toml::from_str(text)
            .map_err(|e| Error::Invalid(format!("not a retention rules file: {e}")))?;
        rules.validate()?;
        Ok(rules)
    }

    /// At least one rule, each prefix once, every age at least one day.
    /// An empty set is refused rather than read as "no retention": it is
    /// more likely a mistake, and a rule `uid_prefix = ""` without
    /// `max_age_days` says "keep everything" explicitly.
    pub fn validate(&self) -> Result<()> {
        if self.rules.is_empty() {
            return Err(Error::Invalid(
                "no [[rule]] given (to keep everything, give uid_prefix = \"\" without max_age_days)"
                    .into(),
            ));
        }
        if let Some(r) = self.rules.iter().find(|r| r.max_age_days == Some(0)) {
            return Err(Error::Invalid(format!(
                "rule {:?}: max_age_days must be at least 1 (leave it out to keep forever)",
                r.uid_prefix
            )));
        }
        let mut prefixes: Vec<&str> = self.rules.iter().map(|r| r.uid_prefix.as_str()).collect();
        prefixes.sort_unstable();
        if let Some(w) = prefixes.windows(2).find(|w| w.first() == w.get(1)) {
            return Err(Error::Invalid(format!(
                "two rules for uid_prefix {:?}",
                w.first().copied().unwrap_or_default()
            )));
        }
        Ok(())
    }

    /// The rule for `uid`: the one with the longest matching prefix.
    pub fn rule_for(&self, uid: &str) -> Option<&Rule> {
        self.rules
            .iter()
            .filter(|r| uid.starts_with(&r.uid_prefix))
            .max_by_key(|r| r.uid_prefix.len())
    }

    /// The rule that expires the file `(uid, date)` and the first day it is
    /// expired on, whatever today is; `None` if it is kept forever.
    pub fn expiry(&self, uid: &str, date: u32) -> Option<(&Rule, u32)> {
        let rule = self.rule_for(uid)?;
        Some((rule, rule.expires_on(date)?))
    }

    /// Is the file `(uid, date)` expired on `today` (both `YYYYMMDD`)?
    /// Legal holds are not looked at here: see [`crate::holds`].
    pub fn expired(&self, uid: &str, date: u32, today: u32) -> bool {
        self.expiry(uid, date).is_some_and(|(_, on)| today >= on)
    }

    /// The shortest finite age of any rule.
    pub fn min_days(&self) -> Option<u32> {
        self.rules.iter().filter_map(|r| r.max_age_days).min()
    }

    /// The newest date with files any rule expires on `today`: no shard of
    /// a later date holds an expired file.
    pub fn newest_expired_date(&self, today: u32) -> Option<u32> {
        self.rules
            .iter()
            .filter_map(|r| r.last_expired_date(today))
            .max()
    }

    /// The rules resolved for one day, for many lookups.
    pub fn cutoffs(&self, today: u32) -> Cutoffs {
        let mut rules: Vec<CutRule> = self
            .rules
            .iter()
            .map(|r| CutRule {
                uid_prefix: r.uid_prefix.clone(),
                max_age_days: r.max_age_days,
                last_expired: r.last_expired_date(today),
            })
            .collect();
        // Longest first: the first match is the longest prefix (two
        // different prefixes of one length cannot both match a uid).
        rules.sort_by_key(|r| std::cmp::Reverse(r.uid_prefix.len()));
        Cutoffs { today, rules }
    }
}

/// A rule resolved for one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutRule {
    pub uid_prefix: String,
    pub max_age_days: Option<u32>,
    /// Files of this date and older are expired (`None`: none is).
    pub last_expired: Option<u32>,
}

/// [`RetentionRules`] resolved for `today`: expiry is a prefix match and a
/// comparison of dates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cutoffs {
    today: u32,
    rules: Vec<CutRule>,
}

impl Cutoffs {
    /// The day these cutoffs are for (`YYYYMMDD`).
    pub fn today(&self) -> u32 {
        self.today
    }

    pub fn rule_for(&self, uid: &str) -> Option<&CutRule> {
        self.rules.iter().find(|r| uid.starts_with(&r.uid_prefix))
    }

    /// The rule expiring `(uid, date)` today, if one does.
    pub fn expiring(&self, uid: &str, date: u32) -> Option<&CutRule> {
        self.rule_for(uid)
            .filter(|r| r.last_expired.is_some_and(|last| date <= last))
    }

    pub fn expired(&self, uid: &str, date: u32) -> bool {
        self.expiring(uid, date).is_some()
    }

    /// The rules, longest prefix first.
    pub fn rules(&self) -> &[CutRule] {
        &self.rules
    }

    /// Whether some rule expires files of `date` on this day but did not on
    /// the day of `earlier` (cutoffs of the same rules): the shards of
    /// `date` have files that expired in between.
    pub fn newly_expired(&self, earlier: &Self, date: u32) -> bool {
        self.rules.iter().any(|r| {
            let before = earlier
                .rules
                .iter()
                .find(|e| e.uid_prefix == r.uid_prefix)
                .and_then(|e| e.last_expired);
            r.last_expired.is_some_and(|now| date <= now) && before.is_none_or(|b| date > b)
        })
    }

    /// Whether every file of `date`, whatever its uid, is expired: a
    /// catch-all rule (empty prefix) exists and every rule expires `date`.
    pub fn expires_all(&self, date: u32) -> bool {
        self.rules.iter().any(|r| r.uid_prefix.is_empty())
            && self
                .rules
                .iter()
                .all(|r| r.last_expired.is_some_and(|last| date <= last))
    }

    /// The newest date with expired files.
    pub fn newest_expired_date(&self) -> Option<u32> {
        self.rules.iter().filter_map(|r| r.last_expired).max()
    }
}

/// The rules as stored: what was set, and which version, when and by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "RawStored", try_from = "RawStored")]
pub struct StoredRules {
    pub version: u64,
    /// RFC 3339.
    pub updated_at: String,
    pub updated_by: String,
    pub rules: RetentionRules,
}

/// The file's fields, flat: `version`, `updated_at`, `updated_by`, then the
/// rules file's own.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStored {
    version: u64,
    updated_at: String,
    updated_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ticket_id: Option<String>,
    #[serde(rename = "rule", default)]
    rule: Vec<Rule>,
}

impl From<StoredRules> for RawStored {
    fn from(s: StoredRules) -> Self {
        Self {
            version: s.version,
            updated_at: s.updated_at,
            updated_by: s.updated_by,
            ticket_id: s.rules.ticket_id,
            rule: s.rules.rules,
        }
    }
}

impl TryFrom<RawStored> for StoredRules {
    type Error = Error;

    fn try_from(r: RawStored) -> Result<Self> {
        let rules = RetentionRules {
            ticket_id: r.ticket_id,
            rules: r.rule,
        };
        rules.validate()?;
        if r.version == 0 || r.version > MAX_VERSION {
            return Err(Error::Invalid(format!(
                "version {} is not in 1..={MAX_VERSION}",
                r.version
            )));
        }
        Ok(Self {
            version: r.version,
            updated_at: r.updated_at,
            updated_by: r.updated_by,
            rules,
        })
    }
}

impl StoredRules {
    /// Parses a stored file; `key` and `store` name it in errors.
    pub fn parse(body: &[u8], key: &str, store: &str) -> Result<Self> {
        let bad = |e: &dyn std::fmt::Display| {
            Error::Invalid(format!(
                "{key} in {store} is not valid retention rules: {e}"
            ))
        };
        let text = std::str::from_utf8(body).map_err(|e| bad(&format!("not UTF-8 text ({e})")))?;
        toml::from_str(text).map_err(|e| bad(&e))
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::other("serializing retention rules", e))
    }

    /// [`RetentionRules::expired`] with these rules.
    pub fn expired(&self, uid: &str, date: u32, today: u32) -> bool {
        self.rules.expired(uid, date, today)
    }
}

// ---- dates -------------------------------------------------------------------

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The UTC day of `t` as days since 1970-01-01 (negative before): integer
/// arithmetic only, cheap enough for every request.
pub fn day_of(t: Timestamp) -> i64 {
    t.micros().div_euclid(MICROS_PER_DAY)
}

/// Today's UTC date (`YYYYMMDD`) at `now`: the date that routes files
/// created now.
pub fn today(now: Timestamp) -> u32 {
    date_of_day(day_of(now)).unwrap_or(0)
}

/// Days since 1970-01-01 of the date `YYYYMMDD` (proleptic Gregorian, as
/// the routing's dates); `None` if it is not a calendar day of years 1–9999.
pub fn day_number(date: u32) -> Option<i64> {
    let (y, m, d) = (
        i64::from(date / 10_000),
        i64::from(date / 100 % 100),
        i64::from(date % 100),
    );
    if !(1..=9999).contains(&y) || !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// The date `YYYYMMDD` of a day number; `None` outside years 1–9999.
pub fn date_of_day(day: i64) -> Option<u32> {
    let (y, m, d) = civil_from_days(day)?;
    if !(1..=9999).contains(&y) {
        return None;
    }
    u32::try_from(y * 10_000 + m * 100 + d).ok()
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's days_from_civil / civil_from_days: 400-year eras of
// 146,097 days, years starting in March so the leap day is the last of one.

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> Option<(i64, i64, i64)> {
    let z = z.checked_add(719_468)?;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe.checked_add(era.checked_mul(400)?)?;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    Some((if m <= 2 { y + 1 } else { y }, m, d))
}

// ---- in the store ------------------------------------------------------------

fn history_key(version: u64) -> String {
    StoreKey::RetentionHistory { version }.to_string()
}

fn first_store(store: &DesStore) -> Result<std::sync::Arc<dyn ObjectStore>> {
    store
        .placement()
        .stores()
        .into_iter()
        .next()
        .ok_or_else(|| Error::Invalid("placement has no stores".into()))
}

/// The current rules of the store (its first store's `_des/retention.toml`);
/// `None` if none were ever set. A file that is not valid rules is an error:
/// guessing could expire files that must be kept, or keep ones that must go.
pub async fn load(store: &DesStore) -> Result<Option<StoredRules>> {
    load_from(first_store(store)?.as_ref()).await
}

/// [`load`] from one object store.
pub async fn load_from(objects: &dyn ObjectStore) -> Result<Option<StoredRules>> {
    match objects.get_range(RETENTION_KEY, ByteRange::All).await {
        Ok((_, body)) => StoredRules::parse(&body, RETENTION_KEY, &objects.describe()).map(Some),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Version `version` as it was set, from the history (first store).
pub async fn load_version(store: &DesStore, version: u64) -> Result<Option<StoredRules>> {
    let objects = first_store(store)?;
    let key = history_key(version);
    match objects.get_range(&key, ByteRange::All).await {
        Ok((_, body)) => StoredRules::parse(&body, &key, &objects.describe()).map(Some),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The versions in the history (first store), ascending.
pub async fn versions(store: &DesStore) -> Result<Vec<u64>> {
    let objects = first_store(store)?;
    let mut out: Vec<u64> = objects
        .list_all(RETENTION_HISTORY_PREFIX)
        .await?
        .into_iter()
        .filter_map(|m| match StoreKey::parse(&m.key) {
            Some(StoreKey::RetentionHistory { version }) => Some(version),
            _ => None,
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}

fn conflict(version: u64) -> Error {
    Error::other(
        "retention rules changed concurrently, retry",
        format!("version {version} was set by another writer at the same time"),
    )
}

/// Stores `rules` as the next version, set by `by`, in every store of the
/// placement, and returns what was stored.
///
/// Order, so a crash anywhere leaves every reader on the old or the new
/// version: the history copy in the first store (create-only: the race
/// arbiter), then the other stores' copies, then the first store's current
/// file (the commit point). The next version is one past the highest of the
/// current file and the history, so a history copy left by a crashed `set`
/// is skipped rather than blocking every later one.
pub async fn set(store: &DesStore, rules: &RetentionRules, by: &str) -> Result<StoredRules> {
    rules.validate()?;
    if by.trim().is_empty() || by.len() > MAX_LABEL_LEN {
        return Err(Error::Invalid(format!(
            "updated_by must be 1..={MAX_LABEL_LEN} bytes"
        )));
    }
    let stores = store.placement().stores();
    let first = stores
        .first()
        .ok_or_else(|| Error::Invalid("placement has no stores".into()))?;
    // The current file's ETag makes its replacement conditional, so a
    // setter that lost a race cannot put an older version back on top.
    let (current_version, current_etag) = match first.get_range(RETENTION_KEY, ByteRange::All).await
    {
        // A damaged current file is being replaced: its version is
        // taken from the history instead.
        Ok((meta, body)) => (
            StoredRules::parse(&body, RETENTION_KEY, &first.describe()).map_or(0, |s| s.version),
            Some(meta.etag),
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => (0, None),
        Err(e) => return Err(e),
    };
    let newest = versions(store).await?.last().copied().unwrap_or(0);
    let version = current_version.max(newest) + 1;
    if version > MAX_VERSION {
        return Err(Error::Invalid(format!(
            "retention rules version {version} exceeds {MAX_VERSION}"
        )));
    }
    let stored = StoredRules {
        version,
        updated_at: Timestamp::now().to_rfc3339(),
        updated_by: by.to_string(),
        rules: rules.clone(),
    };
    let body = Bytes::from(stored.to_toml()?);
    let history = history_key(version);
    let create = PutOptions {
        mode: PutMode::Create,
    };
    match first.put(&history, body.clone(), create).await {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::PreconditionFailed => return Err(conflict(version)),
        Err(e) => return Err(e),
    }
    // Garage accepts create-only writes and ignores the condition: a
    // concurrent setter's copy may have landed on ours.
    if !holds_bytes(first.as_ref(), &history, &body).await? {
        return Err(conflict(version));
    }
    let overwrite = PutOptions {
        mode: PutMode::Overwrite,
    };
    for other in stores.iter().skip(1) {
        other.put(&history, body.clone(), overwrite.clone()).await?;
        other
            .put(RETENTION_KEY, body.clone(), overwrite.clone())
            .await?;
    }
    let commit = PutOptions {
        mode: match current_etag {
            None => PutMode::Create,
            Some(Some(etag)) => PutMode::UpdateIfMatch(etag),
            // A backend without ETags cannot compare; the re-check below must do.
            Some(None) => PutMode::Overwrite,
        },
    };
    match first.put(RETENTION_KEY, body.clone(), commit).await {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::PreconditionFailed => return Err(conflict(version)),
        Err(e) => return Err(e),
    }
    // Where conditions are ignored, a setter that read the same current
    // version may have committed meanwhile: then ours, or theirs, is current
    // and the caller must look. (Where they are enforced, the writes above
    // decided; a later setter replacing ours now is no conflict.)
    if !first.capabilities().conditional_put
        && (!holds_bytes(first.as_ref(), RETENTION_KEY, &body).await?
            || !holds_bytes(first.as_ref(), &history, &body).await?)
    {
        return Err(conflict(version));
    }
    Ok(stored)
}

async fn holds_bytes(objects: &dyn ObjectStore, key: &str, want: &Bytes) -> Result<bool> {
    match objects.get_range(key, ByteRange::All).await {
        Ok((_, got)) => Ok(got == *want),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
