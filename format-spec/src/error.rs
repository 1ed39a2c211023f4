use thiserror::Error;

/// Errors of the pure format layer. Callers that know which object they were
/// reading attach its name (see `des_storage::Error::Corrupt`).
#[derive(Debug, Error)]
pub enum FormatError {
    /// The bytes do not form a valid shard (or legacy shard): bad magic,
    /// checksum mismatch, out-of-range or overlapping entries, truncation.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// Stored bytes of one entry fail their CRC32C or content digest.
    #[error("entry {uid:?} is corrupt: {detail}")]
    CorruptEntry { uid: String, detail: String },
    /// Well-formed but not something this version can read.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Bad caller input (routing parameters, timestamps, duplicate uids, limits).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl FormatError {
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Self::Corrupt(_) | Self::CorruptEntry { .. })
    }
}

pub type Result<T, E = FormatError> = std::result::Result<T, E>;

pub(crate) fn corrupt<T>(msg: impl Into<String>) -> Result<T> {
    Err(FormatError::Corrupt(msg.into()))
}
