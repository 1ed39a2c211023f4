//! The DES byte format and routing. Pure and synchronous: everything here works
//! on slices, `Read` and `Write`; storage and networking live elsewhere.
//! `SPEC.md` in this crate is the normative description.

#![deny(clippy::indexing_slicing)]

pub mod chunks;
pub mod codec;
pub mod dict;
pub mod digest;
mod error;
mod le;
pub mod legacy;
pub mod routing;
pub mod shard;
pub mod timestamp;
pub mod v3;

pub use chunks::{ChunkCrcs, ChunkTable};
pub use codec::{Codec, Compression};
pub use digest::{ContentDigest, DigestAlgorithm};
pub use error::{FormatError, Result};
pub use routing::{ShardLocation, locate};
pub use shard::{AnyIndex, Located, Tail};
pub use timestamp::Timestamp;
