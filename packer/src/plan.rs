//! Groups records by `(date_dir, shard)` with bounded memory.
//!
//! An external merge sort: records are buffered until an estimate of their
//! size passes the budget, then sorted and spilled to a run file; `finish`
//! merges the runs (and the in-memory rest) and hands out one shard group at a
//! time. A small input never touches the disk.

use std::borrow::Cow;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use crate::error::Context;
use des_format::Timestamp;
use des_format::routing::{check_n_bits, locate_ts, shard_hex};
use serde::{Deserialize, Serialize};
use tempfile::TempPath;

use crate::report::FailureKind;
use crate::source::{FileRecord, RecordFailure, SourceRef};

/// More runs than this are merged in passes, bounding open files.
const DEFAULT_FAN_IN: usize = 64;

#[derive(Debug, Clone)]
pub struct PlanConfig {
    pub n_bits: u8,
    /// Bytes of buffered records (estimated) before spilling a run.
    pub memory_budget: usize,
    /// Created on the first spill only.
    pub spill_dir: PathBuf,
    /// Shard indexes to keep; records routed elsewhere are skipped.
    pub shard_filter: Option<RangeInclusive<u32>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanStats {
    /// Records routed and buffered (duplicates among them are only found by `finish`).
    pub accepted: u64,
    pub skipped_by_filter: u64,
    /// Sum of the accepted records' size hints.
    pub bytes_hinted: u64,
    /// Runs written by `push` (intermediate merge passes not counted).
    pub runs_spilled: u64,
}

/// All files of one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardGroup {
    pub date_dir: String,
    pub shard_index: u32,
    pub shard_hex: String,
    /// Sorted by uid bytes, uids unique.
    pub files: Vec<FileRecord>,
}

/// A routed record; `seq` (push order) makes every sort key unique, so the
/// result does not depend on where the spills happened to fall.
#[derive(Debug)]
struct Entry {
    date_dir: String,
    shard_index: u32,
    seq: u64,
    rec: FileRecord,
}

impl Entry {
    fn key(&self) -> (&str, u32, &str, u64, u64) {
        (
            &self.date_dir,
            self.shard_index,
            &self.rec.uid,
            self.rec.line,
            self.seq,
        )
    }

    fn same_group(&self, g: &ShardGroup) -> bool {
        self.shard_index == g.shard_index && self.date_dir == g.date_dir
    }

    /// Rough heap footprint; only has to be proportional, not exact.
    fn estimated_size(&self) -> usize {
        let r = &self.rec;
        std::mem::size_of::<Self>()
            + self.date_dir.len()
            + r.uid.len()
            + source_len(&r.source)
            + r.content_type.as_ref().map_or(0, String::len)
            + r.meta.as_ref().map_or(0, String::len)
    }
}

fn source_len(s: &SourceRef) -> usize {
    match s {
        SourceRef::Local(p) => p.as_os_str().len(),
        SourceRef::S3 { bucket, key } => bucket.len() + key.len(),
    }
}

fn sort_entries(v: &mut [Entry]) {
    v.sort_unstable_by(|a, b| a.key().cmp(&b.key()));
}

#[derive(Debug)]
pub struct Planner {
    cfg: PlanConfig,
    buffer: Vec<Entry>,
    buffered_bytes: usize,
    runs: Vec<Run>,
    stats: PlanStats,
    next_seq: u64,
    fan_in: usize,
}

impl Planner {
    pub fn new(cfg: PlanConfig) -> crate::error::Result<Self> {
        check_n_bits(cfg.n_bits)?;
        Ok(Self {
            cfg,
            buffer: Vec::new(),
            buffered_bytes: 0,
            runs: Vec::new(),
            stats: PlanStats::default(),
            next_seq: 0,
            fan_in: DEFAULT_FAN_IN,
        })
    }

    /// Lets tests exercise multi-pass merging without thousands of runs.
    #[cfg(test)]
    fn with_fan_in(mut self, fan_in: usize) -> Self {
        self.fan_in = fan_in.max(2);
        self
    }

