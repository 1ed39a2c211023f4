//! The human-readable summary printed at the end of a run.

use std::fmt;

use indicatif::HumanBytes;

use super::report::{FindingKind, VerifyReport};

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = self
            .only_key
            .as_deref()
            .map_or_else(String::new, |k| format!(" ({k})"));
        let n_bits = self
            .n_bits
            .map_or_else(String::new, |n| format!(", n_bits {n}"));
        writeln!(
            f,
            "store:           {}{what} [{}{n_bits}]",
            self.store, self.layout
        )?;
        let vanished = match self.shards_vanished {
            0 => String::new(),
            n => format!(" ({n} vanished while listed)"),
        };
        writeln!(f, "shards:          {}{vanished}", self.shards)?;
        let sample = self.sample.map_or_else(String::new, |s| {
            format!(" (sample {}%, seed {})", s.percent, s.seed)
        });
        writeln!(
            f,
            "entries checked: {} of {}{sample}",
            self.entries_checked, self.entries_total
        )?;
        writeln!(
            f,
            "bytes read:      {} ({} bytes)",
            HumanBytes(self.bytes_read),
            self.bytes_read
        )?;
        writeln!(f, "corrupt shards:  {}", self.corrupt_shards)?;
        writeln!(f, "corrupt entries: {}", self.corrupt_entries)?;
        if self.tombstones_pending > 0 || !self.shards_with_pending_tombstones.is_empty() {
            writeln!(
                f,
                "pending deletes: {} tombstones; {} shards hold deleted files",
                self.tombstones_pending,
                self.shards_with_pending_tombstones.len()
            )?;
        }
        if self.stray_objects > 0 {
            writeln!(f, "stray objects:   {}", self.stray_objects)?;
        }
        for x in &self.findings {
            let label = match x.kind {
                FindingKind::Stray => "STRAY",
                FindingKind::MissingExternal => "MISSING",
                FindingKind::Misrouted => "MISROUTED",
                FindingKind::Shard | FindingKind::Placement | FindingKind::Entry => "CORRUPT",
            };
            match &x.uid {
                Some(uid) => writeln!(f, "{label} {} uid={uid}: {}", x.key, x.reason)?,
                None => writeln!(f, "{label} {}: {}", x.key, x.reason)?,
            }
        }
        for s in &self.shards_with_pending_tombstones {
            writeln!(
                f,
                "PENDING {}: {} tombstones, {} deleted entries, garbage {:.1}%",
                s.key,
                s.pending_tombstones,
                s.deleted_entries,
                s.garbage_ratio * 100.0
            )?;
        }
        for p in &self.problems {
            match &p.uid {
                Some(uid) => writeln!(f, "UNCHECKED {} uid={uid}: {}", p.key, p.message)?,
                None => writeln!(f, "UNCHECKED {}: {}", p.key, p.message)?,
            }
        }
        let verdict = match self.exit_code() {
            0 => "clean",
            1 => "CORRUPTION FOUND",
            _ => "INCOMPLETE: some objects could not be checked",
        };
        write!(f, "result:          {verdict}")
    }
}
