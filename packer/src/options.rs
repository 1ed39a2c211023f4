use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use des_format::{Compression, DigestAlgorithm};
use des_storage::cli::StoreArgs;

use crate::confine::SourceRoots;
use crate::dicts::DictSettings;

pub const DEFAULT_BIG_FILE_THRESHOLD: u64 = 10 << 20;
/// 4 on 2 cores packs the Rust docs ≈ 17 % faster than 2 (docs/BENCHMARKS.md §1):
/// jobs overlap one another's fsync and upload waits.
pub const DEFAULT_JOBS: usize = 4;
pub const DEFAULT_PLAN_MEMORY: usize = 64 << 20;
/// Chunk handed to the object writer; S3 multipart parts are at least this big.
pub const UPLOAD_CHUNK: usize = 8 << 20;
/// Multipart uploads older than this are taken for a crashed packer's and aborted.
pub const DEFAULT_ABORT_STALE_UPLOADS_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Everything a pack run needs besides its input.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Where the shards go: a location, or a zones file (shards go to the
    /// zone owning their index, and to its replicas).
    pub store: StoreArgs,
    /// At the start of a run, S3 multipart uploads older than this are
    /// aborted, and local temp files not modified for this long removed:
    /// they can only be left over from a packer that died. Must be longer
    /// than any shard upload of a packer still running.
    pub abort_stale_uploads_after: Duration,
    /// Only when creating a store; must match an existing one.
    pub n_bits: Option<u8>,
    /// Create the store with SHA-256 digests (FIPS mode).
    pub fips: bool,
    pub compression: Compression,
    /// Files above this many bytes are stored as separate `_big/<digest>` objects.
    pub big_file_threshold: u64,
    /// Shards built in parallel.
    pub jobs: usize,
    /// Bytes of planned records held before spilling sorted runs to disk.
    pub plan_memory: usize,
    pub spill_dir: Option<PathBuf>,
    /// Only pack files whose shard index is in this range (to split work
    /// across parallel packers without two of them writing one shard).
    pub shard_range: Option<RangeInclusive<u32>>,
    /// Part `index` of `count` equal parts of the shard space (a Kubernetes
    /// Indexed Job's completion index); resolved once n_bits is known.
    pub shard_partition: Option<(u32, u32)>,
    /// How many times to rebuild a shard that another packer replaced under us.
    pub conflict_retries: u32,
    /// How long a reference to an existing big file protects it from
    /// clean-up (`des_storage::protocol::bigrefs`); renewed at half.
    pub big_ref_ttl: Duration,
    /// Shared zstd dictionaries (`--dict`, `--dict-size`, `--dict-sample`).
    pub dict: DictSettings,
    /// `--source-root`: when not empty, only sources inside these
    /// directories / S3 prefixes are read; others fail per file.
    pub source_roots: SourceRoots,
    /// The run's clock for retention (which files are already expired);
    /// `None` reads the system clock. For replaying past days.
    pub now: Option<des_format::Timestamp>,
}

impl Default for PackOptions {
    fn default() -> Self {
        Self {
            store: StoreArgs::default(),
            abort_stale_uploads_after: DEFAULT_ABORT_STALE_UPLOADS_AFTER,
            n_bits: None,
            fips: false,
            compression: Compression::default(),
            big_file_threshold: DEFAULT_BIG_FILE_THRESHOLD,
            jobs: DEFAULT_JOBS,
            plan_memory: DEFAULT_PLAN_MEMORY,
            spill_dir: None,
            shard_range: None,
            shard_partition: None,
            conflict_retries: 5,
            big_ref_ttl: des_storage::protocol::big_ref_ttl(),
            source_roots: SourceRoots::default(),
            dict: DictSettings::default(),
            now: None,
        }
    }
}

impl PackOptions {
    /// The zstd level the policy compresses at (dictionaries are prepared
    /// for it).
    pub fn zstd_level(&self) -> i32 {
        match self.compression {
            Compression::Auto { zstd_level } => zstd_level,
            Compression::Zstd { level } => level,
            Compression::Lz4 | Compression::None => des_format::codec::DEFAULT_ZSTD_LEVEL,
        }
    }

    /// `dict`, off where the policy never uses zstd.
    pub fn dict_settings(&self) -> DictSettings {
        match self.compression {
            Compression::Lz4 | Compression::None => DictSettings {
                mode: crate::dicts::DictMode::Off,
                ..self.dict
            },
            _ => self.dict,
        }
    }

    pub fn digest(&self) -> Option<DigestAlgorithm> {
        self.fips.then_some(DigestAlgorithm::Sha256)
    }
}

impl PackOptions {
    /// The shard indexes this run packs, if restricted: `--shard-range`, or
    /// `--shard-partition` turned into a range for a store with `n_bits`.
    pub fn shard_filter(&self, n_bits: u8) -> crate::error::Result<Option<RangeInclusive<u32>>> {
        match (&self.shard_range, self.shard_partition) {
            (Some(_), Some(_)) => {
                crate::error::bail!("give --shard-range or --shard-partition, not both")
            }
            (Some(r), None) => Ok(Some(r.clone())),
            (None, Some((index, count))) => partition_range(index, count, n_bits).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// Part `index` (0-based) of `count` equal parts of `0..2^n_bits`. `count`
/// must divide the shard space so every packer gets the same share and the
/// parts tile it exactly.
pub fn partition_range(
    index: u32,
    count: u32,
    n_bits: u8,
) -> crate::error::Result<RangeInclusive<u32>> {
    let shards = 1u32
        .checked_shl(u32::from(n_bits))
        .ok_or_else(|| crate::error::PackError::Usage(format!("n_bits {n_bits} out of range")))?;
    if count == 0 || index >= count {
        crate::error::bail!("shard partition {index}/{count}: need 0 <= index < count");
    }
    if shards % count != 0 {
        crate::error::bail!(
            "shard partition count {count} does not divide the {shards} shards of this store (use a power of two up to {shards})"
        );
    }
    let size = shards / count;
    Ok(index * size..=(index + 1) * size - 1)
}
