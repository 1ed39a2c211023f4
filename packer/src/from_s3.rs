//! `--from-s3 s3://bucket/prefix`: packing loose objects straight from a
//! bucket listing.
//!
//! Each listed object becomes an ordinary [`FileRecord`] whose source is
//! `s3://bucket/key`, so planning (external sort within `--plan-memory`),
//! routing, idempotency, big files, `--source-root` and the report are the
//! packer's usual machinery. What is specific to a listing:
//!
//! - **Batches.** The listing is read in batches of whole 1000-key pages
//!   (`--listing-batch` objects, rounded up to a page); each batch is planned,
//!   built and published like a whole manifest run. Memory stays bounded by
//!   configuration for any number of objects, and a batch is the unit of
//!   resumption. Each batch adds a generation to every shard it touches
//!   (old entries are copied), so fewer, larger batches write less.
//! - **Checkpoint.** After a batch, `--listing-checkpoint FILE` records its
//!   last key (temp file, fsync, rename); a re-run lists from there (S3
//!   `start-after`). A crash between two checkpoints re-packs at most one
//!   batch, which is idempotent. The checkpoint only moves past a batch in
//!   which every object was packed (or refused by the listing rules, which a
//!   retry cannot change): after a failure it stays put, so the next run
//!   retries from there.
//! - **Deleting originals.** With `--delete-sources-after-verify`, once a
//!   batch's shards are published the batch is listed again and each
//!   original is deleted only if its entry is found through the retriever's
//!   lookup path, its stored bytes pass their own CRC and digest checks, and
//!   that digest and length equal those of the object's current bytes. Any
//!   doubt (not found, an error, a difference) keeps the original.
//!
//! The listing is `des_storage`'s `S3Store::list_timed` (the trait's
//! `list` without each object's `LastModified`, the default `created_at`),
//! retried by its `RetryStore`; reads and deletes of the objects go through
//! `des_storage` too (retries, `--source-root`).

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use crate::error::{Context, PackError, Result};
use des_format::routing::locate_ts;
use des_format::shard::Check;
use des_format::{ContentDigest, Located, Timestamp};
use des_storage::bridge::BlockingStreamReader;
use des_storage::resilience::{RetryPolicy, RetryStore};
use des_storage::store::{external_key, verify_stream};
use des_storage::{ErrorKind, GetOptions, LoadedIndex, S3Config, S3Store};
use regex::Regex;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use crate::ingest::Ingest;
use crate::report::{Failure, FailureKind, FileError, MAX_REPORTED_FAILURES, PackReport};
use crate::source::{FileRecord, RecordFailure, Sink, SourceRef, check_uid};

/// Default `--listing-batch`: large, because every batch rewrites the shards
/// it touches; a crash re-packs at most this many objects.
pub const DEFAULT_LISTING_BATCH: u64 = 1_000_000;
/// Attempts per listing request (the SDK's standard retry: exponential
/// backoff with jitter, throttling and 5xx retried, other 4xx not).
const LIST_ATTEMPTS: u32 = 5;
/// Verifications in flight: each is a few small requests, so latency, not
/// CPU, bounds them.
const VERIFY_THREADS_PER_JOB: usize = 4;
const MAX_VERIFY_THREADS: usize = 64;

/// A `--from-s3` option that cannot be used; the run does not start.
#[derive(Debug, thiserror::Error)]
pub enum FromS3Error {
    #[error("--from-s3 {url:?}: {reason}")]
    Location { url: String, reason: String },
    #[error("--uid-regex {regex:?}: {reason}")]
    UidRegex { regex: String, reason: String },
    #[error("--created-at-from {0:?}: use last-modified or key")]
    CreatedAtFrom(String),
    #[error("--created-at-format {format:?}: {reason}")]
    CreatedAtFormat { format: String, reason: String },
    #[error("--created-at-from key needs --uid-regex with a (?P<created>...) group")]
    CreatedGroupMissing,
    #[error("--created-at-format only applies with --created-at-from key")]
    FormatWithoutKey,
    #[error("--listing-batch must be at least 1")]
    ZeroBatch,
    #[error("listing checkpoint {}: {reason}", path.display())]
    Checkpoint { path: PathBuf, reason: String },
    #[error(
        "--from-s3 {listing} and the store {store} overlap: the packer would pack (and with \
         --delete-sources-after-verify delete) the store's own objects"
    )]
    Overlap { listing: String, store: String },
}

/// Where each object's `created_at` comes from. Always UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreatedAt {
    /// The object's `LastModified` (the default).
    LastModified,
    /// The `created` group of `--uid-regex`: RFC 3339 text, or parsed with
    /// `--created-at-format`.
    Key(Option<KeyTime>),
}

/// Everything `--from-s3` needs besides the pack options.
#[derive(Debug, Clone)]
pub struct FromS3 {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the whole bucket.
    pub prefix: String,
    /// Applied to the key relative to the prefix: group `uid` (required),
    /// group `created` (for [`CreatedAt::Key`]).
    pub uid_regex: Option<Regex>,
    pub created_at: CreatedAt,
    pub checkpoint: Option<PathBuf>,
    /// Objects per batch, rounded up to whole listing pages.
    pub batch: u64,
    pub delete_sources: bool,
    /// One line per batch on stderr (the progress of a long run).
    pub log_progress: bool,
}

impl FromS3 {
    /// `url` is `s3://bucket[/prefix]`; `created_at_from` is `last-modified`
    /// or `key`.
    pub fn new(
        url: &str,
        uid_regex: Option<&str>,
        created_at_from: &str,
        created_at_format: Option<&str>,
    ) -> Result<Self, FromS3Error> {
        let (bucket, prefix) = parse_location(url)?;
        let uid_regex = uid_regex.map(compile_uid_regex).transpose()?;
        let format = created_at_format.map(KeyTime::parse).transpose()?;
        let created_at = match created_at_from {
            "last-modified" if format.is_some() => return Err(FromS3Error::FormatWithoutKey),
            "last-modified" => CreatedAt::LastModified,
            "key" => {
                let has_group = uid_regex
                    .as_ref()
                    .is_some_and(|r| r.capture_names().any(|n| n == Some("created")));
                if !has_group {
                    return Err(FromS3Error::CreatedGroupMissing);
                }
                CreatedAt::Key(format)
            }
            other => return Err(FromS3Error::CreatedAtFrom(other.to_string())),
        };
        Ok(Self {
            bucket,
            prefix,
            uid_regex,
            created_at,
            checkpoint: None,
            batch: DEFAULT_LISTING_BATCH,
            delete_sources: false,
            log_progress: false,
        })
    }

    pub fn with_batch(mut self, batch: u64) -> Result<Self, FromS3Error> {
        if batch == 0 {
            return Err(FromS3Error::ZeroBatch);
        }
        self.batch = batch;
        Ok(self)
    }

