//! Deliberate crashes for tests: `DES_REPACK_CRASH_AT=<point>` makes the
//! repacker abort (SIGABRT, no cleanup, like `kill -9`) when it reaches that
//! point, so tests can prove every live file survives a crash there.

/// Where a run can be made to crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// New generation fully written and verified, not yet published.
    BeforePublish,
    /// New generation published, tombstones not yet marked applied.
    AfterPublish,
    /// Tombstones marked applied, big files not yet collected.
    AfterMark,
    /// A shard with nothing live left: big files registered and the journal
    /// written, the shard not yet deleted.
    BeforeDelete,
    /// The shard deleted, its tombstones not yet marked.
    AfterDelete,
    /// Tombstone compaction: a segment written, not yet read back.
    CompactWritten,
    /// A segment verified, nothing it merged deleted yet.
    CompactVerified,
    /// The merged small records deleted, their markers not yet.
    CompactRecordsDeleted,
    /// Segments merged into one, written, not yet read back.
    MergeWritten,
    /// The merged segment verified, its inputs not yet deleted.
    MergeVerified,
}

impl CrashPoint {
    pub const ENV: &'static str = "DES_REPACK_CRASH_AT";

    pub fn name(self) -> &'static str {
        match self {
            Self::BeforePublish => "before_publish",
            Self::AfterPublish => "after_publish",
            Self::AfterMark => "after_mark",
            Self::BeforeDelete => "before_delete",
            Self::AfterDelete => "after_delete",
            Self::CompactWritten => "compact_written",
            Self::CompactVerified => "compact_verified",
            Self::CompactRecordsDeleted => "compact_records_deleted",
            Self::MergeWritten => "merge_written",
            Self::MergeVerified => "merge_verified",
        }
    }

    /// The crash point of a compaction step, if any.
    pub fn of_compaction(step: des_storage::tombstones::CompactStep) -> Option<Self> {
        use des_storage::tombstones::CompactStep;
        match step {
            CompactStep::SegmentWritten => Some(Self::CompactWritten),
            CompactStep::SegmentVerified => Some(Self::CompactVerified),
            CompactStep::RecordsDeleted => Some(Self::CompactRecordsDeleted),
            CompactStep::MergeWritten => Some(Self::MergeWritten),
            CompactStep::MergeVerified => Some(Self::MergeVerified),
            CompactStep::Done => None,
        }
    }

    /// Aborts the process if the environment asks for a crash here.
    pub fn check(self) {
        if std::env::var(Self::ENV).is_ok_and(|v| v == self.name()) {
            eprintln!("des-repack: {}={}: aborting", Self::ENV, self.name());
            std::process::abort();
        }
    }
}
