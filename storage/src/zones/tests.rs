//! Zones file parsing, validation and routing.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::error::{ErrorKind, Result};
use crate::memory::MemoryStore;
use crate::resilience::{BreakerConfig, RetryPolicy};

const YAML: &str = r#"
n_bits: 8
retry: {max_attempts: 3, base_delay_ms: 20}
zones:
  - name: low
    range: {start: 0, end: 99}
    s3: {bucket: des-low, prefix: des, region_name: eu-west-1, endpoint_url: "http://127.0.0.1:9000"}
    replicas:
      - {bucket: des-low-copy, prefix: des}
  - name: high
    range: {start: 100, end: 255}
    s3: {bucket: des-high}
    retry: {max_attempts: 7}
    breaker: {consecutive_failures: 2, cool_down_ms: 500}
    rate_limit: {requests_per_second: 50}
    hedge_after_ms: 250
"#;

const TOML: &str = r#"
n_bits = 8
retry = { max_attempts = 3, base_delay_ms = 20 }

[[zones]]
name = "low"
range = { start = 0, end = 99 }
s3 = { bucket = "des-low", prefix = "des", region_name = "eu-west-1", endpoint_url = "http://127.0.0.1:9000" }
replicas = [{ bucket = "des-low-copy", prefix = "des" }]

[[zones]]
name = "high"
range = { start = 100, end = 255 }
s3 = { bucket = "des-high" }
retry = { max_attempts = 7 }
breaker = { consecutive_failures = 2, cool_down_ms = 500 }
rate_limit = { requests_per_second = 50 }
hedge_after_ms = 250
"#;

#[test]
fn yaml_and_toml_parse_to_the_same_file() {
    let y = ZonesFile::from_yaml_str(YAML).unwrap();
    let t = ZonesFile::from_toml_str(TOML).unwrap();
    assert_eq!(y, t);
    assert_eq!(y.n_bits, 8);
    assert!(!y.allow_gaps);
    let low = &y.zones[0];
    assert_eq!(low.range, ShardRange { start: 0, end: 99 });
    assert_eq!(low.s3.region_name.as_deref(), Some("eu-west-1"));
    assert_eq!(low.s3.label(), "s3://des-low/des@http://127.0.0.1:9000");
    assert_eq!(low.replicas[0].label(), "s3://des-low-copy/des");
}

#[test]
fn original_format_without_extensions_parses() {
    let f = ZonesFile::from_yaml_str(
        "n_bits: 4\nzones:\n  - name: all\n    range: {start: 0, end: 15}\n    s3:\n      bucket: b\n      prefix: p\n      region_name: us-east-1\n      endpoint_url: https://s3.example\n",
    )
    .unwrap();
    let s = f.settings(&f.zones[0]);
    assert_eq!(s.retry, RetryPolicy::default());
    assert_eq!(s.breaker, BreakerConfig::default());
    assert_eq!(
        (s.rate_limit, s.hedge_after, s.fallback_on_not_found),
        (None, None, false)
    );
}

#[test]
fn zone_settings_replace_top_level_ones() {
    let f = ZonesFile::from_yaml_str(YAML).unwrap();
    let low = f.settings(&f.zones[0]);
    assert_eq!(low.retry.max_attempts, 3);
    assert_eq!(low.retry.base_delay, Duration::from_millis(20));
    assert_eq!(low.hedge_after, None);
    let high = f.settings(&f.zones[1]);
    assert_eq!(high.retry.max_attempts, 7);
    // Replaced as a whole: the zone's retry does not inherit base_delay_ms.
    assert_eq!(high.retry.base_delay, RetryPolicy::default().base_delay);
    assert_eq!(high.breaker.consecutive_failures, 2);
    assert_eq!(high.breaker.cool_down, Duration::from_millis(500));
    assert_eq!(high.rate_limit.map(|r| r.requests_per_second), Some(50));
    assert_eq!(high.hedge_after, Some(Duration::from_millis(250)));
}

