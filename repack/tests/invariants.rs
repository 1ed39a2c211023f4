//! The store's invariants (docs/CONCURRENCY.md, I1–I6) with real processes
//! on a local store: des-pack, des-tombstones, des-repack and des-verify
//! together, as a user runs them — re-runs after a deletion, a tombstone
//! before the pack, a packer frozen next to a big-file clean-up, a legal
//! hold placed after clean-up was registered, a repacker killed between
//! publishing and marking.
//!
//! des-pack belongs to another package: see `common::des_pack`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

/// A store and a directory of source files with a manifest per batch.
struct Setup {
    store: Local,
}

impl Setup {
    fn new() -> Self {
        Self {
            store: Local::build(Vec::new()),
        }
    }

    fn root(&self) -> String {
        self.store.root_str()
    }

    /// Writes the sources of `specs` and a manifest naming them.
    fn manifest(&self, name: &str, specs: &[FileSpec]) -> PathBuf {
        let dir = self.store.aux(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut lines = String::new();
        for s in specs {
            let src = dir.join(s.uid.replace('/', "_"));
            std::fs::write(&src, content(&s.uid, s.size)).unwrap();
            lines.push_str(
                &serde_json::json!({
                    "uid": s.uid,
                    "created_at": s.created_at,
                    "source": src,
                })
                .to_string(),
            );
            lines.push('\n');
        }
        let path = dir.join("manifest.jsonl");
        std::fs::write(&path, lines).unwrap();
        path
    }

    fn pack_cmd(&self, manifest: &Path) -> Command {
        let mut c = des_pack();
        c.args(["--manifest"])
            .arg(manifest)
            .args(["--out", &self.root(), "--json", "--quiet"])
            .args(["--big-file-threshold", "100K", "--jobs", "1"]);
        c
    }

    fn pack(&self, manifest: &Path) -> serde_json::Value {
        let out = self.pack_cmd(manifest).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        json(&out)
    }

    fn tombstone(&self, s: &FileSpec) {
        let out = run(
            "des-tombstones",
            &[
                "--store",
                &self.root(),
                "add",
                "--uid",
                &s.uid,
                "--created-at",
                &s.created_at,
                "--reason",
                "gdpr",
                "--deleted-by",
                "tester",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    }

    fn repack(&self, extra: &[&str]) -> serde_json::Value {
        let root = self.root();
        let mut args = vec!["--store", root.as_str(), "--json", "--max-delay", "0s"];
        args.extend_from_slice(extra);
        let out = run("des-repack", &args);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        json(&out)
    }

    fn verify(&self) -> Output {
        run("des-verify", &[&self.root(), "--json"])
    }

    /// The bytes of `s` are in no object of the store: no shard, no big file.
    fn assert_gone(&self, s: &FileSpec) {
        assert!(
            !self.store.raw_contains(&needle(s)),
            "{}'s bytes are still in the store",
            s.uid
        );
    }

    fn check(&self, live: &[FileSpec], deleted: &[&FileSpec]) {
        let mut all: Vec<FileSpec> = live.to_vec();
        all.extend(deleted.iter().map(|s| (*s).clone()));
        let gone: Vec<&str> = deleted.iter().map(|s| s.uid.as_str()).collect();
        let objects: std::sync::Arc<dyn des_storage::ObjectStore> =
            std::sync::Arc::new(des_storage::LocalStore::new(self.store.root()).unwrap());
        check_files(objects, &all, &gone);
    }

    /// Every applied tombstone's outcome, by uid: from markers of small
    /// records (per tombstone or per shard generation) and from segments.
    fn markers(&self) -> Vec<(String, String)> {
        let outcome = |o: des_storage::tombstones::AppliedOutcome| {
            serde_json::to_value(o)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        };
        let mut out = rt().block_on(async {
            let objects: std::sync::Arc<dyn des_storage::ObjectStore> =
                std::sync::Arc::new(des_storage::LocalStore::new(self.store.root()).unwrap());
            let store = des_storage::DesStore::open(objects).await.unwrap();
            let log = des_storage::tombstones::TombstoneLog::new(&store);
            let mut out = Vec::new();
            for at in log.names_by_state().await.unwrap().1 {
                let m = log.applied_marker(&at).await.unwrap().unwrap();
                out.push((at.name.uid.clone().unwrap(), outcome(m.outcome)));
            }
            for r in log.segment_records().await.unwrap() {
                out.push((r.tombstone.uid, outcome(r.applied.outcome)));
            }
            out
        });
        out.sort();
        out
    }
}

fn day_files(prefix: &str, n: usize) -> Vec<FileSpec> {
    (0..n)
        .map(|i| {
            FileSpec::new(
                &format!("{prefix}-{i:02}"),
                &format!("2024-05-17T10:{:02}:00Z", i % 60),
                4_000 + i * 100,
            )
        })
        .collect()
}

/// Scenario 1: re-running the same input after a GDPR deletion was applied
/// does not write the deleted file back; it is reported as deleted.
#[test]
fn a_rerun_after_a_deletion_never_brings_the_file_back() {
    let s = Setup::new();
    let specs = day_files("f", 12);
    let manifest = s.manifest("batch", &specs);
    assert_eq!(s.pack(&manifest)["files_packed"], 12);
    let victim = &specs[3];
    s.tombstone(victim);
    s.repack(&[]);
    s.assert_gone(victim);

    let again = s.pack(&manifest);
    assert_eq!(again["files_packed"], 0, "{again:#}");
    assert_eq!(again["files_deleted"], 1, "{again:#}");
    assert_eq!(again["deleted"][0]["uid"], victim.uid.as_str());
    s.assert_gone(victim);
    let live: Vec<FileSpec> = specs
        .iter()
        .filter(|x| x.uid != victim.uid)
        .cloned()
        .collect();
    s.check(&live, &[victim]);
    let r = s.repack(&[]);
    assert_eq!(r["shards_rewritten"], 0, "{r:#}");
    let v = s.verify();
    assert_eq!(v.status.code(), Some(0), "{}", describe(&v));
}

/// Scenario 2: a tombstone written before its file is packed, with a repack
/// in between (recorded as absent), still keeps the file out for good.
#[test]
fn a_tombstone_before_the_pack_keeps_the_file_out() {
    let s = Setup::new();
    let specs = day_files("g", 6);
    let victim = specs[2].clone();
    s.tombstone(&victim);
    s.repack(&[]);
    assert_eq!(s.markers(), vec![(victim.uid.clone(), "absent".into())]);
    let r = s.pack(&s.manifest("batch", &specs));
    assert_eq!(
        (r["files_packed"].as_u64(), r["files_deleted"].as_u64()),
        (Some(5), Some(1))
    );
    for _ in 0..2 {
        s.repack(&[]);
    }
    s.assert_gone(&victim);
    let live: Vec<FileSpec> = specs
        .iter()
        .filter(|x| x.uid != victim.uid)
        .cloned()
        .collect();
    s.check(&live, &[&victim]);
}

/// The race the deletion guard cannot close: a packer that read the shard
/// and the tombstone log before the tombstone existed publishes after the
/// repacker proved the file absent. Played here by copying in a generation
/// built elsewhere, as that packer would have published it; the next
/// repack re-checks the changed shard and removes the bytes.
#[test]
fn a_shard_republished_with_deleted_bytes_is_cleaned_by_the_next_repack() {
    let s = Setup::new();
    let specs = day_files("h", 6);
    let victim = specs[4].clone();
    let others: Vec<FileSpec> = specs
        .iter()
        .filter(|x| x.uid != victim.uid)
        .cloned()
        .collect();
    s.pack(&s.manifest("first", &others));
    s.tombstone(&victim);
    s.repack(&[]);
    assert_eq!(s.markers(), vec![(victim.uid.clone(), "absent".into())]);

    // The racing packer's generation: every file, the victim included.
    let elsewhere = Setup::new();
    elsewhere.pack(&elsewhere.manifest("all", &specs));
    let key = des_storage::keys::ShardKey::of(&victim.uid, victim.ts().date_number(), N_BITS)
        .unwrap()
        .to_string();
    std::fs::copy(elsewhere.store.root().join(&key), s.store.root().join(&key)).unwrap();
    assert!(s.store.raw_contains(&needle(&victim)));

    let r = s.repack(&[]);
    assert_eq!(r["shards_rewritten"], 1, "{r:#}");
    assert_eq!(r["shards"][0]["reason"], "recheck", "{r:#}");
    s.assert_gone(&victim);
    s.check(&others, &[&victim]);
    // Unchanged since: the next run reads no shard.
    let r = s.repack(&[]);
    assert_eq!(r["shards_considered"], 0, "{r:#}");
}

/// Scenario 3: a packer frozen right after it found a big file present
/// (SIGSTOP), while clean-up with no grace runs: the object survives, the
/// packer publishes its reference, the file reads back.
#[test]
fn a_frozen_packer_keeps_the_big_file_it_relies_on() {
    let s = Setup::new();
    let first = FileSpec::new("big-1", "2024-05-17T09:00:00Z", 300_000);
    s.pack(&s.manifest("first", std::slice::from_ref(&first)));
    s.tombstone(&first);
    // Drops the entry, registers the big file for clean-up (grace: 1h).
    s.repack(&[]);

    // The same content under another uid: the packer finds `_big/<digest>`.
    let second = FileSpec {
        uid: "big-2".into(),
        ..first.clone()
    };
    let manifest = s.manifest("second", std::slice::from_ref(&second));
    std::fs::write(manifest.with_file_name("big-2"), content("big-1", 300_000)).unwrap();
    let child = spawn_paused_at_big_file(&mut s.pack_cmd(&manifest));
    let r = s.repack(&["--big-file-grace", "0s"]);
    assert_eq!(
        r["big_files"]["deleted"].as_array().unwrap().len(),
        0,
        "{r:#}"
    );
    assert_eq!(r["big_files"]["in_flight"], 1, "{r:#}");
    signal(child.id(), "CONT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let objects: std::sync::Arc<dyn des_storage::ObjectStore> =
        std::sync::Arc::new(des_storage::LocalStore::new(s.store.root()).unwrap());
    rt().block_on(async {
        let store = des_storage::DesStore::open(objects).await.unwrap();
        let (_, data) = store.get_file("big-2", second.ts()).await.unwrap();
        assert!(data == content("big-1", 300_000));
    });
    let v = s.verify();
    assert_eq!(v.status.code(), Some(0), "{}", describe(&v));
}

/// Scenario 5a: a legal hold placed after clean-up registered a big file
/// keeps the object; releasing it lets the next run delete it.
#[test]
fn a_hold_placed_after_registration_stops_big_file_clean_up() {
    let s = Setup::new();
    let big = FileSpec::new("case/big", "2024-05-17T09:00:00Z", 300_000);
    // The packer's own ref to the big file expires first (1 s here, 1 h by default).
    let out = s
        .pack_cmd(&s.manifest("b", std::slice::from_ref(&big)))
        .env("DES_BIG_REF_TTL_SECS", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    std::thread::sleep(Duration::from_millis(1100));
    s.tombstone(&big);
    s.repack(&[]);
    let root = s.root();
    let hold = |args: &[&str]| {
        let mut a = vec!["--store", root.as_str(), "hold"];
        a.extend_from_slice(args);
        let out = run("des-tombstones", &a);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    };
    hold(&[
        "add",
        "--name",
        "case-1",
        "--uid-prefix",
        "case/",
        "--created-by",
        "legal",
    ]);
    let r = s.repack(&["--big-file-grace", "0s"]);
    assert_eq!(r["big_files"]["held"], 1, "{r:#}");
    assert!(s.store.raw_contains(&needle(&big)), "held bytes deleted");
    hold(&["release", "--name", "case-1"]);
    let r = s.repack(&["--big-file-grace", "0s"]);
    assert_eq!(
        r["big_files"]["deleted"].as_array().unwrap().len(),
        1,
        "{r:#}"
    );
    s.assert_gone(&big);
}

/// Runs a repacker that dies right after its first publish: nothing is
/// marked applied; returns once its lease has expired.
fn crash_after_first_publish(s: &Setup) {
    let crashed = bin("des-repack")
        .args(["--store", &s.root(), "--max-delay", "0s", "--quiet"])
        .args(["--lease-ttl", "1s"])
        .env("DES_REPACK_CRASH_AT", "after_publish")
        .output()
        .unwrap();
    assert!(!crashed.status.success(), "{}", describe(&crashed));
    assert!(s.markers().is_empty());
    std::thread::sleep(Duration::from_millis(1100));
}

/// Scenario 5b: a repacker killed between publishing and marking: the
/// re-run records the file as removed (it was there), not as absent.
#[test]
fn a_crash_between_publish_and_mark_keeps_the_proof_exact() {
    let s = Setup::new();
    let specs = day_files("k", 5);
    s.pack(&s.manifest("b", &specs));
    let victim = &specs[1];
    s.tombstone(victim);
    crash_after_first_publish(&s);
    let r = s.repack(&[]);
    assert_eq!(r["tombstones_pending"], 0, "{r:#}");
    assert_eq!(s.markers(), vec![(victim.uid.clone(), "removed".into())]);
    s.assert_gone(victim);
}

/// Scenario 5c: the same with several shards, whose indexes the run reads
/// ahead and whose drops it journals in one object before the first
/// publish: killed after that publish, the re-run records every victim as
/// removed (the shards not yet rewritten are rewritten then; their early
/// journal entries prove nothing wrong).
#[test]
fn a_crash_after_a_read_ahead_keeps_every_proof_exact() {
    let s = Setup::new();
    let specs = day_files("k", 40);
    s.pack(&s.manifest("b", &specs));
    let shard_of = |f: &FileSpec| {
        des_storage::keys::ShardKey::of(&f.uid, f.ts().date_number(), N_BITS).unwrap()
    };
    let mut victims: Vec<&FileSpec> = Vec::new();
    for f in &specs {
        if victims.len() < 4 && victims.iter().all(|v| shard_of(v) != shard_of(f)) {
            victims.push(f);
        }
    }
    assert_eq!(victims.len(), 4, "victims in four shards");
    for v in &victims {
        s.tombstone(v);
    }
    crash_after_first_publish(&s);
    let chunks = std::fs::read_dir(s.store.root().join("_des/journal/_run"))
        .unwrap()
        .count();
    assert_eq!(chunks, 1, "one journal object for the window");
    let r = s.repack(&[]);
    assert_eq!(r["tombstones_pending"], 0, "{r:#}");
    let mut want: Vec<(String, String)> = victims
        .iter()
        .map(|v| (v.uid.clone(), "removed".to_string()))
        .collect();
    want.sort();
    assert_eq!(s.markers(), want);
    for v in &victims {
        s.assert_gone(v);
    }
    let live: Vec<FileSpec> = specs
        .iter()
        .filter(|f| victims.iter().all(|v| v.uid != f.uid))
        .cloned()
        .collect();
    s.check(&live, &victims);
    assert!(
        !s.store.root().join("_des/journal/_run").exists()
            || std::fs::read_dir(s.store.root().join("_des/journal/_run"))
                .unwrap()
                .next()
                .is_none(),
        "journals cleared"
    );
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Scenario 4 (I4): a packer adding a file and a repacker rewriting the same
/// local shard, as two processes at the same time, round after round: no
/// live file lost, no deleted file kept under a proof, every conflict
/// resolved by a rebuild (both exit 0). `INVARIANT_ROUNDS` sets the count.
#[test]
fn a_packer_and_a_repacker_on_one_shard_never_lose_a_file() {
    let rounds: usize = std::env::var("INVARIANT_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let s = Setup::new();
    let uids = same_shard_uids(rounds * 2 + 8);
    let spec = |uid: &str| FileSpec::new(uid, "2024-05-17T10:00:00Z", 3_000);
    let mut next = uids.iter();
    let base: Vec<FileSpec> = next.by_ref().take(8).map(|u| spec(u)).collect();
    s.pack(&s.manifest("base", &base));
    let shard = des_storage::keys::ShardKey::of(&uids[0], 20240517, N_BITS).unwrap();
    let shard_arg = format!("{:08}/{}", shard.date, shard.hex());
    let (mut live, mut deleted) = (base, Vec::new());
    let started = Instant::now();
    for round in 0..rounds {
        let victim = live.remove(0);
        s.tombstone(&victim);
        deleted.push(victim);
        let new = spec(next.next().unwrap());
        let manifest = s.manifest(&format!("r{round}"), std::slice::from_ref(&new));
        let packer = s.pack_cmd(&manifest).output_async();
        let repacker = bin("des-repack")
            .args(["--store", &s.root(), "--json", "--max-delay", "0s"])
            .args(["--shard", &shard_arg])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (p, r) = (packer.wait(), repacker.wait_with_output().unwrap());
        assert_eq!(p.status.code(), Some(0), "round {round}: {}", describe(&p));
        assert_eq!(r.status.code(), Some(0), "round {round}: {}", describe(&r));
        assert_eq!(
            json(&p)["files_packed"],
            1,
            "round {round}: {}",
            describe(&p)
        );
        assert_eq!(
            json(&r)["shards_failed"],
            0,
            "round {round}: {}",
            describe(&r)
        );
        live.push(new);
        let held = shard_uids(&s, &shard.to_string());
        for f in &live {
            assert!(held.contains(&f.uid), "round {round}: {} lost", f.uid);
        }
        for f in &deleted {
            assert!(
                !held.contains(&f.uid),
                "round {round}: deleted {} kept",
                f.uid
            );
        }
    }
    s.check(&live, &deleted.iter().collect::<Vec<_>>());
    eprintln!("{rounds} rounds in {:.1}s", started.elapsed().as_secs_f64());
}

/// uids that all route to one shard of an `N_BITS` store.
fn same_shard_uids(n: usize) -> Vec<String> {
    let target = des_format::routing::shard_index("u-0", N_BITS).unwrap();
    (0..)
        .map(|i| format!("u-{i}"))
        .filter(|u| des_format::routing::shard_index(u, N_BITS).unwrap() == target)
        .take(n)
        .collect()
}

/// The uids the shard's current generation lists, read with a fresh store.
fn shard_uids(s: &Setup, key: &str) -> std::collections::HashSet<String> {
    let objects: std::sync::Arc<dyn des_storage::ObjectStore> =
        std::sync::Arc::new(des_storage::LocalStore::new(s.store.root()).unwrap());
    rt().block_on(async {
        let store = des_storage::DesStore::open(objects).await.unwrap();
        let loaded = store.load_index(key).await.unwrap().unwrap();
        let des_format::shard::AnyIndex::V3(ix) = &loaded.index else {
            panic!("not v3")
        };
        ix.view().iter().map(|e| e.uid.to_string()).collect()
    })
}

/// A child started now and collected later.
struct Running(std::process::Child);

impl Running {
    fn wait(self) -> Output {
        self.0.wait_with_output().unwrap()
    }
}

trait SpawnPiped {
    fn output_async(&mut self) -> Running;
}

impl SpawnPiped for Command {
    fn output_async(&mut self) -> Running {
        Running(
            self.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }
}
