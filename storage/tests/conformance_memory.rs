#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod conformance;

use std::sync::Arc;

fn store() -> conformance::Store {
    Arc::new(des_storage::MemoryStore::new())
}

conformance_tests!(store());
