//! One seed, start to end: set the store up, launch the scenario's actors
//! as their steps come, grant one parked operation at a time (chosen, and
//! possibly faulted, by the seeded RNG), check after every change, then a
//! fault-free final repack and a late re-pack of every input, each followed
//! by a full check.

use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use des_repack::lease::{LEASE_KEY, LeaseRecord};
use des_storage::{
    ByteRange, CreateOptions, DesStore, Error, MemoryStore, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions,
};
use futures::executor::block_on;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::actors::{self, Joiner, Outcome, SpawnCtx};
use crate::check::{BIG_REFS_PREFIX, By, Checker, RepackSnapshot, Violation};
use crate::scenario::{Job, Kind, Launch, N_BITS, RepackSpec, RoleSpec, Scenario};
use crate::sched::{ActorId, Hub, Op, Reply, Status, crashed_error};

mod phases;
mod text;
mod world;

use text::{job_text, mask_key};
use world::{execute, unavailable};

/// Operations granted before a seed is cut short (a livelock).
const STEP_CAP: u64 = 20_000;
/// An actor that neither parks an operation nor ends for this long is hung.
/// Only a failure detector: quiescence itself never waits on a clock.
const HANG_LIMIT: Duration = Duration::from_secs(30);

/// Deliberate damage behind the actors' backs, to prove the checker
/// notices (the harness must be able to fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    /// Delete a `_big/` object that a packed, live file reads from.
    DeleteBigFile,
    /// Put back an older generation of a shard that lacks a packed file.
    RollbackShard,
}

/// What to run: a seed, and what to leave out of it (for shrinking).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub seed: u64,
    /// Roles of the scenario left out, by index.
    pub drop_roles: BTreeSet<usize>,
    /// Inject the scenario's faults (failed operations, lost responses, crashes).
    pub faults: bool,
    pub sabotage: Option<Sabotage>,
}

impl Config {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            drop_roles: BTreeSet::new(),
            faults: true,
            sabotage: None,
        }
    }

    /// The environment that replays this run.
    pub fn replay_env(&self) -> String {
        let mut s = format!("SIM_SEED={}", self.seed);
        if !self.drop_roles.is_empty() {
            let roles: Vec<String> = self.drop_roles.iter().map(|r| r.to_string()).collect();
            let _ = write!(s, " SIM_DROP={}", roles.join(","));
        }
        if !self.faults {
            s.push_str(" SIM_FAULTS=0");
        }
        s
    }
}

/// Everything a run found.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub config: Config,
    pub garage: bool,
    /// The scenario's roles (index = role number for `drop_roles`).
    pub roles: Vec<String>,
    pub violations: Vec<Violation>,
    /// Operations granted.
    pub steps: u64,
    /// Faults injected.
    pub faults: u64,
    /// `step actor op key -> result` lines, plus actor and environment events.
    pub trace: Vec<String>,
    /// Per step: actor, operation, key with clock readings masked, and
    /// `ok`/error kind. Equal for two runs of one seed.
    pub skeleton: Vec<String>,
    /// The step at which the sabotage was done, if it was.
    pub sabotage_step: Option<u64>,
}

impl RunResult {
    pub fn mode(&self) -> &'static str {
        if self.garage {
            "garage (conditional writes ignored)"
        } else {
            "conditional writes enforced"
        }
    }

    pub fn labels(&self) -> BTreeSet<String> {
        self.violations.iter().map(|v| v.label.clone()).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Main,
    Final,
    Late,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    FailBefore,
    LoseResponse,
    CrashBefore,
    CrashAfter,
}

struct Role {
    spec: RoleSpec,
    queue: VecDeque<Launch>,
    current: Option<ActorId>,
    instances: u32,
    enabled: bool,
}

struct ActorInfo {
    role: usize,
    kind: Kind,
    name: String,
    job: Job,
    launched: u64,
    snapshot: Option<RepackSnapshot>,
}

struct Engine {
    cfg: Config,
    scn: Scenario,
    hub: Arc<Hub>,
    mem: MemoryStore,
    rt: tokio::runtime::Runtime,
    rng: StdRng,
    dir: tempfile::TempDir,
    roles: Vec<Role>,
    actors: Vec<ActorInfo>,
    joiners: Vec<Joiner>,
    alive_packers: BTreeSet<ActorId>,
    check: Checker,
    phase: Phase,
    step: u64,
    faults: u64,
    trace: Vec<String>,
    skeleton: Vec<String>,
    reported_violations: usize,
    extra: Vec<Violation>,
    sabotage_step: Option<u64>,
    hung: bool,
    final_ok: bool,
}

