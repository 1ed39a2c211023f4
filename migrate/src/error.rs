//! Errors that stop a run, each with the exit code documented in `--help`.
//! Per-row problems (a file missing on disk, unreadable, refused by
//! `--source-root`) are not errors: they are listed in the report and the
//! rows are left unarchived.

use std::io;

/// Exit code: every selected row is archived (or there was nothing to do).
pub const EXIT_OK: u8 = 0;
/// Some rows failed (listed in the report, not marked); all others archived.
pub const EXIT_PARTIAL: u8 = 1;
/// Usage or configuration error: bad arguments or connection string, a
/// table/column the database does not have, a column of the wrong type.
pub const EXIT_CONFIG: u8 = 2;
/// The database is unreachable (connect, TLS, authentication) or failed
/// during the run; the batch in progress is not marked.
pub const EXIT_DATABASE: u8 = 3;
/// The store or local work files failed as a whole (not per row); the batch
/// in progress is not marked.
pub const EXIT_STORE: u8 = 4;
/// Another des-migrate holds this table's lock; nothing was done.
pub const EXIT_LOCKED: u8 = 5;

/// What kind of failure stopped the run: one per exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Config,
    Database,
    Store,
    Locked,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Bad arguments or connection string (never includes the password).
    #[error("{0}")]
    Usage(String),
    /// The database is reachable but does not match the configuration:
    /// table or column missing, no privilege, watermark table malformed.
    #[error("database schema: {0}")]
    Schema(String),
    /// Could not connect: refused, timed out, TLS or authentication failure.
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    /// A query failed after connecting (including a connection lost mid-run).
    #[error("database error while {what}: {source}")]
    Database {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("another des-migrate is archiving {table} (its advisory lock is held); nothing done")]
    Locked { table: String },
    /// Opening or writing the store failed for the whole run.
    #[error("store: {0}")]
    Store(#[from] des_packer::error::PackError),
    /// Local work files (manifests in the temp directory).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl MigrateError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Usage(_) | Self::Schema(_) => ErrorKind::Config,
            Self::Connect(_) | Self::Database { .. } => ErrorKind::Database,
            Self::Store(_) | Self::Io { .. } => ErrorKind::Store,
            Self::Locked { .. } => ErrorKind::Locked,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self.kind() {
            ErrorKind::Config => EXIT_CONFIG,
            ErrorKind::Database => EXIT_DATABASE,
            ErrorKind::Store => EXIT_STORE,
            ErrorKind::Locked => EXIT_LOCKED,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// A query error. SQLSTATE class 42 (undefined table or column, wrong
    /// type, no privilege) means the configuration does not match the
    /// database, not that the database is down: a retry would not help.
    pub(crate) fn db(what: &'static str, source: tokio_postgres::Error) -> Self {
        match source.as_db_error() {
            Some(e) if e.code().code().starts_with("42") => Self::Schema(format!(
                "{what}: {}{}",
                e.message(),
                e.hint()
                    .map(|h| format!(" (hint: {h})"))
                    .unwrap_or_default()
            )),
            _ => Self::Database { what, source },
        }
    }
}
