//! The store's write protocol: the rules about what may be written when,
//! in one place, so the packer, the repacker and every other tool follow the
//! same ones (docs/CONCURRENCY.md states them as invariants I1–I6).
//!
//! - [`publish`]: a shard generation replaces the one it was built on, or
//!   the writer rebuilds (conditional write, or a re-check where the server
//!   ignores conditions).
//! - [`deletions`]: a packer never adds a deleted `(uid, day)`.
//! - [`bigrefs`]: a big file is deleted only when no shard and no packer in
//!   flight can reference it.
//! - [`checked`]: the repacker re-checks shards that changed since it last
//!   proved their deletions.
//! - [`journal`]: a repacker's crash between publishing and marking keeps
//!   its proofs exact.
//! - [`lease`]: one repacker per store.

pub mod bigrefs;
pub mod checked;
pub mod deletions;
pub mod journal;
pub mod lease;
pub mod publish;

pub use bigrefs::{BigRef, DEFAULT_BIG_REF_TTL, GcWindow, RefScan, big_ref_ttl, refs_of};
pub use deletions::DeletionGuard;
pub use journal::RepackJournal;
pub use publish::{PublishError, ShardPublish, rebuild_on_conflict, same_etag};

/// A name unique to this process and run, `host-pid-random`, safe as one
/// key segment: who holds a lease or a big-file ref.
pub fn holder_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}
