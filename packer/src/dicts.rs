//! Dictionaries trained while packing (`--dict auto`, SPEC §6.7).
//!
//! While a run (or a listing's batch) is planned, a [`Sampler`] keeps a
//! fixed-seed reservoir of records per content class (the file name's
//! extension, else the content type). Before any shard is built, the most
//! common classes are trained on up to `sample_bytes` of their sampled
//! files each, and a dictionary is kept only if it pays: files held back
//! from training must shrink by at least a tenth more than with plain zstd.
//! A kept dictionary is written to the store before any file is compressed
//! with it, so no shard is ever published before its dictionary. A class's
//! dictionary is reused by later runs for `max_age`, then trained anew, so
//! content that drifts gets new dictionaries; old ones stay, as entries may
//! use them.
//!
//! Classes are trained side by side, one per core (zstd's trainer is
//! single-threaded, and training is the part of such a run nothing else
//! overlaps).
//!
//! Memory: reservoirs of at most `RESERVOIR` records for at most
//! `MAX_SAMPLED_CLASSES` classes, then `sample_bytes` per class of those
//! training at once (one per core); none of it grows with the input.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use des_format::dict::{self, EncoderDict};
use des_format::{Compression, DigestAlgorithm};
use des_storage::DesStore;
use des_storage::store::LatestDict;

use crate::source::FileRecord;
use serde::Serialize;
use tokio::runtime::Handle;

/// `--dict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DictMode {
    /// Train per class, use where it pays.
    #[default]
    Auto,
    Off,
    /// Use this stored dictionary for every compressible file.
    Id(u32),
}

impl FromStr for DictMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            id => dict::parse_id(id)
                .map(Self::Id)
                .map_err(|e| format!("{e}, auto or off")),
        }
    }
}

/// Dictionary settings of a pack run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DictSettings {
    pub mode: DictMode,
    /// Largest dictionary trained (bytes).
    pub size: usize,
    /// Bytes of sampled files a class's dictionary is trained on.
    pub sample_bytes: u64,
    /// Classes trained per run (the most common ones).
    pub max_classes: usize,
    /// A class's latest dictionary younger than this is reused, not retrained.
    pub max_age: std::time::Duration,
}

impl Default for DictSettings {
    fn default() -> Self {
        Self {
            mode: DictMode::Auto,
            size: 256 << 10,
            sample_bytes: 8 << 20,
            max_classes: 8,
            max_age: std::time::Duration::from_secs(24 * 3600),
        }
    }
}

/// Files larger than this are neither samples nor compressed with a
/// dictionary: a dictionary's history matters little past the first
/// hundred kilobytes.
pub const MAX_DICT_FILE: usize = 256 << 10;
/// Fewer files than this train no useful dictionary.
const MIN_SAMPLES: usize = 64;
/// zstd's trainer wants about this many bytes of samples per byte of
/// dictionary: below it, a smaller dictionary compresses better (on the
/// Rust documentation's HTML, 6 MB of samples gave held-back files at 0.45
/// of their plain zstd size with a 256 KiB dictionary, 0.27 with 192 KiB;
/// 8 MB with 256 KiB, 0.26).
const SAMPLE_BYTES_PER_DICT_BYTE: usize = 32;
/// The smallest dictionary trained.
const MIN_DICT: usize = 1 << 10;
/// One sample in this many is held back to measure the gain.
const HOLD_OUT: usize = 8;

/// The size of dictionary to train on `training` bytes of samples, at most
/// `max`.
fn dict_size(max: usize, training: usize) -> usize {
    (training / SAMPLE_BYTES_PER_DICT_BYTE)
        .max(MIN_DICT)
        .min(max)
}

/// A trained dictionary, as the JSON report shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrainedDict {
    pub class: String,
    /// `None`: trained but not kept (it did not pay), or not storable.
    pub id: Option<String>,
    pub bytes: usize,
    pub samples: usize,
    /// Held-back files' stored size with the dictionary / with plain zstd.
    pub ratio_to_plain: f64,
    /// Taken from an earlier run (trained less than `--dict-max-age` ago).
    pub reused: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Records kept per class while planning; enough to find `sample_bytes`
/// of usable files among them.
const RESERVOIR: usize = 1024;
/// Classes counted and sampled while planning (the first seen); the most
/// common `max_classes` of them are trained.
const MAX_SAMPLED_CLASSES: usize = 16;

/// Reservoirs of planned records per content class (Algorithm R, fixed
/// seed: the same input samples the same files).
#[derive(Debug)]
pub struct Sampler {
    classes: HashMap<String, Reservoir>,
    rng: u64,
}

#[derive(Debug, Default)]
struct Reservoir {
    seen: u64,
    kept: Vec<FileRecord>,
}