    /// What is listed: `s3://bucket/prefix/` (or `s3://bucket/`).
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.list_prefix())
    }

    /// The listing prefix: the prefix as a directory, so `in` does not also
    /// list `inbox/…`.
    fn list_prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    /// Refuses a store whose S3 location overlaps the listed prefix (the
    /// same bucket, one prefix inside the other). `stores` are store
    /// descriptions (`s3://bucket/prefix`, or a replicated set of them);
    /// other locations cannot overlap a bucket.
    fn check_disjoint(&self, stores: &[String]) -> Result<(), FromS3Error> {
        let inside = |outer: &str, inner: &str| {
            outer.is_empty()
                || inner == outer
                || inner
                    .strip_prefix(outer)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        for shown in stores {
            // A replicated store describes itself as `replicated[a, b]`.
            let urls = shown
                .split([' ', ',', '[', ']'])
                .filter(|t| t.starts_with("s3://"));
            for url in urls {
                let Ok((bucket, prefix)) = parse_location(url) else {
                    continue;
                };
                if bucket == self.bucket
                    && (inside(&self.prefix, &prefix) || inside(&prefix, &self.prefix))
                {
                    return Err(FromS3Error::Overlap {
                        listing: self.url(),
                        store: url.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The record for one listed object, or why there is none.
    fn derive(&self, obj: &Listed, line: u64) -> Derived {
        let url = format!("s3://{}/{}", self.bucket, obj.key);
        let fail = |uid: Option<&str>, reason: String| {
            Derived::Failed(RecordFailure {
                line,
                uid: uid.map(str::to_string),
                source: Some(url.clone()),
                kind: crate::report::FailureKind::Record,
                reason,
            })
        };
        let Some(rel) = obj.key.strip_prefix(&self.list_prefix()) else {
            return fail(None, "listed outside the --from-s3 prefix".into());
        };
        // Folder markers (`photos/` from a console's "create folder") hold no file.
        if rel.is_empty() || rel.ends_with('/') {
            return Derived::Skipped;
        }
        let (uid, created) = match &self.uid_regex {
            None => (rel, None),
            Some(re) => match re.captures(rel) {
                None => return fail(None, format!("key {rel:?} does not match --uid-regex")),
                Some(c) => match c.name("uid") {
                    None => {
                        return fail(None, format!("--uid-regex gave no uid group for {rel:?}"));
                    }
                    Some(uid) => (uid.as_str(), c.name("created").map(|m| m.as_str())),
                },
            },
        };
        if let Err(reason) = check_uid(uid) {
            return fail(Some(uid), reason);
        }
        let source = match SourceRef::parse_s3(&url) {
            Ok(s) => s,
            Err(reason) => return fail(Some(uid), reason),
        };
        let created_at = match (&self.created_at, created) {
            (CreatedAt::LastModified, _) => obj
                .last_modified
                .ok_or_else(|| "the listing gave no LastModified".to_string()),
            (CreatedAt::Key(_), None) => Err(format!(
                "--uid-regex matched {rel:?} without its created group"
            )),
            (CreatedAt::Key(None), Some(text)) => {
                Timestamp::parse_rfc3339(text).map_err(|e| e.to_string())
            }
            (CreatedAt::Key(Some(format)), Some(text)) => format.time_of(text),
        };
        match created_at {
            Ok(created_at) => Derived::Record(FileRecord {
                uid: uid.to_string(),
                created_at,
                source,
                content_type: None,
                meta: None,
                size_hint: Some(obj.size),
                line,
            }),
            Err(reason) => fail(Some(uid), reason),
        }
    }
}

fn parse_location(url: &str) -> Result<(String, String), FromS3Error> {
    let bad = |reason: &str| FromS3Error::Location {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("not an s3:// URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad("no bucket"));
    }
    let prefix = prefix.trim_end_matches('/');
    // The prefix is part of every source key, which must be one des_storage
    // can address.
    if !prefix.is_empty() && des_storage::object::check_key(prefix).is_err() {
        return Err(bad("the prefix has an empty, \".\" or \"..\" segment"));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

fn compile_uid_regex(text: &str) -> Result<Regex, FromS3Error> {
    let re = Regex::new(text).map_err(|e| FromS3Error::UidRegex {
        regex: text.to_string(),
        reason: e.to_string(),
    })?;
    if !re.capture_names().any(|n| n == Some("uid")) {
        return Err(FromS3Error::UidRegex {
            regex: text.to_string(),
            reason: "needs a named group (?P<uid>...)".into(),
        });
    }
    Ok(re)
}

// ---------------------------------------------------------------------------
// created_at from a key: a small strftime subset

/// A `--created-at-format`: `%Y` (4 digits), `%m %d %H %M %S` (2 digits
/// each), `%s` (Unix seconds), `%%`; any other character must appear as is.
/// Missing time fields are 0. Always UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTime(Vec<Item>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Literal(char),
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Epoch,
}

impl KeyTime {
    pub fn parse(format: &str) -> Result<Self, FromS3Error> {
        let bad = |reason: &str| FromS3Error::CreatedAtFormat {
            format: format.to_string(),
            reason: reason.to_string(),
        };
        let mut items = Vec::new();
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                items.push(Item::Literal(c));
                continue;
            }
            let item = match chars.next() {
                Some('Y') => Item::Year,
                Some('m') => Item::Month,
                Some('d') => Item::Day,
                Some('H') => Item::Hour,
                Some('M') => Item::Minute,
                Some('S') => Item::Second,
                Some('s') => Item::Epoch,
                Some('%') => Item::Literal('%'),
                _ => return Err(bad("only %Y %m %d %H %M %S %s and %% are supported")),
            };
            if item != Item::Literal('%') && items.contains(&item) {
                return Err(bad("a field appears twice"));
            }
            items.push(item);
        }
        let has = |i| items.contains(&i);
        let date = has(Item::Year) && has(Item::Month) && has(Item::Day);
        if has(Item::Epoch)
            && items
                .iter()
                .any(|i| !matches!(i, Item::Literal(_) | Item::Epoch))
        {
            return Err(bad("%s cannot be combined with other fields"));
        }
        if !date && !has(Item::Epoch) {
            return Err(bad("needs %Y, %m and %d (or %s)"));
        }
        Ok(Self(items))
    }

    /// The instant `text` names; all of `text` must match the format.
    fn time_of(&self, text: &str) -> Result<Timestamp, String> {
        let bad = || format!("created {text:?} does not match --created-at-format");
        let mut rest = text;
        let mut fields = [0i64; 6]; // Y m d H M S
        let mut epoch = None;
        for item in &self.0 {
            let (slot, width) = match item {
                Item::Literal(c) => {
                    rest = rest.strip_prefix(*c).ok_or_else(bad)?;
                    continue;
                }
                Item::Epoch => {
                    let n = rest
                        .find(|c: char| !c.is_ascii_digit())
                        .unwrap_or(rest.len());
                    let (digits, tail) = rest.split_at(n);
                    epoch = Some(digits.parse::<i64>().map_err(|_| bad())?);
                    rest = tail;
                    continue;
                }
                Item::Year => (0, 4),
                Item::Month => (1, 2),
                Item::Day => (2, 2),
                Item::Hour => (3, 2),
                Item::Minute => (4, 2),
                Item::Second => (5, 2),
            };
            let digits = rest
                .get(..width)
                .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(bad)?;
            rest = rest.get(width..).unwrap_or_default();
            if let Some(f) = fields.get_mut(slot) {
                *f = digits.parse().map_err(|_| bad())?;
            }
        }
        if !rest.is_empty() {
            return Err(bad());
        }
        if let Some(secs) = epoch {
            return secs
                .checked_mul(1_000_000)
                .map(Timestamp::from_micros)
                .ok_or_else(|| format!("created {text:?} is out of range"));
        }
        let [y, mo, d, h, mi, s] = fields;
        // RFC 3339 parsing checks the calendar (month 13, 30 February, …).
        Timestamp::parse_rfc3339(&format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"))
            .map_err(|_| format!("created {text:?} is not a valid date and time"))
    }
}

// ---------------------------------------------------------------------------
// Listing

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    /// The bucket key.
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<Timestamp>,
}

#[derive(Debug, Default)]
pub(crate) struct Page {
    pub objects: Vec<Listed>,
    /// The next page starts after this key; `None`: the listing is complete.
    pub next_start_after: Option<String>,
}

/// Pages of one prefix in key order, each strictly after `start_after`.
/// Blocking: called from the packer's own threads.
pub(crate) trait Lister: Sync {
    fn page(&self, start_after: Option<&str>) -> Result<Page>;
}

/// ListObjectsV2 through des_storage's S3 client (same settings as every
/// other S3 request), with its retries, keeping each object's LastModified.
pub(crate) struct S3Lister {
    store: Arc<S3Store>,
    retry: RetryStore<S3Store>,
    prefix: String,
    url: String,
    handle: Handle,
}

impl S3Lister {
    pub(crate) fn connect(spec: &FromS3, handle: &Handle) -> Result<Self> {
        let cfg = S3Config::from_url(&format!("s3://{}", spec.bucket))
            .with_context(|| format!("S3 settings for {}", spec.url()))?;
        let store =
            Arc::new(S3Store::new(cfg).with_context(|| format!("S3 client for {}", spec.url()))?);
        let policy = RetryPolicy {
            max_attempts: LIST_ATTEMPTS,
            ..RetryPolicy::default()
        };
        Ok(Self {
            retry: RetryStore::new(Arc::clone(&store), policy),
            store,
            prefix: spec.list_prefix(),
            url: spec.url(),
            handle: handle.clone(),
        })
    }
}

impl Lister for S3Lister {
    fn page(&self, start_after: Option<&str>) -> Result<Page> {
        let page = self
            .handle
            .block_on(self.retry.run("list", &self.prefix, || {
                self.store.list_timed(&self.prefix, start_after)
            }))
            .with_context(|| format!("listing {}", self.url))?;
        let objects = page
            .objects
            .into_iter()
            .map(|(meta, last_modified)| Listed {
                key: meta.key,
                size: meta.size,
                etag: meta.etag,
                last_modified,
            })
            .collect();
        Ok(Page {
            objects,
            next_start_after: page.next_start_after,
        })
    }
}

enum Derived {
    Record(FileRecord),
    /// Refused by the listing rules (regex, time, key): a retry cannot help.
    Failed(RecordFailure),
    /// Not a file (a folder marker).
    Skipped,
}

/// What one batch of the listing held.
#[derive(Debug, Default, PartialEq, Eq)]
struct BatchEnd {
    /// The last key listed; `None` when nothing was.
    last_key: Option<String>,
    listed: u64,
    skipped: u64,
    /// Records refused by the listing rules (already sent as failures).
    rule_failures: u64,
    /// No key after `last_key`.
    exhausted: bool,
}

/// Lists whole pages after `start_after` until at least `spec.batch`
/// objects were seen or the listing ends, handing each object's record (or
/// failure) to `sink`. Line numbers start at `first_line`.
fn read_batch(
    spec: &FromS3,
    lister: &dyn Lister,
    start_after: Option<&str>,
    first_line: u64,
    sink: Sink<'_>,
) -> Result<BatchEnd> {
    let mut end = BatchEnd::default();
    let mut after = start_after.map(str::to_string);
    loop {
        let page = lister.page(after.as_deref())?;
        for obj in page.objects {
            match spec.derive(&obj, first_line + end.listed) {
                Derived::Record(r) => sink(Ok(r))?,
                Derived::Failed(f) => {
                    end.rule_failures += 1;
                    sink(Err(f))?;
                }
                Derived::Skipped => end.skipped += 1,
            }
            end.listed += 1;
            end.last_key = Some(obj.key);
        }
        match page.next_start_after {
            None => {
                end.exhausted = true;
                return Ok(end);
            }
            // A server that does not move on would otherwise loop forever.
            Some(next) if after.as_deref().is_some_and(|a| next.as_str() <= a) => {
                crate::error::bail!(
                    "the listing of {} did not advance past {next:?}",
                    spec.url()
                );
            }
            Some(next) => {
                end.last_key = Some(next.clone());
                after = Some(next);
                if end.listed >= spec.batch {
                    return Ok(end);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Checkpoint

const CHECKPOINT_VERSION: u32 = 1;

/// The `--listing-checkpoint` file.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct CheckpointFile {
    version: u32,
    /// `s3://bucket/prefix/`: resuming another listing from it is refused.
    source: String,
    /// Every object up to and including this key is packed (or was refused
    /// by the listing rules); listing resumes after it.
    start_after: String,
    written_at: String,
}

/// The key to resume after; `None` when there is no checkpoint yet.
fn load_checkpoint(path: &Path, source: &str) -> Result<Option<String>, FromS3Error> {
    let bad = |reason: String| FromS3Error::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(format!("cannot read: {e}"))),
    };
    // A damaged checkpoint must stop the run: starting over silently would
    // hide it, and guessing a position could skip objects.
    let cp: CheckpointFile =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not a checkpoint: {e}")))?;
    if cp.version != CHECKPOINT_VERSION {
        return Err(bad(format!("unknown version {}", cp.version)));
    }
    if cp.source != source {
        return Err(bad(format!(
            "records the listing of {}, not {source}",
            cp.source
        )));
    }
    Ok(Some(cp.start_after))
}

/// The directory the checkpoint's temp file is created in.
fn checkpoint_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn checkpoint_dir_writable(path: &Path) -> Result<(), FromS3Error> {
    tempfile::Builder::new()
        .prefix(".des-checkpoint-")
        .tempfile_in(checkpoint_dir(path))
        .map(drop)
        .map_err(|e| FromS3Error::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("cannot write beside it: {e}"),
        })
}

/// Replaces the checkpoint atomically: a crash leaves the old or the new one.
fn write_checkpoint(path: &Path, source: &str, start_after: &str) -> Result<(), FromS3Error> {
    let bad = |what: &str, e: &dyn fmt::Display| FromS3Error::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("{what}: {e}"),
    };
    let body = serde_json::to_vec_pretty(&CheckpointFile {
        version: CHECKPOINT_VERSION,
        source: source.to_string(),
        start_after: start_after.to_string(),
        written_at: Timestamp::now().to_rfc3339(),
    })
    .map_err(|e| bad("encoding", &e))?;
    let dir = checkpoint_dir(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".des-checkpoint-")
        .tempfile_in(dir)
        .map_err(|e| bad("creating a temp file", &e))?;
    tmp.write_all(&body)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| bad("writing", &e))?;
    tmp.persist(path).map_err(|e| bad("renaming", &e.error))?;
    // The rename itself is durable only once the directory is synced.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| bad("syncing its directory", &e))
}

// ---------------------------------------------------------------------------
// The run

/// The `from_s3` section of the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FromS3Stats {
    /// What was listed: `s3://bucket/prefix/`.
    pub source: String,
    /// The checkpoint this run resumed after; `None`: from the start.
    pub resumed_after: Option<String>,
    /// The last key this run recorded in the checkpoint.
    pub checkpoint: Option<String>,
    /// The checkpoint stopped advancing because a batch had failures: the
    /// next run with it retries from there.
    pub checkpoint_held_back: bool,
    pub batches: u64,
    pub objects_listed: u64,
    /// Folder markers (keys ending in `/`): not files.
    pub objects_skipped: u64,
    pub delete_sources: bool,
    /// Originals deleted after their file was read back and matched.
    pub sources_deleted: u64,
    /// Listed objects left in place.
    pub sources_kept: u64,
    /// Originals kept although the store holds their uid: the read-back
    /// failed, differed, or the delete failed (exit 1).
    pub sources_failed_verification: u64,
    /// At most [`MAX_REPORTED_FAILURES`] entries.
    pub verification_failures: Vec<Failure>,
}

/// Lists `spec`'s prefix and packs it batch by batch into `ingest.store`,
/// adding to `report` (and setting `report.from_s3`).
pub(crate) fn pack_listing(
    spec: &FromS3,
    ingest: &Ingest<'_>,
    spill_dir: &Path,
    progress: bool,
    report: &mut PackReport,
) -> Result<()> {
    let stores: Vec<String> = ingest
        .store
        .placement()
        .stores()
        .iter()
        .map(|s| s.describe())
        .collect();
    spec.check_disjoint(&stores)?;
    let lister = S3Lister::connect(spec, ingest.handle)?;
    pack_from(spec, &lister, ingest, spill_dir, progress, report)
}

fn pack_from(
    spec: &FromS3,
    lister: &dyn Lister,
    ingest: &Ingest<'_>,
    spill_dir: &Path,
    progress: bool,
    report: &mut PackReport,
) -> Result<()> {
    let source = spec.url();
    let resumed = match &spec.checkpoint {
        Some(path) => {
            let resumed = load_checkpoint(path, &source)?;
            // Before the first batch, not after it: an unwritable
            // checkpoint found only then would cost a batch's work.
            checkpoint_dir_writable(path)?;
            resumed
        }
        None => None,
    };
    let log = |msg: String| {
        if spec.log_progress {
            eprintln!("des-pack: {msg}");
        }
    };
    match &resumed {
        Some(key) => log(format!("resuming the listing of {source} after {key:?}")),
        None => log(format!("listing {source}")),
    }
    let mut stats = FromS3Stats {
        source: source.clone(),
        resumed_after: resumed.clone(),
        delete_sources: spec.delete_sources,
        ..FromS3Stats::default()
    };
    let mut cursor = resumed;
    let mut next_line = 1;
    loop {
        let failed_before = report.files_failed;
        let start = cursor.clone();
        let batch_no = stats.batches + 1;
        let end = crate::run::pack_batch(ingest, spill_dir, progress, report, |sink| {
            let end = read_batch(spec, lister, start.as_deref(), next_line, sink)?;
            // Between listing and building: a batch of a million objects
            // takes a while, and without a terminal there is no bar.
            if end.listed > 0 {
                log(format!(
                    "batch {batch_no}: {} objects listed, packing",
                    end.listed
                ));
            }
            Ok(end)
        })?;
        let Some(last_key) = end.last_key.clone() else {
            break;
        };
        stats.batches += 1;
        stats.objects_listed += end.listed;
        stats.objects_skipped += end.skipped;
        next_line += end.listed;
        let pack_failures = report
            .files_failed
            .saturating_sub(failed_before)
            .saturating_sub(end.rule_failures);
        let unverified = if spec.delete_sources {
            verify_and_delete(
                spec,
                lister,
                ingest,
                start.as_deref(),
                &last_key,
                &mut stats,
            )?
        } else {
            0
        };
        if pack_failures > 0 || unverified > 0 {
            if !stats.checkpoint_held_back && spec.checkpoint.is_some() {
                let at = match stats.checkpoint.as_ref().or(stats.resumed_after.as_ref()) {
                    Some(key) => format!("after {key:?}"),
                    None => "at the start of the listing".into(),
                };
                log(format!(
                    "batch {} had failures: the checkpoint stays {at}, so a re-run retries from there",
                    stats.batches
                ));
            }
            stats.checkpoint_held_back = true;
        }
        if let Some(path) = &spec.checkpoint
            && !stats.checkpoint_held_back
        {
            write_checkpoint(path, &source, &last_key)?;
            stats.checkpoint = Some(last_key.clone());
        }
        log(format!(
            "batch {}: {} objects listed ({} in all), through {last_key:?}; so far {} packed, {} already present, {} failed, {} originals deleted",
            stats.batches,
            end.listed,
            stats.objects_listed,
            report.files_packed,
            report.files_already_present,
            report.files_failed,
            stats.sources_deleted,
        ));
        cursor = Some(last_key);
        if end.exhausted {
            break;
        }
    }
    stats.sources_kept = stats.objects_listed.saturating_sub(stats.sources_deleted);
    report.from_s3 = Some(stats);
    Ok(())
}

/// The outcome of verifying one original.
enum Verified {
    Deleted,
    /// Not in the store (its packing failed, or it was not to be packed):
    /// kept, and already reported if it was a failure.
    NotInStore,
    /// In the store, but not deletable: kept, and reported.
    Failed(FileError),
}

/// Lists `(after, through]` again and deletes each original whose file the
/// store serves with the same content. Returns how many originals were kept
/// although the store holds their uid.
fn verify_and_delete(
    spec: &FromS3,
    lister: &dyn Lister,
    ingest: &Ingest<'_>,
    after: Option<&str>,
    through: &str,
    stats: &mut FromS3Stats,
) -> Result<u64> {
    let n_bits = ingest.store.n_bits();
    let filter = ingest.opts.shard_filter(n_bits)?;
    let threads = (ingest.opts.jobs.max(1) * VERIFY_THREADS_PER_JOB).min(MAX_VERIFY_THREADS);
    let (tx, rx) = mpsc::sync_channel::<(Listed, FileRecord)>(threads * 4);
    let rx = Mutex::new(rx);
    let tally = Mutex::new(Tally::default());
    let indexes = IndexCache::new(ingest.opts.plan_memory);
    let listed = std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    // Hold the lock only to receive, not while verifying.
                    let next = rx.lock().map(|r| r.recv());
                    let Ok(Ok((obj, rec))) = next else { return };
                    let outcome = verify_one(spec, ingest, &indexes, &obj, &rec);
                    let Ok(mut t) = tally.lock() else { return };
                    t.add(outcome, &rec);
                }
            });
        }
        let fed = feed_verification(spec, lister, ingest, after, through, n_bits, filter, &tx);
        // Closing the queue lets the workers finish what is in it and stop.
        drop(tx);
        fed
    });
    listed?;
    let tally = tally
        .into_inner()
        .map_err(|_| PackError::Internal("a verification thread panicked".into()))?;
    stats.sources_deleted += tally.deleted;
    stats.sources_failed_verification += tally.failed;
    let room = MAX_REPORTED_FAILURES.saturating_sub(stats.verification_failures.len());
    stats
        .verification_failures
        .extend(tally.failures.into_iter().take(room));
    Ok(tally.failed)
}

