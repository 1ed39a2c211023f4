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

/// Runs `op` against the store, as the backend would. A store that ignores
/// conditional writes (Garage) executes them as plain overwrites.
fn execute(mem: &MemoryStore, op: &Op, garage: bool) -> Reply {
    let mode = |m: &PutMode| {
        if garage {
            PutMode::Overwrite
        } else {
            m.clone()
        }
    };
    block_on(async {
        match op {
            Op::Get { key, opts } => match mem.get(key, opts.clone()).await {
                Ok(got) => {
                    let (meta, range) = (got.meta.clone(), got.range.clone());
                    match got.bytes().await {
                        Ok(body) => Reply::Get(meta, range, body),
                        Err(e) => Reply::Err(e),
                    }
                }
                Err(e) => Reply::Err(e),
            },
            Op::Head { key } => mem.head(key).await.map_or_else(Reply::Err, Reply::Meta),
            Op::Put { key, data, mode: m } | Op::Finish { key, data, mode: m } => mem
                .put(key, data.clone(), PutOptions { mode: mode(m) })
                .await
                .map_or_else(Reply::Err, Reply::Put),
            Op::PutWriter { key, .. } => {
                des_storage::object::check_key(key).map_or_else(Reply::Err, |()| Reply::Unit)
            }
            Op::Write { .. } | Op::Abort { .. } => Reply::Unit,
            Op::Delete { key } => mem
                .delete(key)
                .await
                .map_or_else(Reply::Err, |()| Reply::Unit),
            Op::List {
                prefix,
                start_after,
            } => mem
                .list(prefix, start_after.as_deref())
                .await
                .map_or_else(Reply::Err, Reply::List),
        }
    })
}

fn unavailable(msg: &str) -> Error {
    Error::Unavailable {
        msg: format!("simulated: {msg}"),
        retry_after: None,
    }
}

/// A key with what differs from one run of a seed to the next masked:
/// clock readings, and the random holder name in big-file ref keys.
fn mask_key(key: &str) -> String {
    let key = mask_times(key);
    match key.strip_prefix(BIG_REFS_PREFIX) {
        Some(rest) => match rest.split_once('/') {
            Some((hex, _)) => format!("{BIG_REFS_PREFIX}{hex}/<holder>"),
            None => key,
        },
        None => key,
    }
}

/// Replaces clock readings (`20240601T080000123456Z`) with `<time>`.
fn mask_times(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let is_time = b.len() >= i + 22
            && b[i..i + 8].iter().all(u8::is_ascii_digit)
            && b[i + 8] == b'T'
            && b[i + 9..i + 21].iter().all(u8::is_ascii_digit)
            && b[i + 21] == b'Z';
        if is_time {
            out.push_str("<time>");
            i += 22;
        } else {
            out.push(char::from(b[i]));
            i += 1;
        }
    }
    out
}

