//! The Python DES's `.meta` sidecars, and their deletions as v3 tombstones.
//!
//! The Python DES kept deletions in a JSON sidecar next to each part
//! (`<date>_<HEX>_<NNNN>.meta` beside `….des`):
//! `{"version":1, "shard_file":…, "shard_size":…, "created_at":…,
//! "last_updated":…, "index":{…}, "tombstones":{"<uid>:<created_at>":
//! {"uid":…, "created_at":"2024-01-01T00:00:00Z", "deleted_at":…,
//! "deleted_by":…, "reason":"GDPR", "ticket_id":null}}, "stats":{…}}`,
//! and its retriever answered 410 for a tombstoned `(uid, created_at)`.
//! Converting the part without them would bring deleted files back, so the
//! upgrade logs each one as a v3 tombstone before any group is converted
//! (the groups then leave those files out), and deletes a sidecar only once
//! its part is gone.
//!
//! A v3 tombstone covers the `(uid, day)`: every `created_at` of that uid on
//! that UTC day, where the sidecar named one instant (a legacy part holds
//! one copy of a uid per day, so it is the same file). The Python reasons
//! are free text: `gdpr`, `retention_expired`/`retention` and
//! `user_request` keep their meaning, anything else becomes `user_request`.

use std::collections::HashSet;