#[derive(Default)]
struct Tally {
    deleted: u64,
    failed: u64,
    /// At most [`MAX_REPORTED_FAILURES`].
    failures: Vec<Failure>,
}

impl Tally {
    fn add(&mut self, outcome: Verified, rec: &FileRecord) {
        match outcome {
            Verified::Deleted => self.deleted += 1,
            Verified::NotInStore => {}
            Verified::Failed(e) => {
                self.failed += 1;
                if self.failures.len() < MAX_REPORTED_FAILURES {
                    self.failures.push(Failure {
                        line: rec.line,
                        uid: Some(rec.uid.clone()),
                        source: Some(rec.source.to_string()),
                        kind: e.kind,
                        reason: format!("original kept: {e}"),
                    });
                }
            }
        }
    }
}

/// Sends every object of `(after, through]` that this run was to pack to
/// the verification queue.
#[allow(clippy::too_many_arguments)]
fn feed_verification(
    spec: &FromS3,
    lister: &dyn Lister,
    ingest: &Ingest<'_>,
    after: Option<&str>,
    through: &str,
    n_bits: u8,
    filter: Option<std::ops::RangeInclusive<u32>>,
    tx: &mpsc::SyncSender<(Listed, FileRecord)>,
) -> Result<()> {
    let mut after = after.map(str::to_string);
    let mut line = 0;
    loop {
        let page = lister.page(after.as_deref())?;
        for obj in page.objects {
            if obj.key.as_str() > through {
                return Ok(());
            }
            line += 1;
            let Derived::Record(rec) = spec.derive(&obj, line) else {
                continue;
            };
            // Not this run's to pack (another --shard-range), or deleted in
            // the store: the original stays.
            let in_range = match (&filter, locate_ts(&rec.uid, rec.created_at, n_bits)) {
                (_, Err(_)) => false,
                (None, Ok(_)) => true,
                (Some(f), Ok(loc)) => f.contains(&loc.shard_index),
            };
            if !in_range
                || ingest
                    .deletions
                    .is_deleted(&rec.uid, rec.created_at.date_number())
            {
                continue;
            }
            if tx.send((obj, rec)).is_err() {
                crate::error::bail!("the verification threads stopped");
            }
        }
        match page.next_start_after {
            // Guarded like `read_batch`: a listing that does not advance.
            Some(next) if after.as_deref().is_some_and(|a| next.as_str() <= a) => {
                crate::error::bail!(
                    "the listing of {} did not advance past {next:?}",
                    spec.url()
                );
            }
            Some(next) if next.as_str() < through => after = Some(next),
            _ => return Ok(()),
        }
    }
}

