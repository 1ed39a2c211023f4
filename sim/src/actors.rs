//! The actors: the product's own entry points (`des_packer::pack_into`,
//! `des_repack::repack::repack`, `TombstoneLog::append`, holds, retention),
//! each on its own handle on the store so the engine knows who asked.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use des_packer::{Input, PackOptions, PackReport, Target, pack_into};
use des_repack::holds::{self, Hold};
use des_repack::lease::LeaseConfig;
use des_repack::repack::{RepackOptions, RepackReport, repack};
use des_storage::resilience::{RetryPolicy, RetryStore};
use des_storage::retention::{self as rules_store, RetentionRules, Rule};
use des_storage::tombstones::{DeleteReason, Tombstone, TombstoneLog};
use des_storage::{DesStore, ObjectStore};
use tokio::runtime::Handle;

use crate::scenario::{BIG_FILE_THRESHOLD, HoldSpec, Job, N_BITS, Pair, RepackSpec};
use crate::sched::{ActorId, Hub, SimStore};

/// Far beyond a run's length: the lease is never renewed in the middle of
/// a run (a renewal would be driven by a real-time timer). A crashed
/// holder's lease is expired by the engine instead ("time passes").
pub const LEASE_TTL: Duration = Duration::from_secs(15 * 60);
/// Not zero, so the Garage-mode read-back path really sleeps.
pub const LEASE_SETTLE: Duration = Duration::from_millis(1);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// What an actor's job returned (a crashed actor's is discarded).
#[derive(Debug)]
pub enum Outcome {
    Pack(Result<PackReport, String>),
    Repack(Result<RepackReport, String>),
    Delete(Vec<(Pair, Result<String, String>)>),
    Hold(Result<bool, String>),
    /// The rules version stored.
    Retention(Result<u64, String>),
    Panicked(String),
}

/// How an actor's thread is waited for at the end of a seed.
pub enum Joiner {
    Thread(std::thread::JoinHandle<()>),
}

pub struct SpawnCtx {
    pub hub: Arc<Hub>,
    pub rt: Handle,
    pub actor: ActorId,
    pub garage: bool,
    /// Manifest of a pack job.
    pub manifest: Option<PathBuf>,
}

/// The product's resilience stack retries every S3 request; so does the
/// simulation, immediately (no back-off sleep worth waiting for), so a lost
/// response is followed by the retry a real client would make.
fn objects(ctx: &SpawnCtx) -> Arc<dyn ObjectStore> {
    let policy = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
        attempt_timeout: None,
        deadline: None,
    };
    let sim = SimStore::new(Arc::clone(&ctx.hub), ctx.actor, ctx.garage);
    Arc::new(RetryStore::new(Arc::new(sim), policy))
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

pub fn spawn(job: &Job, ctx: SpawnCtx) -> Joiner {
    let objects = objects(&ctx);
    let hub = Arc::clone(&ctx.hub);
    let actor = ctx.actor;
    match job.clone() {
        Job::Pack { .. } => {
            let manifest = ctx.manifest.clone().unwrap_or_default();
            let rt = ctx.rt.clone();
            // `pack_into` blocks on the runtime: a thread of its own.
            Joiner::Thread(std::thread::spawn(move || {
                let ran =
                    std::panic::catch_unwind(AssertUnwindSafe(|| pack(&manifest, objects, &rt)));
                let outcome = match ran {
                    Ok(r) => Outcome::Pack(r),
                    Err(p) => Outcome::Panicked(panic_text(p.as_ref())),
                };
                hub.finish(actor, outcome);
            }))
        }
        job => {
            // Its own thread, blocking on the runtime: the repacker's future
            // is not provably `Send` (a compiler limitation with borrows
            // held across awaits), so it is built and run on that thread.
            let rt = ctx.rt.clone();
            Joiner::Thread(std::thread::spawn(move || {
                let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    rt.block_on(run_job(job, objects))
                }));
                let outcome = match ran {
                    Ok(o) => o,
                    Err(p) => Outcome::Panicked(panic_text(p.as_ref())),
                };
                hub.finish(actor, outcome);
            }))
        }
    }
}

async fn run_job(job: Job, objects: Arc<dyn ObjectStore>) -> Outcome {
    match job {
        Job::Repack(spec) => Outcome::Repack(run_repack(objects, spec).await),
        Job::Delete { pairs } => Outcome::Delete(delete(objects, pairs).await),
        Job::PlaceHold(h) => Outcome::Hold(place_hold(objects, h).await),
        Job::ReleaseHold { name } => Outcome::Hold(release_hold(objects, name).await),
        Job::Retention { prefix } => Outcome::Retention(retain(objects, prefix).await),
        Job::Pack { .. } => Outcome::Panicked("a pack job is not async".into()),
    }
}