/// Runs one seed.
pub fn run(cfg: &Config) -> RunResult {
    let scn = Scenario::generate(cfg.seed);
    let roles: Vec<String> = scn.roles.iter().map(|r| r.name.clone()).collect();
    let garage = scn.garage;
    match Engine::new(cfg.clone(), scn) {
        Ok(mut e) => {
            e.main_phase();
            e.final_phase();
            e.late_phase();
            e.finish()
        }
        Err(msg) => RunResult {
            config: cfg.clone(),
            garage,
            roles,
            violations: vec![Violation {
                label: "setup failed".into(),
                step: 0,
                detail: msg,
            }],
            steps: 0,
            faults: 0,
            trace: Vec::new(),
            skeleton: Vec::new(),
            sabotage_step: None,
        },
    }
}

impl Engine {
    fn new(cfg: Config, scn: Scenario) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(dir.path().join("manifests")).map_err(|e| e.to_string())?;
        for (i, f) in scn.files.iter().enumerate() {
            std::fs::write(src.join(i.to_string()), f.content.as_slice())
                .map_err(|e| e.to_string())?;
        }
        let mem = MemoryStore::new();
        // The store exists before anyone runs: creating it is not what is tested.
        let objects: Arc<dyn ObjectStore> = Arc::new(mem.clone());
        let create = CreateOptions {
            n_bits: Some(N_BITS),
            digest: None,
        };
        block_on(DesStore::open_or_create(objects, create)).map_err(|e| e.to_string())?;
        let check = Checker::new(mem.clone(), scn.files.clone(), scn.garage)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let roles = scn
            .roles
            .iter()
            .enumerate()
            .map(|(i, r)| Role {
                spec: r.clone(),
                queue: r.launches.iter().cloned().collect(),
                current: None,
                instances: 0,
                enabled: !cfg.drop_roles.contains(&i),
            })
            .collect();
        // Scheduling draws from its own stream: leaving roles out (shrinking)
        // changes the schedule, never the scenario.
        let rng = StdRng::seed_from_u64(cfg.seed ^ 0x9E37_79B9_7F4A_7C15);
        let mut e = Self {
            cfg,
            scn,
            hub: Arc::new(Hub::default()),
            mem,
            rt,
            rng,
            dir,
            roles,
            actors: Vec::new(),
            joiners: Vec::new(),
            alive_packers: BTreeSet::new(),
            check,
            phase: Phase::Main,
            step: 0,
            faults: 0,
            trace: Vec::new(),
            skeleton: Vec::new(),
            reported_violations: 0,
            extra: Vec::new(),
            sabotage_step: None,
            hung: false,
            final_ok: false,
        };
        e.header();
        Ok(e)
    }

    fn header(&mut self) {
        let f = self.scn.faults;
        let mut lines = vec![format!(
            "seed {} — {} — faults {} (fail {}, lost response {}, crash {})",
            self.cfg.seed,
            if self.scn.garage {
                "garage mode: conditional writes ignored, packers on disjoint shards"
            } else {
                "conditional writes enforced"
            },
            if self.cfg.faults { "on" } else { "off" },
            f.fail,
            f.lose,
            f.crash
        )];
        for (i, file) in self.scn.files.iter().enumerate() {
            lines.push(format!(
                "  file #{i}: uid {} day {} -> {} ({} B{})",
                file.uid,
                file.date,
                file.shard_key,
                file.content.len(),
                file.big_key
                    .as_ref()
                    .map(|b| format!(", {}…", &b[..b.len().min(14)]))
                    .unwrap_or_default()
            ));
        }
        for (i, r) in self.roles.iter().enumerate() {
            let jobs: Vec<String> = r
                .spec
                .launches
                .iter()
                .map(|l| format!("at {}: {}", l.at, job_text(&l.job, &self.scn)))
                .collect();
            lines.push(format!(
                "  role #{i} {}{}: {}",
                r.spec.name,
                if r.enabled { "" } else { " (left out)" },
                jobs.join("; ")
            ));
        }
        lines.push("  step actor  operation -> result".into());
        self.trace.extend(lines);
    }

    fn event(&mut self, who: &str, what: String) {
        self.trace.push(format!("{:>7} {who:<6} {what}", "·"));
    }

    /// Copies violations found since the last call into the trace.
    fn flush_violations(&mut self) {
        let all = self.check.violations();
        let new: Vec<String> = all
            .get(self.reported_violations..)
            .unwrap_or_default()
            .iter()
            .map(|v| format!("{:>7} !!     VIOLATION {}: {}", v.step, v.label, v.detail))
            .collect();
        self.reported_violations = all.len();
        self.trace.extend(new);
    }

    fn violate(&mut self, label: &str, detail: String) {
        self.trace.push(format!(
            "{:>7} !!     VIOLATION {label}: {detail}",
            self.step
        ));
        self.extra.push(Violation {
            label: label.into(),
            step: self.step,
            detail,
        });
    }

    fn main_phase(&mut self) {
        self.run_until_idle();
    }

    /// Grants operations until every actor has ended and no launch is left.
    fn run_until_idle(&mut self) {
        loop {
            if self.step >= STEP_CAP {
                self.violate(
                    "liveness: step cap reached",
                    format!("{STEP_CAP} operations and still going"),
                );
                self.hung = true;
                return;
            }
            if let Err(running) = self.hub.wait_quiescent(HANG_LIMIT).map(drop) {
                self.violate(
                    "liveness: actor hung",
                    format!(
                        "{running} neither asked for an operation nor ended within {HANG_LIMIT:?}"
                    ),
                );
                self.hung = true;
                return;
            }
            self.collect();
            if self.launch(false) {
                continue;
            }
            let waiting = self.waiting();
            if waiting.is_empty() {
                if self.launch(true) {
                    continue;
                }
                return;
            }
            let actor = waiting[self.rng.gen_range(0..waiting.len())];
            self.grant(actor);
            self.sabotage();
        }
    }

    fn waiting(&self) -> Vec<ActorId> {
        let st = self.hub.lock();
        st.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.status, Status::Waiting(_)))
            .map(|(i, _)| i)
            .collect()
    }

    /// Starts the roles whose next job is due (or, with `earliest`, the
    /// one due soonest, when nothing else can move). Whether anything started.
    fn launch(&mut self, earliest: bool) -> bool {
        let ready = |r: &Role| r.enabled && r.current.is_none() && !r.queue.is_empty();
        if earliest {
            let next = (0..self.roles.len())
                .filter(|&i| ready(&self.roles[i]))
                .min_by_key(|&i| (self.roles[i].queue.front().map_or(u64::MAX, |l| l.at), i));
            return match next {
                Some(i) => {
                    self.spawn(i);
                    true
                }
                None => false,
            };
        }
        let due: Vec<usize> = (0..self.roles.len())
            .filter(|&i| {
                ready(&self.roles[i])
                    && self.roles[i]
                        .queue
                        .front()
                        .is_some_and(|l| l.at <= self.step)
            })
            .collect();
        for &i in &due {
            self.spawn(i);
        }
        !due.is_empty()
    }

    fn spawn(&mut self, r: usize) {
        let Some(role) = self.roles.get_mut(r) else {
            return;
        };
        let Some(launch) = role.queue.pop_front() else {
            return;
        };
        let name = format!("{}.{}", role.spec.name, role.instances);
        role.instances += 1;
        let kind = role.spec.kind;
        let id = self.hub.add_actor(&name);
        role.current = Some(id);
        let mut manifest = None;
        if let Job::Pack { files } = &launch.job {
            let path = self
                .dir
                .path()
                .join("manifests")
                .join(format!("{name}.jsonl"));
            if let Err(e) = self.write_manifest(&path, files) {
                self.violate("setup failed", format!("manifest {}: {e}", path.display()));
            }
            manifest = Some(path);
        }
        let snapshot = match &launch.job {
            Job::Repack(spec) => Some(RepackSnapshot {
                launched: self.step,
                tombs: self.check.tombs().clone(),
                packers: self.alive_packers.clone(),
                max_delay_zero: spec.max_delay_zero,
                grace_zero: spec.grace_zero,
            }),
            _ => None,
        };
        if kind == Kind::Packer {
            self.alive_packers.insert(id);
        }
        self.event(
            &name,
            format!("starts: {}", job_text(&launch.job, &self.scn)),
        );
        let ctx = SpawnCtx {
            hub: Arc::clone(&self.hub),
            rt: self.rt.handle().clone(),
            actor: id,
            garage: self.scn.garage,
            manifest,
        };
        self.joiners.push(actors::spawn(&launch.job, ctx));
        self.actors.push(ActorInfo {
            role: r,
            kind,
            name,
            job: launch.job,
            launched: self.step,
            snapshot,
        });
    }

    fn write_manifest(&self, path: &std::path::Path, files: &[usize]) -> std::io::Result<()> {
        let mut text = String::new();
        for &i in files {
            let Some(f) = self.scn.files.get(i) else {
                continue;
            };
            let source = self.dir.path().join("src").join(i.to_string());
            let line = serde_json::json!({
                "uid": f.uid,
                "created_at": f.created_at.to_rfc3339(),
                "source": source,
            });
            text.push_str(&line.to_string());
            text.push('\n');
        }
        std::fs::write(path, text)
    }

    fn roll_fault(&mut self) -> Fault {
        if !self.cfg.faults || self.phase != Phase::Main {
            return Fault::None;
        }
        let f = self.scn.faults;
        let r: f64 = self.rng.r#gen();
        if r < f.crash {
            if self.rng.gen_bool(0.5) {
                Fault::CrashBefore
            } else {
                Fault::CrashAfter
            }
        } else if r < f.crash + f.fail {
            Fault::FailBefore
        } else if r < f.crash + f.fail + f.lose {
            Fault::LoseResponse
        } else {
            Fault::None
        }
    }

    fn by(&self, actor: ActorId) -> By {
        self.actors.get(actor).map_or_else(
            || By::env("?"),
            |a| By {
                name: a.name.clone(),
                kind: Some(a.kind),
                launched: a.launched,
            },
        )
    }

    /// Runs one parked operation (or fails it, or crashes its actor).
    fn grant(&mut self, actor: ActorId) {
        let parked = {
            let mut st = self.hub.lock();
            let Some(slot) = st.slots.get_mut(actor) else {
                return;
            };
            match std::mem::replace(&mut slot.status, Status::Running) {
                Status::Waiting(p) => p,
                other => {
                    slot.status = other;
                    return;
                }
            }
        };
        self.step += 1;
        let fault = self.roll_fault();
        let op = parked.op.clone();
        let garage = self.scn.garage;
        let crash = matches!(fault, Fault::CrashBefore | Fault::CrashAfter);
        let ran = match fault {
            Fault::None | Fault::LoseResponse | Fault::CrashAfter => {
                Some(execute(&self.mem, &op, garage))
            }
            Fault::FailBefore | Fault::CrashBefore => None,
        };
        let took_effect = op.mutates() && matches!(ran, Some(Reply::Put(_) | Reply::Unit));
        let ran_text = ran.as_ref().map(Reply::describe).unwrap_or_default();
        let (reply, note) = match (fault, ran) {
            (Fault::None, Some(r)) => (r, String::new()),
            (Fault::LoseResponse, _) => (
                Reply::Err(unavailable("response lost")),
                format!("   [FAULT: took effect ({ran_text}), response lost]"),
            ),
            (Fault::CrashAfter, _) => (
                Reply::Err(crashed_error()),
                format!("   [FAULT: took effect ({ran_text}), then the actor crashed]"),
            ),
            (Fault::CrashBefore, _) => (
                Reply::Err(crashed_error()),
                "   [FAULT: the actor crashed before it took effect]".to_string(),
            ),
            _ => (
                Reply::Err(unavailable("failed before taking effect")),
                "   [FAULT: failed, no effect]".to_string(),
            ),
        };
        if fault != Fault::None {
            self.faults += 1;
        }
        let name = self.by(actor).name;
        self.trace.push(format!(
            "{:>7} {name:<6} {} -> {}{note}",
            self.step,
            op.describe(),
            reply.describe()
        ));
        let word = op
            .describe()
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        self.skeleton.push(format!(
            "{name} {word} {} {}",
            mask_key(op.key()),
            reply.skeleton()
        ));
        if crash {
            // Dead before it hears back: nothing it does from now on reaches the store.
            self.crash(actor);
        }
        parked.answer(reply);
        if took_effect {
            let by = self.by(actor);
            let packers = self.alive_packers.clone();
            self.check.observe(op.key(), &by, self.step, &packers);
            self.flush_violations();
        }
    }

    fn crash(&mut self, actor: ActorId) {
        {
            let mut st = self.hub.lock();
            if let Some(slot) = st.slots.get_mut(actor) {
                slot.status = Status::Crashed;
            }
        }
        self.alive_packers.remove(&actor);
        let Some(info) = self.actors.get(actor) else {
            return;
        };
        let (r, kind, name, job) = (info.role, info.kind, info.name.clone(), info.job.clone());
        if let Some(role) = self.roles.get_mut(r)
            && role.current == Some(actor)
        {
            role.current = None;
        }
        self.event(&name, "CRASHED: its results are discarded".into());
        if self.rng.gen_bool(self.scn.faults.restart) {
            let at = self.step + self.rng.gen_range(0..30);
            if let Some(role) = self.roles.get_mut(r) {
                role.queue.push_front(Launch { at, job });
            }
            self.event(
                &name,
                format!("will be restarted from scratch at step {at} or later"),
            );
        }
        if kind == Kind::Repacker && self.rng.gen_bool(0.5) {
            self.expire_lease("the crashed repacker's lease expires (time passes)");
        }
    }

    fn add_role(&mut self, name: &str, kind: Kind, jobs: Vec<Job>) {
        let launches: Vec<Launch> = jobs
            .into_iter()
            .map(|job| Launch { at: self.step, job })
            .collect();
        self.roles.push(Role {
            spec: RoleSpec {
                name: name.into(),
                kind,
                launches: launches.clone(),
            },
            queue: launches.into(),
            current: None,
            instances: 0,
            enabled: true,
        });
    }
}
