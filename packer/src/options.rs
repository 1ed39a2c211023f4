use std::ops::RangeInclusive;
use std::path::PathBuf;

use des_format::{Compression, DigestAlgorithm};

pub const DEFAULT_BIG_FILE_THRESHOLD: u64 = 10 << 20;
pub const DEFAULT_PLAN_MEMORY: usize = 64 << 20;
/// Chunk handed to the object writer; S3 multipart parts are at least this big.
pub const UPLOAD_CHUNK: usize = 8 << 20;

/// Everything a pack run needs besides its input.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Store location: a directory (or `file://`), later `s3://bucket/prefix`.
    pub out: String,
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
    /// How many times to rebuild a shard that another packer replaced under us.
    pub conflict_retries: u32,
}

impl Default for PackOptions {
    fn default() -> Self {
        Self {
            out: String::new(),
            n_bits: None,
            fips: false,
            compression: Compression::default(),
            big_file_threshold: DEFAULT_BIG_FILE_THRESHOLD,
            jobs: 2,
            plan_memory: DEFAULT_PLAN_MEMORY,
            spill_dir: None,
            shard_range: None,
            conflict_retries: 5,
        }
    }
}

impl PackOptions {
    pub fn digest(&self) -> Option<DigestAlgorithm> {
        self.fips.then_some(DigestAlgorithm::Sha256)
    }
}
