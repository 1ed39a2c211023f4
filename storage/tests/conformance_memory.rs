#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod conformance;

use std::sync::Arc;

fn store() -> conformance::Store {
    Arc::new(des_storage::MemoryStore::new())
}

conformance_tests!(store());

/// Packers and the repacker publish with a real compare-and-swap only where
/// the store says it enforces one: this store must say so (and the
/// conformance suite proves it does).
#[test]
fn conditional_writes_are_reported_as_enforced() {
    assert!(store().capabilities().conditional_put);
}
