use serde::Serialize;

use crate::source::RecordFailure;

/// Per-file failure as it appears in the report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Failure {
    pub line: u64,
    pub uid: Option<String>,
    pub source: Option<String>,
    pub reason: String,
}

impl From<RecordFailure> for Failure {
    fn from(f: RecordFailure) -> Self {
        Self {
            line: f.line,
            uid: f.uid,
            source: f.source,
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
}

pub const MAX_REPORTED_FAILURES: usize = 10_000;

impl PackReport {
    pub fn fail(&mut self, f: Failure) {
        self.files_failed += 1;
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
