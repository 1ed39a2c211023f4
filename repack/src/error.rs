//! Errors of the repack tools, with kinds callers (exit codes, retries) match on.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum RepackError {
    #[error(transparent)]
    Storage(#[from] des_storage::Error),
    /// Another repacker holds the store's lease: not a failure of this one.
    #[error("another repacker holds {key}: {holder}, until {expires_at}")]
    LeaseHeld {
        key: String,
        holder: String,
        expires_at: String,
    },
    /// The lease expired or was taken over while this run was working.
    #[error("lost the repack lease {key}: {detail}")]
    LeaseLost { key: String, detail: String },
    /// A shard cannot be repacked as it is (not v3, identity mismatch,
    /// corrupt entry, failed verification of the new generation).
    #[error("{key}: {detail}")]
    Shard { key: String, detail: String },
    /// Someone else replaced the shard while it was rewritten.
    #[error("{key} changed while it was rewritten")]
    Conflict { key: String },
    #[error("{0}")]
    Invalid(String),
}

impl From<des_storage::protocol::lease::LeaseError> for RepackError {
    fn from(e: des_storage::protocol::lease::LeaseError) -> Self {
        use des_storage::protocol::lease::LeaseError;
        match e {
            LeaseError::Held {
                key,
                holder,
                expires_at,
            } => Self::LeaseHeld {
                key,
                holder,
                expires_at,
            },
            LeaseError::Lost { key, detail } => Self::LeaseLost { key, detail },
            LeaseError::Store(e) => Self::Storage(e),
            LeaseError::Invalid(m) => Self::Invalid(m),
        }
    }
}

pub type Result<T, E = RepackError> = std::result::Result<T, E>;

impl RepackError {
    pub fn shard(key: &str, detail: impl std::fmt::Display) -> Self {
        Self::Shard {
            key: key.to_string(),
            detail: detail.to_string(),
        }
    }

    /// Turns a storage error on `key` into a conflict when it means the
    /// shard was replaced under us (a failed `If-Match`).
    pub fn on_shard(key: &str, e: des_storage::Error) -> Self {
        if e.kind() == des_storage::ErrorKind::PreconditionFailed {
            Self::Conflict {
                key: key.to_string(),
            }
        } else {
            Self::Storage(e)
        }
    }
}
