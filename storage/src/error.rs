use std::time::Duration;

use thiserror::Error;

/// Matchable error kinds, so callers (HTTP status mapping, retry policy, CLI
/// exit codes) decide on `kind()` rather than on message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    NotFound,
    PreconditionFailed,
    Unauthorized,
    Throttled,
    Unavailable,
    Timeout,
    Corrupt,
    Invalid,
    Other,
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("not found: {key}")]
    NotFound { key: String },
    #[error("precondition failed for {key}")]
    PreconditionFailed { key: String },
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("throttled: {msg}")]
    Throttled {
        msg: String,
        retry_after: Option<Duration>,
    },
    #[error("unavailable: {msg}")]
    Unavailable {
        msg: String,
        retry_after: Option<Duration>,
    },
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("corrupt object {key}: {detail}")]
    Corrupt { key: String, detail: String },
    /// Caller or configuration error (bad key, mismatched store settings).
    #[error("{0}")]
    Invalid(String),
    #[error("{msg}: {source}")]
    Other {
        msg: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::PreconditionFailed { .. } => ErrorKind::PreconditionFailed,
            Self::Unauthorized(_) => ErrorKind::Unauthorized,
            Self::Throttled { .. } => ErrorKind::Throttled,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Timeout(_) => ErrorKind::Timeout,
            Self::Corrupt { .. } => ErrorKind::Corrupt,
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::Other { .. } => ErrorKind::Other,
        }
    }

    /// Worth retrying with backoff: transient by nature, and reads are idempotent.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Throttled | ErrorKind::Unavailable | ErrorKind::Timeout
        )
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after, .. } | Self::Unavailable { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    pub fn not_found(key: impl Into<String>) -> Self {
        Self::NotFound { key: key.into() }
    }

    pub fn corrupt(key: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Self::Corrupt {
            key: key.into(),
            detail: detail.to_string(),
        }
    }

    pub fn other(
        msg: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Other {
            msg: msg.into(),
            source: source.into(),
        }
    }

    /// Maps an I/O error on `key`, keeping "not found" matchable.
    pub fn io(key: &str, e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::NotFound => Self::not_found(key),
            K::PermissionDenied => Self::Unauthorized(format!("{key}: {e}")),
            K::TimedOut => Self::Timeout(format!("{key}: {e}")),
            K::Interrupted | K::WouldBlock => Self::Unavailable {
                msg: format!("{key}: {e}"),
                retry_after: None,
            },
            _ => Self::other(format!("i/o on {key}"), e),
        }
    }

    /// Attaches the object's name to a format-level error.
    pub fn format(key: &str, e: des_format::FormatError) -> Self {
        if e.is_corrupt() {
            Self::corrupt(key, e)
        } else {
            match e {
                des_format::FormatError::Io(io) => Self::io(key, io),
                other => Self::Invalid(format!("{key}: {other}")),
            }
        }
    }
}
