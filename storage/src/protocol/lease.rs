//! One repacker per store at a time: a lease object `_des/repack.lease`
//! holding who has it and until when. Kept here, with the rest of the
//! store's write protocol, so every tool that must exclude the repacker
//! reads the same record the same way.
//!
//! Acquiring creates the object with a conditional create (or, once it has
//! expired, replaces it with `If-Match` on the expired version's ETag), then
//! reads it back. On stores that do not enforce conditional writes (Garage)
//! the write is unconditional, so the read-back happens after a settle delay:
//! of two repackers racing, both see whichever write landed last and the
//! other one backs off. A holder renews the lease in the background; a
//! repacker that cannot renew stops before publishing anything more.
//! With zones, every store of the placement has its own lease, taken in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::{Error, ErrorKind};
use crate::object::{ByteRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use bytes::Bytes;
use des_format::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

pub use crate::keys::LEASE_KEY;

/// Why a lease could not be taken or kept.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another holder has it: not a failure of this one.
    #[error("another repacker holds {key}: {holder}, until {expires_at}")]
    Held {
        key: String,
        holder: String,
        expires_at: String,
    },
    /// It expired or was taken over while this holder was working.
    #[error("lost the repack lease {key}: {detail}")]
    Lost { key: String, detail: String },
    #[error(transparent)]
    Store(#[from] Error),
    #[error("{0}")]
    Invalid(String),
}

type Result<T, E = LeaseError> = std::result::Result<T, E>;
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);
/// Wait before reading back a lease written without a condition.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
pub struct LeaseConfig {
    pub ttl: Duration,
    pub settle: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            settle: DEFAULT_SETTLE,
        }
    }
}

/// The lease object's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// `host-pid-random`: unique per run.
    pub holder: String,
    pub acquired_at: String,
    pub expires_at: String,
    /// `expires_at` in µs since the epoch, for comparisons.
    pub expires_at_us: i64,
}

impl LeaseRecord {
    fn new(holder: &str, acquired_at: Timestamp, ttl: Duration) -> Self {
        let ttl_us = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
        let expires = Timestamp::from_micros(acquired_at.micros().saturating_add(ttl_us));
        Self {
            holder: holder.to_string(),
            acquired_at: acquired_at.to_rfc3339(),
            expires_at: expires.to_rfc3339(),
            expires_at_us: expires.micros(),
        }
    }

    pub fn expired(&self, now: Timestamp) -> bool {
        now.micros() >= self.expires_at_us
    }
}

pub use super::holder_id;

struct Part {
    objects: Arc<dyn ObjectStore>,
    etag: Option<String>,
    conditional: bool,
}

/// A held lease (on every store of the placement).
pub struct Lease {
    holder: String,
    cfg: LeaseConfig,
    parts: Vec<Part>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("holder", &self.holder)
            .field("stores", &self.parts.len())
            .finish()
    }
}

