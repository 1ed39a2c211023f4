//! Argument parsing for `des-pack`, kept in the library so it is testable.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Context, Result, bail};
use clap::Parser;
use des_format::{Compression, Timestamp};
use des_storage::cli::StoreArgs;
use des_storage::push::Pushgateway;
use des_storage::units::{parse_duration, parse_size};

use crate::confine::SourceRoots;
use crate::dicts::{DictMode, DictSettings};
use crate::from_s3::{DEFAULT_LISTING_BATCH, FromS3};
use crate::options::{DEFAULT_BIG_FILE_THRESHOLD, DEFAULT_PLAN_MEMORY, PackOptions};
use crate::source::Input;

pub const EXIT_OK: i32 = 0;
pub const EXIT_PARTIAL: i32 = 1;
pub const EXIT_FATAL: i32 = 2;

const AFTER_HELP: &str = "\
EXIT CODES:
    0  every input file is in the store (packed now or already present) or deleted
       (a tombstone exists for its uid and day: reported as deleted, never packed again)
    1  some files failed (listed in the summary/report), sources outside every
       --source-root included; all others were packed. With
       --delete-sources-after-verify also: an original whose file is in the store
       could not be verified or deleted (it is kept)
    2  usage error, or the run could not proceed (store unreadable, manifest unreadable,
       a --source-root missing or invalid)

