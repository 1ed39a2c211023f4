//! The packer: sources → plan → shard building → publishing.
//!
//! `run::pack` is the whole job; the `des-pack` binary is a thin CLI over it.

pub mod build;
pub mod cli;
pub mod confine;
pub mod dicts;
pub mod error;
pub mod from_s3;
pub mod ingest;
pub mod metrics;
pub mod options;
pub mod pause;
pub mod plan;
pub mod reader;
pub mod report;
pub mod run;
pub mod source;
pub mod target;
mod walk;

pub use confine::SourceRoots;
pub use from_s3::FromS3;
pub use options::PackOptions;
pub use report::PackReport;
pub use run::{pack, pack_into};
pub use source::{Input, SourceRef};
pub use target::Target;
