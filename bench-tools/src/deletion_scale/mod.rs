//! `des-deletion-scale`: deletions and retention at archive scale, driven
//! through the library entry points the tools use, every storage request
//! counted (see `bench/deletion_scale.sh`).
//!
//! - [`counting`]: the counting object-store wrapper (and the packer's view
//!   without retention rules).
//! - [`model`]: the simulated files, their bytes and which are live.
//! - [`sim`]: the simulated days (pack, delete, repack) and the start-up phase.
//! - [`report`]: the per-day table, the old approach's computed counts, the
//!   verdicts.

pub mod counting;
pub mod model;
pub mod report;
pub mod sim;
