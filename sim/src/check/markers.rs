//! Applied markers and legal holds as they appear in the store: a marker
//! must be true of every version of its generation (I6), and a hold starts
//! protecting what it covers (I5).

use super::*;

impl Checker {
    pub(super) fn on_marker(&mut self, key: &str, by: &By, step: u64) {
        let uid = key
            .strip_prefix(APPLIED_PREFIX)
            .and_then(parse_name)
            .and_then(|n| n.uid);
        let Some(uid) = uid else {
            self.on_batch_marker(key, by, step);
            return;
        };
        match block_on(self.mem.get_range(key, ByteRange::All)) {
            Ok((_, body)) => match serde_json::from_slice::<AppliedMarker>(&body) {
                Ok(marker) => self.record_marker(key.to_string(), uid, marker, by, step),
                Err(e) => {
                    self.violate("I6 applied marker does not parse", key, step, e.to_string())
                }
            },
            Err(_) => {
                self.markers.remove(key);
            }
        }
    }

    /// A marker per shard generation: each name it lists is checked as a
    /// marker of its own (`<key>#<name>`).
    fn on_batch_marker(&mut self, key: &str, by: &By, step: u64) {
        let prefix = format!("{key}#");
        self.markers.retain(|k, _| !k.starts_with(&prefix));
        let Ok((_, body)) = block_on(self.mem.get_range(key, ByteRange::All)) else {
            return;
        };
        let batch = match serde_json::from_slice::<AppliedBatch>(&body) {
            Ok(b) => b,
            Err(e) => {
                self.violate("I6 applied marker does not parse", key, step, e.to_string());
                return;
            }
        };
        for (name, marker) in batch.markers() {
            let Some(uid) = parse_name(name).and_then(|n| n.uid) else {
                continue;
            };
            self.record_marker(format!("{prefix}{name}"), uid, marker, by, step);
        }
    }

    /// Keeps marker `mkey` (of `uid`) as of `step` and checks it at once.
    fn record_marker(
        &mut self,
        mkey: String,
        uid: String,
        marker: AppliedMarker,
        by: &By,
        step: u64,
    ) {
        let incarnation = self.incarnation(&marker.shard_key);
        let info = MarkerInfo {
            uid,
            marker,
            step,
            by: by.name.clone(),
            incarnation,
        };
        self.markers.insert(mkey.clone(), info);
        self.check_marker(&mkey, step);
    }

    /// I6: a marker "applied at generation g" is only true if no version
    /// with generation g ever held the file. A marker without a generation
    /// ("no shard at all") speaks of the moment the repacker looked: a
    /// packer that read before the tombstone may create the shard since,
    /// which I2 covers (the file must then go in a later run).
    pub(super) fn check_marker(&mut self, mkey: &str, step: u64) {
        let Some(m) = self.markers.get(mkey) else {
            return;
        };
        let Some(g) = m.marker.generation else {
            return;
        };
        let shard = m.marker.shard_key.clone();
        let head = format!(
            "marker {:?} for {} in {shard} at generation {g} (written by {} at step {})",
            m.marker.outcome, m.uid, m.by, m.step
        );
        let uid = m.uid.clone();
        let incarnation = m.incarnation;
        let holding: Vec<(String, u64)> = self
            .history
            .get(&shard)
            .into_iter()
            .flatten()
            .filter(|v| v.generation == g && v.incarnation == incarnation && v.uids.contains(&uid))
            .map(|v| (v.by.name.clone(), v.step))
            .collect();
        for (who, at) in holding {
            self.violate(
                "I6 applied marker contradicts a generation holding the file",
                mkey,
                step,
                format!("{head}, but generation {g} published by {who} at step {at} holds it"),
            );
        }
    }

    pub(super) fn on_hold(&mut self, key: &str, step: u64) {
        match block_on(self.mem.get_range(key, ByteRange::All)) {
            Ok((_, body)) => {
                let Ok(hold) = serde_json::from_slice::<Hold>(&body) else {
                    return;
                };
                let covered: Vec<usize> = (0..self.files.len())
                    .filter(|&i| {
                        self.files
                            .get(i)
                            .is_some_and(|f| hold.covers(&f.uid, f.date))
                    })
                    .collect();
                self.holds
                    .entry(key.to_string())
                    .or_insert(HoldInfo { hold, since: step });
                for i in covered {
                    self.check_file(i, step);
                }
            }
            Err(_) => {
                if let Some(h) = self.holds.remove(key) {
                    self.past_holds.push(PastHold {
                        hold: h.hold,
                        from: h.since,
                        to: step,
                    });
                    let keep: BTreeSet<Pair> = self
                        .protected
                        .iter()
                        .filter(|p| self.held_now(p))
                        .cloned()
                        .collect();
                    self.protected = keep;
                }
            }
        }
    }
}
