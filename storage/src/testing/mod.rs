//! Real S3 servers for tests (cargo feature `testing`): a single-node Garage
//! or an s3s-fs, each on free 127.0.0.1 ports with its data in a temp dir.
//!
//! Binaries come from `$GARAGE_BIN` / `$S3S_FS_BIN`, `PATH`, or `~/.cargo/bin`;
//! when missing, starting fails with the install command
//! (`scripts/garage.sh install`, `scripts/s3s-fs.sh install`) rather than
//! skipping, so a green run always means the S3 tests ran.
//!
//! Servers run under a small `sh` guard that holds the read end of a pipe
//! from this process: when the process exits (even killed), the pipe closes
//! and the guard stops the server and removes its data. So a server kept in a
//! `static` for a whole test binary does not outlive it, although statics are
//! never dropped.
//!
//! Starting is blocking (process spawns, polling readiness, about 0.3 s).

mod garage;
mod process;
mod proxy;
mod s3s;

pub use proxy::OutageProxy;

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::s3::{S3Config, S3Credentials};

use process::{Guarded, Launch};

/// How long a server gets to become ready.
/// The bucket every test server creates.
const BUCKET: &str = "des-test";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Garage,
    S3sFs,
}

/// A running (or stopped) S3 server owned by the test; killed and its data
/// removed on drop.
#[derive(Debug)]
pub struct S3Server {
    kind: ServerKind,
    endpoint: String,
    bucket: String,
    region: String,
    access_key: String,
    secret_key: String,
    launch: Launch,
    /// `None` while stopped. Dropping it stops the server and removes its data.
    child: Option<Guarded>,
    /// Declared after `child` so it is removed after the process is gone.
    dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts a single-node Garage with a key and a bucket.
    pub fn garage() -> Result<Self> {
        garage::start()
    }

    /// Starts an s3s-fs serving a directory with one bucket.
    pub fn s3s_fs() -> Result<Self> {
        s3s::start()
    }

    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// Where the server keeps its data and its log (`server.log`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The server's output so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.launch.log_path()).unwrap_or_default()
    }

    /// Settings for an [`S3Store`](crate::S3Store) on the whole bucket, with
    /// explicit credentials so nothing is read from the environment.
    pub fn config(&self) -> S3Config {
        let mut cfg = S3Config::new(&self.bucket);
        cfg.region = Some(self.region.clone());
        cfg.endpoint = Some(self.endpoint.clone());
        cfg.force_path_style = true;
        cfg.credentials = Some(S3Credentials::new(&self.access_key, &self.secret_key));
        // Fail fast in outage tests instead of waiting out production timeouts.
        cfg.connect_timeout = Duration::from_secs(2);
        cfg.read_timeout = Duration::from_secs(30);
        cfg
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the server, keeping its data and ports for [`S3Server::start`].
    pub fn stop(&mut self) -> Result<()> {
        match self.child.take() {
            Some(child) => child.stop(true),
            None => Ok(()),
        }
    }

    /// Starts `launch` and describes the server it runs: S3 on loopback
    /// `port`, the shared bucket and region, and the key it was given.
    fn launched(
        kind: ServerKind,
        port: u16,
        region: &str,
        (access_key, secret_key): (String, String),
        launch: Launch,
        dir: tempfile::TempDir,
    ) -> Result<Self> {
        let mut server = Self {
            kind,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: BUCKET.into(),
            region: region.into(),
            access_key,
            secret_key,
            launch,
            child: None,
            dir,
        };
        server.start()?;
        Ok(server)
    }

    /// Restarts a stopped server on the same ports and data.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_none() {
            self.child = Some(self.launch.spawn(self.dir.path())?);
        }
        Ok(())
    }
}

/// `n` distinct free loopback ports. All are bound at once so none repeats;
/// another process could still grab one before the server binds it, which
/// [`start_with_retries`] absorbs.
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| Error::other("binding a free port", e))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| Error::other("reading a bound port", e))
}

/// Starts a server, choosing fresh ports again if the first ones were taken
/// in the meantime.
fn start_with_retries(mut attempt: impl FnMut() -> Result<S3Server>) -> Result<S3Server> {
    let mut last = None;
    for _ in 0..3 {
        match attempt() {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::Invalid("server did not start".into())))
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Finds a server binary: `$env_var`, then `PATH`, then `~/.cargo/bin`; and
/// checks that `--version` names the pinned version.
fn find_binary(name: &str, env_var: &str, version: &str, install: &str) -> Result<PathBuf> {
    let explicit = std::env::var_os(env_var).map(PathBuf::from);
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name));
    let in_cargo = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin").join(name));
    let found = explicit
        .clone()
        .into_iter()
        .chain(on_path)
        .chain(in_cargo)
        .find(|p| p.is_file());
    let Some(bin) = found else {
        let hint = explicit.map(|p| format!(" ({env_var}={} does not exist)", p.display()));
        return Err(Error::Invalid(format!(
            "{name} not found{}: run `{install}` (or set {env_var})",
            hint.unwrap_or_default()
        )));
    };
    let out = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .map_err(|e| Error::other(format!("running {} --version", bin.display()), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains(version) {
        return Err(Error::Invalid(format!(
            "{} is {:?}, the tests need {name} {version}: run `{install}`",
            bin.display(),
            text.trim()
        )));
    }
    Ok(bin)
}

#[cfg(test)]
mod tests {
    #[test]
    fn missing_binary_names_the_install_script() {
        let e = super::find_binary(
            "des-no-such-server",
            "DES_NO_SUCH_SERVER_BIN",
            "1.0",
            "scripts/none.sh install",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("run `scripts/none.sh install`"),
            "{e}"
        );
    }
}