/// Shard indexes read during one verification pass: a batch's objects are
/// in key order, not shard order, and without this each would read its
/// shard's index again. Held within a byte budget (`--plan-memory`) and
/// emptied whole when over it: the order gives no reuse to rank by.
struct IndexCache {
    loaded: Mutex<(std::collections::HashMap<String, Arc<LoadedIndex>>, usize)>,
    budget: usize,
}

impl IndexCache {
    fn new(budget: usize) -> Self {
        Self {
            loaded: Mutex::default(),
            budget,
        }
    }

    /// `uid`'s entry as the retriever finds it (`DesStore::find`: the shard
    /// it routes to; of a legacy store's parts the highest holding it).
    /// `fresh` reads the indexes again instead of using what is held.
    fn find(
        &self,
        ingest: &Ingest<'_>,
        uid: &str,
        created_at: Timestamp,
        fresh: bool,
    ) -> Result<Option<(Arc<LoadedIndex>, Located)>, String> {
        let store = ingest.store;
        let loc = store.locate(uid, created_at).map_err(|e| e.to_string())?;
        let mut keys = ingest
            .handle
            .block_on(store.shard_keys(&loc))
            .map_err(|e| e.to_string())?;
        keys.sort();
        for key in keys.iter().rev() {
            let held = if fresh { None } else { self.get(key) };
            let loaded = match held {
                Some(l) => l,
                None => match ingest.handle.block_on(store.load_index(key)) {
                    Ok(Some(l)) => self.put(key, l),
                    Ok(None) => continue,
                    Err(e) => return Err(format!("reading the index of {key}: {e}")),
                },
            };
            if let Some(found) = loaded.find(uid) {
                return Ok(Some((loaded, found)));
            }
        }
        Ok(None)
    }