Manifest formats: a JSON array of {uid, created_at, size_bytes, source_path} (the
original DES format), or JSON Lines of {uid, created_at, source, content_type?, meta?};
a source is a path (relative ones resolve against the manifest's directory) or
s3://bucket/key. --from-s3 s3://bucket/prefix packs the objects under prefix/
instead: uid = key relative to prefix/ (or --uid-regex), created_at = LastModified
(or --created-at-from key), objects read through the same S3 settings; keys ending
in / are folder markers and skipped. Without --source-root, any path the packer can read (and any object
its credentials can get) may be packed, and is then served by the retriever.
Re-running the same input is idempotent. Parallel packers must work on disjoint
--shard-range values (e.g. one per Kubernetes Indexed Job completion); see
docs/CONCURRENCY.md. S3 settings come from the AWS environment (AWS_REGION,
AWS_ENDPOINT_URL, credentials) plus DES_S3_FORCE_PATH_STYLE, DES_S3_PART_SIZE and DES_S3_LEAN_GET.";

#[derive(Debug, Parser)]
#[command(name = "des-pack", version, about = "Pack small files into DES shards", after_help = des_storage::units::after_help(AFTER_HELP))]
#[command(group = StoreArgs::required_group())]
pub struct Args {
    /// Manifest file (JSON array or JSON Lines)
    #[arg(
        long,
        conflicts_with_all = ["dir", "from_s3"],
        required_unless_present_any = ["dir", "from_s3"]
    )]
    pub manifest: Option<PathBuf>,
    /// Pack every file under DIR (uid = path relative to DIR)
    #[arg(long, requires = "created_at", conflicts_with = "from_s3")]
    pub dir: Option<PathBuf>,
    /// Pack every object under s3://BUCKET/PREFIX (uid = key relative to
    /// PREFIX/), listed in batches; same S3 settings as --out
    #[arg(long, value_name = "S3_URL")]
    pub from_s3: Option<String>,
    /// --from-s3: uid from this regex's (?P<uid>...) group, applied to the key
    /// relative to the prefix (unanchored: use ^...$); a (?P<created>...)
    /// group serves --created-at-from key. Keys that do not match fail
    #[arg(long, requires = "from_s3", value_name = "REGEX")]
    pub uid_regex: Option<String>,
    /// --from-s3: created_at from `last-modified` (the object's LastModified,
    /// default) or `key` (the created group of --uid-regex)
    #[arg(long, requires = "from_s3", value_name = "SOURCE")]
    pub created_at_from: Option<String>,
    /// --from-s3 with --created-at-from key: parse the created group with
    /// %Y %m %d %H %M %S %s %% (UTC; missing time fields are 0); without it
    /// the group must be RFC 3339
    #[arg(long, requires = "from_s3", value_name = "FORMAT")]
    pub created_at_format: Option<String>,
    /// --from-s3: after each batch, record its last key here (atomically); a
    /// re-run resumes the listing after it. Stays put after a batch with failures
    #[arg(long, requires = "from_s3", value_name = "FILE")]
    pub listing_checkpoint: Option<PathBuf>,
    /// --from-s3: objects listed, planned and packed per batch (rounded up
    /// to whole 1000-key pages). Every batch rewrites the shards it touches
    #[arg(long, requires = "from_s3", value_name = "N")]
    pub listing_batch: Option<u64>,
    /// --from-s3: delete each original once its shard is published and its
    /// entry, read back from the store, matches the object's bytes
    #[arg(long, requires = "from_s3")]
    pub delete_sources_after_verify: bool,
    /// created_at (RFC 3339) for every file of --dir
    #[arg(long)]
    pub created_at: Option<String>,
    /// Where shards go (--store, old spelling --out; a directory is created
    /// if missing) or --zones: each shard goes to the zone owning its index
    #[command(flatten)]
    pub store: StoreArgs,
    /// At start, abort S3 multipart uploads older than this and remove
    /// `.des-tmp-*` files of local stores not modified for this long (both
    /// left by crashed runs); must exceed the longest upload of any packer
    /// still running
    #[arg(long, default_value = "24h", value_name = "DURATION", value_parser = parse_duration)]
    pub abort_stale_uploads_after: Duration,
    /// Shard bits (4..=16), only when creating a store; must match an existing one
    #[arg(long)]
    pub n_bits: Option<u8>,
    /// Create the store with SHA-256 content digests instead of BLAKE3
    #[arg(long)]
    pub fips: bool,
    /// auto | zstd | lz4 | none
    #[arg(long, default_value = "auto")]
    pub compression: String,
    #[arg(long, default_value_t = des_format::codec::DEFAULT_ZSTD_LEVEL)]
    pub zstd_level: i32,
    /// Shared zstd dictionaries: auto (train one per common file extension
    /// from a sample of this run's files, keep it where it beats plain zstd
    /// by 10 %), off, or a stored dictionary's id (hex) for every
    /// compressible file
    #[arg(long, default_value = "auto", value_name = "auto|off|ID")]
    pub dict: DictMode,
    /// Largest dictionary trained (smaller where the samples are fewer
    /// than 32 bytes per dictionary byte)
    #[arg(long, default_value = "256K", value_name = "SIZE", value_parser = parse_size)]
    pub dict_size: u64,
    /// Bytes of sampled files a dictionary is trained on (read again before
    /// packing; held in memory for one extension per core at a time)
    #[arg(long, default_value = "8M", value_name = "SIZE", value_parser = parse_size)]
    pub dict_sample: u64,
    /// Reuse an extension's latest dictionary (from any run) while it is
    /// younger than this; 0 retrains every run
    #[arg(long, default_value = "24h", value_name = "DURATION", value_parser = parse_duration)]
    pub dict_max_age: Duration,
    /// Files larger than this are stored as separate objects
    #[arg(long, value_name = "SIZE", default_value_t = DEFAULT_BIG_FILE_THRESHOLD, value_parser = parse_size)]
    pub big_file_threshold: u64,
    /// Shards built in parallel. More than the core count pays: a job spends
    /// part of its time waiting for its shard's fsync or upload
    #[arg(long, short = 'j', default_value_t = crate::options::DEFAULT_JOBS)]
    pub jobs: usize,
    /// Only pack shards START-END (inclusive shard indexes), e.g. 0-127
    #[arg(long)]
    pub shard_range: Option<String>,
    /// Only pack part I of N equal parts of the shard space, e.g. 3/8 (N must
    /// divide 2^n_bits); for Kubernetes Indexed Jobs: `--shard-partition $(JOB_COMPLETION_INDEX)/8`
    #[arg(long, conflicts_with = "shard_range", env = "DES_SHARD_PARTITION")]
    pub shard_partition: Option<String>,
    /// Memory for planning before sorted runs spill to disk
    #[arg(long, value_name = "SIZE", default_value_t = DEFAULT_PLAN_MEMORY as u64, value_parser = parse_size)]
    pub plan_memory: u64,
    /// Where planning spills (default: a temp dir)
    #[arg(long)]
    pub spill_dir: Option<PathBuf>,
    /// Only read sources inside ROOT: a directory (sources are resolved, `..`
    /// and symlinks included, and must lie under it) or s3://bucket/prefix.
    /// Repeatable; a source outside every root fails (exit 1). Without any,
    /// every source the packer can read is packed
    #[arg(
        long = "source-root",
        value_name = "ROOT",
        env = "DES_PACK_SOURCE_ROOT"
    )]
    pub source_roots: Vec<String>,
    /// Write the JSON report here
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print the JSON report on stdout instead of the text summary
    #[arg(long)]
    pub json: bool,
    /// Add this run to a Prometheus text file (node-exporter's textfile
    /// collector): files, bytes in and stored, failures by reason, runs by
    /// outcome, duration; counters carry on across runs
    #[arg(long, value_name = "PATH", env = "DES_METRICS_FILE")]
    pub metrics_file: Option<PathBuf>,
    /// PUT the run's metrics (those of --metrics-file) to this Prometheus
    /// Pushgateway, group job="des-pack"; a failed push is a warning and
    /// does not change the exit status
    #[arg(long, value_name = "URL", env = "DES_PUSHGATEWAY_URL", value_parser = Pushgateway::parse)]
    pub pushgateway: Option<Pushgateway>,
    /// No progress bar
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `I/N`: part I (0-based) of N.
pub fn parse_shard_partition(s: &str) -> Result<(u32, u32)> {
    let (i, n) = s
        .split_once('/')
        .with_context(|| format!("shard partition {s:?} is not INDEX/COUNT"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<u32>()
            .with_context(|| format!("shard partition {s:?} is not INDEX/COUNT"))
    };
    Ok((parse(i)?, parse(n)?))
}

pub fn parse_shard_range(s: &str) -> Result<RangeInclusive<u32>> {
    let (a, b) = s
        .split_once('-')
        .with_context(|| format!("shard range {s:?} is not START-END"))?;
    let (a, b): (u32, u32) = (a.trim().parse()?, b.trim().parse()?);
    if a > b {
        bail!("shard range {s:?} is empty");
    }
    Ok(a..=b)
}

impl Args {
    pub fn input(&self) -> Result<Input> {
        // clap lets `requires = "from_s3"` pass when --manifest or --dir
        // (which conflict with it) is given, so the check is made here.
        let listing_only = [
            ("--uid-regex", self.uid_regex.is_some()),
            ("--created-at-from", self.created_at_from.is_some()),
            ("--created-at-format", self.created_at_format.is_some()),
            ("--listing-checkpoint", self.listing_checkpoint.is_some()),
            ("--listing-batch", self.listing_batch.is_some()),
            (
                "--delete-sources-after-verify",
                self.delete_sources_after_verify,
            ),
        ];
        if self.from_s3.is_none()
            && let Some((name, _)) = listing_only.iter().find(|(_, given)| *given)
        {
            bail!("{name} only applies with --from-s3");
        }
        if let Some(url) = &self.from_s3 {
            if self.manifest.is_some() || self.dir.is_some() {
                bail!("give exactly one of --manifest, --dir or --from-s3");
            }
            return self.listing_input(url);
        }
        match (&self.manifest, &self.dir) {
            (Some(m), None) => Ok(Input::Manifest(m.clone())),
            (None, Some(d)) => {
                let ts = self
                    .created_at
                    .as_deref()
                    .context("--dir needs --created-at")?;
                let created_at = Timestamp::parse_rfc3339(ts)?;
                Ok(Input::Dir {
                    root: d.clone(),
                    created_at,
                })
            }
            _ => bail!("give exactly one of --manifest, --dir or --from-s3"),
        }
    }

    fn listing_input(&self, url: &str) -> Result<Input> {
        let mut spec = FromS3::new(
            url,
            self.uid_regex.as_deref(),
            self.created_at_from.as_deref().unwrap_or("last-modified"),
            self.created_at_format.as_deref(),
        )?
        .with_batch(self.listing_batch.unwrap_or(DEFAULT_LISTING_BATCH))?;
        spec.checkpoint = self.listing_checkpoint.clone();
        spec.delete_sources = self.delete_sources_after_verify;
        spec.log_progress = !self.quiet;
        Ok(Input::FromS3(spec))
    }

    pub fn options(&self) -> Result<PackOptions> {
        if self.store.store.is_some() && self.store.zones.is_some() {
            // DES_STORE in the environment is not an explicit choice clap can see.
            bail!("give either --store (or DES_STORE) or --zones, not both");
        }
        Ok(PackOptions {
            store: self.store.clone(),
            abort_stale_uploads_after: self.abort_stale_uploads_after,
            n_bits: self.n_bits,
            fips: self.fips,
            compression: Compression::parse(&self.compression, self.zstd_level)?,
            dict: DictSettings {
                mode: self.dict,
                size: usize::try_from(self.dict_size)?,
                sample_bytes: self.dict_sample,
                max_age: self.dict_max_age,
                ..DictSettings::default()
            },
            big_file_threshold: self.big_file_threshold,
            jobs: self.jobs.max(1),
            plan_memory: usize::try_from(self.plan_memory)?,
            spill_dir: self.spill_dir.clone(),
            shard_range: self
                .shard_range
                .as_deref()
                .map(parse_shard_range)
                .transpose()?,
            shard_partition: self
                .shard_partition
                .as_deref()
                .map(parse_shard_partition)
                .transpose()?,
            source_roots: SourceRoots::new(&self.source_roots)?,
            ..PackOptions::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_partitions() {
        assert_eq!(parse_shard_range("0-127").unwrap(), 0..=127);
        assert!(parse_shard_range("5-1").is_err());
        assert!(parse_shard_range("7").is_err());
        assert_eq!(parse_shard_partition("3/8").unwrap(), (3, 8));
        assert!(parse_shard_partition("3").is_err());
        assert!(parse_shard_partition("a/8").is_err());
    }

    #[test]
    fn partitions_tile_the_shard_space() {
        use crate::options::partition_range;
        for (n_bits, count) in [(8u8, 1u32), (8, 4), (8, 256), (4, 2), (16, 8)] {
            let mut next = 0;
            for i in 0..count {
                let r = partition_range(i, count, n_bits).unwrap();
                assert_eq!(*r.start(), next, "{n_bits} bits, {i}/{count}");
                next = r.end() + 1;
            }
            assert_eq!(next, 1 << n_bits);
        }
        assert!(partition_range(4, 4, 8).is_err());
        assert!(partition_range(0, 3, 8).is_err(), "3 does not divide 256");
        assert!(partition_range(0, 0, 8).is_err());
        assert!(partition_range(0, 512, 8).is_err());
    }

    #[test]
    fn out_and_zones_are_exclusive() {
        let parse = |args: &[&str]| {
            Args::try_parse_from(
                [
                    &[
                        "des-pack",
                        "--dir",
                        "d",
                        "--created-at",
                        "2024-05-17T10:00:00Z",
                    ][..],
                    args,
                ]
                .concat(),
            )
        };
        let zones = parse(&["--zones", "z.yaml"]).unwrap();
        let opts = zones.options().unwrap();
        assert_eq!((opts.store.store, opts.store.zones.is_some()), (None, true));
        let out = parse(&["--out", "s3://b/p", "--abort-stale-uploads-after", "1h"]).unwrap();
        let opts = out.options().unwrap();
        assert_eq!(opts.store.store.as_deref(), Some("s3://b/p"));
        assert_eq!(opts.abort_stale_uploads_after, Duration::from_secs(3600));
        assert!(parse(&["--out", "x", "--zones", "z.yaml"]).is_err());
    }

    #[test]
    fn from_s3_options() {
        let parse =
            |args: &[&str]| Args::try_parse_from([&["des-pack", "--out", "o"][..], args].concat());
        let args = parse(&[
            "--from-s3",
            "s3://b/in/",
            "--uid-regex",
            r"^(?P<created>\d{8})/(?P<uid>.+)$",
            "--created-at-from",
            "key",
            "--created-at-format",
            "%Y%m%d",
            "--listing-checkpoint",
            "cp.json",
            "--listing-batch",
            "5000",
            "--delete-sources-after-verify",
            "-q",
        ])
        .unwrap();
        let Input::FromS3(spec) = args.input().unwrap() else {
            panic!("not a listing")
        };
        assert_eq!(spec.url(), "s3://b/in/");
        assert_eq!(spec.batch, 5000);
        assert_eq!(
            spec.checkpoint.as_deref(),
            Some(std::path::Path::new("cp.json"))
        );
        assert!(spec.delete_sources && !spec.log_progress);
        assert!(matches!(
            spec.created_at,
            crate::from_s3::CreatedAt::Key(Some(_))
        ));
        let plain = parse(&["--from-s3", "s3://b"]).unwrap();
        let Input::FromS3(spec) = plain.input().unwrap() else {
            panic!("not a listing")
        };
        assert_eq!(spec.created_at, crate::from_s3::CreatedAt::LastModified);
        assert_eq!(spec.batch, DEFAULT_LISTING_BATCH);
        assert!(!spec.delete_sources && spec.log_progress && spec.checkpoint.is_none());
        // Listing options need --from-s3; inputs exclude each other.
        for extra in [
            &["--delete-sources-after-verify"][..],
            &["--uid-regex", "(?P<uid>.*)"],
            &["--listing-batch", "5"],
        ] {
            let args = parse(&[&["--manifest", "m"][..], extra].concat()).unwrap();
            let e = args.input().unwrap_err().to_string();
            assert!(e.contains("only applies with --from-s3"), "{e}");
        }
        assert!(parse(&["--delete-sources-after-verify"]).is_err());
        assert!(parse(&["--from-s3", "s3://b", "--manifest", "m"]).is_err());
        assert!(parse(&["--from-s3", "s3://b", "--dir", "d", "--created-at", "x"]).is_err());
        assert!(parse(&[]).is_err(), "an input is required");
        let bad = parse(&["--from-s3", "s3://b", "--created-at-from", "key"]).unwrap();
        let e = format!("{:#}", bad.input().unwrap_err());
        assert!(e.contains("created"), "{e}");
    }

    #[test]
    fn source_roots_repeat_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let base = ["des-pack", "--manifest", "m.jsonl", "--out", "o"];
        let args = Args::try_parse_from(
            [
                &base[..],
                &["--source-root", d, "--source-root", "s3://b/p"],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(args.source_roots, [d, "s3://b/p"]);
        assert!(!args.options().unwrap().source_roots.is_unconfined());
        let none = Args::try_parse_from(base).unwrap();
        assert!(none.options().unwrap().source_roots.is_unconfined());
        let missing = dir.path().join("missing");
        let bad = Args::try_parse_from(
            [&base[..], &["--source-root", missing.to_str().unwrap()]].concat(),
        )
        .unwrap();
        let e = format!("{:#}", bad.options().unwrap_err());
        assert!(e.contains("--source-root"), "{e}");
    }
}
