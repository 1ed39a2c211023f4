//! The storage crate's conformance suite over the retriever's store
//! wrappers: the request-counting store and the store `Storage::metered`
//! wraps every store in. Counting must not change what a read returns.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../storage/tests/conformance/mod.rs"]
mod conformance;

use std::sync::Arc;
use std::time::Duration;

use des_retriever::metrics::Metrics;
use des_retriever::{CountingStore, Storage};
use des_storage::{LocalStore, MemoryStore, ObjectStore};

use conformance::Store;

fn counting(inner: Arc<dyn ObjectStore>) -> Store {
    Arc::new(CountingStore::new(inner))
}

fn metered(inner: Arc<dyn ObjectStore>) -> Store {
    let metrics = Metrics::new().unwrap();
    let stores = Storage::single(inner, "local").metered(&metrics).stores();
    assert_eq!(stores.len(), 1);
    Arc::clone(&stores[0])
}

fn memory() -> Arc<dyn ObjectStore> {
    Arc::new(MemoryStore::new())
}

fn local() -> Arc<dyn ObjectStore> {
    // Leaked on purpose, so the directory outlives the async test body.
    let dir = tempfile::tempdir().unwrap().keep();
    Arc::new(LocalStore::new(dir).unwrap())
}

mod counting_over_memory {
    use super::*;
    crate::conformance_tests!(counting(memory()));
}

mod metered_over_local {
    use super::*;
    crate::conformance_tests!(metered(local()));
}

/// The suite above tests the counting store only if it sits in the path.
#[tokio::test]
async fn the_suite_goes_through_the_counters() {
    let store = CountingStore::new(memory());
    conformance::ranges(Arc::new(store.clone())).await;
    let counts = store.counts();
    assert!(
        counts.get > 0 && counts.write > 0 && counts.bytes > 0,
        "{counts:?}"
    );
}

#[tokio::test]
async fn wrappers_forward_the_methods_the_trait_has_defaults_for() {
    for (name, store) in [
        (
            "counting",
            counting(Arc::new(conformance::Unusual::default())),
        ),
        (
            "metered",
            metered(Arc::new(conformance::Unusual::default())),
        ),
    ] {
        assert!(!store.capabilities().conditional_put, "{name}");
        assert_eq!(
            store.sweep_leftovers(Duration::ZERO).await.unwrap(),
            conformance::UNUSUAL_LEFTOVERS,
            "{name}"
        );
    }
}
