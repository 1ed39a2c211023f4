#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! End-to-end on a real Garage server: `des-pack --from-s3` packing 10,000
//! loose objects, every one read back byte-exact through the retriever's
//! lookup (`DesStore::find`/`get_file`), originals deleted only when asked and
//! only once their file reads back, and a `kill -9` mid-run followed by a
//! resume from the listing checkpoint losing nothing.
//! Needs the `garage` binary (`scripts/garage.sh install`); run with
//! `cargo test -p des-packer --features s3-tests --test from_s3`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_exit, noise, report};
use des_format::Timestamp;
use des_storage::resilience::{RetryPolicy, RetryStore};
use des_storage::testing::S3Server;
use des_storage::{DesStore, LocalStore, ObjectStore, ObjectStoreExt, PutOptions, S3Store};
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

const OBJECTS: usize = 10_000;

/// A `des-pack` command configured for `server` through the environment,
/// as an operator would run it.
fn des_pack_cmd(server: &S3Server, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_des-pack"));
    cmd.args(args)
        .env("AWS_ENDPOINT_URL", server.endpoint())
        .env("AWS_ACCESS_KEY_ID", server.access_key())
        .env("AWS_SECRET_ACCESS_KEY", server.secret_key())
        .env("AWS_REGION", server.region())
        .env("DES_S3_FORCE_PATH_STYLE", "1")
        // Nothing from the machine's own AWS setup may leak in.
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("DES_STORE");
    cmd
}

fn des_pack(server: &S3Server, args: &[&str]) -> Output {
    des_pack_cmd(server, args).output().unwrap()
}

/// The bucket itself (keys are bucket keys).
fn bucket(server: &S3Server) -> S3Store {
    S3Store::new(server.config()).unwrap()
}

