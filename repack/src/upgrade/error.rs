//! Why an upgrade run, or one (date, shard) of it, did not complete.

use thiserror::Error;

/// The run could not proceed at all (exit 2); nothing of the legacy store
/// was deleted by it.
#[derive(Debug, Error)]
pub enum UpgradeError {
    #[error(transparent)]
    Storage(#[from] des_storage::Error),
    /// Bad options, or a store that contradicts them (n_bits).
    #[error("{0}")]
    Invalid(String),
    /// A `.meta` object that is not a Python DES sidecar this understands:
    /// it might hold deletions, and converting its part without them would
    /// bring deleted files back.
    #[error(
        "{key}: {detail}. Nothing was changed. Check what it is; --ignore-meta-files converts \
         the store leaving such objects (not their parts' files) as they are"
    )]
    MetaFile { key: String, detail: String },
}

/// One (date, shard) could not be converted; its legacy parts are left as
/// they are (the run goes on with the others, exit 1).
#[derive(Debug, Error)]
pub enum GroupError {
    #[error("{key}: {source}")]
    Storage {
        key: String,
        source: des_storage::Error,
    },
    /// A legacy part (or its big file) is damaged, or not what its key says.
    #[error("{key}: {detail}")]
    Corrupt { key: String, detail: String },
    /// Entries no reader can find under this n_bits (damage, or a part
    /// renamed by hand): converting would keep them unreachable, deleting the
    /// part would lose them.
    #[error(
        "{count} entr(y/ies) of {key} route to another shard with n_bits {n_bits} \
         (e.g. {example:?}): unreachable by any reader; left as it is"
    )]
    Unreachable {
        key: String,
        count: usize,
        example: String,
        n_bits: u8,
    },
    /// A legacy entry v3 cannot represent (uid over 1024 bytes, metadata that
    /// is not JSON or over 1 MiB).
    #[error("{uid:?}: {detail}; cannot be stored in a v3 shard")]
    Unsupported { uid: String, detail: String },
    /// The existing v3 shard of the (date, shard) cannot be built on.
    #[error("{key}: {detail}; run des-verify")]
    V3Shard { key: String, detail: String },
    /// The v3 shard kept changing under concurrent writers.
    #[error("the v3 shard kept changing while it was rebuilt; re-run later")]
    Conflict,
    /// The published v3 shard did not read back as written.
    #[error("{key}: verification failed: {detail}")]
    Verify { key: String, detail: String },
}

impl GroupError {
    pub fn storage(key: &str, source: des_storage::Error) -> Self {
        Self::Storage {
            key: key.to_string(),
            source,
        }
    }

    pub fn corrupt(key: &str, detail: impl std::fmt::Display) -> Self {
        Self::Corrupt {
            key: key.to_string(),
            detail: detail.to_string(),
        }
    }

    pub fn verify(key: &str, detail: impl std::fmt::Display) -> Self {
        Self::Verify {
            key: key.to_string(),
            detail: detail.to_string(),
        }
    }
}

/// An attempt's outcome: a conflict is retried on the shard's new generation.
pub(super) enum Attempt {
    Conflict,
    Failed(GroupError),
}

impl From<GroupError> for Attempt {
    fn from(e: GroupError) -> Self {
        Self::Failed(e)
    }
}
