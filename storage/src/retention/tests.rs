#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use super::*;
use crate::MemoryStore;
use crate::object::{Capabilities, PutResult};
use crate::store::{CreateOptions, Placement, Single};

fn rules(text: &str) -> RetentionRules {
    RetentionRules::from_toml(text).unwrap()
}

fn ts(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

const POLICY: &str = r#"
ticket_id = "POLICY-7"
[[rule]]
uid_prefix = "logs/"
max_age_days = 30
[[rule]]
uid_prefix = "logs/audit/"
[[rule]]
uid_prefix = ""
max_age_days = 3650
"#;

#[test]
fn longest_prefix_wins() {
    let r = rules(POLICY);
    assert_eq!(r.rule_for("logs/x").unwrap().max_age_days, Some(30));
    assert_eq!(r.rule_for("logs/audit/x").unwrap().max_age_days, None);
    assert_eq!(r.rule_for("img/1").unwrap().max_age_days, Some(3650));
    assert_eq!(r.ticket_id.as_deref(), Some("POLICY-7"));
    assert_eq!(r.min_days(), Some(30));
    let only_logs = rules("[[rule]]\nuid_prefix = \"logs/\"\nmax_age_days = 1");
    assert!(
        only_logs.rule_for("img/1").is_none(),
        "no rule: kept forever"
    );
    assert!(!only_logs.expired("img/1", 20000101, 20990101));
}

#[test]
fn bad_files_are_refused_with_a_clear_error() {
    let err = |text: &str| RetentionRules::from_toml(text).unwrap_err().to_string();
    assert!(err("").contains("no [[rule]]"), "{}", err(""));
    assert!(err("[[rule]]\nuid_prefix=\"a\"\nmax_age_days=0").contains("at least 1"));
    assert!(err("[[rule]]\nuid_prefix=\"a\"\nmaxage=1").contains("maxage"));
    assert!(err("[[rule]]\nuid_prefix=\"a\"\nmax_age_days=-3").contains("not a retention"));
    let dup = "[[rule]]\nuid_prefix=\"a\"\n[[rule]]\nuid_prefix=\"a\"";
    assert!(
        err(dup).contains("two rules for uid_prefix \"a\""),
        "{}",
        err(dup)
    );
    assert!(err("version = 3\n[[rule]]\nuid_prefix=\"a\"").contains("version"));
    assert!(err("not toml at all [").contains("not a retention rules file"));
}

#[test]
fn day_numbers_agree_with_timestamps_every_day_for_two_centuries() {
    let mut day = day_of(ts("1900-01-01T00:00:00Z"));
    let end = day_of(ts("2100-12-31T00:00:00Z"));
    while day <= end {
        let t = Timestamp::from_micros(day * MICROS_PER_DAY + 43_200_000_000);
        let date = t.date_number();
        assert_eq!(date_of_day(day), Some(date), "day {day}");
        assert_eq!(day_number(date), Some(day), "{date}");
        assert_eq!(today(t), date);
        day += 1;
    }
    for bad in [
        20230229, 19000229, 20240230, 20241301, 20240100, 20240431, 0, 99_991_232,
    ] {
        assert_eq!(day_number(bad), None, "{bad}");
    }
    for good in [20240229, 20000229, 99991231, 10101] {
        assert!(day_number(good).is_some(), "{good}");
    }
    assert_eq!(
        date_of_day(day_number(10101).unwrap() - 1),
        None,
        "before year 1"
    );
    assert_eq!(
        date_of_day(day_number(99991231).unwrap() + 1),
        None,
        "after 9999"
    );
}

/// (file's date, max_age_days, last instant not expired, first expired day)
const BOUNDARIES: &[(u32, u32, &str, u32)] = &[
    // Plain: 20240517 + 30 = 20240616.
    (20240517, 30, "2024-06-16T23:59:59.999999Z", 20240617),
    // Over a month end in a leap year: January 31 + 30 = March 1.
    (20240131, 30, "2024-03-01T23:59:59.999999Z", 20240302),
    // ... and in a common year: February 28 + 1 = March 1.
    (20230228, 1, "2023-03-01T23:59:59.999999Z", 20230302),
    // Over the year end.
    (20231231, 1, "2024-01-01T23:59:59.999999Z", 20240102),
    // A leap day plus a year of days.
    (20240229, 365, "2025-02-28T23:59:59.999999Z", 20250301),
    // Across a leap day: February 28 + 1 = February 29.
    (20240228, 1, "2024-02-29T23:59:59.999999Z", 20240301),
    // Across a century not a leap year (1900) and one that is (2000).
    (19000228, 1, "1900-03-01T23:59:59.999999Z", 19000302),
    (20000228, 1, "2000-02-29T23:59:59.999999Z", 20000301),
];

#[test]
fn a_file_expires_at_midnight_utc_after_its_last_full_day() {
    for &(date, days, last_kept, first_expired) in BOUNDARIES {
        let rule = Rule {
            uid_prefix: "x/".into(),
            max_age_days: Some(days),
        };
        let set = RetentionRules {
            ticket_id: None,
            rules: vec![rule.clone()],
        };
        assert_eq!(rule.expires_on(date), Some(first_expired), "{date}+{days}");
        let kept_day = today(ts(last_kept));
        let next = today(Timestamp::from_micros(ts(last_kept).micros() + 1));
        assert_eq!(next, first_expired, "one microsecond later is the next day");
        assert!(
            !set.expired("x/f", date, kept_day),
            "{date}+{days} at {last_kept}"
        );
        assert!(set.expired("x/f", date, next), "{date}+{days} at midnight");
        // Cutoffs say the same on both days.
        assert!(!set.cutoffs(kept_day).expired("x/f", date));
        assert!(set.cutoffs(next).expired("x/f", date));
        assert_eq!(rule.last_expired_date(next), Some(date));
        assert_eq!(set.newest_expired_date(next), Some(date));
        assert!(!set.expired("y/f", date, next), "no rule for y/");
    }
}

#[test]
fn cutoffs_agree_with_rules_on_many_days() {
    let r = rules(POLICY);
    let files = ["logs/a", "logs/audit/b", "img/c", "z"];
    let mut today = day_number(20240101).unwrap();
    while today < day_number(20340101).unwrap() {
        let t = date_of_day(today).unwrap();
        let c = r.cutoffs(t);
        for date in [20231231, 20240101, 20240229, 20241231, 20300101] {
            for uid in files {
                assert_eq!(
                    c.expired(uid, date),
                    r.expired(uid, date, t),
                    "{uid} {date} {t}"
                );
            }
        }
        today += 17;
    }
}

async fn store_on(placement: Arc<dyn Placement>) -> DesStore {
    DesStore::open_or_create_placed(placement, CreateOptions::default())
        .await
        .unwrap()
        .0
}

async fn single(objects: Arc<dyn ObjectStore>) -> DesStore {
    store_on(Arc::new(Single(objects))).await
}

#[tokio::test]
async fn versions_increase_and_history_keeps_each() {
    let mem = MemoryStore::new();
    let store = single(Arc::new(mem.clone())).await;
    assert_eq!(load(&store).await.unwrap(), None);
    let first = set(&store, &rules(POLICY), "ops").await.unwrap();
    assert_eq!(first.version, 1);
    let tighter = rules("[[rule]]\nuid_prefix = \"\"\nmax_age_days = 7");
    let second = set(&store, &tighter, "dpo").await.unwrap();
    assert_eq!(second.version, 2);
    let loaded = load(&store).await.unwrap().unwrap();
    assert_eq!(loaded, second);
    assert_eq!(loaded.updated_by, "dpo");
    assert_eq!(loaded.rules, tighter);
    assert_eq!(versions(&store).await.unwrap(), vec![1, 2]);
    assert_eq!(load_version(&store, 1).await.unwrap().unwrap(), first);
    // The current file is the history copy of its version, byte for byte.
    let (_, current) = mem.get_range(RETENTION_KEY, ByteRange::All).await.unwrap();
    let (_, copy) = mem
        .get_range("_des/retention/0000000002.toml", ByteRange::All)
        .await
        .unwrap();
    assert_eq!(current, copy);
    let text = String::from_utf8(current.to_vec()).unwrap();
    assert!(text.starts_with("version = 2\n"), "{text}");
    assert!(text.contains("updated_by = \"dpo\""), "{text}");
    assert!(text.contains("[[rule]]"), "{text}");
    assert!(
        set(&store, &tighter, " ").await.is_err(),
        "updated_by is required"
    );
}

#[tokio::test]
async fn a_crashed_set_does_not_block_the_next() {
    let mem = MemoryStore::new();
    let store = single(Arc::new(mem.clone())).await;
    set(&store, &rules(POLICY), "ops").await.unwrap();
    // A set that died after its history copy, before the current file.
    let orphan = StoredRules {
        version: 2,
        updated_at: Timestamp::now().to_rfc3339(),
        updated_by: "crashed".into(),
        rules: rules(POLICY),
    };
    mem.put(
        &history_key(2),
        Bytes::from(orphan.to_toml().unwrap()),
        PutOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(load(&store).await.unwrap().unwrap().version, 1);
    let next = set(&store, &rules(POLICY), "ops").await.unwrap();
    assert_eq!(next.version, 3);
    assert_eq!(load(&store).await.unwrap().unwrap().version, 3);
}

/// Another setter's write lands on the first history copy we write: before
/// ours (`before`) on a store that enforces create-only writes, or after
/// ours on one that ignores them, as Garage does.
#[derive(Debug)]
struct Racing {
    inner: MemoryStore,
    before: bool,
    fired: AtomicBool,
}

#[async_trait]
impl ObjectStore for Racing {
    crate::forward_methods!(inner => describe, get, head, put_writer, delete, list);

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            conditional_put: self.before,
        }
    }

    async fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<PutResult> {
        let theirs = || Bytes::from_static(b"version = 99\n");
        let racing =
            key.starts_with(RETENTION_HISTORY_PREFIX) && !self.fired.swap(true, Ordering::SeqCst);
        if racing && self.before {
            self.inner.put(key, theirs(), PutOptions::default()).await?;
        }
        // Garage: the condition is accepted and ignored.
        let opts = if self.before {
            opts
        } else {
            PutOptions::default()
        };
        let put = self.inner.put(key, data, opts).await?;
        if racing && !self.before {
            self.inner.put(key, theirs(), PutOptions::default()).await?;
        }
        Ok(put)
    }
}

