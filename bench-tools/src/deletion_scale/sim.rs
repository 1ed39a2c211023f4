//! The simulated days and the start-up phase, through the real library
//! entry points: `des_packer::pack_into`, `add_batch` (as
//! `des-tombstones add --from`), `repack` (as `des-repack`), and
//! `TombstoneSet::load` (as the retriever at start-up).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use des_format::{Compression, Timestamp};
use des_packer::{Input, PackOptions, Target, pack_into};
use des_repack::repack::{RepackOptions, RepackReport, repack};
use des_repack::tombstones_cli::{Defaults, add_batch};
use des_storage::retention::{self as rules_store, RetentionRules, Rule};
use des_storage::tombstones::{DeleteReason, TombstoneLog, TombstoneSet};
use des_storage::{DesStore, ObjectStoreExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::runtime::Runtime;

use super::counting::{CountingStore, Counts};
use super::model::{self, Model};

/// The run's settings (the CLI's).
#[derive(Debug, Clone)]
pub struct Settings {
    pub days: usize,
    pub files_per_day: usize,
    pub deletions: usize,
    pub retention_days: usize,
    pub n_bits: u8,
    pub startup_deletions: usize,
    pub seed: u64,
    /// Live files set aside (never deleted) for the script's GETs.
    pub sample: usize,
}

/// What the store saw on one simulated day.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DayRecord {
    pub day: usize,
    pub date: u32,
    pub files_packed: u64,
    pub deletions: u64,
    /// Live files of the date that crossed the rule this day.
    pub expired: u64,
    /// What the repacker reported.
    pub entries_dropped: u64,
    pub entries_expired: u64,
    pub shards_rewritten: u64,
    pub shards_deleted: u64,
    pub tombstones_compacted: u64,
    /// Requests of step b (add_batch) and c (repack).
    pub add: Counts,
    pub repack: Counts,
    pub repack_seconds: f64,
    pub add_seconds: f64,
    pub pack_seconds: f64,
    /// Tombstone records and applied markers the old approach would have
    /// held after this day (one each per deleted or expired file so far).
    pub old_log_records: u64,
    /// Requests of b and c by "operation key-class".
    pub by_class: BTreeMap<String, u64>,
}

impl DayRecord {
    pub fn shards_touched(&self) -> u64 {
        self.shards_rewritten + self.shards_deleted
    }

    pub fn counts(&self) -> Counts {
        let mut c = self.add;
        c.add(&self.repack);
        c
    }
}

/// The start-up phase's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Startup {
    pub deletions_added: u64,
    /// Of those, for files that were never packed.
    pub synthetic: u64,
    pub add_seconds: f64,
    pub add: Counts,
    pub repack_seconds: f64,
    pub repack: Counts,
    pub repack_shards_rewritten: u64,
    pub repack_tombstones_marked: u64,
    pub repack_tombstones_compacted: u64,
    /// `TombstoneSet::load`: every run, median.
    pub load_seconds: Vec<f64>,
    pub load_seconds_median: f64,
    pub load: Counts,
    /// Requests of one load by "operation key-class".
    pub load_by_class: BTreeMap<String, u64>,
    pub set_len: u64,
    pub segments: u64,
    pub applied_heap_bytes: u64,
    pub heap_bytes: u64,
    pub objects_tombstones: u64,
    pub objects_segments: u64,
    pub objects_applied: u64,
}

/// One file the script GETs: its path and expected bytes.
#[derive(Debug, Clone)]
pub struct Sampled {
    pub uid: String,
    pub created_at: Timestamp,
}

pub struct Sim<'a> {
    pub settings: &'a Settings,
    pub rt: &'a Runtime,
    pub store: &'a DesStore,
    pub counting: &'a CountingStore,
    /// What the packer writes through (uncounted).
    pub pack_target: &'a Target,
    pub model: Model,
    rng: StdRng,
    /// Deletions and expiries so far (the old approach's log size).
    gone: u64,
    /// A few deleted files, for the script to check 410s.
    pub deleted_sample: Vec<Sampled>,
}

impl<'a> Sim<'a> {
    pub fn new(
        settings: &'a Settings,
        rt: &'a Runtime,
        store: &'a DesStore,
        counting: &'a CountingStore,
        pack_target: &'a Target,
    ) -> Self {
        Self {
            model: Model::new(
                settings.days,
                settings.files_per_day,
                settings.retention_days,
                Timestamp::now(),
            ),
            rng: StdRng::seed_from_u64(settings.seed),
            settings,
            rt,
            store,
            counting,
            pack_target,
            gone: 0,
            deleted_sample: Vec::new(),
        }
    }

    /// Stores the rule "`retention_days` days for everything" as
    /// `des-tombstones retention set` does.
    pub fn set_retention(&self) -> anyhow::Result<u64> {
        let rules = RetentionRules {
            ticket_id: Some("deletion-scale benchmark".into()),
            rules: vec![Rule {
                uid_prefix: String::new(),
                max_age_days: Some(u32::try_from(self.settings.retention_days)?),
            }],
        };
        let stored = self
            .rt
            .block_on(rules_store::set(self.store, &rules, "bench"))
            .context("storing the retention rules")?;
        Ok(stored.version)
    }