fn job_text(job: &Job, scn: &Scenario) -> String {
    match job {
        Job::Pack { files } => {
            let names: Vec<String> = files
                .iter()
                .filter_map(|&i| scn.files.get(i))
                .map(|f| {
                    let big = if f.big_key.is_some() { "*" } else { "" };
                    format!("{}@{}{big}", f.uid, f.date % 100)
                })
                .collect();
            format!("pack [{}] (* = big file)", names.join(" "))
        }
        Job::Repack(s) => format!(
            "repack max-delay {} min-garbage-ratio {} big-file-grace {}",
            if s.max_delay_zero { "0" } else { "1d" },
            s.min_garbage_ratio,
            if s.grace_zero { "0" } else { "1d" }
        ),
        Job::Delete { pairs } => {
            let names: Vec<String> = pairs
                .iter()
                .map(|(u, d)| format!("{u}@{}", d % 100))
                .collect();
            format!("delete [{}]", names.join(" "))
        }
        Job::PlaceHold(h) => format!(
            "place hold {} uid-prefix {:?} date {:?}",
            h.name, h.uid_prefix, h.date
        ),
        Job::ReleaseHold { name } => format!("release hold {name}"),
        Job::Retention { prefix } => format!("retention: uids {prefix:?}* live 1 day"),
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

    /// Models time passing beyond the lease TTL: whatever lease is left
    /// behind is rewritten as expired. Only ever done while no repacker
    /// that could hold it is alive.
    fn expire_lease(&mut self, why: &str) {
        let Ok((_, body)) = block_on(self.mem.get_range(LEASE_KEY, ByteRange::All)) else {
            return;
        };
        let Ok(mut rec) = serde_json::from_slice::<LeaseRecord>(&body) else {
            return;
        };
        rec.expires_at = "1970-01-01T00:00:00Z".into();
        rec.expires_at_us = 0;
        let Ok(body) = serde_json::to_vec(&rec) else {
            return;
        };
        let put = PutOptions {
            mode: PutMode::Overwrite,
        };
        let done = block_on(self.mem.put(LEASE_KEY, Bytes::from(body), put));
        self.event(
            "env",
            format!(
                "{why}: {LEASE_KEY} -> {}",
                if done.is_ok() { "expired" } else { "failed" }
            ),
        );
    }

    /// Models time passing beyond the packers' big-file ref TTL, once every
    /// packer has ended: each ref left behind is rewritten as expired, so a
    /// collection may delete what only those refs kept.
    fn expire_big_refs(&mut self) {
        let Ok(refs) = block_on(self.mem.list_all(BIG_REFS_PREFIX)) else {
            return;
        };
        let mut n = 0;
        for meta in refs {
            let Ok((_, body)) = block_on(self.mem.get_range(&meta.key, ByteRange::All)) else {
                continue;
            };
            let Ok(mut rec) = serde_json::from_slice::<serde_json::Value>(&body) else {
                continue;
            };
            if let Some(field) = rec.get_mut("expires_at_us") {
                *field = serde_json::Value::from(0);
            }
            let Ok(body) = serde_json::to_vec(&rec) else {
                continue;
            };
            let put = PutOptions {
                mode: PutMode::Overwrite,
            };
            if block_on(self.mem.put(&meta.key, Bytes::from(body), put)).is_ok() {
                n += 1;
            }
        }
        if n > 0 {
            self.event(
                "env",
                format!("every packer has ended; their {n} big-file refs expire (time passes)"),
            );
        }
    }

    /// Takes in what actors that ended reported.
    fn collect(&mut self) {
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

    fn on_done(&mut self, actor: ActorId, outcome: Outcome) {
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
                        "done: rewritten {}, failed {} {:?}, marked {}, big files deleted {:?}",
                        report.shards_rewritten,
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
                    Ok(rep) => format!(
                        "done: {} tombstones created, {} held, failures {:?}",
                        rep.tombstones_created, rep.held, rep.failures
                    ),
                    Err(e) => format!("done: run failed: {e}"),
                };
                self.event(&by.name, text);
            }
            Outcome::Panicked(msg) => {
                self.violate("panic in an actor", format!("{}: {msg}", by.name));
            }
        }
    }

    fn sabotage(&mut self) {
        if self.sabotage_step.is_some() || self.phase != Phase::Main {
            return;
        }
        let done = match self.cfg.sabotage {
            None => return,
            Some(Sabotage::DeleteBigFile) => self.check.sabotage_big().map(|big| {
                let r = block_on(self.mem.delete(&big));
                (big, r.is_ok())
            }),
            Some(Sabotage::RollbackShard) => self.check.sabotage_rollback().map(|(key, bytes)| {
                let put = PutOptions {
                    mode: PutMode::Overwrite,
                };
                let r = block_on(self.mem.put(&key, bytes, put));
                (key, r.is_ok())
            }),
        };
        if let Some((key, true)) = done {
            self.sabotage_step = Some(self.step);
            self.event(
                "env",
                format!(
                    "SABOTAGE {:?} behind the actors' backs: {key}",
                    self.cfg.sabotage
                ),
            );
            let packers = self.alive_packers.clone();
            self.check
                .observe(&key, &By::env("sabotage"), self.step, &packers);
            self.flush_violations();
        }
    }

    fn final_phase(&mut self) {
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

    fn late_phase(&mut self) {
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

    fn finish(mut self) -> RunResult {
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