#[tokio::test]
async fn a_concurrent_set_is_detected() {
    for before in [true, false] {
        let mem = MemoryStore::new();
        let store = single(Arc::new(Racing {
            inner: mem.clone(),
            before,
            fired: AtomicBool::new(false),
        }))
        .await;
        let e = set(&store, &rules(POLICY), "ops").await.unwrap_err();
        assert!(e.to_string().contains("changed concurrently, retry"), "{e}");
        assert_eq!(
            mem.head(RETENTION_KEY).await.unwrap_err().kind(),
            ErrorKind::NotFound,
            "the loser committed nothing (conditions enforced: {before})"
        );
        // Retrying takes the next version and succeeds.
        assert_eq!(set(&store, &rules(POLICY), "ops").await.unwrap().version, 2);
    }
}

#[tokio::test]
async fn a_bad_stored_file_is_refused_with_a_clear_error() {
    let mem = MemoryStore::new();
    let store = single(Arc::new(mem.clone())).await;
    for (body, says) in [
        (&b"[[rule]]\nuid_prefix = \"\"\nmax_age_days = 3\n"[..], "version"),
        (b"version = 1\nupdated_at = \"x\"\nupdated_by = \"y\"\n", "no [[rule]]"),
        (
            b"version = 1\nupdated_at = \"x\"\nupdated_by = \"y\"\n[[rule]]\nuid_prefix = \"\"\nmax_age_days = 0\n",
            "at least 1",
        ),
        (b"\xff\xfe", "not UTF-8"),
    ] {
        mem.put(RETENTION_KEY, Bytes::from_static(body), PutOptions::default())
            .await
            .unwrap();
        let e = load(&store).await.unwrap_err().to_string();
        assert!(
            e.contains("_des/retention.toml in memory:// is not valid retention rules") && e.contains(says),
            "{e}"
        );
    }
    // Setting new rules repairs it.
    assert_eq!(set(&store, &rules(POLICY), "ops").await.unwrap().version, 1);
    assert!(load(&store).await.unwrap().is_some());
}

