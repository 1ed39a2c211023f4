//! Deliberate pauses for tests: `DES_UPGRADE_PAUSE_AT=<point>` makes
//! des-upgrade print a line on stderr and stop working at that point, so a
//! test can `kill -9` it there and prove that a re-run completes the job.

use std::time::Duration;

/// Where a run can be made to pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PausePoint {
    /// A group's v3 shard was published, not yet verified; no part deleted.
    AfterPublish,
    /// One of a group's legacy parts was deleted (the others not yet).
    AfterDeletePart,
}

impl PausePoint {
    pub const ENV: &'static str = "DES_UPGRADE_PAUSE_AT";

    pub fn name(self) -> &'static str {
        match self {
            Self::AfterPublish => "after_publish",
            Self::AfterDeletePart => "after_delete_part",
        }
    }

    /// Blocks this thread for good if the environment asks for a pause here
    /// (the caller runs on a blocking thread; the test kills the process).
    pub fn check(self) {
        if std::env::var(Self::ENV).is_ok_and(|v| v == self.name()) {
            eprintln!("des-upgrade: {}={}: paused", Self::ENV, self.name());
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
}
