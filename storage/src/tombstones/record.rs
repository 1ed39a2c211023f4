//! The tombstone record: what was deleted, when, by whom and why.

use std::fmt;
use std::str::FromStr;

use des_format::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Why a file was deleted. Serialized in snake_case (`"gdpr"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteReason {
    Gdpr,
    RetentionExpired,
    UserRequest,
}

impl DeleteReason {
    pub const ALL: [Self; 3] = [Self::Gdpr, Self::RetentionExpired, Self::UserRequest];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Gdpr => "gdpr",
            Self::RetentionExpired => "retention_expired",
            Self::UserRequest => "user_request",
        }
    }
}

impl fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeleteReason {
    type Err = Error;

    /// Accepts the serialized names, and `-` for `_` (command lines).
    fn from_str(s: &str) -> Result<Self> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == norm)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown delete reason {s:?} (expected gdpr, retention_expired or user_request)"
                ))
            })
    }
}

/// Longest `deleted_by` / `ticket_id` accepted: these are labels, not documents.
pub const MAX_LABEL_LEN: usize = 256;

/// One deletion. Keyed by `(uid, date)`: the same pair the index routes by,
/// so every `created_at` on that UTC day is covered.
///
/// JSON (one object per tombstone in the log):
/// `{"uid":"u1","created_at":"2024-05-17T10:00:00Z","date":"20240517",
///   "deleted_at":"2024-06-01T08:00:00Z","deleted_by":"alice",
///   "reason":"gdpr","ticket_id":"JIRA-1"}`;
/// `created_at` and `ticket_id` may be absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawTombstone", into = "RawTombstone")]
pub struct Tombstone {
    pub uid: String,
    /// The file's `created_at`, when the requester knew it.
    pub created_at: Option<Timestamp>,
    /// `YYYYMMDD` (UTC) as a number, as in v3 trailers: `20240517`.
    pub date: u32,
    /// When the deletion was requested.
    pub deleted_at: Timestamp,
    pub deleted_by: String,
    pub reason: DeleteReason,
    pub ticket_id: Option<String>,
}

impl Tombstone {
    /// A tombstone for the file `(uid, created_at)`, requested now.
    pub fn new(
        uid: impl Into<String>,
        created_at: Timestamp,
        reason: DeleteReason,
        deleted_by: impl Into<String>,
    ) -> Self {
        Self {
            uid: uid.into(),
            created_at: Some(created_at),
            date: created_at.date_number(),
            deleted_at: Timestamp::now(),
            deleted_by: deleted_by.into(),
            reason,
            ticket_id: None,
        }
    }

    /// A tombstone for every file of `uid` on the UTC day `date` (`20240517`).
    pub fn for_date(
        uid: impl Into<String>,
        date: u32,
        reason: DeleteReason,
        deleted_by: impl Into<String>,
    ) -> Result<Self> {
        let t = Self {
            uid: uid.into(),
            created_at: None,
            date,
            deleted_at: Timestamp::now(),
            deleted_by: deleted_by.into(),
            reason,
            ticket_id: None,
        };
        t.validate()?;
        Ok(t)
    }

    pub fn with_ticket(mut self, ticket_id: impl Into<String>) -> Self {
        self.ticket_id = Some(ticket_id.into());
        self
    }

    /// `YYYYMMDD` as text (the date directory of the file's shard).
    pub fn date_dir(&self) -> String {
        format!("{:08}", self.date)
    }

    /// Checks what readers rely on: a routable uid, a real date, and
    /// `created_at` (when given) falling on that date.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("tombstone for {:?}: {m}", self.uid)));
        if self.uid.is_empty() || self.uid.len() > des_format::v3::MAX_UID_LEN {
            return bad("uid must be 1..=1024 bytes".into());
        }
        parse_date(&self.date_dir())?;
        if let Some(c) = self.created_at
            && c.date_number() != self.date
        {
            return bad(format!("created_at {c} is not on date {}", self.date_dir()));
        }
        if self.deleted_by.trim().is_empty() || self.deleted_by.len() > MAX_LABEL_LEN {
            return bad(format!("deleted_by must be 1..={MAX_LABEL_LEN} bytes"));
        }
        if self
            .ticket_id
            .as_ref()
            .is_some_and(|t| t.len() > MAX_LABEL_LEN)
        {
            return bad(format!("ticket_id must be at most {MAX_LABEL_LEN} bytes"));
        }
        Ok(())
    }

    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::other("serializing a tombstone", e))
    }
}

/// Parses `YYYYMMDD` (a real calendar date) into its number.
pub fn parse_date(s: &str) -> Result<u32> {
    midnight(s)?;
    s.parse()
        .map_err(|_| Error::Invalid(format!("{s:?} is not a date YYYYMMDD")))
}

/// Midnight (UTC) starting the day `date` (`YYYYMMDD` number).
pub fn start_of_date(date: u32) -> Result<Timestamp> {
    midnight(&format!("{date:08}"))
}

fn midnight(s: &str) -> Result<Timestamp> {
    let bad = || Error::Invalid(format!("{s:?} is not a date YYYYMMDD"));
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (y, m, d) = (
        s.get(0..4).ok_or_else(bad)?,
        s.get(4..6).ok_or_else(bad)?,
        s.get(6..8).ok_or_else(bad)?,
    );
    // Round-tripping through the timestamp parser rejects 20240230 and friends.
    let ts = Timestamp::parse_rfc3339(&format!("{y}-{m}-{d}T00:00:00Z")).map_err(|_| bad())?;
    if ts.date_dir() != s {
        return Err(bad());
    }
    Ok(ts)
}

/// The JSON shape: timestamps as RFC 3339 text, the date as `"YYYYMMDD"`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTombstone {
    uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
    date: String,
    deleted_at: String,
    deleted_by: String,
    reason: DeleteReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ticket_id: Option<String>,
}

impl TryFrom<RawTombstone> for Tombstone {
    type Error = Error;

    fn try_from(r: RawTombstone) -> Result<Self> {
        let ts = |s: &str| Timestamp::parse_rfc3339(s).map_err(|e| Error::Invalid(e.to_string()));
        let t = Self {
            created_at: r.created_at.as_deref().map(ts).transpose()?,
            date: parse_date(&r.date)?,
            deleted_at: ts(&r.deleted_at)?,
            uid: r.uid,
            deleted_by: r.deleted_by,
            reason: r.reason,
            ticket_id: r.ticket_id,
        };
        t.validate()?;
        Ok(t)
    }
}

impl From<Tombstone> for RawTombstone {
    fn from(t: Tombstone) -> Self {
        Self {
            created_at: t.created_at.map(Timestamp::to_rfc3339),
            date: t.date_dir(),
            deleted_at: t.deleted_at.to_rfc3339(),
            uid: t.uid,
            deleted_by: t.deleted_by,
            reason: t.reason,
            ticket_id: t.ticket_id,
        }
    }
}
