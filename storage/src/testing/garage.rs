//! Single-node Garage. `garage server --single-node --default-bucket` (Garage
//! 2.x) assigns the layout and creates the key and bucket from environment
//! variables at startup, so no `garage` CLI round-trips are needed, and a
//! restart on the same data finds them again.

use std::net::SocketAddr;

use super::process::{Launch, Ready};
use super::{
    BUCKET, S3Server, ServerKind, find_binary, free_ports, random_hex, start_with_retries,
};
use crate::error::{Error, Result};

pub(super) const VERSION: &str = "2.5.0";
pub(super) const REGION: &str = "garage";
const INSTALL: &str = "scripts/garage.sh install";

pub(super) fn start() -> Result<S3Server> {
    let bin = find_binary("garage", "GARAGE_BIN", VERSION, INSTALL)?;
    start_with_retries(|| {
        let dir = tempfile::Builder::new()
            .prefix("des-garage-")
            .tempdir()
            .map_err(|e| Error::other("creating a temp dir for garage", e))?;
        let &[s3, rpc, admin] = free_ports(3)?.as_slice() else {
            return Err(Error::Invalid("no free ports".into()));
        };
        let conf = dir.path().join("garage.toml");
        std::fs::write(&conf, config(dir.path(), s3, rpc, admin))
            .map_err(|e| Error::other("writing garage.toml", e))?;
        // Garage key ids are `GK` + 24 hex digits; secrets 64 hex digits.
        let access_key = format!("GK{}", random_hex(12));
        let secret_key = random_hex(32);
        let launch = Launch {
            program: bin.clone(),
            args: vec![
                "-c".into(),
                conf.into(),
                "server".into(),
                "--single-node".into(),
                "--default-bucket".into(),
            ],
            env: vec![
                ("GARAGE_DEFAULT_ACCESS_KEY".into(), access_key.clone()),
                ("GARAGE_DEFAULT_SECRET_KEY".into(), secret_key.clone()),
                ("GARAGE_DEFAULT_BUCKET".into(), BUCKET.into()),
                ("RUST_LOG".into(), "garage=info".into()),
            ],
            ready: vec![
                // The admin health check turns 200 once the layout is applied
                // and the node serves; the S3 listener starts alongside it.
                Ready::Http {
                    addr: addr(admin),
                    path: "/health".into(),
                },
                Ready::Tcp(addr(s3)),
            ],
            log: dir.path().join("server.log"),
        };
        S3Server::launched(
            ServerKind::Garage,
            s3,
            REGION,
            (access_key, secret_key),
            launch,
            dir,
        )
    })
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn config(dir: &std::path::Path, s3: u16, rpc: u16, admin: u16) -> String {
    let d = dir.display();
    format!(
        r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = 1
# Tests need no compression, and the CPU is better spent elsewhere.
compression_level = "none"
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{token}"
"#,
        secret = random_hex(32),
        token = random_hex(16),
    )
}
