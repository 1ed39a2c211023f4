//! The end of things: what an actor reports when it finishes (folded into
//! the model), and the end of a seed — a fault-free final repack, a late
//! re-pack of every input, and the result.

use super::*;

impl Engine {
    /// Takes in what actors that ended reported.
    pub(super) fn collect(&mut self) {
        let (mut done, cancelled) = {
            let mut st = self.hub.lock();
            (
                std::mem::take(&mut st.done),
                std::mem::take(&mut st.cancelled),
            )
        };
        for (actor, what) in cancelled {
            let name = self.by(actor).name;
            self.violate(
                "harness: a parked operation was cancelled",
                format!(
                    "{name} dropped `{what}` before it was granted: the schedule may not be exact"
                ),
            );
        }
        done.sort_by_key(|(id, _)| *id);
        for (actor, outcome) in done {
            self.on_done(actor, outcome);
        }
        self.flush_violations();
    }

    pub(super) fn on_done(&mut self, actor: ActorId, outcome: Outcome) {
        self.alive_packers.remove(&actor);
        let by = self.by(actor);
        let Some(info) = self.actors.get(actor) else {
            return;
        };
        let (r, job, snapshot) = (info.role, info.job.clone(), info.snapshot.clone());
        if let Some(role) = self.roles.get_mut(r)
            && role.current == Some(actor)
        {
            role.current = None;
        }
        let is_final = self.roles.get(r).is_some_and(|r| r.spec.name == "F");
        match outcome {
            Outcome::Pack(Ok(report)) => {
                let failed: Vec<String> = report
                    .failures
                    .iter()
                    .map(|f| format!("line {}: {}", f.line, f.reason))
                    .collect();
                self.event(
                    &by.name,
                    format!(
                        "done: packed {}, already present {}, failed {} {:?}",
                        report.files_packed,
                        report.files_already_present,
                        report.files_failed,
                        failed
                    ),
                );
                if let Job::Pack { files } = &job {
                    self.check.pack_report(files, &report, self.step);
                }
            }
            Outcome::Pack(Err(e)) => self.event(&by.name, format!("done: run failed: {e}")),
            Outcome::Repack(Ok(report)) => {
                let failed: Vec<String> = report
                    .shards
                    .iter()
                    .filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.key)))
                    .collect();
                self.event(
                    &by.name,
                    format!(
                        "done: rewritten {}, deleted {}, failed {} {:?}, marked {}, big files deleted {:?}",
                        report.shards_rewritten,
                        report.shards_deleted,
                        report.shards_failed,
                        failed,
                        report.tombstones_marked,
                        report.big_files.deleted
                    ),
                );
                if is_final {
                    if report.shards_failed > 0 {
                        self.violate(
                            "liveness: the final repack failed",
                            format!("{} shards failed: {failed:?}", report.shards_failed),
                        );
                    } else {
                        self.final_ok = true;
                        self.check.final_check(self.step, &by);
                    }
                } else if let Some(snap) = snapshot {
                    self.check.repack_done(&snap, &by, &report, self.step);
                }
            }
            Outcome::Repack(Err(e)) => {
                self.event(&by.name, format!("done: run failed: {e}"));
                if is_final {
                    self.violate("liveness: the final repack failed", e);
                }
            }
            Outcome::Delete(results) => {
                let mut text = Vec::new();
                for ((uid, date), r) in results {
                    match r {
                        Ok(key) => {
                            text.push(format!("{uid}@{} ok", date % 100));
                            self.check.tombstone_reported(&(uid, date), &key, self.step);
                        }
                        Err(e) => text.push(format!("{uid}@{} failed: {e}", date % 100)),
                    }
                }
                self.event(&by.name, format!("done: {}", text.join("; ")));
            }
            Outcome::Hold(r) => self.event(&by.name, format!("done: {r:?}")),
            Outcome::Retention(r) => {
                let text = match r {
                    Ok(version) => format!("done: rules version {version} stored"),
                    Err(e) => format!("done: run failed: {e}"),
                };
                self.event(&by.name, text);
            }
            Outcome::Panicked(msg) => {
                self.violate("panic in an actor", format!("{}: {msg}", by.name));
            }
        }
    }

    pub(super) fn final_phase(&mut self) {
        if self.hung {
            return;
        }
        self.phase = Phase::Final;
        self.trace.push(
            "  --- final phase: no faults; leases expire (time passes); a repack with max-delay 0 and big-file grace 0"
                .into(),
        );
        self.expire_lease("before the final repack");
        self.expire_big_refs();
        self.add_role(
            "F",
            Kind::Repacker,
            vec![Job::Repack(RepackSpec {
                max_delay_zero: true,
                min_garbage_ratio: 0.0,
                grace_zero: true,
            })],
        );
        self.run_until_idle();
    }

    pub(super) fn late_phase(&mut self) {
        if self.hung || !self.final_ok {
            return;
        }
        self.phase = Phase::Late;
        self.trace.push(
            "  --- late phase: every packer input is packed again (deleted files must not come back)"
                .into(),
        );
        let mut inputs: Vec<Vec<usize>> = Vec::new();
        for role in self
            .roles
            .iter()
            .filter(|r| r.enabled && r.spec.kind == Kind::Packer)
        {
            for l in &role.spec.launches {
                if let Job::Pack { files } = &l.job
                    && !inputs.contains(files)
                {
                    inputs.push(files.clone());
                }
            }
        }
        let jobs = inputs
            .into_iter()
            .map(|files| Job::Pack { files })
            .collect();
        self.add_role("L", Kind::Packer, jobs);
        self.run_until_idle();
        if !self.hung {
            self.check
                .after_repack_check(self.step, &By::env("the late re-pack"));
            self.flush_violations();
        }
    }

    pub(super) fn finish(mut self) -> RunResult {
        // Whatever is still alive (a hang, the step cap) is crashed, so its
        // operations fail at once and its thread can end.
        {
            let mut st = self.hub.lock();
            for slot in &mut st.slots {
                match std::mem::replace(&mut slot.status, Status::Crashed) {
                    Status::Waiting(p) => p.answer(Reply::Err(crashed_error())),
                    Status::Finished => slot.status = Status::Finished,
                    _ => {}
                }
            }
        }
        let hung = self.hung;
        for j in std::mem::take(&mut self.joiners) {
            match j {
                // A thread stuck outside a store operation cannot be joined.
                Joiner::Thread(t) if !hung || t.is_finished() => {
                    let _ = t.join();
                }
                Joiner::Thread(_) => {}
            }
        }
        let roles = self.scn.roles.iter().map(|r| r.name.clone()).collect();
        let mut violations = self.check.violations().to_vec();
        violations.extend(self.extra.iter().cloned());
        violations.sort_by_key(|v| v.step);
        let Self {
            cfg,
            scn,
            rt,
            step,
            faults,
            trace,
            skeleton,
            sabotage_step,
            ..
        } = self;
        rt.shutdown_timeout(Duration::from_secs(2));
        RunResult {
            config: cfg,
            garage: scn.garage,
            roles,
            violations,
            steps: step,
            faults,
            trace,
            skeleton,
            sabotage_step,
        }
    }
}