    fn get(&self, key: &str) -> Option<Arc<LoadedIndex>> {
        self.loaded.lock().ok()?.0.get(key).cloned()
    }

    fn put(&self, key: &str, loaded: LoadedIndex) -> Arc<LoadedIndex> {
        let loaded = Arc::new(loaded);
        if let Ok(mut held) = self.loaded.lock() {
            let size = loaded.index.heap_size() + key.len();
            if held.1 + size > self.budget {
                held.0.clear();
                held.1 = 0;
            }
            if size <= self.budget {
                held.1 += size;
                held.0.insert(key.to_string(), Arc::clone(&loaded));
            }
        }
        loaded
    }
}

fn verify_one(
    spec: &FromS3,
    ingest: &Ingest<'_>,
    indexes: &IndexCache,
    obj: &Listed,
    rec: &FileRecord,
) -> Verified {
    let mut digest = None;
    // A second attempt with fresh indexes when the shard was replaced after
    // its index was read (then the entry is read from the new generation).
    for fresh in [false, true] {
        let (loaded, located) = match indexes.find(ingest, &rec.uid, rec.created_at, fresh) {
            Ok(Some(found)) => found,
            Ok(None) => return Verified::NotInStore,
            Err(e) => {
                return Verified::Failed(FileError::new(
                    FailureKind::Store,
                    format!("reading its entry back: {e}"),
                ));
            }
        };
        match check_stored(ingest, &loaded, &located) {
            Ok(()) => {}
            Err(Stored::Changed) if !fresh => continue,
            Err(Stored::Changed) => {
                return Verified::Failed(FileError::new(
                    FailureKind::Contention,
                    "its shard kept changing",
                ));
            }
            Err(Stored::Bad(e)) => {
                return Verified::Failed(FileError::new(
                    FailureKind::Store,
                    format!("the stored copy failed its check: {e}"),
                ));
            }
        }
        let Check::V3 { digest: d, .. } = &located.check else {
            return Verified::Failed(FileError::new(
                FailureKind::Unsupported,
                "its entry has no content digest",
            ));
        };
        digest = Some((located.orig_len, *d));
        break;
    }
    let Some((orig_len, digest)) = digest else {
        return Verified::Failed(FileError::new(
            FailureKind::Contention,
            "its shard kept changing",
        ));
    };
    let src = match ingest.sources.s3_bucket_for(&spec.bucket, &obj.key) {
        Ok(s) => s,
        Err(e) => return Verified::Failed(e),
    };
    match source_digest(ingest, src.as_ref(), obj) {
        Ok((len, d)) if len == orig_len && d == digest => {}
        Ok(_) => {
            return Verified::Failed(FileError::new(
                FailureKind::ContentConflict,
                "the store holds other content for its uid",
            ));
        }
        Err(e) => return Verified::Failed(e),
    }
    // S3 has no conditional delete: an overwrite between the read above and
    // this delete would be lost, so sources must not be rewritten during a
    // run that deletes them (README).
    match ingest.handle.block_on(src.delete(&obj.key)) {
        Ok(()) => Verified::Deleted,
        Err(e) => Verified::Failed(FileError::new(
            FailureKind::Store,
            format!("deleting it: {e}"),
        )),
    }
}