impl Default for Sampler {
    fn default() -> Self {
        Self {
            classes: HashMap::new(),
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }
}

impl Sampler {
    pub fn observe(&mut self, rec: &FileRecord) {
        if rec.size_hint.is_some_and(|n| n as usize > MAX_DICT_FILE) {
            return;
        }
        let class = dict::content_class(&rec.uid, rec.content_type.as_deref());
        if !self.classes.contains_key(&class) && self.classes.len() >= MAX_SAMPLED_CLASSES {
            return;
        }
        // xorshift64*: cheap, and no dependency on the run's thread timing.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let draw = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let r = self.classes.entry(class).or_default();
        r.seen += 1;
        if r.kept.len() < RESERVOIR {
            r.kept.push(rec.clone());
        } else if let Some(slot) = r.kept.get_mut((draw % r.seen) as usize) {
            *slot = rec.clone();
        }
    }

    /// Classes by how many records were seen, most first, each with at
    /// most an eighth of its files: training and the second read of the
    /// samples stay a small part of the run.
    fn by_count(self) -> Vec<(String, Vec<FileRecord>)> {
        let mut v: Vec<_> = self.classes.into_iter().collect();
        v.sort_by(|a, b| b.1.seen.cmp(&a.1.seen).then_with(|| a.0.cmp(&b.0)));
        v.into_iter()
            .map(|(c, mut r)| {
                r.kept
                    .truncate(usize::try_from(r.seen / 8).unwrap_or(usize::MAX));
                (c, r.kept)
            })
            .collect()
    }
}

pub struct Dictionaries {
    settings: DictSettings,
    level: i32,
    alg: DigestAlgorithm,
    fixed: Option<Arc<EncoderDict>>,
    /// Trained classes: `None` where no dictionary paid.
    classes: Mutex<HashMap<String, Option<Arc<EncoderDict>>>>,
    trained: Mutex<Vec<TrainedDict>>,
}

impl Dictionaries {
    /// For a run compressing at zstd `level` into `store`; `--dict ID`
    /// loads (and verifies) that dictionary now.
    pub fn new(
        settings: DictSettings,
        level: i32,
        store: &DesStore,
        handle: &Handle,
    ) -> des_storage::Result<Self> {
        let fixed = match settings.mode {
            DictMode::Id(id) => {
                let dict = handle.block_on(store.stored_dictionary(id))?;
                let encoder = dict.encoder(level).map_err(|e| {
                    des_storage::Error::format(&des_storage::store::dict_key(id), e)
                })?;
                Some(Arc::new(encoder))
            }
            _ => None,
        };
        Ok(Self {
            settings,
            level,
            alg: store.digest(),
            fixed,
            classes: Mutex::default(),
            trained: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Option<Arc<EncoderDict>>>> {
        self.classes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What was trained so far, for the report.
    pub fn trained(&self) -> Vec<TrainedDict> {
        self.trained
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A sampler for the next plan, if this run trains dictionaries.
    pub fn sampler(&self) -> Option<Sampler> {
        (self.settings.mode == DictMode::Auto).then(Sampler::default)
    }

    /// Trains the most common sampled classes not trained yet, reading
    /// their files with `read` (`None`: unreadable, skipped), and stores
    /// each dictionary that pays. Which classes train is decided in class
    /// order (the same input trains the same); up to one class per core
    /// trains at a time.
    pub fn train_from(
        &self,
        sampler: Sampler,
        read: impl Fn(&FileRecord) -> Option<Vec<u8>>,
        store: &DesStore,
        handle: &Handle,
    ) {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let mut budget = self.settings.max_classes.saturating_sub(self.lock().len());
        let mut batch = Vec::new();
        for (class, records) in sampler.by_count() {
            if budget == 0 {
                break;
            }
            if self.lock().contains_key(&class) {
                continue;
            }
            if let Some((dict, report)) = self.recent(&class, store, handle) {
                budget -= 1;
                self.record(class, Some(dict), report);
                continue;
            }
            let samples = self.samples(&records, &read);
            if samples.len() < MIN_SAMPLES {
                continue;
            }
            budget -= 1;
            batch.push((class, samples));
            if batch.len() == cores {
                self.train_batch(std::mem::take(&mut batch), store, handle);
            }
        }
        self.train_batch(batch, store, handle);
    }

    /// Up to `sample_bytes` of usable files among `records`.
    fn samples(
        &self,
        records: &[FileRecord],
        read: &impl Fn(&FileRecord) -> Option<Vec<u8>>,
    ) -> Vec<Vec<u8>> {
        let mut samples = Vec::new();
        let mut bytes = 0u64;
        for rec in records {
            if bytes >= self.settings.sample_bytes {
                break;
            }
            let Some(data) = read(rec) else { continue };
            let usable = (64..=MAX_DICT_FILE).contains(&data.len())
                && !des_format::codec::looks_compressed(
                    &rec.uid,
                    rec.content_type.as_deref(),
                    &data,
                );
            if usable {
                bytes += data.len() as u64;
                samples.push(data);
            }
        }
        samples
    }

    /// Trains each class of `batch` on its own thread; records them in
    /// batch order.
    fn train_batch(&self, batch: Vec<(String, Vec<Vec<u8>>)>, store: &DesStore, handle: &Handle) {
        let trained: Vec<_> = std::thread::scope(|scope| {
            let threads: Vec<_> = batch
                .iter()
                .map(|(class, samples)| scope.spawn(|| self.train(class, samples, store, handle)))
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        for ((class, _), (dict, report)) in batch.into_iter().zip(trained) {
            self.record(class, dict, report);
        }
    }

    fn record(&self, class: String, dict: Option<Arc<EncoderDict>>, report: TrainedDict) {
        self.trained
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(report);
        self.lock().insert(class, dict);
    }

    /// The class's latest dictionary if it was trained less than `max_age`
    /// ago (so frequent small runs share one a day, not one each).
    fn recent(
        &self,
        class: &str,
        store: &DesStore,
        handle: &Handle,
    ) -> Option<(Arc<EncoderDict>, TrainedDict)> {
        let latest = handle.block_on(store.latest_dictionary(class)).ok()??;
        let age = std::time::SystemTime::now()
            .duration_since(latest.trained_at)
            .unwrap_or_default();
        if age >= self.settings.max_age {
            return None;
        }
        let dict = handle.block_on(store.stored_dictionary(latest.id)).ok()?;
        let encoder = dict.encoder(self.level).ok()?;
        let report = TrainedDict {
            class: class.to_string(),
            id: Some(dict::id_hex(latest.id)),
            bytes: dict.bytes().len(),
            samples: 0,
            ratio_to_plain: latest.ratio_to_plain,
            reused: true,
            error: None,
        };
        Some((Arc::new(encoder), report))
    }

    /// The dictionary to compress this file with, if any.
    pub fn for_file(
        &self,
        uid: &str,
        content_type: Option<&str>,
        len: usize,
    ) -> Option<Arc<EncoderDict>> {
        match self.settings.mode {
            DictMode::Off => None,
            DictMode::Id(_) => self.fixed.clone(),
            DictMode::Auto if !(64..=MAX_DICT_FILE).contains(&len) => None,
            DictMode::Auto => self
                .lock()
                .get(&dict::content_class(uid, content_type))
                .cloned()
                .flatten(),
        }
    }

    /// Trains on all but every `HOLD_OUT`th sample, measures on those, and
    /// stores the dictionary if it pays.
    fn train(
        &self,
        class: &str,
        samples: &[Vec<u8>],
        store: &DesStore,
        handle: &Handle,
    ) -> (Option<Arc<EncoderDict>>, TrainedDict) {
        let (held, training): (Vec<_>, Vec<_>) = samples
            .iter()
            .enumerate()
            .partition(|(i, _)| i % HOLD_OUT == 0);
        let training: Vec<&Vec<u8>> = training.into_iter().map(|(_, s)| s).collect();
        let mut report = TrainedDict {
            class: class.to_string(),
            id: None,
            bytes: 0,
            samples: samples.len(),
            ratio_to_plain: 1.0,
            reused: false,
            error: None,
        };
        let training_bytes = training.iter().map(|s| s.len()).sum();
        let size = dict_size(self.settings.size, training_bytes);
        let result = (|| {
            let trained = dict::train(&training, size, self.alg)?;
            let encoder = trained.encoder(self.level)?;
            let (mut with, mut plain) = (0usize, 0usize);
            for (_, file) in &held {
                with += dict::compress(file, &encoder)?.len();
                let plain_policy = Compression::Zstd { level: self.level };
                plain += des_format::codec::encode(plain_policy, "", None, file)?
                    .1
                    .len();
            }
            Ok::<_, des_format::FormatError>((trained, encoder, with, plain))
        })();
        let (trained, encoder, with, plain) = match result {
            Ok(r) => r,
            Err(e) => {
                report.error = Some(e.to_string());
                return (None, report);
            }
        };
        report.bytes = trained.bytes().len();
        report.ratio_to_plain = with as f64 / plain.max(1) as f64;
        if !des_format::codec::worth_it(with as u64, plain as u64) {
            return (None, report);
        }
        if let Err(e) = handle.block_on(store.put_dictionary(&trained)) {
            report.error = Some(e.to_string());
            return (None, report);
        }
        let latest = LatestDict {
            id: trained.id(),
            trained_at: std::time::SystemTime::now(),
            ratio_to_plain: report.ratio_to_plain,
        };
        // Only a hint for later runs: without it they train their own.
        if let Err(e) = handle.block_on(store.set_latest_dictionary(class, &latest)) {
            report.error = Some(format!("recording it as the latest: {e}"));
        }
        report.id = Some(dict::id_hex(trained.id()));
        (Some(Arc::new(encoder)), report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_size_follows_the_samples() {
        assert_eq!(dict_size(256 << 10, 16 << 20), 256 << 10);
        assert_eq!(dict_size(256 << 10, 8 << 20), 256 << 10);
        assert_eq!(dict_size(256 << 10, 6 << 20), 192 << 10);
        assert_eq!(dict_size(256 << 10, 10_000), MIN_DICT);
        assert_eq!(dict_size(512, 1 << 20), 512, "never above --dict-size");
    }

    #[test]
    fn modes() {
        assert_eq!("auto".parse(), Ok(DictMode::Auto));
        assert_eq!("off".parse(), Ok(DictMode::Off));
        assert_eq!("0000a0b1".parse(), Ok(DictMode::Id(0xa0b1)));
        assert!("sometimes".parse::<DictMode>().is_err());
    }
}
