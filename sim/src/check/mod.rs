//! The model and the invariants, checked against the store itself.
//!
//! The model holds only what actors *reported* (a packer's report, a
//! deleter's successful append) and what the engine saw happen (every
//! operation that changed the store passes through [`Checker::observe`]
//! right after it took effect). Everything else — which tombstones and
//! holds exist, what each shard generation holds — is read from the store,
//! so an operation that took effect although its actor got an error is
//! accounted for.
//!
//! Checks are incremental: after a change to one object, exactly the
//! invariants that object can break are re-checked (a shard: its parse, its
//! big-file references, its files' readability, the applied markers about
//! it; a big file: the shards and files using it; ...). Since bytes change
//! only through those operations, this amounts to checking every file at
//! every step. Reads go the retriever's way: `DesStore::load_index`, find
//! the uid, read the entry's stored bytes (inline range or `_big/<digest>`),
//! decode and verify them, and compare with what was packed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use des_format::Timestamp;
use des_format::shard::AnyIndex;
use des_packer::PackReport;
use des_repack::holds::{HOLDS_PREFIX, Hold};
use des_repack::repack::RepackReport;
use des_storage::keys::RETENTION_KEY;
use des_storage::retention::{self as rules_store, StoredRules};
use des_storage::tombstones::{
    APPLIED_PREFIX, AppliedBatch, AppliedMarker, LOG_PREFIX, Tombstone, TombstoneLog, TombstoneSet,
    parse_bundle_name, parse_name,
};
use des_storage::{
    ByteRange, DesStore, ErrorKind, LoadedIndex, MemoryStore, ObjectStore, ObjectStoreExt,
};
use futures::executor::block_on;

use crate::scenario::{FileSpec, Kind, Pair};
use crate::sched::ActorId;

mod markers;
mod reports;

/// One broken invariant. `label` names the kind (the same kind found in two
/// seeds has the same label), `detail` the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub label: String,
    pub step: u64,
    pub detail: String,
}

/// Who made a change.
#[derive(Debug, Clone)]
pub struct By {
    pub name: String,
    /// `None`: the environment (the engine itself, or a sabotage).
    pub kind: Option<Kind>,
    /// Step at which the actor started.
    pub launched: u64,
}

impl By {
    pub fn env(name: &str) -> Self {
        Self {
            name: name.into(),
            kind: None,
            launched: 0,
        }
    }

    fn what(&self) -> &'static str {
        match self.kind {
            Some(Kind::Packer) => "a packer",
            Some(Kind::Repacker) => "the repacker",
            Some(_) => "another actor",
            None => "the environment",
        }
    }
}

/// One published version of a shard object.
struct Version {
    etag: String,
    generation: u64,
    /// Bumped each time the shard object is deleted.
    incarnation: u64,
    uids: BTreeSet<String>,
    big: BTreeSet<String>,
    by: By,
    step: u64,
    bytes: Bytes,
}

struct Current {
    loaded: LoadedIndex,
    /// Index into the shard's history.
    version: usize,
}

/// When a tombstone first appeared, and which packers were running then.
#[derive(Debug, Clone)]
pub struct TombInfo {
    pub step: u64,
    pub packers: BTreeSet<ActorId>,
}

/// What a repack run was started with, for deciding afterwards which
/// deletions it had to apply.
#[derive(Debug, Clone)]
pub struct RepackSnapshot {
    pub launched: u64,
    pub tombs: BTreeMap<Pair, TombInfo>,
    /// Packers running when the run started.
    pub packers: BTreeSet<ActorId>,
    pub max_delay_zero: bool,
    pub grace_zero: bool,
}

struct MarkerInfo {
    uid: String,
    marker: AppliedMarker,
    step: u64,
    by: String,
    /// The shard's incarnation when the marker was written: generations
    /// start again at 1 after the repacker deletes a whole shard.
    incarnation: u64,
}

struct HoldInfo {
    hold: Hold,
    since: u64,
}

