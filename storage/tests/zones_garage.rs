//! Zones over two real Garage servers: zone `a` (shards 0-7) on server A
//! with a replica on server B, zone `b` (shards 8-15) on server B alone.
//! Stopping a server makes its zone fail fast once the breaker is open (or
//! read from the replica), leaves the other zone alone, and recovery after a
//! restart needs nothing but the breaker's cool-down. Needs the `garage`
//! binary (`scripts/garage.sh install`); run with
//! `cargo test -p des-storage --features testing --test zones_garage`.

#![cfg(feature = "testing")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use des_format::Timestamp;
use des_format::codec::Codec;
use des_format::v3::{NewEntry, ShardIdent, ShardWriter};
use des_storage::resilience::BreakerState;
use des_storage::store::shard_index_of_key;
use des_storage::testing::S3Server;
use des_storage::zones::{S3Location, Zones, ZonesFile};
use des_storage::{
    CreateOptions, DesStore, ErrorKind, ObjectStore, ObjectStoreExt, PutOptions, S3Store,
};

const CREATED: &str = "2024-05-17T10:00:00Z";
const COOL_DOWN: Duration = Duration::from_millis(800);

fn location(server: &S3Server, prefix: &str) -> String {
    format!(
        "{{bucket: {}, prefix: {prefix}, region_name: {}, endpoint_url: \"{}\"}}",
        server.bucket(),
        server.region(),
        server.endpoint()
    )
}

/// No retries (a refused connection will not heal in milliseconds) and a
/// breaker that opens after three failures and probes again after COOL_DOWN.
fn zones_yaml(a: &S3Server, b: &S3Server) -> String {
    format!(
        "n_bits: 4
retry: {{max_attempts: 1}}
breaker: {{consecutive_failures: 3, cool_down_ms: {cool}}}
zones:
  - name: a
    range: {{start: 0, end: 7}}
    s3: {a_loc}
    replicas:
      - {replica}
  - name: b
    range: {{start: 8, end: 15}}
    s3: {b_loc}
",
        cool = COOL_DOWN.as_millis(),
        a_loc = location(a, "zone-a"),
        replica = location(b, "replica-a"),
        b_loc = location(b, "zone-b"),
    )
}

/// Each location gets its own server's credentials (the factory is where a
/// deployment would plug in per-zone settings).
fn build_zones(yaml: &str, servers: &[&S3Server]) -> Arc<Zones> {
    let file = ZonesFile::from_yaml_str(yaml).unwrap();
    let zones = Zones::build(&file, |loc: &S3Location| {
        let server = servers
            .iter()
            .find(|s| Some(s.endpoint()) == loc.endpoint_url.as_deref())
            .unwrap();
        let cfg = server.config().with_prefix(&loc.prefix);
        Ok(Arc::new(S3Store::new(cfg)?) as Arc<dyn ObjectStore>)
    })
    .unwrap();
    Arc::new(zones)
}

/// One shard per index, uids `i` and `i + 16` (all-digit uids route by value).
fn files() -> BTreeMap<String, Vec<u8>> {
    (0..32u32)
        .map(|i| (i.to_string(), format!("file {i} ").repeat(10).into_bytes()))
        .collect()
}

fn shard_bytes(store: &DesStore, index: u32, files: &[(&String, &Vec<u8>)]) -> Bytes {
    let ts = Timestamp::parse_rfc3339(CREATED).unwrap();
    let ident = ShardIdent {
        date: 20240517,
        shard_index: u16::try_from(index).unwrap(),
        n_bits: store.n_bits(),
        generation: 1,
        digest_alg: store.digest(),
        written_at: ts,
    };
    let mut w = ShardWriter::new(Vec::new(), ident).unwrap();
    for (uid, data) in files {
        let entry = NewEntry {
            uid: (*uid).clone(),
            created_at: ts,
            content_type: None,
            meta: None,
            codec: Codec::None,
            orig_len: data.len() as u64,
            digest: store.digest().digest(data),
        };
        w.add_inline(entry, data).unwrap();
    }
    Bytes::from(w.finish().unwrap().0)
}

/// Writes every shard through the placement, as the packer does.
async fn write_shards(store: &DesStore, files: &BTreeMap<String, Vec<u8>>) {
    let ts = Timestamp::parse_rfc3339(CREATED).unwrap();
    let mut by_shard: BTreeMap<u32, Vec<(&String, &Vec<u8>)>> = BTreeMap::new();
    for (uid, data) in files {
        let loc = store.locate(uid, ts).unwrap();
        by_shard
            .entry(loc.shard_index)
            .or_default()
            .push((uid, data));
    }
    for (index, group) in by_shard {
        let loc = store.locate(group[0].0, ts).unwrap();
        let key = DesStore::shard_key(&loc);
        let body = shard_bytes(store, index, &group);
        store
            .objects_for_shard(index)
            .unwrap()
            .put(&key, body, PutOptions::default())
            .await
            .unwrap();
    }
}

