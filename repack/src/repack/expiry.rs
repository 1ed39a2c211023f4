//! Retention in a repack run: which shards the rules make it look at, and
//! the record of how far it has applied them (`_des/retention-applied.json`).
//!
//! Files expire by date (`des_storage::retention`), so a shard is a
//! candidate only if its date is expired for some rule: the run lists the
//! shards of dates up to the newest expired one. Loading each of their
//! indexes every run would cost one read per old shard forever (a store
//! whose old dates keep exempt files keeps those shards), so the run loads
//! only shards that may hold something new to remove:
//!
//! - every one, when the rules or the legal holds differ from those of the
//!   record (first run, a rule changed, a hold released);
//! - else those of dates some rule expired since the record's day;
//! - and any shard whose current version is not the one the repacker last
//!   checked (`_des/checked/`): a packer wrote to an old date since.
//!
//! The record is written only after a run that processed every candidate
//! (none failed or left for the byte budget) under unchanged rules and
//! holds; otherwise the next run looks at the same shards again. A lost or
//! unreadable record only makes the next run look at every shard.

use bytes::Bytes;
use des_format::Timestamp;
use des_storage::keys::{RETENTION_APPLIED_KEY, ShardKey};
use des_storage::protocol::checked;
use des_storage::retention::{self as rules_store, Cutoffs, StoredRules};
use des_storage::{ByteRange, DesStore, ObjectStoreExt, PutMode, PutOptions};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::holds::HoldSet;
use crate::retention::shards_through;

/// The rules a run applies, resolved for its day.
#[derive(Debug, Clone)]
pub(super) struct Expiry {
    pub stored: StoredRules,
    pub cutoffs: Cutoffs,
    /// The holds the candidates were chosen under.
    pub holds: String,
}

/// `_des/retention-applied.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Applied {
    rules_version: u64,
    /// `HoldSet::fingerprint` of the holds then.
    holds: String,
    /// Every shard was processed against the rules as of this day (`YYYYMMDD`).
    day: u32,
    /// RFC 3339, for people.
    written_at: String,
}

/// The store's rules resolved for `today`, if it has any that expire files.
pub(super) async fn load(store: &DesStore, holds: &HoldSet, today: u32) -> Result<Option<Expiry>> {
    let Some(stored) = rules_store::load(store).await? else {
        return Ok(None);
    };
    if stored.rules.min_days().is_none() {
        return Ok(None);
    }
    let cutoffs = stored.rules.cutoffs(today);
    Ok(Some(Expiry {
        stored,
        cutoffs,
        holds: holds.fingerprint(),
    }))
}

/// Shard keys to look at for expiry, in key order.
pub(super) async fn candidates(
    store: &DesStore,
    expiry: &Expiry,
    checked_versions: &super::recheck::Checked,
) -> Result<Vec<String>> {
    let Some(newest) = expiry.cutoffs.newest_expired_date() else {
        return Ok(Vec::new());
    };
    let since = read_applied(store)
        .await
        .filter(|a| a.rules_version == expiry.stored.version && a.holds == expiry.holds)
        .map(|a| expiry.stored.rules.cutoffs(a.day));
    let mut out = Vec::new();
    for meta in shards_through(store, newest).await? {
        let Some(shard) = ShardKey::parse(&meta.key, Some(store.n_bits())) else {
            continue;
        };
        let newly = since
            .as_ref()
            .is_none_or(|then| expiry.cutoffs.newly_expired(then, shard.date));
        let changed = checked_versions.get(&shard) != Some(&checked::version_tag(&meta));
        if newly || changed {
            out.push(meta.key);
        }
    }
    Ok(out)
}

/// The record, if there is a readable one. Any problem reading it only
/// means a full pass, so it is not an error.
async fn read_applied(store: &DesStore) -> Option<Applied> {
    let first = store.placement().stores().into_iter().next()?;
    let (_, body) = first
        .get_range(RETENTION_APPLIED_KEY, ByteRange::All)
        .await
        .ok()?;
    serde_json::from_slice(&body).ok()
}

/// Records that every shard was processed against `expiry` as of its day.
pub(super) async fn write_applied(store: &DesStore, expiry: &Expiry) -> Result<()> {
    let Some(first) = store.placement().stores().into_iter().next() else {
        return Ok(());
    };
    let applied = Applied {
        rules_version: expiry.stored.version,
        holds: expiry.holds.clone(),
        day: expiry.cutoffs.today(),
        written_at: Timestamp::now().to_rfc3339(),
    };
    let body = serde_json::to_vec_pretty(&applied)
        .map_err(|e| crate::RepackError::Invalid(e.to_string()))?;
    let put = PutOptions {
        mode: PutMode::Overwrite,
    };
    first
        .put(RETENTION_APPLIED_KEY, Bytes::from(body), put)
        .await?;
    Ok(())
}