struct PastHold {
    hold: Hold,
    from: u64,
    to: u64,
}

enum Unreadable {
    NoShard,
    NotInShard,
    BigMissing(String),
    Bad(String),
}

pub struct Checker {
    mem: MemoryStore,
    des: DesStore,
    files: Vec<FileSpec>,
    by_pair: BTreeMap<Pair, usize>,
    by_shard: BTreeMap<String, Vec<usize>>,
    by_big: BTreeMap<String, Vec<usize>>,
    /// Appended to every label in Garage mode, so its findings stay apart.
    suffix: &'static str,
    history: BTreeMap<String, Vec<Version>>,
    incarnations: BTreeMap<String, u64>,
    current: BTreeMap<String, Current>,
    tombs: BTreeMap<Pair, TombInfo>,
    markers: BTreeMap<String, MarkerInfo>,
    holds: BTreeMap<String, HoldInfo>,
    past_holds: Vec<PastHold>,
    /// Files seen readable while a hold covered them (I5).
    protected: BTreeSet<Pair>,
    /// Files a packer reported in the store, and since when (I1).
    reported: BTreeMap<Pair, u64>,
    /// Files a completed repack had to remove: they must stay out (I2).
    gone: BTreeMap<Pair, (u64, String)>,
    /// Big files of deleted files seen gone after a repack.
    big_removed: BTreeSet<String>,
    /// Files some stored version of the retention rules expired: from then
    /// on they are deleted as if tombstoned (the repacker may remove them).
    expired: BTreeSet<Pair>,
    /// The retention rules in the store now.
    rules: Option<StoredRules>,
    violations: Vec<Violation>,
    seen: BTreeSet<(String, String)>,
}

/// Packers' references in flight to big files
/// (`des_storage::protocol::bigrefs`): `<prefix><hex>/<holder>.json`, each
/// with an `expires_at_us`. Read as plain JSON, so the simulation does not
/// depend on that module's internals.
pub const BIG_REFS_PREFIX: &str = "_des/big-refs/";