    /// Routes the record (routing error → Err(RecordFailure) returned to the caller, not fatal);
    /// records outside shard_filter are skipped (counted).
    pub fn push(&mut self, rec: FileRecord) -> crate::error::Result<Result<(), RecordFailure>> {
        let loc = match locate_ts(&rec.uid, rec.created_at, self.cfg.n_bits) {
            Ok(loc) => loc,
            Err(e) => {
                return Ok(Err(failure_of(
                    &rec,
                    FailureKind::Record,
                    format!("cannot route: {e}"),
                )));
            }
        };
        if self
            .cfg
            .shard_filter
            .as_ref()
            .is_some_and(|f| !f.contains(&loc.shard_index))
        {
            self.stats.skipped_by_filter += 1;
            return Ok(Ok(()));
        }
        self.stats.accepted += 1;
        self.stats.bytes_hinted = self
            .stats
            .bytes_hinted
            .saturating_add(rec.size_hint.unwrap_or(0));
        let entry = Entry {
            date_dir: loc.date_dir,
            shard_index: loc.shard_index,
            seq: self.next_seq,
            rec,
        };
        self.next_seq += 1;
        self.buffered_bytes += entry.estimated_size();
        self.buffer.push(entry);
        if self.buffered_bytes > self.cfg.memory_budget {
            self.spill()?;
        }
        Ok(Ok(()))
    }

    pub fn stats(&self) -> PlanStats {
        self.stats
    }

    fn spill(&mut self) -> crate::error::Result<()> {
        let mut buffer = std::mem::take(&mut self.buffer);
        self.buffered_bytes = 0;
        sort_entries(&mut buffer);
        fs::create_dir_all(&self.cfg.spill_dir).with_context(|| {
            format!(
                "cannot create spill directory {}",
                self.cfg.spill_dir.display()
            )
        })?;
        let mut w = RunWriter::create(&self.cfg.spill_dir)?;
        for e in &buffer {
            w.write(e)?;
        }
        self.runs.push(w.finish()?);
        self.stats.runs_spilled += 1;
        Ok(())
    }

    /// Sorted groups in (date_dir, shard_index) order. Duplicate (date_dir, shard_index, uid) keys:
    /// the first record (lowest `line`) is kept, each later one is reported as a RecordFailure
    /// "duplicate uid … (first at line N)".
    pub fn finish(self) -> crate::error::Result<PlanIter> {
        let mut buffer = self.buffer;
        sort_entries(&mut buffer);
        let runs = reduce_runs(self.runs, self.fan_in, &self.cfg.spill_dir)?;
        let mut sources = runs
            .into_iter()
            .map(Source::open)
            .collect::<crate::error::Result<Vec<_>>>()?;
        sources.push(Source::Memory(buffer.into_iter()));
        Ok(PlanIter {
            merger: Merger::new(sources)?,
            pending: None,
            n_bits: self.cfg.n_bits,
            failed: false,
        })
    }
}

fn failure_of(rec: &FileRecord, kind: FailureKind, reason: String) -> RecordFailure {
    RecordFailure {
        line: rec.line,
        uid: Some(rec.uid.clone()),
        source: Some(rec.source.to_string()),
        kind,
        reason,
    }
}

/// Merges runs `fan_in` at a time until at most `fan_in` are left; the final
/// merge then opens no more files than that.
fn reduce_runs(mut runs: Vec<Run>, fan_in: usize, dir: &Path) -> crate::error::Result<Vec<Run>> {
    while runs.len() > fan_in {
        let mut next = Vec::with_capacity(runs.len().div_ceil(fan_in));
        let mut rest = runs.into_iter();
        loop {
            let chunk: Vec<Run> = rest.by_ref().take(fan_in).collect();
            match chunk.len() {
                0 => break,
                1 => next.extend(chunk),
                _ => next.push(merge_into_run(chunk, dir)?),
            }
        }
        runs = next;
    }
    Ok(runs)
}

fn merge_into_run(runs: Vec<Run>, dir: &Path) -> crate::error::Result<Run> {
    let sources = runs
        .into_iter()
        .map(Source::open)
        .collect::<crate::error::Result<Vec<_>>>()?;
    let mut merger = Merger::new(sources)?;
    let mut w = RunWriter::create(dir)?;
    while let Some(e) = merger.next_entry()? {
        w.write(&e)?;
    }
    w.finish()
}

/// Yields one shard group at a time, with the duplicates dropped from it.
#[derive(Debug)]
pub struct PlanIter {
    merger: Merger,
    /// First entry of the next group, read while closing the previous one.
    pending: Option<Entry>,
    n_bits: u8,
    failed: bool,
}