/// Two zones: every store holds the rules, readers take the first's.
#[derive(Debug)]
struct Two(Arc<dyn ObjectStore>, Arc<dyn ObjectStore>);

impl Placement for Two {
    fn for_shard(&self, i: u32) -> Result<Arc<dyn ObjectStore>> {
        Ok(Arc::clone(if i.is_multiple_of(2) {
            &self.0
        } else {
            &self.1
        }))
    }
    fn stores(&self) -> Vec<Arc<dyn ObjectStore>> {
        vec![Arc::clone(&self.0), Arc::clone(&self.1)]
    }
    fn describe(&self) -> String {
        "two".into()
    }
}

#[tokio::test]
async fn every_store_of_the_placement_gets_the_rules() {
    let (a, b) = (MemoryStore::new(), MemoryStore::new());
    let store = store_on(Arc::new(Two(Arc::new(a.clone()), Arc::new(b.clone())))).await;
    let stored = set(&store, &rules(POLICY), "ops").await.unwrap();
    for zone in [&a, &b] {
        assert_eq!(load_from(zone).await.unwrap().unwrap(), stored);
        assert!(zone.head(&history_key(1)).await.is_ok());
    }
}

#[test]
fn newly_expired_dates_lie_between_two_days_cutoffs() {
    let r = rules(POLICY);
    let (then, now) = (r.cutoffs(20240310), r.cutoffs(20240312));
    // logs/: 30 days; expired through 20240208 then, 20240210 now.
    assert!(!now.newly_expired(&then, 20240208));
    assert!(now.newly_expired(&then, 20240209));
    assert!(now.newly_expired(&then, 20240210));
    assert!(!now.newly_expired(&then, 20240211));
    assert!(!now.newly_expired(&now, 20240210), "same day: nothing new");
}

#[test]
fn a_date_is_expired_for_all_only_under_a_catch_all_that_every_rule_shares() {
    let all = rules("[[rule]]\nuid_prefix = \"\"\nmax_age_days = 30\n");
    let c = all.cutoffs(20240312);
    assert!(c.expires_all(20240210));
    assert!(!c.expires_all(20240211));
    // A prefix kept forever (logs/audit/) keeps every date partly alive.
    assert!(!rules(POLICY).cutoffs(20440312).expires_all(20240101));
    // Without a catch-all, uids matching no rule are never expired.
    let some = rules("[[rule]]\nuid_prefix = \"logs/\"\nmax_age_days = 1\n");
    assert!(!some.cutoffs(20240312).expires_all(20240101));
}