enum Stored {
    /// The shard object was replaced or removed since its index was read.
    Changed,
    Bad(String),
}

/// Inline entries up to this size are read whole and checked in one go
/// (as `des-verify` does); larger ones, and big files, are streamed.
const MAX_BUFFERED: u64 = 16 << 20;

/// Reads the entry's stored bytes and checks them against its CRC32C,
/// length and content digest. Runs on a verification thread (blocking).
fn check_stored(
    ingest: &Ingest<'_>,
    loaded: &LoadedIndex,
    located: &Located,
) -> Result<(), Stored> {
    let shard_err = |e: des_storage::Error| match e.kind() {
        // Reads carry the index's ETag: a replaced shard lands here.
        ErrorKind::PreconditionFailed | ErrorKind::NotFound => Stored::Changed,
        _ => Stored::Bad(e.to_string()),
    };
    let handle = ingest.handle;
    match located.shard_range() {
        // Nothing to read (an empty file): the entry's CRC and digest must
        // still be those of no bytes. A zero-length range read is refused.
        Some(range) if range.is_empty() => located
            .decode(&[])
            .map(drop)
            .map_err(|e| Stored::Bad(e.to_string())),
        Some(_) if located.stored_len <= MAX_BUFFERED && located.orig_len <= MAX_BUFFERED => handle
            .block_on(ingest.store.read_file(loaded, located))
            .map(drop)
            .map_err(shard_err),
        Some(range) => {
            let objects = ingest
                .store
                .objects_for_key(&loaded.key)
                .map_err(|e| Stored::Bad(e.to_string()))?;
            let etag = loaded.object.etag.clone();
            handle
                .block_on(verify_stream(
                    objects,
                    &loaded.key,
                    Some(range),
                    located,
                    etag,
                ))
                .map_err(shard_err)
        }
        None => {
            let key = external_key(&loaded.key, located)
                .ok_or_else(|| Stored::Bad("the entry has no payload".into()))?;
            let objects = ingest
                .store
                .objects_for_key(&loaded.key)
                .map_err(|e| Stored::Bad(e.to_string()))?;
            handle
                .block_on(verify_stream(objects, &key, None, located, None))
                .map_err(|e| Stored::Bad(e.to_string()))
        }
    }
}