impl PlanIter {
    fn next_group(&mut self) -> crate::error::Result<Option<(ShardGroup, Vec<RecordFailure>)>> {
        let first = match self.pending.take() {
            Some(e) => e,
            None => match self.merger.next_entry()? {
                Some(e) => e,
                None => return Ok(None),
            },
        };
        let mut group = ShardGroup {
            shard_hex: shard_hex(first.shard_index, self.n_bits),
            date_dir: first.date_dir,
            shard_index: first.shard_index,
            files: vec![first.rec],
        };
        let mut duplicates = Vec::new();
        while let Some(e) = self.merger.next_entry()? {
            if !e.same_group(&group) {
                self.pending = Some(e);
                break;
            }
            match group.files.last() {
                Some(kept) if kept.uid == e.rec.uid => {
                    duplicates.push(duplicate(&group, kept, &e.rec))
                }
                _ => group.files.push(e.rec),
            }
        }
        Ok(Some((group, duplicates)))
    }
}

fn duplicate(group: &ShardGroup, kept: &FileRecord, dup: &FileRecord) -> RecordFailure {
    let reason = format!(
        "duplicate uid {:?} in {}/{} (first at line {})",
        dup.uid, group.date_dir, group.shard_hex, kept.line
    );
    failure_of(dup, FailureKind::Duplicate, reason)
}

impl Iterator for PlanIter {
    type Item = crate::error::Result<(ShardGroup, Vec<RecordFailure>)>;

    fn next(&mut self) -> Option<Self::Item> {
        // After an I/O error the merge state is unknown; stop rather than
        // hand out groups that may be missing records.
        if self.failed {
            return None;
        }
        let r = self.next_group();
        self.failed = r.is_err();
        r.transpose()
    }
}

// ---------------------------------------------------------------------------
// k-way merge

#[derive(Debug)]
struct Merger {
    sources: Vec<Source>,
    heap: BinaryHeap<Reverse<HeapItem>>,
}

#[derive(Debug)]
struct HeapItem {
    entry: Entry,
    source: usize,
}

impl Ord for HeapItem {
    fn cmp(&self, other: &Self) -> Ordering {
        self.entry.key().cmp(&other.entry.key())
    }
}

impl PartialOrd for HeapItem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for HeapItem {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for HeapItem {}

impl Merger {
    fn new(mut sources: Vec<Source>) -> crate::error::Result<Self> {
        let mut heap = BinaryHeap::with_capacity(sources.len());
        for (i, s) in sources.iter_mut().enumerate() {
            if let Some(entry) = s.next()? {
                heap.push(Reverse(HeapItem { entry, source: i }));
            }
        }
        Ok(Self { sources, heap })
    }

    fn next_entry(&mut self) -> crate::error::Result<Option<Entry>> {
        let Some(Reverse(item)) = self.heap.pop() else {
            return Ok(None);
        };
        if let Some(src) = self.sources.get_mut(item.source)
            && let Some(entry) = src.next()?
        {
            self.heap.push(Reverse(HeapItem {
                entry,
                source: item.source,
            }));
        }
        Ok(Some(item.entry))
    }
}

#[derive(Debug)]
enum Source {
    Memory(std::vec::IntoIter<Entry>),
    Run(RunReader),
    /// An exhausted run, dropped so its file is closed and deleted early.
    Done,
}

impl Source {
    fn open(run: Run) -> crate::error::Result<Self> {
        Ok(Self::Run(RunReader::open(run)?))
    }

    fn next(&mut self) -> crate::error::Result<Option<Entry>> {
        let next = match self {
            Self::Memory(it) => return Ok(it.next()),
            Self::Run(r) => r.next()?,
            Self::Done => None,
        };
        if next.is_none() {
            *self = Self::Done;
        }
        Ok(next)
    }
}

// ---------------------------------------------------------------------------
// Run files: a sequence of frames, each a little-endian u32 length followed by
// the serde_json encoding of one entry.

/// A closed run file; deleted when dropped. Kept closed between spill and
/// merge so that thousands of runs do not hold thousands of descriptors.
#[derive(Debug)]
struct Run {
    path: TempPath,
}

struct RunWriter {
    out: BufWriter<File>,
    path: TempPath,
}

impl RunWriter {
    fn create(dir: &Path) -> crate::error::Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix(".des-plan-")
            .suffix(".run")
            .tempfile_in(dir)
            .with_context(|| format!("cannot create a spill file in {}", dir.display()))?;
        let (file, path) = tmp.into_parts();
        Ok(Self {
            out: BufWriter::new(file),
            path,
        })
    }

