#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! `des-verify` on a store in S3 (a real Garage): clean after packing, and
//! a byte flipped in one shard's payload is found. Needs the `garage` binary
//! (`scripts/garage.sh install`); run with
//! `cargo test -p des-repack --features s3-tests --test verify_s3`.

use std::process::{Command, Output};
use std::sync::Arc;

use des_format::Timestamp;
use des_packer::{Input, PackOptions, Target, pack_into};
use des_storage::store::Single;
use des_storage::testing::S3Server;
use des_storage::{ByteRange, DesStore, ObjectStore, ObjectStoreExt, PutOptions, S3Store};

const CREATED: &str = "2024-05-17T10:00:00Z";

fn des_verify(server: &S3Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_des-verify"))
        .args(args)
        .env("AWS_ENDPOINT_URL", server.endpoint())
        .env("AWS_ACCESS_KEY_ID", server.access_key())
        .env("AWS_SECRET_ACCESS_KEY", server.secret_key())
        .env("AWS_REGION", server.region())
        .env("DES_S3_FORCE_PATH_STYLE", "1")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap()
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
    let src = tempfile::tempdir().unwrap();
    for i in 0..40 {
        let body = format!("file number {i} ").repeat(i + 1);
        std::fs::write(src.path().join(format!("f{i}.txt")), body).unwrap();
    }
    std::fs::write(src.path().join("big.bin"), vec![7u8; 200_000]).unwrap();
    let objects: Arc<dyn ObjectStore> = Arc::new(store.clone());
    let target = Target::new(Arc::new(Single(objects)), vec![store.clone()]);
    let opts = PackOptions {
        n_bits: Some(4),
        big_file_threshold: 100_000,
        ..PackOptions::default()
    };
    let input = Input::Dir {
        root: src.path().to_path_buf(),
        created_at: Timestamp::parse_rfc3339(CREATED).unwrap(),
    };
    let report = pack_into(&input, &opts, &target, rt.handle(), false).unwrap();
    assert_eq!((report.files_packed, report.files_failed), (41, 0));
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
