//! Why a packer run could not proceed (per-file failures are not errors:
//! they are [`crate::report::FileError`]s in the report). Matchable by
//! [`PackError::kind`]; binaries add their own context with `anyhow`.

use std::io;

use thiserror::Error;

use crate::confine::RootError;
use crate::from_s3::FromS3Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PackError {
    /// Options that contradict each other or the store (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The input (a manifest, a directory) is not what it must be.
    #[error("{0}")]
    Input(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The store failed as a whole (opening it, its tombstone log).
    #[error("{context}: {source}")]
    Store {
        context: String,
        #[source]
        source: des_storage::Error,
    },
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
    /// Input the format refuses (a timestamp, a compression name, n_bits).
    #[error(transparent)]
    Format(#[from] des_format::FormatError),
    #[error("{0}")]
    Number(#[from] std::num::ParseIntError),
    #[error(transparent)]
    FromS3(#[from] FromS3Error),
    #[error(transparent)]
    Roots(#[from] RootError),
    /// A worker thread panicked or stopped early.
    #[error("{0}")]
    Internal(String),
    /// An error given more context on its way up.
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<PackError>,
    },
}

/// What a caller can do about a [`PackError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackErrorKind {
    /// Fix the command line or the input.
    Usage,
    /// Local files (spill directory, manifest, source tree) failed.
    Io,
    /// The store failed; retrying later may help.
    Store,
    /// A bug or a crash of a worker.
    Internal,
}

impl PackError {
    pub fn kind(&self) -> PackErrorKind {
        match self {
            Self::Usage(_)
            | Self::Input(_)
            | Self::Json { .. }
            | Self::Roots(_)
            | Self::Format(_)
            | Self::Number(_) => PackErrorKind::Usage,
            Self::FromS3(FromS3Error::Checkpoint { .. }) => PackErrorKind::Io,
            Self::FromS3(_) => PackErrorKind::Usage,
            Self::Io { .. } => PackErrorKind::Io,
            Self::Store { .. } => PackErrorKind::Store,
            Self::Internal(_) => PackErrorKind::Internal,
            Self::Context { source, .. } => source.kind(),
        }
    }
}

pub type Result<T, E = PackError> = std::result::Result<T, E>;

// `?` without a context says which kind of thing failed.
impl From<io::Error> for PackError {
    fn from(source: io::Error) -> Self {
        source.with("I/O".into())
    }
}

impl From<des_storage::Error> for PackError {
    fn from(source: des_storage::Error) -> Self {
        source.with("store".into())
    }
}

impl From<serde_json::Error> for PackError {
    fn from(source: serde_json::Error) -> Self {
        source.with("JSON".into())
    }
}

impl From<std::num::TryFromIntError> for PackError {
    fn from(e: std::num::TryFromIntError) -> Self {
        Self::Usage(e.to_string())
    }
}

/// Errors the packer wraps with a context string.
pub trait IntoPackError {
    fn with(self, context: String) -> PackError;
}

impl IntoPackError for io::Error {
    fn with(self, context: String) -> PackError {
        PackError::Io {
            context,
            source: self,
        }
    }
}

impl IntoPackError for des_storage::Error {
    fn with(self, context: String) -> PackError {
        PackError::Store {
            context,
            source: self,
        }
    }
}

impl IntoPackError for serde_json::Error {
    fn with(self, context: String) -> PackError {
        PackError::Json {
            context,
            source: self,
        }
    }
}

impl IntoPackError for PackError {
    fn with(self, context: String) -> PackError {
        PackError::Context {
            context,
            source: Box::new(self),
        }
    }
}

impl IntoPackError for std::num::TryFromIntError {
    fn with(self, context: String) -> PackError {
        PackError::Usage(format!("{context}: {self}"))
    }
}

impl IntoPackError for std::num::ParseIntError {
    fn with(self, context: String) -> PackError {
        PackError::Usage(format!("{context}: {self}"))
    }
}

impl IntoPackError for des_format::FormatError {
    fn with(self, context: String) -> PackError {
        PackError::Usage(format!("{context}: {self}"))
    }
}

/// `.context(..)` / `.with_context(..)` as with `anyhow`, into a typed error.
pub trait Context<T> {
    fn context(self, context: impl Into<String>) -> Result<T>;
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: IntoPackError> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.with(context.into()))
    }

    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| e.with(f().into()))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.ok_or_else(|| PackError::Input(context.into()))
    }

    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.ok_or_else(|| PackError::Input(f().into()))
    }
}

/// `return Err(PackError::Usage(format!(..)))`, as `anyhow::bail!` reads.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::PackError::Usage(format!($($arg)*)))
    };
}
pub(crate) use bail;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn kinds_survive_context() {
        let io: Result<()> = Err(io::Error::other("disk")).context("spilling");
        let e = io.context("planning").unwrap_err();
        assert_eq!(e.kind(), PackErrorKind::Io);
        assert_eq!(e.to_string(), "planning: spilling: disk");
        let store: Result<()> = Err(des_storage::Error::Invalid("x".into())).context("opening");
        assert_eq!(store.unwrap_err().kind(), PackErrorKind::Store);
        let missing: Result<u8> = None.context("no input");
        assert_eq!(missing.unwrap_err().kind(), PackErrorKind::Usage);
    }
}