fn pack(
    manifest: &std::path::Path,
    objects: Arc<dyn ObjectStore>,
    rt: &Handle,
) -> Result<PackReport, String> {
    let opts = PackOptions {
        n_bits: Some(N_BITS),
        // One group at a time: a packer has one operation in flight.
        jobs: 1,
        big_file_threshold: BIG_FILE_THRESHOLD,
        ..PackOptions::default()
    };
    let input = Input::Manifest(manifest.to_path_buf());
    pack_into(&input, &opts, &Target::single(objects), rt, false).map_err(|e| format!("{e:#}"))
}

pub fn repack_options(spec: RepackSpec) -> RepackOptions {
    let mut opts = RepackOptions::default();
    opts.max_delay = if spec.max_delay_zero {
        Duration::ZERO
    } else {
        DAY
    };
    opts.min_garbage_ratio = spec.min_garbage_ratio;
    opts.big_file_grace = if spec.grace_zero { Duration::ZERO } else { DAY };
    opts.lease = LeaseConfig {
        ttl: LEASE_TTL,
        settle: LEASE_SETTLE,
    };
    // Before every shard: a refresh timed by the wall clock would make the
    // requests of a seed differ from run to run.
    opts.holds_refresh = Duration::ZERO;
    opts
}

async fn run_repack(
    objects: Arc<dyn ObjectStore>,
    spec: RepackSpec,
) -> Result<RepackReport, String> {
    let store = DesStore::open(objects).await.map_err(|e| e.to_string())?;
    repack(&store, &repack_options(spec), |_| {})
        .await
        .map_err(|e| e.to_string())
}

async fn delete(
    objects: Arc<dyn ObjectStore>,
    pairs: Vec<Pair>,
) -> Vec<(Pair, Result<String, String>)> {
    let store = match DesStore::open(objects).await {
        Ok(s) => s,
        Err(e) => {
            let e = e.to_string();
            return pairs.into_iter().map(|p| (p, Err(e.clone()))).collect();
        }
    };
    let log = TombstoneLog::new(&store);
    if pairs.len() > 1 {
        return delete_bundle(&log, pairs).await;
    }
    let mut out = Vec::new();
    for (uid, date) in pairs {
        let appended = match Tombstone::for_date(&uid, date, DeleteReason::UserRequest, "sim") {
            Ok(t) => log.append(&t).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        out.push(((uid, date), appended));
    }
    out
}

/// Several pairs at once go as one bundle, as `des-tombstones add --from` logs them.
async fn delete_bundle(
    log: &TombstoneLog,
    pairs: Vec<Pair>,
) -> Vec<(Pair, Result<String, String>)> {
    let mut out = Vec::new();
    let mut valid = Vec::new();
    for (uid, date) in pairs {
        match Tombstone::for_date(&uid, date, DeleteReason::UserRequest, "sim") {
            Ok(t) => valid.push(((uid, date), t)),
            Err(e) => out.push(((uid, date), Err(e.to_string()))),
        }
    }
    let ts: Vec<Tombstone> = valid.iter().map(|(_, t)| t.clone()).collect();
    match log.append_bundle(&ts).await {
        Ok(keys) => out.extend(
            valid
                .into_iter()
                .map(|(p, _)| p)
                .zip(keys.into_iter().map(Ok)),
        ),
        Err(e) => out.extend(valid.into_iter().map(|(p, _)| (p, Err(e.to_string())))),
    }
    out
}

async fn place_hold(objects: Arc<dyn ObjectStore>, spec: HoldSpec) -> Result<bool, String> {
    let store = DesStore::open(objects).await.map_err(|e| e.to_string())?;
    let mut hold = Hold::new(&spec.name, &spec.uid_prefix, "sim");
    if let Some(d) = spec.date {
        hold.date_from = Some(format!("{d:08}"));
        hold.date_to = Some(format!("{d:08}"));
    }
    holds::place(&store, &hold)
        .await
        .map(|()| true)
        .map_err(|e| e.to_string())
}

async fn release_hold(objects: Arc<dyn ObjectStore>, name: String) -> Result<bool, String> {
    let store = DesStore::open(objects).await.map_err(|e| e.to_string())?;
    holds::release(&store, &name)
        .await
        .map_err(|e| e.to_string())
}

/// Adds a rule "uids starting with `prefix` live one day" to the stored
/// rules (so rules only grow in a scenario) and stores the next version.
/// Every file of a scenario is years older than that.
async fn retain(objects: Arc<dyn ObjectStore>, prefix: String) -> Result<u64, String> {
    let store = DesStore::open(objects).await.map_err(|e| e.to_string())?;
    let mut rules = match rules_store::load(&store).await.map_err(|e| e.to_string())? {
        Some(stored) => stored.rules,
        None => RetentionRules {
            ticket_id: None,
            rules: Vec::new(),
        },
    };
    rules.rules.retain(|r| r.uid_prefix != prefix);
    rules.rules.push(Rule {
        uid_prefix: prefix,
        max_age_days: Some(1),
    });
    rules_store::set(&store, &rules, "sim")
        .await
        .map(|s| s.version)
        .map_err(|e| e.to_string())
}