/// Length and digest of the object's bytes now, read only if it is still the
/// version listed (its ETag).
fn source_digest(
    ingest: &Ingest<'_>,
    src: &dyn des_storage::ObjectStore,
    obj: &Listed,
) -> Result<(u64, ContentDigest), FileError> {
    let opts = GetOptions {
        range: None,
        if_match: obj.etag.clone(),
    };
    let got = ingest
        .handle
        .block_on(src.get(&obj.key, opts))
        .map_err(|e| match e.kind() {
            ErrorKind::PreconditionFailed => {
                FileError::new(FailureKind::SourceChanged, "it changed after it was listed")
            }
            _ => FileError::new(
                FailureKind::SourceUnreadable,
                format!("reading it again: {e}"),
            ),
        })?;
    let mut reader = BlockingStreamReader::new(ingest.handle.clone(), got.body);
    let mut hasher = ingest.store.digest().hasher();
    let mut buf = vec![0u8; 64 << 10];
    let mut len = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let detail = format!("reading it again: {e}");
                return Err(FileError::new(FailureKind::SourceUnreadable, detail));
            }
        };
        hasher.update(buf.get(..n).unwrap_or_default());
        len += n as u64;
    }
    Ok((len, hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    fn obj(key: &str) -> Listed {
        Listed {
            key: key.to_string(),
            size: 7,
            etag: Some("\"e\"".into()),
            last_modified: Some(ts("2024-05-17T10:00:00.25Z")),
        }
    }

    fn record(d: Derived) -> FileRecord {
        match d {
            Derived::Record(r) => r,
            Derived::Failed(f) => panic!("failed: {f}"),
            Derived::Skipped => panic!("skipped"),
        }
    }

    fn failure(d: Derived) -> RecordFailure {
        match d {
            Derived::Failed(f) => f,
            Derived::Record(r) => panic!("derived {r:?}"),
            Derived::Skipped => panic!("skipped"),
        }
    }

    #[test]
    fn locations() {
        let s = FromS3::new("s3://b/in/", None, "last-modified", None).unwrap();
        assert_eq!((s.bucket.as_str(), s.prefix.as_str()), ("b", "in"));
        assert_eq!(s.url(), "s3://b/in/");
        let whole = FromS3::new("s3://b", None, "last-modified", None).unwrap();
        assert_eq!((whole.prefix.as_str(), whole.url()), ("", "s3://b/".into()));
        for bad in [
            "b/in",
            "s3:///in",
            "s3://b/a//c",
            "s3://b/../x",
            "https://b/x",
        ] {
            let e = FromS3::new(bad, None, "last-modified", None).unwrap_err();
            assert!(matches!(e, FromS3Error::Location { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn option_combinations() {
        let new = |re, from, fmt| FromS3::new("s3://b/p", re, from, fmt);
        assert!(matches!(
            new(Some("(?P<id>.*)"), "last-modified", None),
            Err(FromS3Error::UidRegex { .. })
        ));
        assert!(matches!(
            new(Some("(?P<uid>["), "last-modified", None),
            Err(FromS3Error::UidRegex { .. })
        ));
        assert!(matches!(
            new(Some("(?P<uid>.*)"), "key", None),
            Err(FromS3Error::CreatedGroupMissing)
        ));
        assert!(matches!(
            new(None, "key", None),
            Err(FromS3Error::CreatedGroupMissing)
        ));
        assert!(matches!(
            new(None, "last-modified", Some("%Y%m%d")),
            Err(FromS3Error::FormatWithoutKey)
        ));
        assert!(matches!(
            new(None, "mtime", None),
            Err(FromS3Error::CreatedAtFrom(_))
        ));
        assert!(
            new(None, "last-modified", None)
                .unwrap()
                .with_batch(0)
                .is_err()
        );
        let ok = new(
            Some("^(?P<created>[0-9/]+)/(?P<uid>.+)$"),
            "key",
            Some("%Y/%m/%d"),
        )
        .unwrap();
        assert!(matches!(ok.created_at, CreatedAt::Key(Some(_))));
    }

    #[test]
    fn the_store_must_not_be_inside_the_listing_or_around_it() {
        let spec = |url| FromS3::new(url, None, "last-modified", None).unwrap();
        let check = |url, store: &str| spec(url).check_disjoint(&[store.to_string()]);
        assert!(check("s3://b/in", "s3://b/des").is_ok());
        assert!(check("s3://b/in", "s3://b/inbox").is_ok(), "a / boundary");
        assert!(check("s3://b/in", "s3://other/in").is_ok());
        assert!(check("s3://b/in", "file:///data/in").is_ok());
        assert!(check("s3://b/in", "s3://b/in/des").is_err());
        assert!(check("s3://b/in", "s3://b/in").is_err());
        assert!(check("s3://b/in/x", "s3://b/in").is_err());
        assert!(check("s3://b", "s3://b/des").is_err());
        assert!(check("s3://b/in", "s3://b").is_err());
        let e = check("s3://b/in", "replicated[s3://a/x, s3://b/in/copy]").unwrap_err();
        assert!(e.to_string().contains("s3://b/in/copy"), "{e}");
    }

    #[test]
    fn uid_is_the_key_relative_to_the_prefix() {
        let s = FromS3::new("s3://b/in", None, "last-modified", None).unwrap();
        let r = record(s.derive(&obj("in/a/b.jpg"), 3));
        assert_eq!(r.uid, "a/b.jpg");
        assert_eq!(r.created_at, ts("2024-05-17T10:00:00.25Z"));
        assert_eq!(
            r.source,
            SourceRef::S3 {
                bucket: "b".into(),
                key: "in/a/b.jpg".into()
            }
        );
        assert_eq!((r.size_hint, r.line), (Some(7), 3));
        assert!(matches!(s.derive(&obj("in/dir/"), 1), Derived::Skipped));
        assert!(matches!(s.derive(&obj("in/"), 1), Derived::Skipped));
        let f = failure(s.derive(&obj("in/a//b"), 4));
        assert_eq!(f.line, 4);
        assert_eq!(f.source.as_deref(), Some("s3://b/in/a//b"));
        assert!(f.reason.contains("not supported"), "{}", f.reason);
        let mut no_time = obj("in/x");
        no_time.last_modified = None;
        assert!(
            failure(s.derive(&no_time, 1))
                .reason
                .contains("LastModified")
        );
        let long = format!("in/{}", "x".repeat(des_format::v3::MAX_UID_LEN + 1));
        assert!(
            failure(s.derive(&obj(&long), 1))
                .reason
                .contains("uid is over")
        );
        // The whole bucket: the key is the uid.
        let whole = FromS3::new("s3://b", None, "last-modified", None).unwrap();
        assert_eq!(record(whole.derive(&obj("in/a"), 1)).uid, "in/a");
    }

    #[test]
    fn uid_and_created_at_from_a_regex() {
        let s = FromS3::new(
            "s3://b/in",
            Some(r"^(?P<created>\d{8})/(?P<uid>[^/]+)\.jpg$"),
            "key",
            Some("%Y%m%d"),
        )
        .unwrap();
        let r = record(s.derive(&obj("in/20240229/cat.jpg"), 1));
        assert_eq!(r.uid, "cat");
        assert_eq!(r.created_at, ts("2024-02-29T00:00:00Z"));
        let f = failure(s.derive(&obj("in/20240229/cat.png"), 2));
        assert!(
            f.reason.contains("does not match --uid-regex"),
            "{}",
            f.reason
        );
        let f = failure(s.derive(&obj("in/20230229/cat.jpg"), 3));
        assert_eq!(f.uid.as_deref(), Some("cat"));
        assert!(f.reason.contains("not a valid date"), "{}", f.reason);

        // RFC 3339 without a format; the uid group may be optional.
        let rfc = FromS3::new(
            "s3://b/in",
            Some(r"^(?P<created>[^_]+)_(?P<uid>\w+)?$"),
            "key",
            None,
        )
        .unwrap();
        let r = record(rfc.derive(&obj("in/2024-05-17T23:30:00-01:00_x"), 1));
        assert_eq!(r.created_at.date_dir(), "20240518", "UTC date");
        assert!(
            failure(rfc.derive(&obj("in/2024-05-17T10:00:00Z_"), 1))
                .reason
                .contains("no uid group")
        );
        assert!(
            failure(rfc.derive(&obj("in/yesterday_x"), 1))
                .reason
                .contains("RFC 3339")
        );

        // A regex with a created group still takes LastModified by default.
        let lm = FromS3::new(
            "s3://b/in",
            Some(r"(?P<created>\d+)-(?P<uid>.+)"),
            "last-modified",
            None,
        )
        .unwrap();
        let r = record(lm.derive(&obj("in/1-a"), 1));
        assert_eq!(
            (r.uid.as_str(), r.created_at),
            ("a", ts("2024-05-17T10:00:00.25Z"))
        );
    }

    #[test]
    fn key_time_formats() {
        let p = |f: &str, t: &str| KeyTime::parse(f).unwrap().time_of(t);
        assert_eq!(
            p("%Y-%m-%dT%H%M%SZ", "2024-05-17T101503Z").unwrap(),
            ts("2024-05-17T10:15:03Z")
        );
        assert_eq!(
            p("%Y/%m/%d", "1999/12/31").unwrap(),
            ts("1999-12-31T00:00:00Z")
        );
        assert_eq!(p("t%s", "t1715940000").unwrap(), ts("2024-05-17T10:00:00Z"));
        assert_eq!(
            p("%d.%m.%Y %%", "17.05.2024 %").unwrap(),
            ts("2024-05-17T00:00:00Z")
        );
        assert!(p("%Y%m%d", "2024051").is_err(), "short");
        assert!(p("%Y%m%d", "202405170").is_err(), "trailing text");
        assert!(p("%Y%m%d", "2024-5-17").is_err());
        assert!(p("%Y%m%d", "20241317").is_err(), "month 13");
        assert!(p("%Y%m%d%H", "2024051725").is_err(), "hour 25");
        assert!(p("%s", "").is_err());
        assert!(p("%s", "99999999999999999").is_err(), "overflow");
        for bad in ["%Y%m", "%Y%m%d%q", "%Y%m%d%Y", "%s%Y", "%", ""] {
            assert!(KeyTime::parse(bad).is_err(), "{bad}");
        }
    }

    /// Pages of `keys` (sorted), `per_page` at a time, as S3 serves them.
    struct VecLister {
        keys: Vec<String>,
        per_page: usize,
        calls: Mutex<Vec<Option<String>>>,
    }

    impl VecLister {
        fn new(keys: &[&str], per_page: usize) -> Self {
            let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            keys.sort();
            Self {
                keys,
                per_page,
                calls: Mutex::default(),
            }
        }
    }

    impl Lister for VecLister {
        fn page(&self, start_after: Option<&str>) -> Result<Page> {
            self.calls
                .lock()
                .unwrap()
                .push(start_after.map(str::to_string));
            let rest: Vec<&String> = self
                .keys
                .iter()
                .filter(|k| start_after.is_none_or(|a| k.as_str() > a))
                .collect();
            let objects: Vec<Listed> = rest.iter().take(self.per_page).map(|k| obj(k)).collect();
            let next_start_after = (rest.len() > self.per_page)
                .then(|| objects.last().map(|o| o.key.clone()))
                .flatten();
            Ok(Page {
                objects,
                next_start_after,
            })
        }
    }

    fn batch(spec: &FromS3, lister: &dyn Lister, after: Option<&str>) -> (Vec<String>, BatchEnd) {
        let mut got = Vec::new();
        let end = read_batch(spec, lister, after, 1, &mut |r| {
            got.push(match r {
                Ok(r) => r.uid,
                Err(f) => format!("failed {}", f.line),
            });
            Ok(())
        })
        .unwrap();
        (got, end)
    }

    #[test]
    fn batches_are_whole_pages_and_resume_after_their_last_key() {
        let keys: Vec<String> = (0..10).map(|i| format!("p/k{i}")).collect();
        let mut all: Vec<&str> = keys.iter().map(String::as_str).collect();
        all.extend(["p/dir/", "other/x", "p/bad//key"]);
        let lister = VecLister::new(&all, 3);
        let spec = FromS3::new("s3://b/p", None, "last-modified", None)
            .unwrap()
            .with_batch(4)
            .unwrap();
        // Not filtered by the fake: the real listing has the prefix.
        let lister = VecLister {
            keys: lister
                .keys
                .into_iter()
                .filter(|k| k.starts_with("p/"))
                .collect(),
            ..lister
        };
        // 4 rounds up to two pages of 3.
        let (got, end) = batch(&spec, &lister, None);
        assert_eq!(got, ["failed 1", "k0", "k1", "k2", "k3"]);
        assert_eq!(end.listed, 6);
        assert_eq!(
            (end.skipped, end.rule_failures, end.exhausted),
            (1, 1, false)
        );
        assert_eq!(end.last_key.as_deref(), Some("p/k3"));
        let (got, end) = batch(&spec, &lister, Some("p/k3"));
        assert_eq!(got, ["k4", "k5", "k6", "k7", "k8", "k9"]);
        assert!(end.exhausted);
        assert_eq!(end.last_key.as_deref(), Some("p/k9"));
        let (got, end) = batch(&spec, &lister, Some("p/k9"));
        assert!(got.is_empty());
        assert_eq!(
            end,
            BatchEnd {
                exhausted: true,
                ..BatchEnd::default()
            }
        );
    }

    #[test]
    fn a_listing_that_does_not_advance_is_an_error() {
        struct Stuck;
        impl Lister for Stuck {
            fn page(&self, _: Option<&str>) -> Result<Page> {
                Ok(Page {
                    objects: vec![obj("p/a")],
                    next_start_after: Some("p/a".into()),
                })
            }
        }
        let spec = FromS3::new("s3://b/p", None, "last-modified", None)
            .unwrap()
            .with_batch(10)
            .unwrap();
        let e = read_batch(&spec, &Stuck, None, 1, &mut |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("did not advance"), "{e}");
    }

    #[test]
    fn checkpoints_round_trip_and_refuse_what_they_cannot_vouch_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        assert_eq!(load_checkpoint(&path, "s3://b/p/").unwrap(), None);
        write_checkpoint(&path, "s3://b/p/", "p/k\"1").unwrap();
        assert_eq!(
            load_checkpoint(&path, "s3://b/p/").unwrap().as_deref(),
            Some("p/k\"1")
        );
        write_checkpoint(&path, "s3://b/p/", "p/k2").unwrap();
        assert_eq!(
            load_checkpoint(&path, "s3://b/p/").unwrap().as_deref(),
            Some("p/k2")
        );
        // Only the checkpoint itself is left: the temp file was renamed.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let e = load_checkpoint(&path, "s3://b/q/").unwrap_err();
        assert!(e.to_string().contains("not s3://b/q/"), "{e}");
        std::fs::write(&path, "{\"start_after\": \"x\"").unwrap();
        assert!(load_checkpoint(&path, "s3://b/p/").is_err());
        let text = r#"{"version":2,"source":"s3://b/p/","start_after":"x","written_at":""}"#;
        std::fs::write(&path, text).unwrap();
        let e = load_checkpoint(&path, "s3://b/p/").unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
        let missing_dir = dir.path().join("no/such/dir/cp.json");
        assert!(write_checkpoint(&missing_dir, "s3://b/p/", "k").is_err());
        assert!(checkpoint_dir_writable(&missing_dir).is_err());
        assert!(checkpoint_dir_writable(&path).is_ok());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "the probe is removed"
        );
        // A relative path writes in the current directory's terms.
        assert!(matches!(
            load_checkpoint(Path::new("definitely-not-here.json"), "s"),
            Ok(None)
        ));
    }
}
