#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! End-to-end on real Garage servers: the `des-pack` binary packing to
//! `s3://…` (and to zones over two servers), read back through the library.
//! Needs the `garage` binary (`scripts/garage.sh install`); run with
//! `cargo test -p des-packer --features s3-tests --test pack_s3`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{CREATED, assert_exit, corpus, dir_args, noise, report};
use des_format::Timestamp;
use des_storage::keys::StoreKey;
use des_storage::store::shard_index_of_key;
use des_storage::testing::S3Server;
use des_storage::zones::{S3Location, Zones, ZonesFile};
use des_storage::{DesStore, ObjectStore, ObjectStoreExt, PutOptions, S3Config, S3Store};
use serde_json::Value;

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

fn s3(server: &S3Server, prefix: &str) -> S3Store {
    S3Store::new(server.config().with_prefix(prefix)).unwrap()
}

fn url(server: &S3Server, prefix: &str) -> String {
    format!("s3://{}/{prefix}", server.bucket())
}

fn read_back(rt: &tokio::runtime::Runtime, store: &DesStore, files: &BTreeMap<String, Vec<u8>>) {
    let ts = Timestamp::parse_rfc3339(CREATED).unwrap();
    for (uid, want) in files {
        let (_, got) = rt
            .block_on(store.get_file(uid, ts))
            .unwrap_or_else(|e| panic!("{uid}: {e}"));
        assert!(got == *want, "{uid}: bytes differ");
    }
}

fn open_store(rt: &tokio::runtime::Runtime, objects: S3Store) -> DesStore {
    rt.block_on(DesStore::open(Arc::new(objects))).unwrap()
}

