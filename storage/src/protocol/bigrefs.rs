//! References in flight to big files, so clean-up never deletes a
//! `_big/<digest>` object that a running packer is about to reference.
//!
//! Big files are content-addressed and shared: a packer that finds
//! `_big/<hex>` present (HEAD) skips the upload and publishes a shard
//! referencing it, while the repacker may be collecting that very object
//! because the last shard referencing it dropped it. The rule:
//!
//! - a packer writes a [`BigRef`] (`_des/big-refs/<hex>/<holder>.json`)
//!   *before* it checks whether the object exists, and renews it (and checks
//!   the object again) if it is older than half its TTL when the shard is
//!   about to be published; it never deletes it: a ref simply expires;
//! - collection scans the shards for references, *then* lists the refs of
//!   each candidate, and deletes the object only if no shard references it
//!   and no ref younger than its TTL exists — and only if less than half the
//!   TTL has passed since the scan began ([`GcWindow`]).
//!
//! A packer that publishes before the scan reaches its shard is seen in the
//! shard. One that publishes after took its ref at most TTL/2 before the
//! publish, so the ref is younger than TTL when collection lists refs (less
//! than TTL/2 after the scan began). One whose ref comes after the listing
//! checks the object after that and, before publishing, again. What is
//! assumed: no process stalls longer than TTL/2 (30 min) between a check
//! and the request it guards, and a collection's scan of shard indexes
//! finishes within TTL/2 (else it deletes nothing and says so).
//!
//! The TTL is one constant for every tool, not a setting: the rule holds only
//! if collection's window is no longer than half of every packer's TTL.
//! `DES_BIG_REF_TTL_SECS` overrides it for tests, in every process at once.

use std::time::{Duration, Instant};

use bytes::Bytes;
use des_format::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::keys::StoreKey;
use crate::object::{ByteRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions};

/// How long a ref protects its big file: a big file dropped within this
/// time of being packed waits this long before clean-up.
pub const DEFAULT_BIG_REF_TTL: Duration = Duration::from_secs(3600);

/// The TTL every tool uses: [`DEFAULT_BIG_REF_TTL`], or the test override.
pub fn big_ref_ttl() -> Duration {
    std::env::var("DES_BIG_REF_TTL_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(DEFAULT_BIG_REF_TTL, Duration::from_secs)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefRecord {
    holder: String,
    taken_at: String,
    taken_at_us: i64,
    expires_at_us: i64,
    /// The file whose entry will reference the big file: a ref that
    /// expires unpublished (its packer failed or died) leaves an object
    /// nothing may reference, which clean-up then collects — unless a legal
    /// hold covers this file.
    #[serde(default)]
    uid: String,
    #[serde(default)]
    date: u32,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A packer's reference in flight to `_big/<hex>`.
#[derive(Debug, Clone)]
pub struct BigRef {
    pub hex: String,
    key: String,
    holder: String,
    file: (String, u32),
    taken_at_us: i64,
    ttl: Duration,
}

impl BigRef {
    /// Writes the ref for the file `(uid, date)`; call before checking that
    /// the big file exists.
    pub async fn take(
        objects: &dyn ObjectStore,
        hex: &str,
        holder: &str,
        file: (&str, u32),
        ttl: Duration,
    ) -> Result<Self> {
        let mut r = Self {
            hex: hex.to_string(),
            key: StoreKey::BigRef {
                hex: hex.to_string(),
                holder: format!("{holder}.json"),
            }
            .to_string(),
            holder: holder.to_string(),
            file: (file.0.to_string(), file.1),
            taken_at_us: 0,
            ttl,
        };
        r.write(objects).await?;
        Ok(r)
    }

    async fn write(&mut self, objects: &dyn ObjectStore) -> Result<()> {
        let now = Timestamp::now();
        let rec = RefRecord {
            holder: self.holder.clone(),
            taken_at: now.to_rfc3339(),
            taken_at_us: now.micros(),
            expires_at_us: now.micros().saturating_add(micros(self.ttl)),
            uid: self.file.0.clone(),
            date: self.file.1,
        };
        let body = serde_json::to_vec(&rec).map_err(|e| Error::other("big-file ref", e))?;
        let put = PutOptions {
            mode: PutMode::Overwrite,
        };
        objects.put(&self.key, Bytes::from(body), put).await?;
        self.taken_at_us = now.micros();
        Ok(())
    }

    /// Older than half its TTL: renew (and check the object again) before
    /// publishing a shard that relies on it.
    pub fn needs_renewal(&self, now: Timestamp) -> bool {
        now.micros().saturating_sub(self.taken_at_us) >= micros(self.ttl) / 2
    }

    pub async fn renew(&mut self, objects: &dyn ObjectStore) -> Result<()> {
        self.write(objects).await
    }
}

/// What collection found about one big file's refs.
#[derive(Debug, Default)]
pub struct RefScan {
    /// Refs younger than their TTL: the object must stay.
    pub live: u64,
    /// Expired refs: their keys (safe to delete once the object is
    /// registered for collection) and the files they named.
    pub expired: Vec<(String, (String, u32))>,
}

/// The refs of `_big/<hex>` as of `now`.
pub async fn refs_of(objects: &dyn ObjectStore, hex: &str, now: Timestamp) -> Result<RefScan> {
    let mut out = RefScan::default();
    for meta in objects.list_all(&StoreKey::big_refs_prefix(hex)).await? {
        let rec = match objects.get_range(&meta.key, ByteRange::All).await {
            Ok((_, body)) => serde_json::from_slice::<RefRecord>(&body).ok(),
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        match rec {
            Some(r) if now.micros() >= r.expires_at_us => {
                out.expired.push((meta.key, (r.uid, r.date)));
            }
            // Unreadable records count as live: keeping an object is the safe side.
            _ => out.live += 1,
        }
    }
    Ok(out)
}

/// Bounds how long after its reference scan began a collection may still
/// delete (see the module doc): refs taken after the scan passed a shard
/// must still be live when they are listed.
#[derive(Debug, Clone, Copy)]
pub struct GcWindow {
    scan_started: Instant,
    limit: Duration,
}

impl GcWindow {
    /// Call right before the scan of shard references starts.
    pub fn start(ttl: Duration) -> Self {
        Self {
            scan_started: Instant::now(),
            limit: ttl / 2,
        }
    }

    /// Call right before each delete.
    pub fn open(&self) -> bool {
        self.scan_started.elapsed() < self.limit
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::memory::MemoryStore;

    #[tokio::test]
    async fn refs_are_live_until_they_expire() {
        let objects = MemoryStore::new();
        let r = BigRef::take(
            &objects,
            "ab01",
            "packer-1",
            ("u1", 20240517),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let now = Timestamp::now();
        assert!(!r.needs_renewal(now));
        let scan = refs_of(&objects, "ab01", now).await.unwrap();
        assert_eq!((scan.live, scan.expired.len()), (1, 0));
        let later = Timestamp::from_micros(now.micros() + 61_000_000);
        assert!(r.needs_renewal(later));
        let scan = refs_of(&objects, "ab01", later).await.unwrap();
        assert_eq!(scan.live, 0);
        assert_eq!(scan.expired[0].1, ("u1".to_string(), 20240517));
        assert_eq!(refs_of(&objects, "ab02", now).await.unwrap().live, 0);
    }

    #[test]
    fn the_window_closes_after_half_the_ttl() {
        assert!(GcWindow::start(Duration::from_secs(60)).open());
        assert!(!GcWindow::start(Duration::ZERO).open());
    }
}
