//! The conformance suite over every resilience wrapper, alone and composed as
//! zones compose them, over memory stores. A wrapper adds retries, permits,
//! hedges or copies; what a caller sees of the store must not change.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod conformance;

use std::sync::Arc;
use std::time::Duration;

use des_storage::resilience::{
    BreakerConfig, BreakerStore, CircuitBreaker, HedgedStore, RateLimit, RateLimitedStore,
    RateLimiter, ReplicatedStore, RetryPolicy, RetryStore, ScriptedStore,
};
use des_storage::zones::{ZoneSettings, Zones, ZonesFile};
use des_storage::{MemoryStore, ObjectStore, ObjectStoreExt};

use conformance::Store;

type Backend = fn() -> Arc<dyn ObjectStore>;

fn memory() -> Arc<dyn ObjectStore> {
    Arc::new(MemoryStore::new())
}

fn retry(backend: Backend) -> Store {
    Arc::new(RetryStore::new(backend(), RetryPolicy::default()))
}

fn breaker(backend: Backend) -> Store {
    let b = CircuitBreaker::new("conformance", BreakerConfig::default());
    Arc::new(BreakerStore::new(backend(), Arc::new(b)))
}

/// Hedges after 1 ms; over a backend slower than that, every read is sent
/// twice and the two race (see `reads_through_the_hedge_are_hedged`).
fn hedged(backend: Backend) -> HedgedStore {
    HedgedStore::new(backend(), Some(Duration::from_millis(1)))
}

/// Every call takes 2 ms, so the hedge always fires.
fn slow_memory() -> Arc<dyn ObjectStore> {
    let s = ScriptedStore::over("slow", MemoryStore::new());
    s.set_latency(Duration::from_millis(2));
    Arc::new(s)
}

/// A limit the suite never reaches: permits are taken, nobody waits.
fn rate_limited(backend: Backend) -> Store {
    let limiter = RateLimiter::new("conformance", &RateLimit::per_second(1_000_000)).unwrap();
    Arc::new(RateLimitedStore::new(backend(), Arc::new(limiter)))
}

fn replicated(backend: Backend) -> Store {
    Arc::new(ReplicatedStore::new(vec![backend(), backend()]).unwrap())
}

/// The one store of a zones file built over `backend`.
fn zone(yaml: &str, backend: Backend) -> Store {
    let file = ZonesFile::from_yaml_str(yaml).unwrap();
    let zones = Zones::build(&file, |_| Ok(backend())).unwrap();
    assert_eq!(zones.len(), 1);
    Arc::clone(&zones.for_shard(0).unwrap().store)
}

/// A zone that sets nothing: the stack a single `s3://` location gets.
const PLAIN_ZONE: &str = "
n_bits: 4
zones:
  - {name: only, range: {start: 0, end: 15}, s3: {bucket: b}}
";

/// Every layer a zone can have: rate limit, retry, breaker, hedge, each
/// per location, and a replica.
const FULL_ZONE: &str = "
n_bits: 4
rate_limit: {requests_per_second: 1000000}
hedge_after_ms: 1
zones:
  - name: full
    range: {start: 0, end: 15}
    s3: {bucket: primary}
    replicas: [{bucket: replica}]
";

fn single_location(backend: Backend) -> Store {
    zone(PLAIN_ZONE, backend)
}

fn full_zone(backend: Backend) -> Store {
    zone(FULL_ZONE, backend)
}

mod retry {
    use super::*;
    crate::conformance_tests!(retry(memory));
}

mod breaker {
    use super::*;
    crate::conformance_tests!(breaker(memory));
}

mod hedge {
    use super::*;
    crate::conformance_tests!(Arc::new(hedged(slow_memory)));
}

mod rate_limit {
    use super::*;
    crate::conformance_tests!(rate_limited(memory));
}

mod replicated_pair {
    use super::*;
    crate::conformance_tests!(replicated(memory));
}

mod single_s3_location_stack {
    use super::*;
    crate::conformance_tests!(single_location(memory));
}

mod full_zone_stack {
    use super::*;
    crate::conformance_tests!(full_zone(memory));
}

/// The hedge module above tests hedged reads only if reads were hedged.
#[tokio::test]
async fn reads_through_the_hedge_are_hedged() {
    let store = hedged(slow_memory);
    let hedges = store.counter();
    conformance::ranges(Arc::new(store)).await;
    assert!(hedges.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

/// `single_s3_location_stack` is what `open_location("s3://…")` builds only
/// while a zone that sets nothing runs with the single location's settings.
#[test]
fn the_plain_zone_has_the_single_location_settings() {
    let file = ZonesFile::from_yaml_str(PLAIN_ZONE).unwrap();
    assert_eq!(
        file.settings(&file.zones[0]),
        ZoneSettings::default_for_single()
    );
}

/// What a copy holds after the suite's writes, conditional ones and
/// abandoned ones included: keys and bytes (ETags are per copy).
async fn contents(s: &MemoryStore) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for meta in s.list_all("").await.unwrap() {
        let (_, body) = s
            .get_range(&meta.key, des_storage::ByteRange::All)
            .await
            .unwrap();
        out.push((meta.key, body.to_vec()));
    }
    out
}

/// The suite reads through the primary only; the replica must have received
/// the same writes, or a failover would serve something else.
#[tokio::test]
async fn the_replica_ends_up_with_what_the_primary_has() {
    let (primary, replica) = (MemoryStore::new(), MemoryStore::new());
    let store: Store = Arc::new(
        ReplicatedStore::new(vec![Arc::new(primary.clone()), Arc::new(replica.clone())]).unwrap(),
    );
    conformance::overwrite_and_conditions(Arc::clone(&store)).await;
    conformance::conditional_streaming_writes(Arc::clone(&store)).await;
    conformance::streaming_writes(Arc::clone(&store)).await;
    conformance::abandoned_writes(Arc::clone(&store)).await;
    conformance::empty_objects(store).await;
    let want = contents(&primary).await;
    assert!(want.len() >= 5, "{} objects", want.len());
    assert!(contents(&replica).await == want, "the copies differ");
}

fn unusual() -> Arc<dyn ObjectStore> {
    Arc::new(conformance::Unusual::default())
}

#[tokio::test]
async fn wrappers_forward_the_methods_the_trait_has_defaults_for() {
    let copies = |n: u64| n * conformance::UNUSUAL_LEFTOVERS;
    let stores: [(&str, Store, u64); 7] = [
        ("retry", retry(unusual), copies(1)),
        ("breaker", breaker(unusual), copies(1)),
        ("hedge", Arc::new(hedged(unusual)), copies(1)),
        ("rate limit", rate_limited(unusual), copies(1)),
        ("replicated", replicated(unusual), copies(2)),
        ("single location", single_location(unusual), copies(1)),
        ("full zone", full_zone(unusual), copies(2)),
    ];
    for (name, store, leftovers) in stores {
        assert!(!store.capabilities().conditional_put, "{name}");
        assert_eq!(
            store.sweep_leftovers(Duration::ZERO).await.unwrap(),
            leftovers,
            "{name}"
        );
    }
}
