//! The human-readable summary printed at the end of a run.

use std::fmt;

use indicatif::HumanBytes;

use super::report::{FindingKind, KeptDeletion, VerifyReport};

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
        if !self.overdue_deletions.is_empty() {
            let deadline = self
                .max_delay_seconds
                .map_or_else(|| "the deadline".to_string(), human_duration);
            writeln!(
                f,
                "overdue deletes: {} deleted files still readable more than {deadline} after \
                 their tombstone",
                self.overdue_deletions.len()
            )?;
        }
        if !self.held_deletions.is_empty() {
            writeln!(
                f,
                "held deletes:    {} deleted files kept by legal holds",
                self.held_deletions.len()
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
                FindingKind::Shard
                | FindingKind::Placement
                | FindingKind::Entry
                | FindingKind::ChunkTable => "CORRUPT",
            };
            match &x.uid {
                Some(uid) => writeln!(f, "{label} {} uid={uid}: {}", x.key, x.reason)?,
                None => writeln!(f, "{label} {}: {}", x.key, x.reason)?,
            }
        }
        for k in &self.overdue_deletions {
            writeln!(f, "OVERDUE {}, bytes still in the shard", kept(k))?;
        }
        for k in &self.held_deletions {
            let hold = k.hold.as_deref().unwrap_or_default();
            writeln!(f, "HELD {}, kept by legal hold {hold:?}", kept(k))?;
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
        let verdict = match (self.has_corruption(), self.has_overdue_deletions()) {
            (true, true) => "CORRUPTION FOUND; DELETED FILES KEPT PAST THEIR DEADLINE",
            (true, false) => "CORRUPTION FOUND",
            (false, true) => "DELETED FILES KEPT PAST THEIR DEADLINE",
            (false, false) if self.exit_code() == 0 => "clean",
            (false, false) => "INCOMPLETE: some objects could not be checked",
        };
        write!(f, "result:          {verdict}")
    }
}

/// `KEY uid=U date=D: tombstone pending since T (3d 4h)`.
fn kept(k: &KeptDeletion) -> String {
    let state = match k.tombstone_state {
        crate::tombstones_cli::TombstoneState::Pending => "pending",
        crate::tombstones_cli::TombstoneState::Applied => "marked applied",
    };
    let when = match (&k.logged_at, k.tombstone_age_seconds) {
        (Some(at), Some(age)) => format!("logged {at} ({} ago)", human_duration(age)),
        _ => "merged into a segment (des-tombstones show has the record)".to_string(),
    };
    format!(
        "{} uid={} date={}: tombstone {state}, {when}",
        k.key, k.uid, k.date
    )
}

/// `3d 4h`, `5h 2m`, `40s`: the two largest units, enough to judge an age.
fn human_duration(secs: u64) -> String {
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut parts = Vec::new();
    let mut rest = secs;
    for (size, unit) in units {
        let n = rest / size;
        rest %= size;
        if n > 0 || !parts.is_empty() {
            parts.push((n, unit));
        }
        if parts.len() == 2 {
            break;
        }
    }
    let shown: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if shown.is_empty() {
        "0s".to_string()
    } else {
        shown.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(40), "40s");
        assert_eq!(human_duration(86_400), "1d");
        assert_eq!(human_duration(90_000), "1d 1h");
        assert_eq!(human_duration(3 * 86_400 + 59), "3d");
        assert_eq!(human_duration(3_720), "1h 2m");
    }
}