    fn write(&mut self, e: &Entry) -> crate::error::Result<()> {
        let body = serde_json::to_vec(&SpillRecord::from_entry(e)?)?;
        let len = u32::try_from(body.len()).context("spill record over 4 GiB")?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&body)?;
        Ok(())
    }

    fn finish(mut self) -> crate::error::Result<Run> {
        self.out
            .flush()
            .with_context(|| format!("cannot write spill file {}", self.path.display()))?;
        Ok(Run { path: self.path })
    }
}

#[derive(Debug)]
struct RunReader {
    input: BufReader<File>,
    buf: Vec<u8>,
    /// Held so the file lives exactly as long as it is being read.
    run: Run,
}

impl RunReader {
    fn open(run: Run) -> crate::error::Result<Self> {
        let file = File::open(&run.path)
            .with_context(|| format!("cannot reopen spill file {}", run.path.display()))?;
        Ok(Self {
            input: BufReader::new(file),
            buf: Vec::new(),
            run,
        })
    }

    fn next(&mut self) -> crate::error::Result<Option<Entry>> {
        self.read_frame().with_context(|| {
            format!(
                "corrupt or unreadable spill file {}",
                self.run.path.display()
            )
        })
    }

    fn read_frame(&mut self) -> crate::error::Result<Option<Entry>> {
        if self.input.fill_buf()?.is_empty() {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        self.input.read_exact(&mut len)?;
        self.buf
            .resize(usize::try_from(u32::from_le_bytes(len))?, 0);
        self.input.read_exact(&mut self.buf)?;
        let rec: SpillRecord<'_> = serde_json::from_slice(&self.buf)?;
        rec.into_entry().map(Some)
    }
}

/// Short field names: run files can be as large as the input manifest.
#[derive(Serialize, Deserialize)]
struct SpillRecord<'a> {
    d: Cow<'a, str>,
    s: u32,
    q: u64,
    u: Cow<'a, str>,
    t: i64,
    l: u64,
    p: SpillPath<'a>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    z: Option<u64>,
}

/// Paths are OS strings; JSON needs text, so non-UTF-8 ones go as hex bytes.
#[derive(Serialize, Deserialize)]
enum SpillPath<'a> {
    #[serde(rename = "s")]
    Utf8(Cow<'a, str>),
    #[serde(rename = "x")]
    Hex(String),
    #[serde(rename = "3")]
    S3 { b: Cow<'a, str>, k: Cow<'a, str> },
}

impl<'a> SpillRecord<'a> {
    fn from_entry(e: &'a Entry) -> crate::error::Result<Self> {
        let r = &e.rec;
        Ok(Self {
            d: Cow::Borrowed(&e.date_dir),
            s: e.shard_index,
            q: e.seq,
            u: Cow::Borrowed(&r.uid),
            t: r.created_at.micros(),
            l: r.line,
            p: SpillPath::encode(&r.source)?,
            c: r.content_type.as_deref().map(Cow::Borrowed),
            m: r.meta.as_deref().map(Cow::Borrowed),
            z: r.size_hint,
        })
    }

    fn into_entry(self) -> crate::error::Result<Entry> {
        Ok(Entry {
            date_dir: self.d.into_owned(),
            shard_index: self.s,
            seq: self.q,
            rec: FileRecord {
                uid: self.u.into_owned(),
                created_at: Timestamp::from_micros(self.t),
                source: self.p.decode()?,
                content_type: self.c.map(Cow::into_owned),
                meta: self.m.map(Cow::into_owned),
                size_hint: self.z,
                line: self.l,
            },
        })
    }
}

impl<'a> SpillPath<'a> {
    fn encode(source: &'a SourceRef) -> crate::error::Result<Self> {
        let p = match source {
            SourceRef::Local(p) => p,
            SourceRef::S3 { bucket, key } => {
                return Ok(Self::S3 {
                    b: Cow::Borrowed(bucket),
                    k: Cow::Borrowed(key),
                });
            }
        };
        if let Some(s) = p.to_str() {
            return Ok(Self::Utf8(Cow::Borrowed(s)));
        }
        Self::encode_raw(p)
    }

