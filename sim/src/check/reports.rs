//! What actors report, and what must then be gone (I2): packed files enter
//! the model, tombstones and completed repacks set what may no longer be
//! stored, and the final checks of a seed.

use super::*;

impl Checker {
    /// A packer's report: every file of its manifest not listed as failed
    /// is in the store from now on (until a tombstone exists).
    pub fn pack_report(&mut self, files: &[usize], report: &PackReport, step: u64) {
        let failed: BTreeSet<u64> = report.failures.iter().map(|f| f.line).collect();
        for (n, &i) in files.iter().enumerate() {
            if failed.contains(&(n as u64 + 1)) {
                continue;
            }
            let Some(f) = self.files.get(i) else {
                continue;
            };
            self.reported.entry(f.pair()).or_insert(step);
            self.check_file(i, step);
        }
    }

    /// I2: a deleter was told its tombstone is logged; the log must list it
    /// (that is what makes reads answer 410 at once).
    pub fn tombstone_reported(&mut self, pair: &Pair, key: &str, step: u64) {
        let log = TombstoneLog::new(&self.des);
        let listed = block_on(TombstoneSet::load(&log)).map(|s| s.contains(&pair.0, pair.1));
        if !matches!(listed, Ok(true)) || !self.exists(key) {
            self.violate(
                "I2 appended tombstone not listed",
                &format!("{} {}", pair.0, pair.1),
                step,
                format!("append of {key} reported success, but the log does not list it"),
            );
        }
    }

    /// A repack run ended with success and no failed shard. If it ran with
    /// max-delay 0, every tombstone that existed when it started is applied,
    /// unless a hold covered the file meanwhile or a packer that was
    /// running when the tombstone was written was still running at the start.
    pub fn repack_done(
        &mut self,
        snap: &RepackSnapshot,
        by: &By,
        report: &RepackReport,
        step: u64,
    ) {
        if !snap.max_delay_zero || report.shards_failed > 0 {
            return;
        }
        for (pair, info) in &snap.tombs {
            let Some(&i) = self.by_pair.get(pair) else {
                continue;
            };
            if !info.packers.is_disjoint(&snap.packers)
                || self.held_during(pair, snap.launched, step)
            {
                continue;
            }
            self.must_be_gone(
                i,
                step,
                by,
                "I2 not removed by a completed max-delay-0 repack",
                snap.grace_zero
                    .then_some("I2 big-file bytes remain after a completed grace-0 repack"),
            );
        }
    }

    pub(super) fn must_be_gone(
        &mut self,
        i: usize,
        step: u64,
        by: &By,
        label: &str,
        big_label: Option<&str>,
    ) {
        let Some(f) = self.files.get(i) else {
            return;
        };
        let (pair, key, uid) = (f.pair(), f.shard_key.clone(), f.uid.clone());
        let present = self.holds_uid(&key, &uid);
        if present {
            let (what, who, generation) = self
                .version(&key)
                .map(|v| (v.by.what(), v.by.name.clone(), v.generation))
                .unwrap_or(("the environment", String::new(), 0));
            self.violate(
                &format!("{label} (current generation by {what})"),
                &format!("{uid} {}", pair.1),
                step,
                format!(
                    "after {} ended: {key} generation {generation} (by {who}) still holds {uid}",
                    by.name
                ),
            );
        }
        if let Some(big_label) = big_label
            && self.big_gone(i, step, big_label, &by.name, true)
            && let Some(big) = self.files.get(i).and_then(|f| f.big_key.clone())
        {
            self.big_removed.insert(big);
        }
        // A file still there is reported above; it joins the files that
        // must stay out once it has left.
        if !present {
            self.gone.entry(pair).or_insert((step, by.name.clone()));
        }
    }

    /// The big-file object of deleted file `i` must be gone, unless a
    /// current shard entry (another file with the same content) uses it,
    /// or (with `respect_refs`) a packer's big-file ref younger than its TTL
    /// still protects it: those keep a big file by design until they expire
    /// (`des_storage::protocol::bigrefs`), which the engine models by
    /// expiring every ref once all packers have ended.
    ///
    /// Returns whether the object is absent.
    pub(super) fn big_gone(
        &mut self,
        i: usize,
        step: u64,
        label: &str,
        after: &str,
        respect_refs: bool,
    ) -> bool {
        let Some(f) = self.files.get(i) else {
            return true;
        };
        let Some(big) = f.big_key.clone() else {
            return true;
        };
        let (uid, date) = f.pair();
        if !self.exists(&big) {
            return true;
        }
        let used = self
            .current
            .keys()
            .filter_map(|k| self.version(k))
            .any(|v| v.big.contains(&big));
        // Bytes equal to a live file's (not deleted, or deleted but held)
        // are that file's bytes too.
        let shared = self.by_big.get(&big).into_iter().flatten().any(|&j| {
            j != i
                && self.files.get(j).is_some_and(|g| {
                    let p = g.pair();
                    !self.deleted(&p) || self.held_now(&p)
                })
        });
        if used || shared {
            return false;
        }
        let hex = big.strip_prefix("_big/").unwrap_or(&big);
        if respect_refs && self.live_ref(hex) {
            return false;
        }
        let ever = self
            .history
            .values()
            .flatten()
            .any(|v| v.big.contains(&big));
        let why = if ever {
            "no longer referenced"
        } else {
            "uploaded, never referenced by any generation"
        };
        self.violate(
            &format!("{label} ({why})"),
            &big,
            step,
            format!("after {after}: {big} (content of deleted {uid} of {date}) still exists"),
        );
        false
    }

    /// After the final repack (max-delay 0, grace 0, nothing else running):
    /// every tombstoned file, and every file the current retention rules
    /// expire, not under a hold is gone, with its big file.
    pub fn final_check(&mut self, step: u64, by: &By) {
        let mut pairs: BTreeSet<Pair> = self.tombs.keys().cloned().collect();
        pairs.extend(
            self.files
                .iter()
                .map(FileSpec::pair)
                .filter(|p| self.expired_now(p)),
        );
        for pair in pairs {
            let Some(&i) = self.by_pair.get(&pair) else {
                continue;
            };
            if self.held_now(&pair) {
                continue;
            }
            self.must_be_gone(
                i,
                step,
                by,
                "I2 tombstoned file still stored after the final repack",
                Some("I2 big-file bytes remain after the final repack"),
            );
        }
        self.check_all(step);
    }

    /// After re-packing every input once more: the deleted files' big-file
    /// bytes must not be back (shards are checked at every publish).
    pub fn after_repack_check(&mut self, step: u64, by: &By) {
        let pairs: Vec<Pair> = self.gone.keys().cloned().collect();
        for pair in pairs {
            let Some(&i) = self.by_pair.get(&pair) else {
                continue;
            };
            let was_removed = self
                .files
                .get(i)
                .and_then(|f| f.big_key.as_ref())
                .is_some_and(|b| self.big_removed.contains(b));
            if was_removed {
                let label = "I2 re-packing brought big-file bytes back";
                self.big_gone(i, step, label, &by.name, false);
            }
        }
        self.check_all(step);
    }

    /// Every invariant over the whole store.
    pub fn check_all(&mut self, step: u64) {
        let keys: Vec<String> = self.current.keys().cloned().collect();
        for k in &keys {
            self.check_shard(k, step);
        }
        for i in 0..self.files.len() {
            self.check_file(i, step);
        }
        let markers: Vec<String> = self.markers.keys().cloned().collect();
        for m in markers {
            self.check_marker(&m, step);
        }
    }
}