use des_format::Timestamp;
use des_storage::protocol::DeletionGuard;
use des_storage::tombstones::{DeleteReason, MAX_LABEL_LEN, Tombstone, TombstoneLog};
use des_storage::{ByteRange, DesStore, ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use super::error::UpgradeError;
use super::plan::{Listing, META_EXT};

/// Who a converted tombstone says deleted the file when the sidecar is silent.
const UNKNOWN_DELETER: &str = "python-des";

/// The part of a sidecar the upgrade needs; other fields are ignored.
#[derive(Deserialize)]
struct Sidecar {
    version: u32,
    tombstones: std::collections::BTreeMap<String, PyTombstone>,
}

#[derive(Deserialize)]
struct PyTombstone {
    uid: String,
    created_at: String,
    deleted_at: Option<String>,
    deleted_by: Option<String>,
    reason: Option<String>,
    ticket_id: Option<String>,
}

/// What became of the sidecars.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SidecarReport {
    /// `.meta` objects found.
    pub found: u64,
    /// Tombstones in the sidecars understood.
    pub tombstones: u64,
    /// Of those, logged as v3 tombstones by this run (the others were
    /// already in the log).
    pub tombstones_logged: u64,
    /// Sidecars deleted because their part is gone.
    pub deleted: u64,
    /// Not understood, left as they are (`--ignore-meta-files`).
    pub skipped: Vec<SkippedSidecar>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkippedSidecar {
    pub key: String,
    pub error: String,
}

/// Before anything is written: parses every sidecar, so one not understood
/// stops the run with nothing changed (or, with `ignore_bad`, is skipped).
/// Returns the keys of those understood.
pub async fn check(
    objects: &dyn ObjectStore,
    keys: &[String],
    ignore_bad: bool,
    report: &mut SidecarReport,
) -> Result<Vec<String>, UpgradeError> {
    report.found = keys.len() as u64;
    let mut good = Vec::with_capacity(keys.len());
    for key in keys {
        match read(objects, key).await {
            Ok(ts) => {
                report.tombstones += ts.len() as u64;
                good.push(key.clone());
            }
            Err(UpgradeError::MetaFile { key, detail }) if ignore_bad => {
                report.skipped.push(SkippedSidecar { key, error: detail });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(good)
}

/// Logs the sidecars' tombstones the v3 store does not have yet; then
/// refreshes `guard`, so that the groups leave those files out. Sidecars are
/// read again, one at a time, so memory does not grow with them.
pub async fn log_tombstones(
    objects: &dyn ObjectStore,
    keys: &[String],
    target: &DesStore,
    guard: &DeletionGuard,
    report: &mut SidecarReport,
) -> Result<(), UpgradeError> {
    let log = TombstoneLog::new(target);
    for key in keys {
        for t in read(objects, key).await? {
            if !guard.is_deleted(&t.uid, t.date) {
                log.append(&t).await?;
                report.tombstones_logged += 1;
            }
        }
    }
    guard.refresh().await?;
    Ok(())
}

/// After the groups: deletes the sidecars whose part no longer exists (its
/// tombstones were logged by this run, before any group).
pub async fn delete_orphans(
    objects: &dyn ObjectStore,
    keys: &[String],
    remaining: &Listing,
    report: &mut SidecarReport,
) -> Result<(), UpgradeError> {
    let parts: HashSet<&str> = remaining
        .groups
        .iter()
        .flat_map(|g| g.parts.iter())
        .chain(remaining.strays.iter())
        .map(String::as_str)
        .collect();
    for key in keys {
        if part_of(key).is_some_and(|p| !parts.contains(p.as_str())) {
            objects.delete(key).await?;
            report.deleted += 1;
        }
    }
    Ok(())
}

/// Reads and parses one sidecar into v3 tombstones. A sidecar this does not
/// understand is an error: guessing could bring deleted files back.
pub async fn read(objects: &dyn ObjectStore, key: &str) -> Result<Vec<Tombstone>, UpgradeError> {
    let (_, body) = objects.get_range(key, ByteRange::All).await?;
    parse(&body).map_err(|detail| UpgradeError::MetaFile {
        key: key.to_string(),
        detail,
    })
}

fn parse(body: &[u8]) -> Result<Vec<Tombstone>, String> {
    let sidecar: Sidecar =
        serde_json::from_slice(body).map_err(|e| format!("not a Python DES shard sidecar: {e}"))?;
    if sidecar.version != 1 {
        return Err(format!(
            "sidecar version {} (only 1 is known)",
            sidecar.version
        ));
    }
    sidecar
        .tombstones
        .into_iter()
        .map(|(name, t)| convert(t).map_err(|e| format!("tombstone {name:?}: {e}")))
        .collect()
}

fn convert(t: PyTombstone) -> Result<Tombstone, String> {
    let created_at = Timestamp::parse_rfc3339(&t.created_at).map_err(|e| e.to_string())?;
    let deleted_at = match t.deleted_at.as_deref() {
        Some(d) => Timestamp::parse_rfc3339(d).map_err(|e| e.to_string())?,
        None => Timestamp::now(),
    };
    let deleted_by = t
        .deleted_by
        .filter(|d| !d.trim().is_empty())
        .unwrap_or_else(|| UNKNOWN_DELETER.to_string());
    let out = Tombstone {
        uid: t.uid,
        created_at: Some(created_at),
        date: created_at.date_number(),
        deleted_at,
        deleted_by: label(&deleted_by),
        reason: reason(t.reason.as_deref()),
        ticket_id: t.ticket_id.as_deref().map(label),
    };
    out.validate().map_err(|e| e.to_string())?;
    Ok(out)
}

fn reason(text: Option<&str>) -> DeleteReason {
    let norm = text.unwrap_or("").trim().to_ascii_lowercase();
    match norm.as_str() {
        "retention" | "expired" => DeleteReason::RetentionExpired,
        other => other.parse().unwrap_or(DeleteReason::UserRequest),
    }
}

/// Labels longer than v3 allows are cut (at a character boundary), not refused:
/// the deletion matters more than who typed how much.
fn label(s: &str) -> String {
    let mut end = s.len().min(MAX_LABEL_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The part a sidecar sits beside: `…/20240101_0A_0000.meta` → `….des`.
pub fn part_of(meta_key: &str) -> Option<String> {
    meta_key
        .strip_suffix(META_EXT)
        .map(|stem| format!("{stem}{}", des_storage::store::SHARD_EXT))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIDECAR: &str = r#"{
      "version": 1, "shard_file": "20240101_0A_0000.des", "shard_size": 1234,
      "created_at": "2024-01-02T03:04:05Z", "last_updated": "2024-02-01T00:00:00Z",
      "index": {"a:2024-01-01T10:00:00Z": {"uid": "a", "offset": 8, "length": 3}},
      "tombstones": {
        "a:2024-01-01T10:00:00.250000Z": {"uid": "a", "created_at": "2024-01-01T10:00:00.250000Z",
          "deleted_at": "2024-02-01T00:00:00Z", "deleted_by": "alice", "reason": "GDPR",
          "ticket_id": "JIRA-7"},
        "b:2024-01-01T23:30:00-02:00": {"uid": "b", "created_at": "2024-01-01T23:30:00-02:00",
          "deleted_at": "2024-02-01T00:00:00Z", "deleted_by": "", "reason": "duplicate scan",
          "ticket_id": null}
      },
      "stats": {"entries": 2, "deleted_files": 2, "deletion_ratio": 1.0}
    }"#;

    #[test]
    fn python_tombstones_become_v3_ones() {
        let got = parse(SIDECAR.as_bytes()).unwrap();
        assert_eq!(got.len(), 2);
        let a = &got[0];
        assert_eq!((a.uid.as_str(), a.date), ("a", 20240101));
        assert_eq!(a.reason, DeleteReason::Gdpr);
        assert_eq!(a.deleted_by, "alice");
        assert_eq!(a.ticket_id.as_deref(), Some("JIRA-7"));
        assert_eq!(a.deleted_at.to_rfc3339(), "2024-02-01T00:00:00Z");
        // An offset moves the day: 23:30 at -02:00 is the 2nd in UTC.
        let b = &got[1];
        assert_eq!((b.uid.as_str(), b.date), ("b", 20240102));
        assert_eq!(b.reason, DeleteReason::UserRequest);
        assert_eq!(b.deleted_by, UNKNOWN_DELETER);
        assert_eq!(b.ticket_id, None);
    }

    #[test]
    fn what_is_not_understood_is_refused() {
        for bad in [
            "?",
            r#"{"version": 1}"#,
            r#"{"version": 2, "tombstones": {}}"#,
            r#"{"version": 1, "tombstones": {"k": {"uid": "a", "created_at": "yesterday"}}}"#,
            r#"{"version": 1, "tombstones": {"k": {"uid": "", "created_at": "2024-01-01T00:00:00Z"}}}"#,
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(
            parse(br#"{"version": 1, "tombstones": {}}"#)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn reasons_and_labels() {
        assert_eq!(reason(Some("Retention")), DeleteReason::RetentionExpired);
        assert_eq!(
            reason(Some("retention-expired")),
            DeleteReason::RetentionExpired
        );
        assert_eq!(reason(Some("user_request")), DeleteReason::UserRequest);
        assert_eq!(reason(None), DeleteReason::UserRequest);
        let long = "é".repeat(MAX_LABEL_LEN);
        let cut = label(&long);
        assert!(cut.len() <= MAX_LABEL_LEN && cut.chars().all(|c| c == 'é'));
        assert_eq!(
            part_of("x/20240101_0A_0000.meta").as_deref(),
            Some("x/20240101_0A_0000.des")
        );
    }
}