fn num(r: &Value, field: &str) -> u64 {
    r[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing: {r:#}"))
}

/// Small files of every kind: empty, text (compressible), noise, and one
/// above the 64 KiB big-file threshold the tests use.
fn content(i: usize) -> Vec<u8> {
    match i % 4 {
        _ if i == 77 => noise(77, 200_000),
        _ if i.is_multiple_of(997) => Vec::new(),
        0 | 1 => format!("object {i} says hello\n")
            .repeat(1 + i % 40)
            .into_bytes(),
        _ => noise(i as u64 + 1, 1 + (i * 37) % 3000),
    }
}

/// Uploads every object, 64 at a time, with retries (a loaded machine's
/// Garage drops the odd request).
fn upload(rt: &tokio::runtime::Runtime, store: &S3Store, objects: &BTreeMap<String, Vec<u8>>) {
    let store: Arc<dyn ObjectStore> = Arc::new(RetryStore::new(
        Arc::new(store.clone()),
        RetryPolicy::default(),
    ));
    rt.block_on(async {
        futures::stream::iter(objects.iter())
            .map(|(key, data)| {
                let store = Arc::clone(&store);
                let data = data.clone();
                async move { store.put(key, data.into(), PutOptions::default()).await }
            })
            .buffer_unordered(64)
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
    });
}

/// Puts an empty object under `key` through the AWS SDK: des_storage refuses
/// keys ending in `/`, which is exactly what a console's folder marker is.
fn put_folder_marker(rt: &tokio::runtime::Runtime, server: &S3Server, key: &str) {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(server.endpoint())
        .region(Region::new(server.region().to_string()))
        .credentials_provider(Credentials::new(
            server.access_key(),
            server.secret_key(),
            None,
            None,
            "test",
        ))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .build();
    let client = aws_sdk_s3::Client::from_conf(conf);
    rt.block_on(
        client
            .put_object()
            .bucket(server.bucket())
            .key(key)
            .body(Vec::new().into())
            .send(),
    )
    .unwrap();
}

fn keys_under(rt: &tokio::runtime::Runtime, store: &S3Store, prefix: &str) -> BTreeSet<String> {
    rt.block_on(store.list_all(prefix))
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .filter(|k| !k.starts_with("store/"))
        .collect()
}

/// Every entry of every shard: uid → created_at. Panics on a uid stored
/// twice, so "present exactly once" is checked by every caller.
fn entries(rt: &tokio::runtime::Runtime, store: &DesStore) -> BTreeMap<String, Timestamp> {
    let mut out = BTreeMap::new();
    for shard in rt.block_on(store.list_shards()).unwrap() {
        let loaded = rt.block_on(store.load_index(&shard.key)).unwrap().unwrap();
        for e in loaded.index.located() {
            let created = e.created_at.unwrap();
            assert!(
                out.insert(e.uid.clone(), created).is_none(),
                "{} stored twice",
                e.uid
            );
        }
    }
    out
}

/// Reads every `(uid, created_at, bytes)` back as the retriever finds it
/// (index of the shard it routes to, then the entry), 32 at a time, and
/// compares the bytes.
fn assert_served(
    rt: &tokio::runtime::Runtime,
    store: &DesStore,
    files: &[(String, Timestamp, &[u8])],
) {
    rt.block_on(async {
        futures::stream::iter(files)
            .map(|(uid, created_at, want)| async move {
                let (_, got) = store
                    .get_file(uid, *created_at)
                    .await
                    .unwrap_or_else(|e| panic!("{uid}: {e}"));
                assert!(got == *want, "{uid}: bytes differ");
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
    });
}

#[test]
fn from_s3_packs_10k_objects_byte_exact_and_deletes_originals_only_when_asked() {
    let server = S3Server::garage().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let raw = bucket(&server);
    let before = Timestamp::now();
    let objects: BTreeMap<String, Vec<u8>> = (0..OBJECTS)
        .map(|i| (format!("loose/d{}/obj-{i:05}.bin", i % 7), content(i)))
        .collect();
    upload(&rt, &raw, &objects);
    // A folder marker, and neighbours that are not under `loose/`.
    put_folder_marker(&rt, &server, "loose/d0/");
    let others: BTreeMap<String, Vec<u8>> = [
        ("loose-sibling/x", b"x".to_vec()),
        ("elsewhere/y", b"y".to_vec()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    upload(&rt, &raw, &others);
    let after = Timestamp::now();

    let from = format!("s3://{}/loose", server.bucket());
    let out = format!("s3://{}/store", server.bucket());
    let args = [
        "--from-s3",
        &from,
        "--out",
        &out,
        "--big-file-threshold",
        "64K",
        "-j",
        "4",
        "--json",
    ];
    let started = Instant::now();
    let first = des_pack(&server, &args);
    let secs = started.elapsed().as_secs_f64();
    assert_exit(&first, 0);
    let r = report(&first);
    eprintln!(
        "packed {OBJECTS} objects in {secs:.1} s ({:.0} objects/s)",
        OBJECTS as f64 / secs
    );
    assert_eq!(num(&r, "files_packed"), OBJECTS as u64, "{r:#}");
    assert_eq!(num(&r, "big_files"), 1);
    assert_eq!(num(&r, "files_failed"), 0);
    let s = &r["from_s3"];
    assert_eq!(s["source"], format!("s3://{}/loose/", server.bucket()));
    assert_eq!(num(s, "objects_listed"), OBJECTS as u64 + 1);
    assert_eq!(num(s, "objects_skipped"), 1, "the folder marker");
    assert_eq!(num(s, "batches"), 1);
    assert_eq!(num(s, "sources_deleted"), 0);
    assert_eq!(num(s, "sources_kept"), OBJECTS as u64 + 1);

    let store = rt
        .block_on(DesStore::open(Arc::new(
            S3Store::new(server.config().with_prefix("store")).unwrap(),
        )))
        .unwrap();
    let stored = entries(&rt, &store);
    assert_eq!(stored.len(), OBJECTS);
    // Whole seconds in some servers' listings: a second of slack either way.
    let (lo, hi) = (before.micros() - 1_000_000, after.micros() + 1_000_000);
    let files: Vec<(String, Timestamp, &[u8])> = objects
        .iter()
        .map(|(key, data)| {
            let uid = key.strip_prefix("loose/").unwrap();
            let created = stored[uid];
            assert!(
                (lo..=hi).contains(&created.micros()),
                "{uid}: created_at {created} is not its LastModified"
            );
            (uid.to_string(), created, data.as_slice())
        })
        .collect();
    assert_served(&rt, &store, &files);
    let mut all: BTreeSet<String> = objects.keys().chain(others.keys()).cloned().collect();
    all.insert("loose/d0/".into());
    assert_eq!(
        keys_under(&rt, &raw, ""),
        all,
        "no original deleted unasked"
    );

    // Again, deleting: everything is already present, verified, deleted.
    let deleting = [&args[..], &["--delete-sources-after-verify"]].concat();
    let second = des_pack(&server, &deleting);
    assert_exit(&second, 0);
    let r = report(&second);
    assert_eq!(num(&r, "files_already_present"), OBJECTS as u64, "{r:#}");
    assert_eq!(num(&r, "files_packed"), 0);
    assert_eq!(num(&r, "shards_written"), 0);
    let s = &r["from_s3"];
    assert_eq!(num(s, "sources_deleted"), OBJECTS as u64);
    assert_eq!(num(s, "sources_kept"), 1, "the folder marker");
    assert_eq!(num(s, "sources_failed_verification"), 0);
    let mut left: BTreeSet<String> = others.keys().cloned().collect();
    left.insert("loose/d0/".into());
    assert_eq!(keys_under(&rt, &raw, ""), left);
    assert_served(&rt, &store, &files);
}

/// `in/<YYYYMMDD>/u<i>.txt` on two days, plus one key the regex refuses.
fn dated_objects() -> BTreeMap<String, Vec<u8>> {
    (0..OBJECTS)
        .map(|i| {
            let day = if i.is_multiple_of(3) {
                "20240518"
            } else {
                "20240517"
            };
            (format!("in/{day}/u{i:05}.txt"), content(i))
        })
        .chain([("in/junk.bin".to_string(), b"junk".to_vec())])
        .collect()
}

fn uid_and_time(key: &str) -> Option<(String, Timestamp)> {
    let rest = key.strip_prefix("in/")?;
    let (day, file) = rest.split_once('/')?;
    let uid = file.strip_suffix(".txt")?;
    let ts = format!("{}-{}-{}T00:00:00Z", &day[..4], &day[4..6], &day[6..]);
    Some((uid.to_string(), Timestamp::parse_rfc3339(&ts).unwrap()))
}

/// Starts des-pack and SIGKILLs it once the checkpoint file appears (a batch
/// packed, verified and its originals deleted), while it is still running.
fn kill_after_first_checkpoint(server: &S3Server, args: &[&str], checkpoint: &Path) {
    let log = checkpoint.with_extension("log");
    let mut child = des_pack_cmd(server, args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !checkpoint.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "des-pack ended before its first checkpoint:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "no checkpoint within 300 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "des-pack finished before it could be killed: use more batches"
    );
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
}

#[test]
fn kill_9_mid_run_then_resume_from_the_checkpoint_loses_nothing() {
    let server = S3Server::garage().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let raw = bucket(&server);
    let objects = dated_objects();
    upload(&rt, &raw, &objects);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("store");
    let checkpoint = dir.path().join("listing.json");
    let from = format!("s3://{}/in", server.bucket());
    let args = [
        "--from-s3",
        &from,
        "--uid-regex",
        r"^(?P<created>\d{8})/(?P<uid>[^/]+)\.txt$",
        "--created-at-from",
        "key",
        "--created-at-format",
        "%Y%m%d",
        "--listing-checkpoint",
        checkpoint.to_str().unwrap(),
        "--listing-batch",
        "1000",
        "--delete-sources-after-verify",
        "--out",
        out.to_str().unwrap(),
        "--n-bits",
        "4",
        "--big-file-threshold",
        "64K",
        "--json",
    ];
    kill_after_first_checkpoint(&server, &args, &checkpoint);

    // Whatever was deleted before the kill is served from the store.
    let store = rt
        .block_on(DesStore::open(Arc::new(LocalStore::new(&out).unwrap())))
        .unwrap();
    let left = keys_under(&rt, &raw, "in/");
    let deleted: Vec<&String> = objects.keys().filter(|k| !left.contains(*k)).collect();
    assert!(
        deleted.len() >= 1000,
        "the first batch's originals are gone: {}",
        deleted.len()
    );
    assert!(left.len() > 1, "killed before the end");
    let files: Vec<(String, Timestamp, &[u8])> = deleted
        .iter()
        .map(|key| {
            let (uid, ts) = uid_and_time(key).unwrap();
            (uid, ts, objects[*key].as_slice())
        })
        .collect();
    assert_served(&rt, &store, &files);
    let cp: Value = serde_json::from_slice(&std::fs::read(&checkpoint).unwrap()).unwrap();
    let resume_after = cp["start_after"].as_str().unwrap().to_string();
    assert!(
        objects.contains_key(&resume_after),
        "{resume_after} is a listed key"
    );

    // The resumed run: starts after the checkpoint, ends with every object
    // stored once and every original it could verify deleted.
    let resumed = des_pack(&server, &args);
    assert_exit(&resumed, 1); // in/junk.bin does not match the regex
    let r = report(&resumed);
    let s = &r["from_s3"];
    assert_eq!(s["resumed_after"].as_str(), Some(resume_after.as_str()));
    assert_eq!(num(s, "sources_failed_verification"), 0, "{r:#}");
    assert_eq!(s["checkpoint_held_back"], false);
    assert_eq!(s["checkpoint"].as_str(), Some("in/junk.bin"));
    assert_eq!(num(&r, "files_failed"), 1);
    let failure = &r["failures"][0];
    assert_eq!(
        failure["source"],
        format!("s3://{}/in/junk.bin", server.bucket())
    );
    assert!(
        failure["reason"]
            .as_str()
            .unwrap()
            .contains("does not match --uid-regex"),
        "{failure}"
    );
    assert!(
        num(s, "objects_listed") < objects.len() as u64,
        "listing resumed, not restarted: {s:#}"
    );
    let left = keys_under(&rt, &raw, "in/");
    assert_eq!(
        left.into_iter().collect::<Vec<_>>(),
        ["in/junk.bin"],
        "only the refused key keeps its original"
    );
    let stored = entries(&rt, &store);
    assert_eq!(stored.len(), OBJECTS, "every object exactly once");
    let files: Vec<(String, Timestamp, &[u8])> = objects
        .iter()
        .filter_map(|(key, data)| {
            let (uid, ts) = uid_and_time(key)?;
            assert_eq!(stored[&uid], ts, "{uid}: created_at from the key");
            Some((uid, ts, data.as_slice()))
        })
        .collect();
    assert_eq!(files.len(), OBJECTS);
    assert_served(&rt, &store, &files);

    // Nothing after the checkpoint: a third run lists nothing and succeeds.
    let third = des_pack(&server, &args);
    assert_exit(&third, 0);
    let r = report(&third);
    assert_eq!(num(&r["from_s3"], "objects_listed"), 0, "{r:#}");
}

#[test]
fn failures_hold_the_checkpoint_back_and_a_rerun_retries_them() {
    let server = S3Server::garage().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let raw = bucket(&server);
    // 1,666 objects on the 17th, then 834 on the 18th: three batches of
    // (at least) one 1,000-key page; the second and third hold the 18th.
    let objects: BTreeMap<String, Vec<u8>> = dated_objects()
        .into_iter()
        .filter(|(k, _)| uid_and_time(k).is_some_and(|(uid, _)| uid.as_str() < "u02500"))
        .collect();
    assert_eq!(objects.len(), 2500);
    upload(&rt, &raw, &objects);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("store");
    let checkpoint = dir.path().join("listing.json");
    let from = format!("s3://{}/in", server.bucket());
    let args = [
        "--from-s3",
        &from,
        "--uid-regex",
        r"^(?P<created>\d{8})/(?P<uid>[^/]+)\.txt$",
        "--created-at-from",
        "key",
        "--created-at-format",
        "%Y%m%d",
        "--listing-checkpoint",
        checkpoint.to_str().unwrap(),
        "--listing-batch",
        "1000",
        "--delete-sources-after-verify",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    // Only the 17th may be read: every object of the 18th fails to pack.
    let root = format!("s3://{}/in/20240517", server.bucket());
    let confined = des_pack(&server, &[&args[..], &["--source-root", &root]].concat());
    assert_exit(&confined, 1);
    let r = report(&confined);
    assert_eq!(num(&r, "files_packed"), 1666, "{r:#}");
    assert_eq!(num(&r, "files_failed"), 834);
    assert!(
        r["failures"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("outside every --source-root")
    );
    let s = &r["from_s3"];
    assert_eq!(num(s, "batches"), 3);
    assert_eq!(s["checkpoint_held_back"], true);
    // Not packed is not a verification failure: those originals just stay.
    assert_eq!(num(s, "sources_failed_verification"), 0);
    assert_eq!(num(s, "sources_deleted"), 1666);
    let first_batch_end = "in/20240517/u01499.txt";
    assert_eq!(s["checkpoint"].as_str(), Some(first_batch_end));
    let cp: Value = serde_json::from_slice(&std::fs::read(&checkpoint).unwrap()).unwrap();
    assert_eq!(cp["start_after"].as_str(), Some(first_batch_end));
    let left = keys_under(&rt, &raw, "in/");
    assert_eq!(left.len(), 834);
    assert!(left.iter().all(|k| k.starts_with("in/20240518/")));

    // Unconfined, the same checkpoint: it resumes after batch 1 and packs
    // what failed (what batches 2 and 3 packed is deleted, so not listed).
    let rerun = des_pack(&server, &args);
    assert_exit(&rerun, 0);
    let r = report(&rerun);
    let s = &r["from_s3"];
    assert_eq!(s["resumed_after"].as_str(), Some(first_batch_end));
    assert_eq!(num(s, "objects_listed"), 834, "{r:#}");
    assert_eq!(num(&r, "files_packed"), 834);
    assert_eq!(num(s, "sources_deleted"), 834);
    assert_eq!(s["checkpoint_held_back"], false);
    assert!(keys_under(&rt, &raw, "in/").is_empty());
    let store = rt
        .block_on(DesStore::open(Arc::new(LocalStore::new(&out).unwrap())))
        .unwrap();
    let stored = entries(&rt, &store);
    assert_eq!(stored.len(), objects.len());
    let files: Vec<(String, Timestamp, &[u8])> = objects
        .iter()
        .map(|(key, data)| {
            let (uid, ts) = uid_and_time(key).unwrap();
            (uid, ts, data.as_slice())
        })
        .collect();
    assert_served(&rt, &store, &files);
}

#[test]
fn bad_from_s3_options_are_usage_errors() {
    // No server needed: each is refused before anything is listed.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("store");
    let out = out.to_str().unwrap();
    let cp = dir.path().join("cp.json");
    std::fs::write(&cp, "not json").unwrap();
    let cases: [&[&str]; 6] = [
        &["--from-s3", "b/p"],
        &["--from-s3", "s3://b/p", "--uid-regex", "(?P<id>.*)"],
        &["--from-s3", "s3://b/p", "--created-at-from", "key"],
        &["--from-s3", "s3://b/p", "--listing-batch", "0"],
        &["--from-s3", "s3://b/p", "--manifest", "m.jsonl"],
        &[
            "--from-s3",
            "s3://b/p",
            "--listing-checkpoint",
            cp.to_str().unwrap(),
        ],
    ];
    for args in cases {
        let o = Command::new(env!("CARGO_BIN_EXE_des-pack"))
            .args(args)
            .args(["--out", out])
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .output()
            .unwrap();
        assert_exit(&o, 2);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.is_empty(), "{args:?}");
    }
    // Options of --from-s3 need it.
    let o = Command::new(env!("CARGO_BIN_EXE_des-pack"))
        .args([
            "--manifest",
            "m.jsonl",
            "--out",
            out,
            "--delete-sources-after-verify",
        ])
        .output()
        .unwrap();
    assert_exit(&o, 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("only applies with --from-s3"), "{err}");
}
