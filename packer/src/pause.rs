//! Deliberate pauses for tests: `DES_PACK_PAUSE_AT=<point>` makes the packer
//! stop itself with SIGSTOP at that point, so a test can run another tool
//! against the store while the packer is frozen mid-run (as a descheduled or
//! swapped-out pod would be), then resume it with SIGCONT.

/// Where a run can be made to pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PausePoint {
    /// A big file's object was looked up (and will be relied on if present).
    AfterBigFileCheck,
}

impl PausePoint {
    pub const ENV: &'static str = "DES_PACK_PAUSE_AT";

    pub fn name(self) -> &'static str {
        match self {
            Self::AfterBigFileCheck => "after_big_file_check",
        }
    }

    /// Stops the process if the environment asks for a pause here.
    pub fn check(self) {
        if std::env::var(Self::ENV).is_ok_and(|v| v == self.name()) {
            eprintln!("des-pack: {}={}: stopping", Self::ENV, self.name());
            let me = rustix::process::getpid();
            if let Err(e) = rustix::process::kill_process(me, rustix::process::Signal::STOP) {
                eprintln!("des-pack: could not stop: {e}");
            }
        }
    }
}