    /// Packs day `k`'s files from a temporary directory of real files.
    fn pack_day(&self, k: usize, scratch: &Path) -> anyhow::Result<u64> {
        let day = &self.model.days[k];
        let dir = tempfile::tempdir_in(scratch).context("creating the day's source directory")?;
        for i in 0..self.settings.files_per_day {
            let uid = model::uid(k, i, self.settings.n_bits);
            std::fs::write(
                dir.path().join(&uid),
                model::content(self.settings.seed, &uid),
            )
            .context("writing a source file")?;
        }
        let opts = PackOptions {
            n_bits: Some(self.settings.n_bits),
            compression: Compression::None,
            jobs: 2,
            // The day's clock: its files are fresh under the rule then.
            now: Some(self.model.noon(k)),
            ..PackOptions::default()
        };
        let input = Input::Dir {
            root: dir.path().to_path_buf(),
            created_at: day.created_at,
        };
        let report = pack_into(&input, &opts, self.pack_target, self.rt.handle(), false)
            .with_context(|| format!("packing day {k}"))?;
        ensure!(
            report.files_packed == self.settings.files_per_day as u64 && report.files_failed == 0,
            "day {k}: packed {} of {} files ({} failed)",
            report.files_packed,
            self.settings.files_per_day,
            report.files_failed
        );
        Ok(report.files_packed)
    }

    /// Logs tombstones for `pairs` with `add_batch`, as `des-tombstones add
    /// --file` does with a JSON Lines file.
    fn add(&self, pairs: &[(String, Timestamp)]) -> anyhow::Result<(Counts, f64)> {
        let mut jsonl = Vec::with_capacity(pairs.len() * 64);
        for (uid, at) in pairs {
            let line = serde_json::json!({"uid": uid, "created_at": at.to_rfc3339()});
            serde_json::to_writer(&mut jsonl, &line)?;
            jsonl.push(b'\n');
        }
        let defaults = Defaults {
            reason: Some(DeleteReason::UserRequest),
            deleted_by: Some("bench".into()),
            ticket_id: None,
        };
        let log = TombstoneLog::new(self.store);
        let before = self.counting.counts();
        let started = Instant::now();
        let report = self
            .rt
            .block_on(add_batch(&log, Cursor::new(jsonl), &defaults, false))
            .context("add_batch")?;
        let secs = started.elapsed().as_secs_f64();
        ensure!(
            report.failed == 0 && report.added == pairs.len() as u64,
            "add_batch: {} added, {} already deleted, {} failed of {} (first error: {:?})",
            report.added,
            report.already_deleted,
            report.failed,
            pairs.len(),
            report.results.iter().find_map(|r| r.error.clone())
        );
        Ok((self.counting.counts().since(&before), secs))
    }

    /// One repack run with the day's clock; every pending deletion applied.
    fn repack(&self, now: Timestamp) -> anyhow::Result<(RepackReport, Counts, f64)> {
        let mut opts = RepackOptions::default();
        opts.now = Some(now);
        // The strict GDPR setting: apply every pending deletion each run.
        opts.max_delay = Duration::ZERO;
        // A tombstone is named by the real clock when it is logged, which is
        // after the simulated `now` of any past day: its age is negative, so
        // max_delay alone would never make it due. A garbage ratio of zero
        // makes every shard with a pending tombstone due, as max_delay 0
        // does in real time.
        opts.min_garbage_ratio = 0.0;
        let before = self.counting.counts();
        let started = Instant::now();
        let report = self
            .rt
            .block_on(repack(self.store, &opts, |_| {}))
            .context("repack")?;
        let secs = started.elapsed().as_secs_f64();
        if report.shards_failed > 0 {
            let first = report.shards.iter().find_map(|s| s.error.clone());
            bail!("repack: {} shards failed: {first:?}", report.shards_failed);
        }
        Ok((report, self.counting.counts().since(&before), secs))
    }

