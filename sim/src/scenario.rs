//! What one seed simulates: a small universe of files and the roles that
//! act on it (packers, a repacker, deleters, legal holds, retention), each a
//! sequence of jobs with the step at which each may start. Everything is
//! drawn from the seed, so a scenario is reproduced exactly from it.

use std::sync::Arc;

use des_format::{DigestAlgorithm, Timestamp, routing};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// 16 shards per day: small enough that actors meet on the same shards.
pub const N_BITS: u8 = 4;
/// Files above this many bytes become `_big/<digest>` objects.
pub const BIG_FILE_THRESHOLD: u64 = 128;
const FIRST_DAY: &str = "2024-05-17T00:00:00Z";
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// A file's identity in the store: (uid, UTC day `YYYYMMDD`).
pub type Pair = (String, u32);

#[derive(Debug, Clone)]
pub struct FileSpec {
    pub uid: String,
    pub date: u32,
    pub created_at: Timestamp,
    pub content: Arc<Vec<u8>>,
    /// `_big/<digest>` when the file is above the big-file threshold.
    pub big_key: Option<String>,
    /// `YYYYMMDD/HEX.des`
    pub shard_key: String,
}

impl FileSpec {
    pub fn pair(&self) -> Pair {
        (self.uid.clone(), self.date)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Packer,
    Repacker,
    Deleter,
    Holds,
    Retention,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RepackSpec {
    /// `max_delay` 0 (every pending tombstone is due) or a day (none is).
    pub max_delay_zero: bool,
    pub min_garbage_ratio: f64,
    /// `big_file_grace` 0 (collect at once) or a day (never within a run).
    pub grace_zero: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldSpec {
    pub name: String,
    pub uid_prefix: String,
    /// Held day (`date_from` = `date_to`); `None`: every day.
    pub date: Option<u32>,
}

#[derive(Debug, Clone)]
pub enum Job {
    /// Packs these files (indexes into [`Scenario::files`]) from a manifest.
    Pack {
        files: Vec<usize>,
    },
    Repack(RepackSpec),
    /// Appends one tombstone per pair, in order.
    Delete {
        pairs: Vec<Pair>,
    },
    PlaceHold(HoldSpec),
    ReleaseHold {
        name: String,
    },
    /// Adds the retention rule "uids starting with `prefix` live one day"
    /// (every file's day is years before the wall clock: it expires them).
    Retention {
        prefix: String,
    },
}

#[derive(Debug, Clone)]
pub struct Launch {
    /// Earliest step at which the job may start (and only once the role's
    /// previous job has ended).
    pub at: u64,
    pub job: Job,
}

/// One role: its jobs run one after the other.
#[derive(Debug, Clone)]
pub struct RoleSpec {
    pub name: String,
    pub kind: Kind,
    pub launches: Vec<Launch>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultRates {
    /// A granted operation fails (retryable) before taking effect.
    pub fail: f64,
    /// ... takes effect, but the actor gets an error.
    pub lose: f64,
    /// The actor crashes at this operation (before or after its effect).
    pub crash: f64,
    /// A crashed role is started again (same job) with this probability.
    pub restart: f64,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    /// The store ignores conditional writes (as Garage does).
    pub garage: bool,
    pub files: Vec<FileSpec>,
    pub roles: Vec<RoleSpec>,
    pub faults: FaultRates,
}

fn shard_key(uid: &str, date: u32) -> String {
    let index = routing::shard_index(uid, N_BITS).unwrap_or(0);
    format!("{date:08}/{}.des", routing::shard_hex(index, N_BITS))
}

fn pick<T: Clone>(rng: &mut StdRng, items: &[T]) -> Option<T> {
    items.choose(rng).cloned()
}

impl Scenario {
    pub fn generate(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let garage = rng.gen_bool(0.25);
        let first = Timestamp::parse_rfc3339(FIRST_DAY)
            .map(|t| t.micros())
            .unwrap_or(0);
        let days = rng.gen_range(1..=3i64);
        // Few shards, so packers, the repacker and deleters meet on them.
        let n_shards = if garage {
            rng.gen_range(2..=4)
        } else {
            rng.gen_range(1..=3)
        };
        let mut all: Vec<u32> = (0..16).collect();
        all.shuffle(&mut rng);
        let shards: Vec<u32> = all.into_iter().take(n_shards).collect();
        let n_files = rng.gen_range(8..=24);
        let mut files: Vec<FileSpec> = Vec::new();
        while files.len() < n_files {
            let shard = pick(&mut rng, &shards).unwrap_or(0);
            let day = rng.gen_range(0..days);
            let uid = (16 * rng.gen_range(1..=60u32) + shard).to_string();
            let created_at = Timestamp::from_micros(
                first + day * MICROS_PER_DAY + rng.gen_range(0..36_000i64) * 1_000_000,
            );
            let date = created_at.date_number();
            if files.iter().any(|f| f.uid == uid && f.date == date) {
                continue;
            }
            let big = rng.gen_bool(0.3);
            let shared = files
                .iter()
                .filter(|f| f.big_key.is_some())
                .map(|f| Arc::clone(&f.content))
                .collect::<Vec<_>>();
            let content = match pick(&mut rng, &shared) {
                // Two files with one content share one `_big/` object.
                Some(c) if big && rng.gen_bool(0.3) => c,
                _ => Arc::new(content_for(&mut rng, &uid, date, big)),
            };
            let big_key = (content.len() as u64 > BIG_FILE_THRESHOLD)
                .then(|| des_format::v3::external_key(&DigestAlgorithm::Blake3.digest(&content)));
            files.push(FileSpec {
                shard_key: shard_key(&uid, date),
                uid,
                date,
                created_at,
                content,
                big_key,
            });
        }
        let mut roles = packers(&mut rng, garage, &files, &shards);
        roles.push(repacker(&mut rng));
        roles.extend(deleters(&mut rng, &files, &shards, days, first));
        if rng.gen_bool(0.4) {
            roles.push(holds(&mut rng, &files));
        }
        if rng.gen_bool(0.25) {
            let prefix = pick(&mut rng, &files)
                .and_then(|f| f.uid.get(..1).map(str::to_string))
                .unwrap_or_default();
            roles.push(RoleSpec {
                name: "T".into(),
                kind: Kind::Retention,
                launches: vec![Launch {
                    at: rng.gen_range(0..300),
                    job: Job::Retention { prefix },
                }],
            });
        }
        let faults = FaultRates {
            fail: *[0.0, 0.01, 0.03].choose(&mut rng).unwrap_or(&0.0),
            lose: *[0.0, 0.01, 0.03].choose(&mut rng).unwrap_or(&0.0),
            crash: *[0.0, 0.004, 0.01].choose(&mut rng).unwrap_or(&0.0),
            restart: 0.75,
        };
        Self {
            garage,
            files,
            roles,
            faults,
        }
    }
}

fn content_for(rng: &mut StdRng, uid: &str, date: u32, big: bool) -> Vec<u8> {
    let len = if big {
        rng.gen_range(BIG_FILE_THRESHOLD + 1..=3 * BIG_FILE_THRESHOLD)
    } else {
        rng.gen_range(1..=BIG_FILE_THRESHOLD)
    };
    let len = usize::try_from(len).unwrap_or(1);
    if rng.gen_bool(0.5) {
        // Compressible: stored zstd-encoded.
        let text = format!("file {uid} of {date}; ");
        text.bytes().cycle().take(len).collect()
    } else {
        (0..len).map(|_| rng.r#gen::<u8>()).collect()
    }
}

/// Packer roles. With conditional writes their inputs overlap freely. On a
/// store that ignores them (Garage), the documented rule is followed
/// (docs/CONCURRENCY.md): each shard belongs to one packer role, as with
/// disjoint `--shard-range`s, so two packers never write one shard at once.
fn packers(rng: &mut StdRng, garage: bool, files: &[FileSpec], shards: &[u32]) -> Vec<RoleSpec> {
    let n = if garage {
        rng.gen_range(2..=3).min(shards.len())
    } else {
        rng.gen_range(1..=3)
    };
    let mut owner = std::collections::BTreeMap::new();
    for (i, s) in shards.iter().enumerate() {
        owner.insert(*s, i % n.max(1));
    }
    let mut roles = Vec::new();
    for p in 0..n {
        let mut input: Vec<usize> = (0..files.len())
            .filter(|&i| {
                let mine = !garage || {
                    let index = routing::shard_index(&files[i].uid, N_BITS).unwrap_or(0);
                    owner.get(&index) == Some(&p)
                };
                mine && rng.gen_bool(if garage { 0.85 } else { 0.7 })
            })
            .collect();
        if input.is_empty() {
            match pick(rng, &(0..files.len()).collect::<Vec<_>>()) {
                Some(i) if !garage => input.push(i),
                _ => continue,
            }
        }
        // Some packers re-pack the same input later (re-runs are idempotent).
        let first: u64 = rng.gen_range(0..120);
        let mut launches = vec![Launch {
            at: first,
            job: Job::Pack {
                files: input.clone(),
            },
        }];
        if rng.gen_bool(0.5) {
            launches.push(Launch {
                at: first + rng.gen_range(0..200),
                job: Job::Pack { files: input },
            });
        }
        roles.push(RoleSpec {
            name: format!("P{p}"),
            kind: Kind::Packer,
            launches,
        });
    }
    roles
}

fn repacker(rng: &mut StdRng) -> RoleSpec {
    let mut at: u64 = rng.gen_range(0..200);
    let mut launches = Vec::new();
    for _ in 0..rng.gen_range(1..=3) {
        let max_delay_zero = rng.gen_bool(0.7);
        let spec = RepackSpec {
            max_delay_zero,
            // With max-delay 0 every tombstone is overdue anyway; a ratio of
            // 0 keeps the decision independent of clock readings.
            min_garbage_ratio: if max_delay_zero {
                0.0
            } else {
                *[0.0, 0.3, 1.0].choose(rng).unwrap_or(&0.3)
            },
            grace_zero: rng.gen_bool(0.6),
        };
        launches.push(Launch {
            at,
            job: Job::Repack(spec),
        });
        at += rng.gen_range(20..200);
    }
    RoleSpec {
        name: "R".into(),
        kind: Kind::Repacker,
        launches,
    }
}

fn deleters(
    rng: &mut StdRng,
    files: &[FileSpec],
    shards: &[u32],
    days: i64,
    first: i64,
) -> Vec<RoleSpec> {
    let mut roles = Vec::new();
    for d in 0..rng.gen_range(1..=3) {
        let mut pairs = Vec::new();
        for _ in 0..rng.gen_range(1..=4) {
            let pair = if rng.gen_bool(0.85) {
                pick(rng, files).map(|f| f.pair())
            } else {
                // A file no packer ever has: its tombstone finds nothing.
                let shard = pick(rng, shards).unwrap_or(0);
                let day = rng.gen_range(0..days);
                let date = Timestamp::from_micros(first + day * MICROS_PER_DAY).date_number();
                Some(((16 * rng.gen_range(61..=70u32) + shard).to_string(), date))
            };
            pairs.extend(pair);
        }
        roles.push(RoleSpec {
            name: format!("D{d}"),
            kind: Kind::Deleter,
            launches: vec![Launch {
                at: rng.gen_range(0..300),
                job: Job::Delete { pairs },
            }],
        });
    }
    roles
}

fn holds(rng: &mut StdRng, files: &[FileSpec]) -> RoleSpec {
    let name = "case-1".to_string();
    let uid_prefix = pick(rng, files)
        .and_then(|f| f.uid.get(..1).map(str::to_string))
        .unwrap_or_default();
    let date = if rng.gen_bool(0.3) {
        pick(rng, files).map(|f| f.date)
    } else {
        None
    };
    let at = rng.gen_range(0..250);
    let mut launches = vec![Launch {
        at,
        job: Job::PlaceHold(HoldSpec {
            name: name.clone(),
            uid_prefix,
            date,
        }),
    }];
    if rng.gen_bool(0.5) {
        launches.push(Launch {
            at: at + rng.gen_range(10..200),
            job: Job::ReleaseHold { name },
        });
    }
    RoleSpec {
        name: "H".into(),
        kind: Kind::Holds,
        launches,
    }
}