fn write_dir(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (uid, data) in files {
        let p = dir.join(uid);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

/// The big files among `_big/` objects (not their chunk tables).
fn big_files(listed: &[des_storage::ObjectMeta]) -> Vec<&str> {
    listed
        .iter()
        .map(|m| m.key.as_str())
        .filter(|k| matches!(StoreKey::parse(k), Some(StoreKey::Big { .. })))
        .collect()
}

fn num(r: &Value, field: &str) -> u64 {
    r[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing: {r:#}"))
}

#[test]
fn pack_dir_to_s3_read_back_and_rerun_is_idempotent() {
    let server = S3Server::garage().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let src = tempfile::tempdir().unwrap();
    let files = corpus(src.path());
    let out = url(&server, "store");
    let args = [
        &dir_args(src.path(), &out)[..],
        &["--big-file-threshold", "64K", "--json"],
    ]
    .concat();
    let first = des_pack(&server, &[&args[..], &["-j", "3"]].concat());
    assert_exit(&first, 0);
    let r = report(&first);
    assert_eq!(num(&r, "files_packed"), files.len() as u64);
    let big = files.values().filter(|d| d.len() > 64 * 1024).count();
    assert!(big >= 2);
    assert_eq!(num(&r, "big_files"), big as u64);
    assert!(r["store"].as_str().unwrap().contains("s3://des-test/store"));

    let store = open_store(&rt, s3(&server, "store"));
    read_back(&rt, &store, &files);
    let listed = rt.block_on(store.objects().list_all("_big/")).unwrap();
    let bigs = big_files(&listed);
    assert_eq!(bigs.len(), big, "{bigs:?}");
    assert_eq!(
        listed.len(),
        2 * big,
        "a chunk table beside each: {listed:?}"
    );
    let shards = rt.block_on(store.list_shards()).unwrap();
    assert_eq!(shards.len() as u64, num(&r, "shards_written"));

    let again = des_pack(&server, &args);
    assert_exit(&again, 0);
    let r = report(&again);
    assert_eq!(num(&r, "files_packed"), 0);
    assert_eq!(num(&r, "files_already_present"), files.len() as u64);
    assert_eq!(num(&r, "shards_written"), 0);
    // Not rewritten: same objects, same ETags.
    assert_eq!(rt.block_on(store.list_shards()).unwrap(), shards);
    let pending = rt.block_on(s3(&server, "store").list_uploads("")).unwrap();
    assert!(pending.is_empty(), "{pending:?}");
}

/// Shards of 14 MiB in 5 MiB parts: every shard is a multipart upload that
/// stays open long enough to be caught and killed.
fn multipart_corpus(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let files: BTreeMap<String, Vec<u8>> = (0..56u64)
        // uid i routes to shard i mod 16: four shards of 14 files.
        .map(|i| {
            let uid = (i / 4 * 16 + i % 4).to_string();
            (uid, noise(i + 1, 1 << 20))
        })
        .collect();
    write_dir(dir, &files);
    files
}

/// Starts des-pack and SIGKILLs it as soon as a multipart upload is open.
/// Returns whether it was killed mid-upload (rather than finishing first).
fn kill_during_upload(server: &S3Server, args: &[&str]) -> bool {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let raw = s3(server, "crash");
    let mut child: Child = des_pack_cmd(server, args)
        .env("DES_S3_PART_SIZE", (5u32 << 20).to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if !rt.block_on(raw.list_uploads("")).unwrap().is_empty() {
            child.kill().unwrap(); // SIGKILL: no destructor, no abort
            child.wait().unwrap();
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    child.wait().unwrap();
    panic!("des-pack neither finished nor opened an upload within 60 s");
}

#[test]
fn kill_9_mid_upload_leaves_no_partial_shard_and_the_next_run_cleans_up() {
    let server = S3Server::garage().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let src = tempfile::tempdir().unwrap();
    let files = multipart_corpus(src.path());
    let out = url(&server, "crash");
    let options = [
        "--n-bits",
        "4",
        "--compression",
        "none",
        "-j",
        "1",
        "--json",
    ];
    let args = [&dir_args(src.path(), &out)[..], &options].concat();
    let killed = (0..3)
        .filter(|_| kill_during_upload(&server, &args))
        .count();
    assert!(killed >= 1, "no run could be killed mid-upload");
    let raw = s3(&server, "crash");
    let stale = rt.block_on(raw.list_uploads("")).unwrap();
    assert!(!stale.is_empty(), "a killed upload must be left open");
    // Whatever is visible under a final name is a whole, valid shard.
    let store = open_store(&rt, s3(&server, "crash"));
    for meta in rt.block_on(store.list_shards()).unwrap() {
        rt.block_on(store.load_index(&meta.key))
            .unwrap_or_else(|e| panic!("{}: {e}", meta.key))
            .unwrap();
    }

    std::thread::sleep(Duration::from_millis(1100));
    let rerun = des_pack_cmd(
        &server,
        &[&args[..], &["--abort-stale-uploads-after", "1s"]].concat(),
    )
    .env("DES_S3_PART_SIZE", (5u32 << 20).to_string())
    .output()
    .unwrap();
    assert_exit(&rerun, 0);
    let r = report(&rerun);
    assert!(
        num(&r, "stale_uploads_aborted") >= stale.len() as u64,
        "{r:#}"
    );
    let left = rt.block_on(raw.list_uploads("")).unwrap();
    assert!(left.is_empty(), "{left:?}");
    read_back(&rt, &store, &files);
}

#[test]
fn parallel_packers_on_disjoint_shard_ranges_pack_everything() {
    let server = S3Server::garage().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let src = tempfile::tempdir().unwrap();
    let files: BTreeMap<String, Vec<u8>> = (0..96u64)
        .map(|i| (i.to_string(), format!("file {i} ").repeat(50).into_bytes()))
        .collect();
    write_dir(src.path(), &files);
    let out = url(&server, "split");
    // As two completions of a Kubernetes Indexed Job would run.
    let children: Vec<Child> = ["0-7", "8-15"]
        .iter()
        .map(|range| {
            des_pack_cmd(
                &server,
                &[
                    &dir_args(src.path(), &out)[..],
                    &["--n-bits", "4", "--shard-range", range, "--json"],
                ]
                .concat(),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let reports: Vec<Value> = children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            assert_exit(&o, 0);
            report(&o)
        })
        .collect();
    for r in &reports {
        assert_eq!(num(r, "files_packed"), 48, "{r:#}");
        assert_eq!(num(r, "files_outside_shard_range"), 48);
        assert_eq!(num(r, "files_failed"), 0);
    }
    let store = open_store(&rt, s3(&server, "split"));
    assert_eq!(rt.block_on(store.list_shards()).unwrap().len(), 16);
    read_back(&rt, &store, &files);
}

#[test]
fn manifest_sources_on_s3_are_streamed() {
    let server = S3Server::garage().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let inputs = s3(&server, "inputs");
    let mut files = BTreeMap::new();
    files.insert("small.txt".to_string(), b"small ".repeat(1000));
    files.insert("noise.bin".to_string(), noise(3, 200_000));
    // Bigger than a part: a multipart `_big` upload streamed from a GET.
    files.insert("huge.bin".to_string(), noise(4, 12 << 20));
    let mut manifest = String::new();
    for (uid, data) in &files {
        rt.block_on(inputs.put(uid, data.clone().into(), PutOptions::default()))
            .unwrap();
        manifest.push_str(&format!(
            "{{\"uid\":\"{uid}\",\"created_at\":\"{CREATED}\",\"source\":\"s3://{}/inputs/{uid}\"}}\n",
            server.bucket()
        ));
    }
    manifest.push_str(&format!(
        "{{\"uid\":\"gone\",\"created_at\":\"{CREATED}\",\"source\":\"s3://{}/inputs/gone\"}}\n",
        server.bucket()
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.jsonl");
    std::fs::write(&path, manifest).unwrap();
    let out = url(&server, "from-s3");
    let o = des_pack_cmd(
        &server,
        &[
            "--manifest",
            path.to_str().unwrap(),
            "--out",
            &out,
            "--big-file-threshold",
            "1M",
            "--json",
        ],
    )
    .env("DES_S3_PART_SIZE", (5u32 << 20).to_string())
    .output()
    .unwrap();
    assert_exit(&o, 1);
    let r = report(&o);
    assert_eq!(num(&r, "files_packed"), 3);
    assert_eq!(num(&r, "big_files"), 1);
    assert_eq!(num(&r, "files_failed"), 1);
    let failure = r["failures"][0].to_string();
    assert!(
        failure.contains("gone") && failure.contains("not found"),
        "{failure}"
    );
    let store = open_store(&rt, s3(&server, "from-s3"));
    read_back(&rt, &store, &files);
}

/// Lets `to` accept `from`'s key, so one set of AWS credentials (as the
/// des-pack environment has) works on both servers.
fn share_key(from: &S3Server, to: &S3Server) {
    let conf = to.data_dir().join("garage.toml");
    let garage = |args: &[&str]| {
        let o = Command::new(garage_bin())
            .arg("-c")
            .arg(&conf)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "garage {args:?}: {o:?}");
    };
    garage(&[
        "key",
        "import",
        "--yes",
        from.access_key(),
        from.secret_key(),
    ]);
    garage(&[
        "bucket",
        "allow",
        "--read",
        "--write",
        "--owner",
        to.bucket(),
        "--key",
        from.access_key(),
    ]);
}

/// As `des_storage::testing` finds it: `$GARAGE_BIN`, `PATH`, then where
/// `scripts/garage.sh install` puts it.
fn garage_bin() -> std::path::PathBuf {
    if let Some(explicit) = std::env::var_os("GARAGE_BIN") {
        return explicit.into();
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("garage"));
    let cargo = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/garage"));
    on_path
        .chain(cargo)
        .find(|p| p.is_file())
        .unwrap_or_else(|| "garage".into())
}

fn location(server: &S3Server, prefix: &str) -> String {
    format!(
        "{{bucket: {}, prefix: {prefix}, region_name: {}, endpoint_url: \"{}\"}}",
        server.bucket(),
        server.region(),
        server.endpoint()
    )
}

/// Shard indexes of the shards stored under `prefix` on `server`.
fn shard_indexes(rt: &tokio::runtime::Runtime, server: &S3Server, prefix: &str) -> Vec<u32> {
    let mut v: Vec<u32> = rt
        .block_on(s3(server, prefix).list_all(""))
        .unwrap()
        .iter()
        .filter_map(|m| shard_index_of_key(&m.key).ok())
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn zones_over_two_garages_put_each_shard_in_its_zone_and_replica() {
    let a = S3Server::garage().unwrap();
    let b = S3Server::garage().unwrap();
    share_key(&a, &b);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let yaml = format!(
        "n_bits: 4\nzones:\n  - name: a\n    range: {{start: 0, end: 7}}\n    s3: {}\n    replicas:\n      - {}\n  - name: b\n    range: {{start: 8, end: 15}}\n    s3: {}\n",
        location(&a, "zone-a"),
        location(&b, "replica-a"),
        location(&b, "zone-b"),
    );
    let dir = tempfile::tempdir().unwrap();
    let zones_path = dir.path().join("zones.yaml");
    std::fs::write(&zones_path, &yaml).unwrap();
    let src = dir.path().join("src");
    // Two files per shard, and one big file in each zone.
    let mut files: BTreeMap<String, Vec<u8>> = (0..32u64)
        .map(|i| (i.to_string(), format!("file {i} ").repeat(40).into_bytes()))
        .collect();
    files.insert("33".into(), noise(33, 300_000)); // shard 1, zone a
    files.insert("41".into(), noise(41, 300_000)); // shard 9, zone b
    write_dir(&src, &files);
    let args = [
        "--dir",
        src.to_str().unwrap(),
        "--created-at",
        CREATED,
        "--zones",
        zones_path.to_str().unwrap(),
        "--big-file-threshold",
        "100K",
        "--json",
    ];
    // Credentials from the environment; endpoints come from the zones file.
    let run = || {
        des_pack_cmd(&a, &args)
            .env_remove("AWS_ENDPOINT_URL")
            .output()
            .unwrap()
    };
    let o = run();
    assert_exit(&o, 0);
    let r = report(&o);
    assert_eq!(num(&r, "files_packed"), files.len() as u64);
    assert_eq!(num(&r, "shards_written"), 16);

    let low: Vec<u32> = (0..8).collect();
    let high: Vec<u32> = (8..16).collect();
    assert_eq!(shard_indexes(&rt, &a, "zone-a"), low);
    assert_eq!(shard_indexes(&rt, &b, "replica-a"), low);
    assert_eq!(shard_indexes(&rt, &b, "zone-b"), high);
    assert!(shard_indexes(&rt, &a, "zone-b").is_empty());
    for (server, prefix) in [(&a, "zone-a"), (&b, "replica-a"), (&b, "zone-b")] {
        let listed = rt.block_on(s3(server, prefix).list_all("_big/")).unwrap();
        let bigs = big_files(&listed);
        assert_eq!(bigs.len(), 1, "{prefix}: {bigs:?}");
        let cfg = rt.block_on(s3(server, prefix).head("_des/store.json"));
        assert!(cfg.is_ok(), "{prefix}: {cfg:?}");
    }

    // Read back through the zones, each location with its own server's settings.
    let file = ZonesFile::from_yaml_str(&yaml).unwrap();
    let servers = [&a, &b];
    let zones = Zones::build(&file, |loc: &S3Location| {
        let server = servers
            .iter()
            .find(|s| Some(s.endpoint()) == loc.endpoint_url.as_deref())
            .unwrap();
        let cfg: S3Config = server.config().with_prefix(&loc.prefix);
        Ok(Arc::new(S3Store::new(cfg)?) as Arc<dyn ObjectStore>)
    })
    .unwrap();
    let store = rt.block_on(DesStore::open_placed(Arc::new(zones))).unwrap();
    read_back(&rt, &store, &files);

    let again = run();
    assert_exit(&again, 0);
    let r = report(&again);
    assert_eq!(num(&r, "files_already_present"), files.len() as u64);
    assert_eq!(num(&r, "shards_written"), 0);
}
