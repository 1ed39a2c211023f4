//! s3s-fs: the s3s project's reference server, storing objects as files.
//! A bucket is a directory under its root, so it is created before start.

use std::net::SocketAddr;

use super::process::{Launch, Ready};
use super::{
    BUCKET, S3Server, ServerKind, find_binary, free_ports, random_hex, start_with_retries,
};
use crate::error::{Error, Result};

pub(super) const VERSION: &str = "0.14.1";
/// s3s-fs does not check the signing region; any fixed one will do.
const REGION: &str = "us-east-1";
const INSTALL: &str = "scripts/s3s-fs.sh install";

pub(super) fn start() -> Result<S3Server> {
    let bin = find_binary("s3s-fs", "S3S_FS_BIN", VERSION, INSTALL)?;
    start_with_retries(|| {
        let dir = tempfile::Builder::new()
            .prefix("des-s3s-")
            .tempdir()
            .map_err(|e| Error::other("creating a temp dir for s3s-fs", e))?;
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join(BUCKET))
            .map_err(|e| Error::other("creating the s3s-fs bucket directory", e))?;
        let &[port] = free_ports(1)?.as_slice() else {
            return Err(Error::Invalid("no free port".into()));
        };
        let access_key = format!("AK{}", random_hex(8));
        let secret_key = random_hex(20);
        let launch = Launch {
            program: bin.clone(),
            args: vec![
                "--host".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port.to_string().into(),
                "--access-key".into(),
                access_key.clone().into(),
                "--secret-key".into(),
                secret_key.clone().into(),
                root.into(),
            ],
            env: vec![("RUST_LOG".into(), "s3s_fs=info,s3s=warn".into())],
            ready: vec![Ready::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))],
            log: dir.path().join("server.log"),
        };
        S3Server::launched(
            ServerKind::S3sFs,
            port,
            REGION,
            (access_key, secret_key),
            launch,
            dir,
        )
    })
}