async fn shard_indexes(server: &S3Server, prefix: &str) -> Vec<u32> {
    let raw = S3Store::new(server.config().with_prefix(prefix)).unwrap();
    let mut v: Vec<u32> = raw
        .list_all("")
        .await
        .unwrap()
        .iter()
        .filter_map(|m| shard_index_of_key(&m.key).ok())
        .collect();
    v.sort_unstable();
    v
}

/// Reads one file; returns the error's kind and text, if any.
async fn read(store: &DesStore, uid: &str, want: &[u8]) -> (String, Option<ErrorKind>) {
    let ts = Timestamp::parse_rfc3339(CREATED).unwrap();
    match store.get_file(uid, ts).await {
        Ok((_, data)) => {
            assert!(data == want, "{uid}: bytes differ");
            (String::new(), None)
        }
        Err(e) => (e.to_string(), Some(e.kind())),
    }
}

/// Every file of the zone owning shards `range` reads back intact.
async fn zone_reads(store: &DesStore, files: &BTreeMap<String, Vec<u8>>, range: &[u32]) {
    for (uid, data) in files {
        let index: u32 = uid.parse::<u32>().unwrap() % 16;
        if range.contains(&index) {
            let (_, err) = read(store, uid, data).await;
            assert_eq!(err, None, "{uid}");
        }
    }
}

fn breaker(zones: &Zones, zone: &str, location: usize) -> BreakerState {
    zones.get(zone).unwrap().breakers[location].1.state()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_fail_fast_fail_over_and_recover() {
    let mut a = S3Server::garage().unwrap();
    let mut b = S3Server::garage().unwrap();
    let yaml = zones_yaml(&a, &b);
    let zones = build_zones(&yaml, &[&a, &b]);
    let (store, created) = DesStore::open_or_create_placed(zones.clone(), CreateOptions::default())
        .await
        .unwrap();
    assert!(created);
    let files = files();
    write_shards(&store, &files).await;
    let (low, high): (Vec<u32>, Vec<u32>) = ((0..8).collect(), (8..16).collect());

    // Each shard is in its zone, zone a's also in its replica.
    assert_eq!(shard_indexes(&a, "zone-a").await, low);
    assert_eq!(shard_indexes(&b, "replica-a").await, low);
    assert_eq!(shard_indexes(&b, "zone-b").await, high);
    assert!(shard_indexes(&a, "zone-b").await.is_empty());
    zone_reads(&store, &files, &low).await;
    zone_reads(&store, &files, &high).await;

    // B down: zone b fails, fast once its breaker is open; zone a is untouched.
    b.stop().unwrap();
    let (uid, data) = ("9", &files["9"]);
    let mut kinds = Vec::new();
    while breaker(&zones, "b", 0) != BreakerState::Open {
        let (_, err) = read(&store, uid, data).await;
        kinds.push(err);
        assert!(kinds.len() <= 3, "breaker did not open: {kinds:?}");
    }
    assert!(
        kinds.iter().all(|k| *k == Some(ErrorKind::Unavailable)),
        "{kinds:?}"
    );
    // Refused by the breaker itself, not by a request that failed: no
    // timing threshold, which a loaded machine could miss either way.
    for _ in 0..5 {
        let (text, err) = read(&store, uid, data).await;
        assert_eq!(err, Some(ErrorKind::Unavailable));
        assert!(text.contains("circuit breaker"), "{text}");
    }
    zone_reads(&store, &files, &low).await;
    assert_eq!(breaker(&zones, "a", 0), BreakerState::Closed);

    // B back: after the cool-down, zone b recovers by itself.
    b.start().unwrap();
    tokio::time::sleep(COOL_DOWN + Duration::from_millis(100)).await;
    zone_reads(&store, &files, &high).await;
    assert_eq!(breaker(&zones, "b", 0), BreakerState::Closed);

    // A down: zone a is served by its replica on B.
    a.stop().unwrap();
    let failovers = zones
        .get("a")
        .unwrap()
        .counters
        .failovers
        .load(Ordering::Relaxed);
    zone_reads(&store, &files, &low).await;
    assert_eq!(breaker(&zones, "a", 0), BreakerState::Open);
    assert!(
        zones
            .get("a")
            .unwrap()
            .counters
            .failovers
            .load(Ordering::Relaxed)
            > failovers
    );
    // With A's breaker open, reads go straight to the replica.
    let (_, err) = read(&store, "3", &files["3"]).await;
    assert_eq!(err, None);
    assert_eq!(breaker(&zones, "a", 0), BreakerState::Open);
    zone_reads(&store, &files, &high).await;

    // A back: the primary serves again after the cool-down.
    a.start().unwrap();
    tokio::time::sleep(COOL_DOWN + Duration::from_millis(100)).await;
    zone_reads(&store, &files, &low).await;
    assert_eq!(breaker(&zones, "a", 0), BreakerState::Closed);
}