    #[cfg(unix)]
    fn encode_raw(p: &Path) -> crate::error::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        Ok(Self::Hex(hex::encode(p.as_os_str().as_bytes())))
    }

    #[cfg(not(unix))]
    fn encode_raw(p: &Path) -> crate::error::Result<Self> {
        crate::error::bail!("cannot spill non-UTF-8 path {}", p.display())
    }

    fn decode(self) -> crate::error::Result<SourceRef> {
        match self {
            Self::Utf8(s) => Ok(SourceRef::Local(PathBuf::from(s.into_owned()))),
            Self::Hex(h) => decode_raw(&h).map(SourceRef::Local),
            Self::S3 { b, k } => Ok(SourceRef::S3 {
                bucket: b.into_owned(),
                key: k.into_owned(),
            }),
        }
    }
}

#[cfg(unix)]
fn decode_raw(h: &str) -> crate::error::Result<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    Ok(PathBuf::from(std::ffi::OsString::from_vec(
        hex::decode(h).map_err(|e| {
            crate::error::PackError::Internal(format!("a spill file names {h:?}: {e}"))
        })?,
    )))
}

#[cfg(not(unix))]
fn decode_raw(_: &str) -> crate::error::Result<PathBuf> {
    crate::error::bail!("raw byte paths are only supported on Unix")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    type Planned = Vec<(ShardGroup, Vec<RecordFailure>)>;
    /// (date_dir, shard, kept (uid, line)s, duplicate lines) per group.
    type Summary = Vec<(String, u32, Vec<(String, u64)>, Vec<u64>)>;

    const DAY_US: i64 = 86_400_000_000;

    fn rec(uid: &str, day: i64, line: u64) -> FileRecord {
        let base = Timestamp::parse_rfc3339("2024-05-01T12:00:00Z")
            .unwrap()
            .micros();
        FileRecord {
            uid: uid.to_string(),
            created_at: Timestamp::from_micros(base + day * DAY_US),
            source: SourceRef::Local(PathBuf::from(format!("/data/{uid}"))),
            content_type: None,
            meta: None,
            size_hint: Some(line),
            line,
        }
    }

    fn config(spill_dir: &Path, budget: usize) -> PlanConfig {
        PlanConfig {
            n_bits: 4,
            memory_budget: budget,
            spill_dir: spill_dir.to_path_buf(),
            shard_filter: None,
        }
    }

    fn push_all(p: &mut Planner, recs: &[FileRecord]) {
        for r in recs {
            p.push(r.clone()).unwrap().unwrap();
        }
    }

    fn plan(p: Planner, recs: &[FileRecord]) -> (Planned, PlanStats) {
        let mut p = p;
        push_all(&mut p, recs);
        let stats = p.stats();
        let groups = p
            .finish()
            .unwrap()
            .collect::<crate::error::Result<Vec<_>>>()
            .unwrap();
        (groups, stats)
    }

    fn files_in(dir: &Path) -> usize {
        fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }

    /// What the planner must produce, computed the obvious in-memory way.
    fn model(recs: &[FileRecord], n_bits: u8) -> Summary {
        let mut by_key: BTreeMap<(String, u32, String), Vec<u64>> = BTreeMap::new();
        for r in recs {
            let loc = locate_ts(&r.uid, r.created_at, n_bits).unwrap();
            by_key
                .entry((loc.date_dir, loc.shard_index, r.uid.clone()))
                .or_default()
                .push(r.line);
        }
        let mut out: Summary = Vec::new();
        for ((date, shard, uid), mut lines) in by_key {
            lines.sort_unstable();
            if out
                .last()
                .is_none_or(|g| (g.0.as_str(), g.1) != (date.as_str(), shard))
            {
                out.push((date, shard, Vec::new(), Vec::new()));
            }
            let g = out.last_mut().unwrap();
            g.2.push((uid, lines[0]));
            g.3.extend(&lines[1..]);
        }
        out
    }

    fn summarize(planned: &Planned) -> Summary {
        planned
            .iter()
            .map(|(g, dups)| {
                assert_eq!(g.shard_hex, shard_hex(g.shard_index, 4));
                let files = g.files.iter().map(|f| (f.uid.clone(), f.line)).collect();
                (
                    g.date_dir.clone(),
                    g.shard_index,
                    files,
                    dups.iter().map(|d| d.line).collect(),
                )
            })
            .collect()
    }

    fn records_strategy() -> impl Strategy<Value = Vec<FileRecord>> {
        prop::collection::vec(("[a-c0-9]{1,3}", 0i64..3), 0..150).prop_flat_map(|v| {
            let recs: Vec<FileRecord> = v
                .iter()
                .enumerate()
                .map(|(i, (uid, day))| rec(uid, *day, i as u64 + 1))
                .collect();
            // Push order differs from line order: the lowest line must win, not the first push.
            Just(recs).prop_shuffle()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn tiny_budget_plans_like_huge_budget(
            recs in records_strategy(),
            budget in 0usize..2_000,
            fan_in in 2usize..5,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (reference, _) = plan(Planner::new(config(&dir.path().join("a"), usize::MAX)).unwrap(), &recs);
            let small = Planner::new(config(&dir.path().join("b"), budget)).unwrap().with_fan_in(fan_in);
            let (spilled, stats) = plan(small, &recs);
            prop_assert_eq!(&spilled, &reference);
            prop_assert_eq!(summarize(&spilled), model(&recs, 4));
            prop_assert_eq!(stats.accepted, recs.len() as u64);
            prop_assert!(!dir.path().join("a").exists());
            prop_assert_eq!(files_in(&dir.path().join("b")), 0);
        }
    }

    #[test]
    fn many_runs_merge_in_passes_and_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join("spill");
        let recs: Vec<FileRecord> = (0..300)
            .map(|i| rec(&format!("u{}", i % 250), (i % 250) % 4, i as u64 + 1))
            .collect();
        let mut p = Planner::new(config(&spill, 0)).unwrap();
        push_all(&mut p, &recs);
        assert_eq!(p.stats().runs_spilled, 300);
        assert!(
            p.stats().runs_spilled > DEFAULT_FAN_IN as u64,
            "must need more than one merge pass"
        );
        assert_eq!(files_in(&spill), 300);
        let groups = p
            .finish()
            .unwrap()
            .collect::<crate::error::Result<Vec<_>>>()
            .unwrap();
        assert_eq!(files_in(&spill), 0);

        let (reference, stats) = plan(Planner::new(config(&spill, usize::MAX)).unwrap(), &recs);
        assert_eq!(stats.runs_spilled, 0);
        assert_eq!(groups, reference);
        assert_eq!(summarize(&groups), model(&recs, 4));
        assert_eq!(groups.iter().map(|g| g.1.len()).sum::<usize>(), 50);
    }

    #[test]
    fn groups_sorted_and_uids_unique() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<FileRecord> = (0..500)
            .map(|i| rec(&format!("{}", (i * 7919) % 300), i % 3, i as u64 + 1))
            .collect();
        let (groups, _) = plan(Planner::new(config(dir.path(), 1_000)).unwrap(), &recs);
        for w in groups.windows(2) {
            assert!(
                (&w[0].0.date_dir, w[0].0.shard_index) < (&w[1].0.date_dir, w[1].0.shard_index)
            );
        }
        for (g, _) in &groups {
            assert!(
                g.files
                    .windows(2)
                    .all(|w| w[0].uid.as_bytes() < w[1].uid.as_bytes())
            );
            for f in &g.files {
                let loc = locate_ts(&f.uid, f.created_at, 4).unwrap();
                assert_eq!(
                    (loc.date_dir.as_str(), loc.shard_index),
                    (g.date_dir.as_str(), g.shard_index)
                );
            }
        }
    }

    #[test]
    fn duplicates_keep_the_lowest_line() {
        let dir = tempfile::tempdir().unwrap();
        let recs = [
            rec("x", 0, 7),
            rec("y", 0, 1),
            rec("x", 0, 3),
            rec("x", 0, 9),
            rec("x", 1, 2),
        ];
        for budget in [0, usize::MAX] {
            let (groups, _) = plan(Planner::new(config(dir.path(), budget)).unwrap(), &recs);
            let x_day0 = groups
                .iter()
                .find(|(g, _)| g.date_dir == "20240501" && g.files.iter().any(|f| f.uid == "x"));
            let (g, dups) = x_day0.unwrap();
            let x = g.files.iter().find(|f| f.uid == "x").unwrap();
            assert_eq!(x.line, 3);
            assert_eq!(dups.iter().map(|d| d.line).collect::<Vec<_>>(), [7, 9]);
            assert!(dups.iter().all(|d| d.reason.contains("duplicate uid \"x\"")
                && d.reason.contains("(first at line 3)")));
            assert_eq!(dups[0].uid.as_deref(), Some("x"));
            // The same uid on another day is another shard file, not a duplicate.
            let day1: usize = groups
                .iter()
                .filter(|(g, _)| g.date_dir == "20240502")
                .map(|(g, _)| g.files.len())
                .sum();
            assert_eq!(day1, 1);
        }
    }

    #[test]
    fn shard_filter_skips_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<FileRecord> = (0..64).map(|i| rec(&i.to_string(), 0, i + 1)).collect();
        let cfg = PlanConfig {
            shard_filter: Some(2..=3),
            ..config(dir.path(), 0)
        };
        let (groups, stats) = plan(Planner::new(cfg).unwrap(), &recs);
        assert_eq!(
            groups
                .iter()
                .map(|(g, _)| g.shard_index)
                .collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(groups[0].0.shard_hex, "2");
        assert!(groups.iter().all(|(g, _)| g.files.len() == 4));
        assert_eq!(stats.accepted, 8);
        assert_eq!(stats.skipped_by_filter, 56);
        assert_eq!(stats.runs_spilled, 8);
        // uids 2, 18, 34, 50 → size hints are their lines 3, 19, 35, 51; shard 3 adds 4, 20, 36, 52.
        assert_eq!(stats.bytes_hinted, 3 + 19 + 35 + 51 + 4 + 20 + 36 + 52);
    }

    #[test]
    fn routing_errors_are_per_record() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            Planner::new(PlanConfig {
                n_bits: 3,
                ..config(dir.path(), 0)
            })
            .is_err()
        );
        let mut p = Planner::new(config(dir.path(), usize::MAX)).unwrap();
        let f = p.push(rec("", 0, 42)).unwrap().unwrap_err();
        assert_eq!(f.line, 42);
        assert!(f.reason.contains("cannot route"));
        p.push(rec("ok", 0, 43)).unwrap().unwrap();
        assert_eq!(p.stats().accepted, 1);
        assert_eq!(p.finish().unwrap().count(), 1);
    }

    #[test]
    fn small_input_never_touches_disk() {
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join("not-created");
        let recs: Vec<FileRecord> = (0..100).map(|i| rec(&format!("f{i}"), 0, i + 1)).collect();
        let (groups, stats) = plan(Planner::new(config(&spill, 1 << 30)).unwrap(), &recs);
        assert_eq!(stats.runs_spilled, 0);
        assert_eq!(groups.iter().map(|g| g.0.files.len()).sum::<usize>(), 100);
        assert!(!spill.exists());
        let (empty, _) = plan(Planner::new(config(&spill, 0)).unwrap(), &[]);
        assert!(empty.is_empty());
        assert!(!spill.exists());
    }

    #[test]
    fn spilled_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = rec("a", -20_000, 1);
        a.content_type = Some("text/plain".into());
        a.meta = Some(r#"{"k":"v\n","n":[1,2]}"#.into());
        a.size_hint = None;
        a.created_at = Timestamp::from_micros(a.created_at.micros() + 123_456);
        let mut b = rec("b", 0, 2);
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            b.source = SourceRef::Local(PathBuf::from(std::ffi::OsStr::from_bytes(
                b"/data/\xFF\xFEb",
            )));
        }
        let mut c = rec("c", 1, 3);
        c.source = SourceRef::S3 {
            bucket: "bkt".into(),
            key: "in/c \"q\".bin".into(),
        };
        let (groups, stats) = plan(
            Planner::new(config(dir.path(), 0)).unwrap(),
            &[a.clone(), b.clone(), c.clone()],
        );
        assert_eq!(stats.runs_spilled, 3);
        let got: Vec<&FileRecord> = groups.iter().flat_map(|g| &g.0.files).collect();
        assert_eq!(got, [&a, &b, &c]);
    }

    #[test]
    fn dropping_the_iterator_removes_spill_files() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<FileRecord> = (0..200)
            .map(|i| rec(&format!("f{i}"), i % 5, i as u64 + 1))
            .collect();
        let mut p = Planner::new(config(dir.path(), 0)).unwrap().with_fan_in(8);
        push_all(&mut p, &recs);
        let mut it = p.finish().unwrap();
        assert!(
            files_in(dir.path()) > 0 && files_in(dir.path()) <= 8,
            "merge passes leave ≤ fan-in runs"
        );
        it.next().unwrap().unwrap();
        drop(it);
        assert_eq!(files_in(dir.path()), 0);
    }
}
