//! One packer run over a manifest, and what it means for each line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use des_packer::{Input, PackOptions, PackReport, Target};
use tokio::runtime::Handle;

use crate::error::MigrateError;

/// A pack run's verdict per manifest line. Lines in neither map are in the
/// store (packed now or already there, identical): durable.
#[derive(Debug)]
pub struct Packed {
    pub report: PackReport,
    /// Line → why the packer refused or failed it.
    pub failed: BTreeMap<u64, String>,
    /// Lines whose (uid, day) has a tombstone: deliberately deleted from
    /// DES, never packed again. Settled (marked / passed by the watermark),
    /// but their sources are never deleted by us.
    pub tombstoned: BTreeSet<u64>,
    /// False when the packer's report does not name every failed or
    /// tombstoned line, or does not account for every line: then no line
    /// can be taken as stored, and none is marked.
    pub complete: bool,
}

impl Packed {
    /// The line is in the store, as far as this run can tell.
    pub fn stored(&self, line: u64) -> bool {
        self.complete && !self.failed.contains_key(&line) && !self.tombstoned.contains(&line)
    }

    /// The line is done with: stored, or tombstoned.
    pub fn settled(&self, line: u64) -> bool {
        self.complete && !self.failed.contains_key(&line)
    }
}

/// Packs `manifest` (of `lines` lines) into `target`. `Err` only when the
/// run as a whole failed (store unreachable, spill directory unwritable);
/// per-file problems are in [`Packed::failed`]. Blocks: call it outside
/// the runtime's threads.
pub fn pack_manifest(
    manifest: &Path,
    lines: u64,
    opts: &PackOptions,
    target: &Target,
    handle: &Handle,
    progress: bool,
) -> Result<Packed, MigrateError> {
    let report = des_packer::pack_into(
        &Input::Manifest(manifest.to_path_buf()),
        opts,
        target,
        handle,
        progress,
    )
    .map_err(MigrateError::Store)?;
    Ok(classify(report, lines))
}

pub fn classify(report: PackReport, lines: u64) -> Packed {
    let failed: BTreeMap<u64, String> = report
        .failures
        .iter()
        .map(|f| (f.line, f.reason.clone()))
        .collect();
    let tombstoned: BTreeSet<u64> = report.deleted.iter().map(|f| f.line).collect();
    let accounted = report.files_packed
        + report.files_already_present
        + report.files_failed
        + report.files_deleted;
    let complete = failed.len() as u64 == report.files_failed
        && tombstoned.len() as u64 == report.files_deleted
        && report.files_outside_shard_range == 0
        && accounted == lines;
    Packed {
        report,
        failed,
        tombstoned,
        complete,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use des_packer::report::Failure;

    use super::*;

    fn failure(line: u64) -> Failure {
        Failure {
            line,
            uid: None,
            source: None,
            kind: des_packer::report::FailureKind::SourceMissing,
            reason: format!("bad {line}"),
        }
    }

    #[test]
    fn lines_are_stored_failed_or_tombstoned() {
        let mut r = PackReport {
            files_packed: 2,
            files_already_present: 1,
            ..PackReport::default()
        };
        r.fail(failure(2));
        r.skip_deleted(failure(4));
        let p = classify(r.clone(), 5);
        assert!(p.complete);
        assert!(p.stored(1) && p.stored(3) && p.stored(5));
        assert!(!p.stored(2) && !p.settled(2));
        assert!(!p.stored(4) && p.settled(4));
        // A line the packer did not account for: nothing can be trusted.
        let p = classify(r.clone(), 6);
        assert!(!p.complete && !p.stored(1));
        // A failure counted but not named.
        r.files_failed += 1;
        r.files_packed -= 1;
        assert!(!classify(r, 5).complete);
    }
}
