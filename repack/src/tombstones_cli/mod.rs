//! What `des-tombstones` does, as library calls the binary prints.

mod batch;
mod query;

pub use batch::{AddOutcome, AddReport, AddResult, BatchLine, Defaults, add_batch, add_one};
pub use query::{ListFilter, ListedTombstone, TombstoneState, list, show};