fn is_shard_key(key: &str) -> bool {
    let Some((date, rest)) = key.split_once('/') else {
        return false;
    };
    let Some(hex) = rest.strip_suffix(".des") else {
        return false;
    };
    date.len() == 8
        && date.bytes().all(|b| b.is_ascii_digit())
        && !hex.is_empty()
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Checker {
    /// `mem` must already hold a store (`_des/store.json`).
    pub fn new(mem: MemoryStore, files: Vec<FileSpec>, garage: bool) -> Result<Self, String> {
        let objects: Arc<dyn ObjectStore> = Arc::new(mem.clone());
        let des = block_on(DesStore::open(objects)).map_err(|e| e.to_string())?;
        let mut by_pair = BTreeMap::new();
        let mut by_shard: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut by_big: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            by_pair.insert(f.pair(), i);
            by_shard.entry(f.shard_key.clone()).or_default().push(i);
            if let Some(b) = &f.big_key {
                by_big.entry(b.clone()).or_default().push(i);
            }
        }
        Ok(Self {
            mem,
            des,
            files,
            by_pair,
            by_shard,
            by_big,
            suffix: if garage { " [garage]" } else { "" },
            history: BTreeMap::new(),
            incarnations: BTreeMap::new(),
            current: BTreeMap::new(),
            tombs: BTreeMap::new(),
            markers: BTreeMap::new(),
            holds: BTreeMap::new(),
            past_holds: Vec::new(),
            protected: BTreeSet::new(),
            reported: BTreeMap::new(),
            gone: BTreeMap::new(),
            big_removed: BTreeSet::new(),
            expired: BTreeSet::new(),
            rules: None,
            violations: Vec::new(),
            seen: BTreeSet::new(),
        })
    }

    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Tombstones in the store now (for a repack run's snapshot).
    pub fn tombs(&self) -> &BTreeMap<Pair, TombInfo> {
        &self.tombs
    }

    /// Records a violation once per (label, subject).
    fn violate(&mut self, label: &str, subject: &str, step: u64, detail: String) {
        let label = format!("{label}{}", self.suffix);
        if self.seen.insert((label.clone(), subject.to_string())) {
            self.violations.push(Violation {
                label,
                step,
                detail,
            });
        }
    }

    fn exists(&self, key: &str) -> bool {
        block_on(self.mem.head(key)).is_ok()
    }

    /// Whether a packer's ref younger than its TTL protects `_big/<hex>`
    /// (an unreadable ref counts as live, as the repacker counts it).
    fn live_ref(&self, hex: &str) -> bool {
        let now = Timestamp::now().micros();
        let refs =
            block_on(self.mem.list_all(&format!("{BIG_REFS_PREFIX}{hex}/"))).unwrap_or_default();
        refs.iter().any(|m| {
            block_on(self.mem.get_range(&m.key, ByteRange::All))
                .ok()
                .and_then(|(_, body)| serde_json::from_slice::<serde_json::Value>(&body).ok())
                .and_then(|v| v.get("expires_at_us").and_then(serde_json::Value::as_i64))
                .is_none_or(|expires| expires > now)
        })
    }

    fn version(&self, key: &str) -> Option<&Version> {
        let cur = self.current.get(key)?;
        self.history.get(key)?.get(cur.version)
    }

    fn holds_uid(&self, key: &str, uid: &str) -> bool {
        self.current
            .get(key)
            .is_some_and(|c| c.loaded.find(uid).is_some())
    }

    /// Tombstoned, or expired by some version of the retention rules.
    fn deleted(&self, pair: &Pair) -> bool {
        self.tombs.contains_key(pair) || self.expired.contains(pair)
    }

    /// Expired by the rules in the store now (holds aside), as the
    /// repacker, which runs on the wall clock, decides.
    fn expired_now(&self, pair: &Pair) -> bool {
        let today = rules_store::today(Timestamp::now());
        self.rules
            .as_ref()
            .is_some_and(|r| r.expired(&pair.0, pair.1, today))
    }

    fn held_now(&self, pair: &Pair) -> bool {
        self.holds.values().any(|h| h.hold.covers(&pair.0, pair.1))
    }

    /// Whether a hold covered `pair` at any step of `from..=to`.
    fn held_during(&self, pair: &Pair, from: u64, to: u64) -> bool {
        let covers = |h: &Hold| h.covers(&pair.0, pair.1);
        self.holds
            .values()
            .any(|h| h.since <= to && covers(&h.hold))
            || self
                .past_holds
                .iter()
                .any(|h| h.from <= to && h.to >= from && covers(&h.hold))
    }

    /// An operation of `by` changed `key` (it took effect). Re-checks what
    /// that can break.
    pub fn observe(&mut self, key: &str, by: &By, step: u64, packers: &BTreeSet<ActorId>) {
        if is_shard_key(key) {
            self.on_shard(key, by, step);
        } else if key.starts_with("_big/") && !key.ends_with(".chunks") {
            // A chunk table only speeds up ranges; losing one loses no bytes.
            self.on_big(key, by, step);
        } else if let Some(name) = key.strip_prefix(LOG_PREFIX) {
            self.on_tomb(key, name, step, packers);
        } else if key.starts_with(APPLIED_PREFIX) {
            self.on_marker(key, by, step);
        } else if key.starts_with(HOLDS_PREFIX) {
            self.on_hold(key, step);
        } else if key == RETENTION_KEY {
            self.on_rules(key, step);
        }
    }

    /// New retention rules: the files they expire may go from now on.
    fn on_rules(&mut self, key: &str, step: u64) {
        match block_on(rules_store::load_from(&self.mem)) {
            Ok(rules) => {
                self.rules = rules;
                let newly: Vec<Pair> = self
                    .files
                    .iter()
                    .map(FileSpec::pair)
                    .filter(|p| self.expired_now(p))
                    .collect();
                self.expired.extend(newly);
            }
            Err(e) => self.violate("retention rules unreadable", key, step, e.to_string()),
        }
    }

    fn on_shard(&mut self, key: &str, by: &By, step: u64) {
        let before = self
            .version(key)
            .map(|v| v.uids.clone())
            .unwrap_or_default();
        match block_on(self.des.load_index(key)) {
            Ok(None) => {
                if self.current.remove(key).is_some() {
                    *self.incarnations.entry(key.to_string()).or_default() += 1;
                }
            }
            Err(e) => {
                self.current.remove(key);
                self.violate(
                    "I6 shard object does not parse",
                    key,
                    step,
                    format!("{key} after a write by {}: {e}", by.name),
                );
            }
            Ok(Some(loaded)) => self.record_version(key, loaded, by, step),
        }
        self.came_back(key, &before, step);
        self.check_shard(key, step);
    }

    /// I2: a file removed for good is in no new version of its shard,
    /// unless it was in the one before (then it never left, or its coming
    /// back was reported when it happened).
    fn came_back(&mut self, key: &str, before: &BTreeSet<String>, step: u64) {
        for i in self.by_shard.get(key).cloned().unwrap_or_default() {
            let Some(f) = self.files.get(i) else {
                continue;
            };
            let (pair, uid) = (f.pair(), f.uid.clone());
            let Some((since, by)) = self.gone.get(&pair).cloned() else {
                continue;
            };
            if before.contains(&uid) || !self.holds_uid(key, &uid) {
                continue;
            }
            let (what, who, generation) = self
                .version(key)
                .map(|v| (v.by.what(), v.by.name.clone(), v.generation))
                .unwrap_or(("the environment", String::new(), 0));
            self.violate(
                &format!("I2 deleted file came back ({what} put it back)"),
                &format!("{uid} {}", pair.1),
                step,
                format!(
                    "{uid} of {} was removed for good at step {since} (run {by}); \
                     {key} generation {generation} published by {who} holds it again",
                    pair.1
                ),
            );
        }
    }

    fn record_version(&mut self, key: &str, loaded: LoadedIndex, by: &By, step: u64) {
        let AnyIndex::V3(ix) = &loaded.index else {
            self.violate(
                "I6 shard object does not parse",
                key,
                step,
                format!("{key} is not v3"),
            );
            return;
        };
        let generation = ix.trailer().generation;
        let mut uids = BTreeSet::new();
        let mut big = BTreeSet::new();
        for e in ix.view().iter() {
            uids.insert(e.uid.to_string());
            if e.is_external() {
                big.insert(des_format::v3::external_key(&e.digest()));
            }
        }
        // A published generation is whole: every inline entry decodes and
        // matches its digest.
        for loc in loaded.index.located() {
            if loc.shard_range().is_none() {
                continue;
            }
            let ok = block_on(self.des.read_stored(&loaded, &loc))
                .map_err(|e| e.to_string())
                .and_then(|stored| loc.decode(&stored).map_err(|e| e.to_string()));
            if let Err(e) = ok {
                self.violate(
                    "I6 published generation has a corrupt entry",
                    key,
                    step,
                    format!(
                        "{key} generation {generation} ({}): {}: {e}",
                        by.name, loc.uid
                    ),
                );
            }
        }
        let bytes = block_on(self.mem.get_range(key, ByteRange::All))
            .map(|(_, b)| b)
            .unwrap_or_default();
        let incarnation = self.incarnation(key);
        let history = self.history.entry(key.to_string()).or_default();
        history.push(Version {
            etag: loaded.object.etag.clone().unwrap_or_default(),
            generation,
            incarnation,
            uids,
            big,
            by: by.clone(),
            step,
            bytes,
        });
        let version = history.len() - 1;
        self.current
            .insert(key.to_string(), Current { loaded, version });
    }

    fn incarnation(&self, key: &str) -> u64 {
        self.incarnations.get(key).copied().unwrap_or(0)
    }

    /// I3, I6 (markers) and the files of one shard.
    fn check_shard(&mut self, key: &str, step: u64) {
        if let Some(v) = self.version(key) {
            let (big, generation, publisher) = (v.big.clone(), v.generation, v.by.name.clone());
            for b in big {
                if !self.exists(&b) {
                    self.violate(
                        "I3 dangling big-file reference",
                        &format!("{key} {b}"),
                        step,
                        format!("{key} generation {generation} (by {publisher}) references {b}, which does not exist"),
                    );
                }
            }
        }
        let markers: Vec<String> = self
            .markers
            .iter()
            .filter(|(_, m)| m.marker.shard_key == key)
            .map(|(k, _)| k.clone())
            .collect();
        for m in markers {
            self.check_marker(&m, step);
        }
        for i in self.by_shard.get(key).cloned().unwrap_or_default() {
            self.check_file(i, step);
        }
    }

    /// I1, I2 (stays gone) and I5 for one file.
    fn check_file(&mut self, i: usize, step: u64) {
        let Some(f) = self.files.get(i) else {
            return;
        };
        let (pair, key, uid) = (f.pair(), f.shard_key.clone(), f.uid.clone());
        let tombstoned = self.deleted(&pair);
        let need_i1 = self.reported.contains_key(&pair) && !tombstoned;
        let covered = self.held_now(&pair);
        let protected = self.protected.contains(&pair);
        if !(need_i1 || covered || protected) {
            return;
        }
        let read = self.read(i);
        let subject = format!("{uid} {}", pair.1);
        if need_i1 && let Err(why) = &read {
            let since = self.reported.get(&pair).copied().unwrap_or(0);
            let (label, detail) = self.unreadable(&key, why);
            self.violate(
                &format!("I1 reported file unreadable: {label}"),
                &subject,
                step,
                format!(
                    "{uid} of {} (reported packed at step {since}, no tombstone): {detail}",
                    pair.1
                ),
            );
        }
        match read {
            Ok(()) if covered => {
                self.protected.insert(pair);
            }
            Err(why) if protected => {
                let (label, detail) = self.unreadable(&key, &why);
                let during = self.version(&key).is_some_and(|v| {
                    v.by.kind == Some(Kind::Repacker)
                        && self
                            .holds
                            .values()
                            .any(|h| h.hold.covers(&uid, pair.1) && h.since > v.by.launched)
                });
                // The promise (docs/CONCURRENCY.md, I5): a hold binds every
                // repack run that starts after it is placed. A file removed by
                // a run that started before is gone, not lost by whoever
                // publishes the shard next: it is no longer protected.
                if during {
                    self.protected.remove(&pair);
                    return;
                }
                let label = format!("I5 held file lost: {label}");
                self.violate(
                    &label,
                    &subject,
                    step,
                    format!("{uid} of {} is under a legal hold: {detail}", pair.1),
                );
            }
            _ => {}
        }
    }

    fn unreadable(&self, key: &str, why: &Unreadable) -> (String, String) {
        match why {
            Unreadable::NoShard => ("no shard".into(), format!("{key} does not exist")),
            Unreadable::NotInShard => {
                let (what, who, generation) = self
                    .version(key)
                    .map(|v| (v.by.what(), v.by.name.clone(), v.generation))
                    .unwrap_or(("the environment", String::new(), 0));
                (
                    format!("not in the current generation (published by {what})"),
                    format!("{key} generation {generation} published by {who} does not list it"),
                )
            }
            Unreadable::BigMissing(b) => ("big file missing".into(), format!("{b} is gone")),
            Unreadable::Bad(e) => ("wrong or corrupt bytes".into(), e.clone()),
        }
    }

    /// The retriever's read of one file, compared with what was packed.
    fn read(&self, i: usize) -> Result<(), Unreadable> {
        let f = self.files.get(i).ok_or(Unreadable::NoShard)?;
        let cur = self.current.get(&f.shard_key).ok_or(Unreadable::NoShard)?;
        let loc = cur.loaded.find(&f.uid).ok_or(Unreadable::NotInShard)?;
        let stored = match block_on(self.des.read_stored(&cur.loaded, &loc)) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound && loc.shard_range().is_none() => {
                return Err(Unreadable::BigMissing(
                    f.big_key.clone().unwrap_or_else(|| "a big file".into()),
                ));
            }
            Err(e) => return Err(Unreadable::Bad(e.to_string())),
        };
        let data = loc
            .decode(&stored)
            .map_err(|e| Unreadable::Bad(e.to_string()))?;
        if data.as_slice() != f.content.as_slice() {
            return Err(Unreadable::Bad("bytes differ from the file packed".into()));
        }
        Ok(())
    }

    fn on_big(&mut self, key: &str, by: &By, step: u64) {
        if !self.exists(key) {
            let users: Vec<(String, u64, String)> = self
                .current
                .keys()
                .filter_map(|k| self.version(k).map(|v| (k, v)))
                .filter(|(_, v)| v.big.contains(key))
                .map(|(k, v)| (k.clone(), v.generation, v.by.name.clone()))
                .collect();
            for (shard, generation, publisher) in users {
                self.violate(
                    "I3 dangling big-file reference",
                    &format!("{shard} {key}"),
                    step,
                    format!("{} deleted {key}, still referenced by {shard} generation {generation} (by {publisher})", by.name),
                );
            }
        }
        for i in self.by_big.get(key).cloned().unwrap_or_default() {
            self.check_file(i, step);
        }
    }

    fn on_tomb(&mut self, key: &str, name: &str, step: u64, packers: &BTreeSet<ActorId>) {
        let pairs = match parse_name(name) {
            Some(n) => n.uid.map(|uid| vec![(uid, n.date)]).unwrap_or_default(),
            None if parse_bundle_name(name).is_some() => self.bundle_pairs(key),
            None => return,
        };
        if !self.exists(key) {
            return;
        }
        for pair in pairs {
            self.tombs.entry(pair).or_insert(TombInfo {
                step,
                packers: packers.clone(),
            });
        }
    }

    /// The pairs a bundle deletes (none while it cannot be read).
    fn bundle_pairs(&self, key: &str) -> Vec<(String, u32)> {
        let Ok((_, body)) = block_on(self.mem.get_range(key, ByteRange::All)) else {
            return Vec::new();
        };
        body.split(|b| *b == b'\n')
            .filter_map(|l| serde_json::from_slice::<Tombstone>(l).ok())
            .map(|t| (t.uid, t.date))
            .collect()
    }

    /// For the self-test: a big file that a reported, live file reads from.
    pub fn sabotage_big(&self) -> Option<String> {
        self.reported.keys().find_map(|pair| {
            let f = self.files.get(*self.by_pair.get(pair)?)?;
            let big = f.big_key.clone()?;
            (!self.deleted(pair) && self.holds_uid(&f.shard_key, &f.uid) && self.exists(&big))
                .then_some(big)
        })
    }

    /// For the self-test: an older version of a shard that lacks a file
    /// reported since (putting it back loses that file).
    pub fn sabotage_rollback(&self) -> Option<(String, Bytes)> {
        for (key, cur) in &self.current {
            let history = self.history.get(key)?;
            let now = history.get(cur.version)?;
            let live: Vec<&String> = now
                .uids
                .iter()
                .filter(|u| {
                    let pair = ((*u).clone(), self.date_of(key));
                    self.reported.contains_key(&pair) && !self.deleted(&pair)
                })
                .collect();
            let older = history
                .iter()
                .find(|v| v.etag != now.etag && live.iter().any(|u| !v.uids.contains(*u)));
            if let Some(v) = older {
                return Some((key.clone(), v.bytes.clone()));
            }
        }
        None
    }

    fn date_of(&self, shard_key: &str) -> u32 {
        shard_key
            .split('/')
            .next()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0)
    }
}
