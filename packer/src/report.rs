use std::fmt;

use serde::Serialize;

use crate::source::RecordFailure;

/// Why a file was not packed, as scripts and metrics match on it (`kind`
/// in the JSON report, `des_pack_files_failed_total{reason}`); the text
/// (`reason`) says the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The record itself: a manifest line, or a key or name that gives no
    /// valid uid or `created_at`.
    Record,
    /// Another record of the run has the same (uid, day).
    Duplicate,
    /// The source is outside every `--source-root`.
    SourceRefused,
    SourceMissing,
    SourceUnreadable,
    /// The source changed while it was being packed.
    SourceChanged,
    /// The (uid, day) is already stored with other content.
    ContentConflict,
    /// The entry cannot be stored (encoding failed, or v3 cannot hold it).
    Unsupported,
    /// The store failed (an upload, a read of the shard, the publish).
    Store,
    /// The shard the file belongs in cannot be built on (damaged, or not a
    /// v3 shard of its place): run des-verify.
    ShardUnusable,
    /// The shard kept changing under concurrent writers: retry later.
    Contention,
    /// The (uid, day) has a tombstone (listed under `deleted`).
    Deleted,
}

impl FailureKind {
    pub const ALL: [Self; 12] = [
        Self::Record,
        Self::Duplicate,
        Self::SourceRefused,
        Self::SourceMissing,
        Self::SourceUnreadable,
        Self::SourceChanged,
        Self::ContentConflict,
        Self::Unsupported,
        Self::Store,
        Self::ShardUnusable,
        Self::Contention,
        Self::Deleted,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Self::Record => "record",
            Self::Duplicate => "duplicate",
            Self::SourceRefused => "source_refused",
            Self::SourceMissing => "source_missing",
            Self::SourceUnreadable => "source_unreadable",
            Self::SourceChanged => "source_changed",
            Self::ContentConflict => "content_conflict",
            Self::Unsupported => "unsupported",
            Self::Store => "store",
            Self::ShardUnusable => "shard_unusable",
            Self::Contention => "contention",
            Self::Deleted => "deleted",
        }
    }
}

/// Why one file failed: its kind and what happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct FileError {
    pub kind: FailureKind,
    pub detail: String,
}

impl FileError {
    pub fn new(kind: FailureKind, detail: impl fmt::Display) -> Self {
        Self {
            kind,
            detail: detail.to_string(),
        }
    }
}

/// Per-file failure as it appears in the report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Failure {
    pub line: u64,
    pub uid: Option<String>,
    pub source: Option<String>,
    pub kind: FailureKind,
    pub reason: String,
}

impl From<RecordFailure> for Failure {
    fn from(f: RecordFailure) -> Self {
        Self {
            line: f.line,
            uid: f.uid,
            source: f.source,
            kind: f.kind,
            reason: f.reason,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ShardStat {
    pub key: String,
    pub generation: u64,
    /// Entries in the shard after this run.
    pub entries: u64,
    pub new_entries: u64,
    /// Object size after this run.
    pub bytes: u64,
    pub new_original_bytes: u64,
    pub new_stored_bytes: u64,
    pub seconds: f64,
}

/// The `--report` / `--json` document.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PackReport {
    pub store: String,
    pub store_created: bool,
    pub n_bits: u8,
    pub files_seen: u64,
    pub files_packed: u64,
    /// Already in the store with identical content (re-runs are idempotent).
    pub files_already_present: u64,
    pub files_failed: u64,
    /// `files_failed` by kind (every failure, also past the listed ones).
    pub files_failed_by_kind: std::collections::BTreeMap<FailureKind, u64>,
    pub files_outside_shard_range: u64,
    /// Files whose (uid, day) has a tombstone: not packed, so a deleted file
    /// never comes back (a re-run, or the same file sent again). Not failures.
    pub files_deleted: u64,
    pub bytes_in: u64,
    pub bytes_stored: u64,
    pub big_files: u64,
    pub shards_written: u64,
    pub shards_unchanged: u64,
    /// S3 multipart uploads of crashed runs aborted at the start of this one.
    pub stale_uploads_aborted: u64,
    /// Temp files of crashed runs (local stores) removed at the start of this one.
    pub temp_files_swept: u64,
    /// Problems that did not stop the run.
    pub warnings: Vec<String>,
    pub elapsed_seconds: f64,
    pub shards: Vec<ShardStat>,
    /// At most [`MAX_REPORTED_FAILURES`] entries; `files_failed` has the full count.
    pub failures: Vec<Failure>,
    /// At most [`MAX_REPORTED_FAILURES`] entries; `files_deleted` has the full count.
    pub deleted: Vec<Failure>,
    /// `--from-s3` runs only: the listing, its checkpoint, deleted originals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_s3: Option<crate::from_s3::FromS3Stats>,
    /// Dictionaries trained in this run (`--dict auto`), kept or not.
    pub dictionaries: Vec<crate::dicts::TrainedDict>,
}

pub const MAX_REPORTED_FAILURES: usize = 10_000;

impl PackReport {
    pub fn fail(&mut self, f: Failure) {
        self.files_failed += 1;
        *self.files_failed_by_kind.entry(f.kind).or_default() += 1;
        if self.failures.len() < MAX_REPORTED_FAILURES {
            self.failures.push(f);
        }
    }

    pub fn skip_deleted(&mut self, f: Failure) {
        self.files_deleted += 1;
        if self.deleted.len() < MAX_REPORTED_FAILURES {
            self.deleted.push(f);
        }
    }

    /// Exit code 1 rather than 0: some file failed, or (`--from-s3
    /// --delete-sources-after-verify`) an original in the store could not
    /// be verified or deleted.
    pub fn any_failed(&self) -> bool {
        self.files_failed > 0
            || self
                .from_s3
                .as_ref()
                .is_some_and(|s| s.sources_failed_verification > 0)
    }

    /// Compression ratio of newly packed bytes (stored / original).
    pub fn ratio(&self) -> f64 {
        if self.bytes_in == 0 {
            1.0
        } else {
            self.bytes_stored as f64 / self.bytes_in as f64
        }
    }
}
