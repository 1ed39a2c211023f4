#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! `des-verify` on a store in S3 (a real Garage): clean after packing, and
//! a byte flipped in one shard's payload is found. Needs the `garage` binary
//! (`scripts/garage.sh install`); run with
//! `cargo test -p des-repack --features s3-tests --test verify_s3`.

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use des_format::Timestamp;
use des_packer::{Input, PackOptions, Target, pack_into};
use des_storage::store::Single;
use des_storage::testing::S3Server;
use des_storage::{ByteRange, DesStore, ObjectStore, ObjectStoreExt, PutOptions, S3Store};

const CREATED: &str = "2024-05-17T10:00:00Z";

fn des_verify(server: &S3Server, args: &[&str]) -> Output {
    des_verify_via(server, server.endpoint(), args)
        .output()
        .unwrap()
}

/// des-verify against `endpoint` (the server, or a proxy in front of it).
fn des_verify_via(server: &S3Server, endpoint: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_des-verify"));
    c.args(args)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", server.access_key())
        .env("AWS_SECRET_ACCESS_KEY", server.secret_key())
        .env("AWS_REGION", server.region())
        .env("DES_S3_FORCE_PATH_STYLE", "1")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE");
    c
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Packs 40 files (and one big file) with the real packer.
fn pack(rt: &tokio::runtime::Runtime, store: &S3Store) {
    pack_n(rt, store, 40, 4);
}

/// Packs `n` files and one big file into a store of `n_bits`.
fn pack_n(rt: &tokio::runtime::Runtime, store: &S3Store, n: usize, n_bits: u8) {
    let src = tempfile::tempdir().unwrap();
    for i in 0..n {
        let body = format!("file number {i} ").repeat(i % 50 + 1);
        std::fs::write(src.path().join(format!("f{i}.txt")), body).unwrap();
    }
    std::fs::write(src.path().join("big.bin"), vec![7u8; 200_000]).unwrap();
    let objects: Arc<dyn ObjectStore> = Arc::new(store.clone());
    let target = Target::new(Arc::new(Single(objects)), vec![store.clone()]);
    let opts = PackOptions {
        n_bits: Some(n_bits),
        big_file_threshold: 100_000,
        ..PackOptions::default()
    };
    let input = Input::Dir {
        root: src.path().to_path_buf(),
        created_at: Timestamp::parse_rfc3339(CREATED).unwrap(),
    };
    let report = pack_into(&input, &opts, &target, rt.handle(), false).unwrap();
    assert_eq!(
        (report.files_packed, report.files_failed),
        (n as u64 + 1, 0)
    );
}

#[test]
fn verify_an_s3_store_and_find_a_flipped_byte() {
    let server = S3Server::garage().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = S3Store::new(server.config().with_prefix("store")).unwrap();
    pack(&rt, &store);
    let url = format!("s3://{}/store", server.bucket());
    assert_exit(&des_verify(&server, &[&url, "-q"]), 0);

    // Flip one byte inside an inline entry's payload and put the shard back.
    let des = rt
        .block_on(DesStore::open(Arc::new(store.clone())))
        .unwrap();
    let ts = Timestamp::parse_rfc3339(CREATED).unwrap();
    let (loaded, located) = rt.block_on(des.find("f7.txt", ts)).unwrap();
    let payload = located.shard_range().unwrap();
    let (_, body) = rt
        .block_on(store.get_range(&loaded.key, ByteRange::All))
        .unwrap();
    let mut bytes = body.to_vec();
    let at = usize::try_from(payload.start).unwrap() + 3;
    bytes[at] ^= 0x01;
    rt.block_on(store.put(&loaded.key, bytes.into(), PutOptions::default()))
        .unwrap();

    let whole = des_verify(&server, &[&url, "-q"]);
    assert_exit(&whole, 1);
    let text = String::from_utf8_lossy(&whole.stdout);
    assert!(
        text.contains(&loaded.key) && text.contains("f7.txt"),
        "{text}"
    );
    let one = format!("{url}/{}", loaded.key);
    assert_exit(&des_verify(&server, &[&one, "-q"]), 1);
}

/// `des-verify s3://` goes through the same retries and breaker as every
/// other tool: an outage in the middle of its run (the proxy in front of
/// Garage cutting its connections and refusing two more) is ridden out; a
/// lasting one opens the breaker, which stops the run from hammering the
/// store (a bounded number of connections, not one per shard).
#[test]
fn verify_rides_out_a_brief_outage_and_breaks_at_a_long_one() {
    let server = S3Server::garage().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = S3Store::new(server.config().with_prefix("many")).unwrap();
    pack_n(&rt, &store, 600, 8);
    let url = format!("s3://{}/many", server.bucket());
    let host = server.endpoint().trim_start_matches("http://").to_string();
    let shards = rt
        .block_on(DesStore::open(Arc::new(store.clone())))
        .and_then(|d| rt.block_on(d.list_shards()))
        .unwrap()
        .len() as u64;
    assert!(shards > 200, "{shards} shards");
    // Paced to about two seconds (about 300 KiB are read), so that the
    // outage lands mid-run.
    let args = [url.as_str(), "-q", "--jobs", "2", "--rate", "150K"];

    let proxy = des_storage::testing::OutageProxy::start(&host).unwrap();
    let mut run = des_verify_via(&server, &proxy.endpoint(), &args)
        .spawn()
        .unwrap();
    wait_until(|| proxy.forwarded() > 0, "des-verify to connect");
    std::thread::sleep(Duration::from_millis(300));
    // Connections cut, and two refused: fewer than the four attempts a call
    // gets, however the (jittered) retries fall.
    proxy.refuse_next(2);
    wait_until(|| proxy.refused() == 2, "requests during the outage");
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a brief outage is retried");

    let proxy = des_storage::testing::OutageProxy::start(&host).unwrap();
    let mut run = des_verify_via(&server, &proxy.endpoint(), &args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(|| proxy.forwarded() > 0, "des-verify to connect");
    std::thread::sleep(Duration::from_millis(300));
    proxy.set_down(true);
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(2), "shards could not be checked");
    // Five failed calls open the breaker; each was tried four times, and
    // the jobs in flight finish theirs. Without it: four per shard left.
    let refused = proxy.refused();
    assert!((4..=40).contains(&refused), "{refused} connections refused");

    // The command line's settings reach the stack: --s3-endpoint names the
    // proxy (the environment names the server itself), and with one attempt
    // per request the same brief outage fails the run.
    let proxy = des_storage::testing::OutageProxy::start(&host).unwrap();
    let mut once = des_verify_via(&server, server.endpoint(), &args);
    once.args(["--s3-endpoint", &proxy.endpoint(), "--retry-attempts", "1"])
        .stdout(std::process::Stdio::null());
    let mut run = once.spawn().unwrap();
    wait_until(|| proxy.forwarded() > 0, "des-verify to connect");
    std::thread::sleep(Duration::from_millis(300));
    proxy.refuse_next(2);
    wait_until(|| proxy.refused() == 2, "requests during the outage");
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(2), "not retried: shards failed");
}

fn wait_until(cond: impl Fn() -> bool, what: &str) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "waited for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