    /// Simulated day `k`: pack, delete, repack.
    pub fn day(&mut self, k: usize, scratch: &Path) -> anyhow::Result<DayRecord> {
        let started = Instant::now();
        let files_packed = self.pack_day(k, scratch)?;
        let pack_seconds = started.elapsed().as_secs_f64();
        let classes_before = self.counting.by_class();
        // The date that crosses the rule today (its files go, unasked).
        let expired = self.model.expire_on(k).map_or(0, |(_, n)| n as u64);
        // This day's share of the individual deletions, spread evenly.
        let s = self.settings;
        let quota = s.deletions * (k + 1) / s.days - s.deletions * k / s.days;
        let mut pairs = Vec::with_capacity(quota);
        for _ in 0..quota {
            let Some((j, i)) = self.model.take_random(k, &mut self.rng) else {
                break;
            };
            pairs.push((
                model::uid(j, i as usize, self.settings.n_bits),
                self.model.days[j].created_at,
            ));
        }
        // The last days' first deletions: their dates are still live at
        // the end, so they answer 410 because of the tombstone alone.
        if let Some((uid, at)) = pairs.first() {
            if self.deleted_sample.len() == 20 {
                self.deleted_sample.remove(0);
            }
            self.deleted_sample.push(Sampled {
                uid: uid.clone(),
                created_at: *at,
            });
        }
        let (add, add_seconds) = if pairs.is_empty() {
            (Counts::default(), 0.0)
        } else {
            self.add(&pairs)?
        };
        let (report, repack, repack_seconds) = self.repack(self.model.noon(k))?;
        self.gone += pairs.len() as u64 + expired;
        Ok(DayRecord {
            day: k,
            date: self.model.days[k].date,
            files_packed,
            deletions: pairs.len() as u64,
            expired,
            entries_dropped: report.entries_dropped,
            entries_expired: report.entries_expired,
            shards_rewritten: report.shards_rewritten,
            shards_deleted: report.shards_deleted,
            tombstones_compacted: report.tombstones_compacted,
            add,
            repack,
            repack_seconds,
            add_seconds,
            pack_seconds,
            old_log_records: self.gone,
            by_class: class_diff(&classes_before, &self.counting.by_class()),
        })
    }

    /// Sets aside `n` live files of the last day's live dates for the
    /// script's GETs: no deletion will pick them.
    pub fn set_aside(&mut self, n: usize) -> Vec<Sampled> {
        let k = self.settings.days - 1;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let Some((j, i)) = self.model.take_random(k, &mut self.rng) else {
                break;
            };
            out.push(Sampled {
                uid: model::uid(j, i as usize, self.settings.n_bits),
                created_at: self.model.days[j].created_at,
            });
        }
        out.sort_by(|a, b| a.uid.cmp(&b.uid));
        out
    }

    /// Adds `startup_deletions` more (half of the live files at most, the
    /// rest for files never packed, on live dates), applies and compacts
    /// them, then loads the set as the retriever does at start-up.
    pub fn startup(&mut self) -> anyhow::Result<Startup> {
        let s = self.settings;
        let k = s.days - 1;
        let want = s.startup_deletions;
        let real = want.min(self.model.live_count(k) / 2);
        let mut pairs = Vec::with_capacity(want);
        for _ in 0..real {
            if let Some((j, i)) = self.model.take_random(k, &mut self.rng) {
                pairs.push((
                    model::uid(j, i as usize, self.settings.n_bits),
                    self.model.days[j].created_at,
                ));
            }
        }
        let live_days: Vec<usize> = (k.saturating_sub(s.retention_days)..=k).collect();
        let synthetic = want - pairs.len();
        for n in 0..synthetic {
            let j = live_days[self.rng.gen_range(0..live_days.len())];
            pairs.push((
                model::synthetic_uid(n, s.n_bits),
                self.model.days[j].created_at,
            ));
        }
        let mut out = Startup {
            deletions_added: pairs.len() as u64,
            synthetic: synthetic as u64,
            ..Startup::default()
        };
        for (n, chunk) in pairs.chunks(100_000).enumerate() {
            eprintln!(
                "start-up: adding tombstones {}..{} of {}",
                n * 100_000,
                n * 100_000 + chunk.len(),
                pairs.len()
            );
            let (c, secs) = self.add(chunk)?;
            out.add.add(&c);
            out.add_seconds += secs;
        }
        eprintln!("start-up: repacking (apply and compact)...");
        let (report, c, secs) = self.repack(self.model.noon(k))?;
        out.repack = c;
        out.repack_seconds = secs;
        out.repack_shards_rewritten = report.shards_rewritten;
        out.repack_tombstones_marked = report.tombstones_marked;
        out.repack_tombstones_compacted = report.tombstones_compacted;
        let log = TombstoneLog::new(self.store);
        let mut set = TombstoneSet::new();
        for _ in 0..3 {
            let before = self.counting.counts();
            let classes_before = self.counting.by_class();
            let started = Instant::now();
            set = self.rt.block_on(TombstoneSet::load(&log))?;
            out.load_seconds.push(started.elapsed().as_secs_f64());
            out.load = self.counting.counts().since(&before);
            out.load_by_class = class_diff(&classes_before, &self.counting.by_class());
        }
        let mut sorted = out.load_seconds.clone();
        sorted.sort_by(f64::total_cmp);
        out.load_seconds_median = sorted[sorted.len() / 2];
        out.set_len = set.len() as u64;
        out.segments = set.segments() as u64;
        out.applied_heap_bytes = set.applied_heap_bytes() as u64;
        out.heap_bytes = set.heap_bytes() as u64;
        let objects = self.store.objects();
        let count = |prefix: &'static str| -> anyhow::Result<u64> {
            Ok(self.rt.block_on(objects.list_all(prefix))?.len() as u64)
        };
        out.objects_tombstones = count("_tombstones/")?;
        out.objects_segments = count("_tombstones/segments/")?;
        out.objects_applied = count("_tombstones_applied/")?;
        Ok(out)
    }
}

/// The requests counted between two breakdowns.
fn class_diff(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, n)| {
            let d = n - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}