async fn read_record(objects: &dyn ObjectStore) -> Result<Option<(LeaseRecord, Option<String>)>> {
    match objects.get_range(LEASE_KEY, ByteRange::All).await {
        Ok((meta, body)) => {
            let rec = serde_json::from_slice(&body).map_err(|e| {
                LeaseError::Invalid(format!(
                    "{LEASE_KEY} in {} is not a lease ({e}); remove it if no repacker runs",
                    objects.describe()
                ))
            })?;
            Ok(Some((rec, meta.etag)))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn held(objects: &dyn ObjectStore, rec: &LeaseRecord) -> LeaseError {
    LeaseError::Held {
        key: format!("{}/{LEASE_KEY}", objects.describe()),
        holder: rec.holder.clone(),
        expires_at: rec.expires_at.clone(),
    }
}

impl Lease {
    /// Takes the lease on every store, or none: on failure, the ones already
    /// taken are released again.
    pub async fn acquire(
        stores: Vec<Arc<dyn ObjectStore>>,
        holder: &str,
        cfg: LeaseConfig,
    ) -> Result<Self> {
        let mut lease = Self {
            holder: holder.to_string(),
            cfg,
            parts: Vec::new(),
        };
        for objects in stores {
            match lease.acquire_one(objects).await {
                Ok(part) => lease.parts.push(part),
                Err(e) => {
                    let _ = lease.release().await;
                    return Err(e);
                }
            }
        }
        Ok(lease)
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    async fn acquire_one(&self, objects: Arc<dyn ObjectStore>) -> Result<Part> {
        let conditional = objects.capabilities().conditional_put;
        let now = Timestamp::now();
        let mode = match read_record(objects.as_ref()).await? {
            None => PutMode::Create,
            Some((rec, _)) if rec.holder != self.holder && !rec.expired(now) => {
                return Err(held(objects.as_ref(), &rec));
            }
            Some((_, Some(etag))) if conditional => PutMode::UpdateIfMatch(etag),
            Some(_) => PutMode::Overwrite,
        };
        let rec = LeaseRecord::new(&self.holder, now, self.cfg.ttl);
        let body = serde_json::to_vec(&rec).map_err(|e| LeaseError::Invalid(e.to_string()))?;
        match objects
            .put(LEASE_KEY, Bytes::from(body), PutOptions { mode })
            .await
        {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::PreconditionFailed => {
                // Someone else created or took it over between our read and write.
                return match read_record(objects.as_ref()).await? {
                    Some((other, _)) => Err(held(objects.as_ref(), &other)),
                    None => Err(e.into()),
                };
            }
            Err(e) => return Err(e.into()),
        }
        if !conditional {
            tokio::time::sleep(self.cfg.settle).await;
        }
        match read_record(objects.as_ref()).await? {
            Some((got, etag)) if got.holder == self.holder => Ok(Part {
                objects,
                etag,
                conditional,
            }),
            Some((other, _)) => Err(held(objects.as_ref(), &other)),
            None => Err(LeaseError::Invalid(format!(
                "{LEASE_KEY} vanished from {} right after it was written",
                objects.describe()
            ))),
        }
    }

    /// Extends the lease by its TTL from now. Fails (`LeaseLost`) if another
    /// repacker has it now.
    pub async fn renew(&mut self) -> Result<()> {
        let holder = self.holder.clone();
        let ttl = self.cfg.ttl;
        for part in &mut self.parts {
            let lost = |detail: String| LeaseError::Lost {
                key: format!("{}/{LEASE_KEY}", part.objects.describe()),
                detail,
            };
            let mode = match (&part.etag, part.conditional) {
                (Some(etag), true) => PutMode::UpdateIfMatch(etag.clone()),
                _ => match read_record(part.objects.as_ref()).await? {
                    Some((rec, _)) if rec.holder == holder => PutMode::Overwrite,
                    Some((rec, _)) => return Err(lost(format!("now held by {}", rec.holder))),
                    None => return Err(lost("the lease object is gone".into())),
                },
            };
            let rec = LeaseRecord::new(&holder, Timestamp::now(), ttl);
            let body = serde_json::to_vec(&rec).map_err(|e| LeaseError::Invalid(e.to_string()))?;
            match part
                .objects
                .put(LEASE_KEY, Bytes::from(body), PutOptions { mode })
                .await
            {
                Ok(put) => part.etag = put.etag,
                Err(e) if e.kind() == ErrorKind::PreconditionFailed => {
                    return Err(lost("taken over by another repacker".into()));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Gives the lease up (only where it is still ours).
    pub async fn release(&mut self) -> Result<()> {
        for part in self.parts.drain(..) {
            if let Some((rec, _)) = read_record(part.objects.as_ref()).await?
                && rec.holder == self.holder
            {
                part.objects.delete(LEASE_KEY).await?;
            }
        }
        Ok(())
    }
}

/// Renews a lease in the background every third of its TTL and raises a
/// flag if that ever fails, which the run checks before each publish.
pub struct LeaseKeeper {
    lease: Arc<Mutex<Lease>>,
    lost: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    pub fn start(lease: Lease) -> Self {
        let every = (lease.cfg.ttl / 3).max(Duration::from_millis(100));
        let lease = Arc::new(Mutex::new(lease));
        let lost = Arc::new(AtomicBool::new(false));
        let (l, f) = (Arc::clone(&lease), Arc::clone(&lost));
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = l.lock().await.renew().await {
                    eprintln!("des-repack: {e}");
                    f.store(true, Ordering::SeqCst);
                    return;
                }
            }
        });
        Self { lease, lost, task }
    }

    /// Whether it is still safe to publish.
    pub fn lost(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.lost)
    }

    /// Stops renewing and releases the lease.
    pub async fn release(self) -> Result<()> {
        self.task.abort();
        let _ = self.task.await;
        if self.lost.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.lease.lock().await.release().await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use crate::memory::MemoryStore;

    use super::*;

    fn cfg(ttl_ms: u64) -> LeaseConfig {
        LeaseConfig {
            ttl: Duration::from_millis(ttl_ms),
            settle: Duration::from_millis(10),
        }
    }

    #[tokio::test]
    async fn a_second_holder_is_refused_until_expiry() {
        let mem: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
        let mut a = Lease::acquire(vec![Arc::clone(&mem)], "a", cfg(60_000))
            .await
            .unwrap();
        let err = Lease::acquire(vec![Arc::clone(&mem)], "b", cfg(60_000))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, LeaseError::Held { holder, .. } if holder == "a"),
            "{err}"
        );
        a.renew().await.unwrap();
        a.release().await.unwrap();
        let mut b = Lease::acquire(vec![Arc::clone(&mem)], "b", cfg(60_000))
            .await
            .unwrap();
        b.release().await.unwrap();
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_its_holder_cannot_renew() {
        let mem: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
        let mut a = Lease::acquire(vec![Arc::clone(&mem)], "a", cfg(1))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut b = Lease::acquire(vec![Arc::clone(&mem)], "b", cfg(60_000))
            .await
            .unwrap();
        let err = a.renew().await.unwrap_err();
        assert!(matches!(err, LeaseError::Lost { .. }), "{err}");
        // A's release must not remove B's lease.
        a.release().await.unwrap();
        assert!(mem.head(LEASE_KEY).await.is_ok());
        b.release().await.unwrap();
        assert!(mem.head(LEASE_KEY).await.is_err());
    }

    #[tokio::test]
    async fn all_or_nothing_over_several_stores() {
        let (s1, s2): (Arc<dyn ObjectStore>, Arc<dyn ObjectStore>) =
            (Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new()));
        let mut other = Lease::acquire(vec![Arc::clone(&s2)], "other", cfg(60_000))
            .await
            .unwrap();
        let err = Lease::acquire(vec![Arc::clone(&s1), Arc::clone(&s2)], "me", cfg(60_000))
            .await
            .unwrap_err();
        assert!(matches!(err, LeaseError::Held { .. }));
        assert!(
            s1.head(LEASE_KEY).await.is_err(),
            "released the first again"
        );
        other.release().await.unwrap();
    }
}