fn zone(name: &str, start: u32, end: u32) -> String {
    format!(
        "  - name: {name}\n    range: {{start: {start}, end: {end}}}\n    s3: {{bucket: b-{name}}}\n"
    )
}

fn file(n_bits: u32, extra: &str, zones: &[String]) -> String {
    format!("n_bits: {n_bits}\n{extra}zones:\n{}", zones.concat())
}

fn invalid(yaml: &str) -> String {
    let e = ZonesFile::from_yaml_str(yaml).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    e.to_string()
}

#[test]
fn overlap_names_both_zones() {
    let msg = invalid(&file(4, "", &[zone("a", 0, 8), zone("b", 8, 15)]));
    assert!(
        msg.contains(r#"zone "b": range 8..=15 overlaps zone "a" (0..=8)"#),
        "{msg}"
    );
}

#[test]
fn zone_inside_another_overlaps() {
    let msg = invalid(&file(4, "", &[zone("outer", 0, 15), zone("inner", 3, 4)]));
    assert!(
        msg.contains(r#"zone "inner""#) && msg.contains(r#"overlaps zone "outer""#),
        "{msg}"
    );
}

#[test]
fn gaps_are_errors_unless_allowed() {
    let zones = [zone("a", 2, 5), zone("b", 9, 12)];
    let msg = invalid(&file(4, "", &zones));
    assert!(
        msg.contains(r#"shards 0..=1 are in no zone (gap before zone "a")"#),
        "{msg}"
    );
    assert!(
        msg.contains(r#"shards 6..=8 are in no zone (gap before zone "b" after zone "a")"#),
        "{msg}"
    );
    assert!(
        msg.contains(r#"shards 13..=15 are in no zone (gap after zone "b")"#),
        "{msg}"
    );
    assert!(ZonesFile::from_yaml_str(&file(4, "allow_gaps: true\n", &zones)).is_ok());
}

#[test]
fn range_outside_the_shard_space() {
    let msg = invalid(&file(4, "", &[zone("a", 0, 7), zone("big", 8, 16)]));
    assert!(
        msg.contains(r#"zone "big": range 8..=16 is outside 0..=15 (n_bits 4)"#),
        "{msg}"
    );
}

#[test]
fn start_after_end() {
    let msg = invalid(&file(4, "allow_gaps: true\n", &[zone("backwards", 9, 3)]));
    assert!(
        msg.contains(r#"zone "backwards": range start 9 is after end 3"#),
        "{msg}"
    );
}

#[test]
fn bad_n_bits() {
    for n in [0, 3, 17, 32] {
        let msg = invalid(&file(n, "", &[zone("a", 0, 15)]));
        assert!(
            msg.contains(&format!("n_bits {n} is outside 4..=16")),
            "{msg}"
        );
    }
    assert!(ZonesFile::from_yaml_str(&file(16, "", &[zone("a", 0, 65535)])).is_ok());
}

#[test]
fn duplicate_names() {
    let msg = invalid(&file(4, "", &[zone("twin", 0, 7), zone("twin", 8, 15)]));
    assert!(msg.contains(r#"zone "twin": duplicate name"#), "{msg}");
}

#[test]
fn empty_buckets_and_repeated_replicas() {
    let yaml = "n_bits: 4\nzones:\n  - name: z\n    range: {start: 0, end: 15}\n    s3: {bucket: \"\"}\n    replicas: [{bucket: \" \"}, {bucket: r}, {bucket: r}]\n";
    let msg = invalid(yaml);
    assert!(msg.contains(r#"zone "z": s3.bucket is empty"#), "{msg}");
    assert!(
        msg.contains(r#"zone "z": replicas[0].bucket is empty"#),
        "{msg}"
    );
    assert!(
        msg.contains(r#"zone "z": replicas[2] (s3://r) is listed twice"#),
        "{msg}"
    );
}

#[test]
fn bad_resilience_settings_name_the_zone() {
    let extra = "    retry: {max_attempts: 0}\n    hedge_after_ms: 0\n    rate_limit: {requests_per_second: 0}\n    breaker: {failure_rate: 1.5}\n";
    let msg = invalid(&file(4, "", &[zone("a", 0, 15) + extra]));
    for what in [
        "max_attempts",
        "hedge_after_ms",
        "requests_per_second",
        "failure_rate",
    ] {
        let problem = msg.split("; ").find(|p| p.contains(what));
        assert!(
            problem.is_some_and(|p| p.contains(r#"zone "a": "#)),
            "{what}: {msg}"
        );
    }
    let msg = invalid(&file(4, "retry: {max_attempts: 0}\n", &[zone("a", 0, 15)]));
    assert!(msg.contains("top level: retry: max_attempts"), "{msg}");
}

#[test]
fn unknown_keys_and_empty_lists_are_rejected() {
    assert!(invalid(&file(4, "alow_gaps: true\n", &[zone("a", 0, 15)])).contains("alow_gaps"));
    assert!(invalid("n_bits: 4\nzones: []\n").contains("no zones"));
    let toml_err = ZonesFile::from_toml_str("n_bits = 4\nzones = []\nretires = 3\n").unwrap_err();
    assert!(toml_err.to_string().contains("retires"), "{toml_err}");
}

#[test]
fn from_path_picks_the_format_by_extension() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [("z.yaml", YAML), ("z.yml", YAML), ("z.toml", TOML)] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        assert_eq!(
            ZonesFile::from_path(&path).unwrap().zones.len(),
            2,
            "{name}"
        );
    }
    let wrong = dir.path().join("z.json");
    std::fs::write(&wrong, "{}").unwrap();
    assert!(
        ZonesFile::from_path(&wrong)
            .unwrap_err()
            .to_string()
            .contains(".yaml, .yml or .toml")
    );
    // YAML content under a .toml name fails to parse, naming the file.
    let mislabelled = dir.path().join("y.toml");
    std::fs::write(&mislabelled, YAML).unwrap();
    assert!(
        ZonesFile::from_path(&mislabelled)
            .unwrap_err()
            .to_string()
            .contains("y.toml")
    );
}

fn memory_factory(_: &S3Location) -> Result<Arc<dyn crate::ObjectStore>> {
    Ok(Arc::new(MemoryStore::new()))
}

#[test]
fn for_shard_routes_by_range() {
    let zones = [zone("c", 10, 15), zone("a", 0, 3), zone("b", 4, 9)];
    let f = ZonesFile::from_yaml_str(&file(4, "", &zones)).unwrap();
    let built = Zones::build(&f, memory_factory).unwrap();
    assert_eq!(built.n_bits(), 4);
    let names: Vec<&str> = built.iter().map(|z| z.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"], "sorted by range");
    let route = |i| built.for_shard(i).map(|z| z.name.as_str());
    let expected = [(0, "a"), (3, "a"), (4, "b"), (9, "b"), (10, "c"), (15, "c")];
    for (i, name) in expected {
        assert_eq!(route(i), Some(name), "shard {i}");
    }
    assert_eq!(route(16), None);
    assert_eq!(
        built.get("b").map(|z| z.range),
        Some(ShardRange { start: 4, end: 9 })
    );
    assert_eq!((&built).into_iter().count(), 3);
}

#[test]
fn for_shard_in_a_gap_is_none() {
    let f = ZonesFile::from_yaml_str(&file(
        4,
        "allow_gaps: true\n",
        &[zone("a", 2, 3), zone("b", 8, 9)],
    ))
    .unwrap();
    let built = Zones::build(&f, memory_factory).unwrap();
    for (i, want) in [
        (0, None),
        (2, Some("a")),
        (5, None),
        (9, Some("b")),
        (10, None),
    ] {
        assert_eq!(
            built.for_shard(i).map(|z| z.name.as_str()),
            want,
            "shard {i}"
        );
    }
}

#[test]
fn build_reports_factory_failures_with_the_zone() {
    let f = ZonesFile::from_yaml_str(YAML).unwrap();
    let err = Zones::build(&f, |loc: &S3Location| {
        if loc.bucket == "des-low-copy" {
            Err(crate::Error::Invalid("no credentials".into()))
        } else {
            memory_factory(loc)
        }
    })
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(r#"zone "low""#)
            && msg.contains("s3://des-low-copy/des")
            && msg.contains("no credentials"),
        "{msg}"
    );
}

#[test]
fn build_keeps_one_breaker_per_location() {
    let f = ZonesFile::from_yaml_str(YAML).unwrap();
    let built = Zones::build(&f, memory_factory).unwrap();
    let labels: Vec<&str> = built
        .iter()
        .flat_map(|z| z.breakers.iter().map(|(l, _)| l.as_str()))
        .collect();
    assert_eq!(
        labels,
        [
            "s3://des-low/des@http://127.0.0.1:9000",
            "s3://des-low-copy/des",
            "s3://des-high"
        ]
    );
    let off =
        ZonesFile::from_yaml_str(&file(4, "breaker: {enabled: false}\n", &[zone("a", 0, 15)]))
            .unwrap();
    assert!(
        Zones::build(&off, memory_factory)
            .unwrap()
            .iter()
            .all(|z| z.breakers.is_empty())
    );
}

#[tokio::test]
async fn zones_place_a_des_store_per_shard_and_each_zone_is_self_describing() {
    use crate::store::{CreateOptions, DesStore, Placement};
    let f = ZonesFile::from_yaml_str(&file(4, "", &[zone("a", 0, 7), zone("b", 8, 15)])).unwrap();
    let zones = Arc::new(Zones::build(&f, memory_factory).unwrap());
    let placement: Arc<dyn Placement> = zones.clone();
    assert_eq!(placement.n_bits(), Some(4));
    assert_eq!(placement.describe(), "zones a[0-7],b[8-15]");
    assert!(Arc::ptr_eq(
        &placement.for_shard(9).unwrap(),
        &zones.get("b").unwrap().store
    ));

    // n_bits comes from the zones file when the caller leaves it out.
    let (s, created) = DesStore::open_or_create_placed(placement.clone(), CreateOptions::default())
        .await
        .unwrap();
    assert!(created);
    assert_eq!(s.n_bits(), 4);
    // Every zone got its own store.json, so any zone alone is readable.
    for z in zones.iter() {
        assert!(z.store.head("_des/store.json").await.is_ok(), "{}", z.name);
    }
    let key = s.objects_for_key("20240517/A.des").unwrap();
    assert!(Arc::ptr_eq(&key, &zones.get("b").unwrap().store));

    // A mismatched n_bits is refused rather than silently misrouting.
    let wrong = CreateOptions {
        n_bits: Some(8),
        ..CreateOptions::default()
    };
    let err = DesStore::open_or_create_placed(placement, wrong)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
}

#[test]
fn open_needs_exactly_one_source() {
    let none = crate::cli::Connection::default();
    let both = open(Some("/tmp/x"), Some(std::path::Path::new("z.yaml")), &none);
    assert_eq!(both.unwrap_err().kind(), ErrorKind::Invalid);
    assert_eq!(
        open(None, None, &none).unwrap_err().kind(),
        ErrorKind::Invalid
    );
}

/// The command line's retry and breaker settings win over the file's, for
/// every zone, and are validated like the file's.
#[tokio::test]
async fn connection_settings_override_the_zones_file() {
    use crate::cli::Connection;
    use crate::resilience::ScriptedStore;
    use crate::units::Dur;

    let f = ZonesFile::from_yaml_str(YAML).unwrap();
    let backends = std::sync::Mutex::new(Vec::new());
    let factory = |_: &S3Location| {
        let s = ScriptedStore::new("down");
        s.set_down(Some(ErrorKind::Unavailable));
        backends.lock().unwrap().push(s.clone());
        Ok(Arc::new(s) as Arc<dyn crate::ObjectStore>)
    };
    let connection = Connection {
        retry_attempts: Some(2),
        retry_deadline: Some(Dur(Duration::from_secs(5))),
        breaker: Some(false),
        ..Connection::default()
    };
    let built = Zones::build_with(&f, &connection, factory).unwrap();
    assert!(built.iter().all(|z| z.breakers.is_empty()), "breaker off");
    // "high" sets max_attempts 7 in the file; the command line's 2 wins.
    let high = built.get("high").unwrap();
    assert!(high.store.head("k").await.is_err());
    let calls = backends.lock().unwrap()[2].total_calls();
    assert_eq!(calls, 2, "attempts in all");

    let zero = Connection {
        retry_attempts: Some(0),
        ..Connection::default()
    };
    let err = Zones::build_with(&f, &zero, memory_factory).unwrap_err();
    assert!(err.to_string().contains("max_attempts"), "{err}");
}

fn two_zones(a: &str, a_replicas: &str, b: &str, b_replicas: &str) -> String {
    format!(
        "n_bits: 4\nzones:\n  - name: a\n    range: {{start: 0, end: 7}}\n    s3: {a}\n    replicas: [{a_replicas}]\n  - name: b\n    range: {{start: 8, end: 15}}\n    s3: {b}\n    replicas: [{b_replicas}]\n"
    )
}

fn overlap_problems(msg: &str) -> Vec<&str> {
    msg.split("; ")
        .filter(|p| p.contains(" overlaps "))
        .collect()
}

#[test]
fn two_zones_on_one_bucket_and_prefix_are_rejected() {
    let msg = invalid(&two_zones(
        "{bucket: shared, prefix: des}",
        "",
        "{bucket: shared, prefix: /des/}",
        "",
    ));
    assert!(
        msg.contains(r#"zone "b": s3 (s3://shared/des) overlaps zone "a"'s s3 (s3://shared/des)"#),
        "{msg}"
    );
    assert_eq!(overlap_problems(&msg).len(), 1, "{msg}");
}

#[test]
fn a_zone_and_another_zones_replica_on_one_location_are_rejected() {
    let msg = invalid(&two_zones(
        "{bucket: a, prefix: des}",
        "{bucket: copy, prefix: des}",
        "{bucket: copy, prefix: des}",
        "",
    ));
    assert!(
        msg.contains(
            r#"zone "b": s3 (s3://copy/des) overlaps zone "a"'s replicas[0] (s3://copy/des)"#
        ),
        "{msg}"
    );
}

#[test]
fn two_replicas_on_one_location_are_rejected() {
    let msg = invalid(&two_zones(
        "{bucket: a}",
        "{bucket: copy, prefix: des}",
        "{bucket: b}",
        "{bucket: copy, prefix: des}",
    ));
    assert!(
        msg.contains(
            r#"zone "b": replicas[0] (s3://copy/des) overlaps zone "a"'s replicas[0] (s3://copy/des)"#
        ),
        "{msg}"
    );
    // Within one zone too, when they differ only in what does not matter
    // (an exact repeat is reported as listed twice, once).
    let msg = invalid(&two_zones(
        "{bucket: a}",
        "{bucket: copy, region_name: eu-west-1}, {bucket: copy, region_name: eu-central-1}",
        "{bucket: b}",
        "",
    ));
    assert!(
        msg.contains(r#"zone "a": replicas[1] (s3://copy) overlaps its replicas[0] (s3://copy)"#),
        "{msg}"
    );
    let msg = invalid(&two_zones("{bucket: a}", "{bucket: a}", "{bucket: b}", ""));
    assert!(msg.contains("is listed twice"), "{msg}");
    assert!(overlap_problems(&msg).is_empty(), "{msg}");
}

#[test]
fn nested_prefixes_overlap_by_segment() {
    for (a, b) in [
        ("des", "des/x"),
        ("des/x/y", "/des/"),
        ("", "des"),
        ("", ""),
    ] {
        let msg = invalid(&two_zones(
            &format!("{{bucket: s, prefix: \"{a}\"}}"),
            "",
            &format!("{{bucket: s, prefix: \"{b}\"}}"),
            "",
        ));
        assert_eq!(overlap_problems(&msg).len(), 1, "{a:?} {b:?}: {msg}");
        assert!(msg.contains(r#"zone "b": s3"#), "{msg}");
    }
    for (a, b) in [("des", "desx"), ("des/a", "des/b"), ("des/x", "x")] {
        let yaml = two_zones(
            &format!("{{bucket: s, prefix: \"{a}\"}}"),
            "",
            &format!("{{bucket: s, prefix: \"{b}\"}}"),
            "",
        );
        assert!(ZonesFile::from_yaml_str(&yaml).is_ok(), "{a:?} {b:?}");
    }
}

#[test]
fn every_overlapping_pair_is_named() {
    // `des` holds both others; `des/a` and `des/b` are apart.
    let yaml = two_zones(
        "{bucket: s, prefix: des/a}",
        "{bucket: s, prefix: des}",
        "{bucket: s, prefix: des/b}",
        "",
    );
    let msg = invalid(&yaml);
    let found = overlap_problems(&msg);
    assert_eq!(found.len(), 2, "{msg}");
    assert!(
        found[0].contains(r#"zone "a": replicas[0] (s3://s/des) overlaps its s3 (s3://s/des/a)"#),
        "{msg}"
    );
    assert!(
        found[1].contains(
            r#"zone "b": s3 (s3://s/des/b) overlaps zone "a"'s replicas[0] (s3://s/des)"#
        ),
        "{msg}"
    );
}

#[test]
fn endpoints_compare_without_case_or_trailing_slash() {
    let msg = invalid(&two_zones(
        r#"{bucket: s, endpoint_url: "https://S3.Example/"}"#,
        "",
        r#"{bucket: s, endpoint_url: "https://s3.example"}"#,
        "",
    ));
    assert_eq!(overlap_problems(&msg).len(), 1, "{msg}");
    // No endpoint is AWS's, where bucket names are global.
    for aws in [
        "https://s3.amazonaws.com",
        "https://s3.eu-west-1.amazonaws.com/",
        "https://s3.dualstack.us-east-1.amazonaws.com:443",
    ] {
        let msg = invalid(&two_zones(
            "{bucket: s, region_name: eu-west-1}",
            "",
            &format!("{{bucket: s, endpoint_url: \"{aws}\"}}"),
            "",
        ));
        assert_eq!(overlap_problems(&msg).len(), 1, "{aws}: {msg}");
    }
    // The same bucket name on different services is a different bucket.
    let apart = two_zones(
        r#"{bucket: s, endpoint_url: "https://s3.example"}"#,
        r#"{bucket: s, endpoint_url: "http://127.0.0.1:3900"}"#,
        "{bucket: s, prefix: des}",
        r#"{bucket: s, endpoint_url: "https://s3.amazonaws.com.cn"}"#,
    );
    assert!(ZonesFile::from_yaml_str(&apart).is_ok());
}

#[test]
fn separate_locations_still_validate() {
    // One bucket split by prefix, replicas in buckets of their own.
    let yaml = two_zones(
        "{bucket: des, prefix: zone-a}",
        "{bucket: des-copy, prefix: zone-a}",
        "{bucket: des, prefix: zone-b}",
        "{bucket: des-copy, prefix: zone-b}",
    );
    assert!(ZonesFile::from_yaml_str(&yaml).is_ok());
    assert!(ZonesFile::from_yaml_str(YAML).is_ok());
    assert!(ZonesFile::from_toml_str(TOML).is_ok());
}
