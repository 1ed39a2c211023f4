//! What `des-tombstones` does, as library calls the binary prints.

mod batch;
mod query;

pub use batch::{
    AddOutcome, AddReport, AddResult, BatchLine, CHUNK_LINES, Defaults, add_batch, add_batch_each,
    add_one,
};
pub use query::{ListFilter, ListedTombstone, TombstoneState, list, show};
