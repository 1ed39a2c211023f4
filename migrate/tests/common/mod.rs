#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    unreachable_pub
)]

//! A throwaway PostgreSQL cluster per test (initdb + pg_ctl from Debian's
//! `postgresql` package, on a temp dir and a free port; as `nobody` when the
//! tests run as root, since PostgreSQL refuses to run as root), and helpers
//! to run des-migrate and look into the store it wrote.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use des_format::Timestamp;
use tempfile::TempDir;

/// The user the server runs as when the tests run as root.
const SERVER_USER: &str = "nobody";

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`.
fn pg_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run scripts/deps.sh (apt package postgresql)")
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("no /usr/lib/postgresql/*/bin/initdb: run scripts/deps.sh")
        .1
}

fn is_root() -> bool {
    // The owner of /proc/self is this process's effective uid.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        == 0
}

fn user_ids(name: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
        })
        .unwrap_or_else(|| panic!("no user {name}"))
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap().flatten() {
            chown_tree(&e.path(), uid, gid);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct PgCluster {
    dir: TempDir,
    bin: PathBuf,
    pub port: u16,
}

impl PgCluster {
    pub fn start() -> Self {
        Self::start_with(|_| String::new())
    }

    /// `setup` may write files into the cluster directory (certificates)
    /// and returns extra `postgresql.conf` lines.
    pub fn start_with(setup: impl FnOnce(&Path) -> String) -> Self {
        let bin = pg_bin();
        // /tmp rather than $TMPDIR: the server user must be able to reach it.
        let dir = tempfile::Builder::new()
            .prefix("des-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        let extra = setup(dir.path());
        let mut cluster = Self { port: 0, bin, dir };
        if is_root() {
            let (uid, gid) = user_ids(SERVER_USER);
            chown_tree(cluster.dir.path(), uid, gid);
        }
        let data = cluster.data();
        let out = cluster
            .server_cmd("initdb")
            .args(["-D", data.to_str().unwrap()])
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.append_conf(&format!(
            "listen_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\n{extra}\n",
            cluster.dir.path().display()
        ));
        // A free port can be taken by another test between the probe and
        // the server's bind: try another one then.
        for attempt in 1.. {
            cluster.port = free_port();
            cluster.append_conf(&format!("port = {}\n", cluster.port));
            match cluster.try_start_server() {
                Ok(()) => break,
                Err(log) if attempt < 5 && log.contains("could not") => continue,
                Err(log) => panic!("pg_ctl start: {log}"),
            }
        }
        cluster
    }

    /// Later lines of postgresql.conf win over earlier ones.
    fn append_conf(&self, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data().join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A command run as the server user.
    fn server_cmd(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", SERVER_USER, "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    pub fn start_server(&self) {
        if let Err(log) = self.try_start_server() {
            panic!("pg_ctl start: {log}");
        }
    }

    fn try_start_server(&self) -> Result<(), String> {
        let log = self.dir.path().join("log");
        let _ = std::fs::remove_file(&log);
        let out = self
            .server_cmd("pg_ctl")
            .args(["-D", self.data().to_str().unwrap()])
            .args(["-l", log.to_str().unwrap()])
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            ))
        }
    }

    /// Stops the server at once (as a crash or an outage would).
    pub fn stop_server(&self) {
        let _ = self
            .server_cmd("pg_ctl")
            .args(["-D", self.data().to_str().unwrap()])
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
            self.port
        )
    }

    /// Runs SQL with psql; returns the unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-X", "-A", "-t", "-q"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGSSLMODE", "disable")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// A psql session kept open (stdin piped), e.g. to hold a lock.
    pub fn psql_session(&self) -> std::process::Child {
        Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-X", "-q"])
            .env("PGSSLMODE", "disable")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The original DES demo's table.
    pub fn create_files_table(&self) {
        self.psql(
            "CREATE TABLE files (\
               id bigserial PRIMARY KEY, \
               uid text NOT NULL, \
               created_at timestamptz NOT NULL, \
               file_location text, \
               size_bytes bigint, \
               content_type text, \
               archived boolean NOT NULL DEFAULT false, \
               UNIQUE (uid, created_at))",
        );
    }

    pub fn insert_rows(&self, rows: &[Seed]) {
        for chunk in rows.chunks(500) {
            let values: Vec<String> = chunk
                .iter()
                .map(|r| {
                    format!(
                        "({}, {}, {}, {}, {})",
                        quote(&r.uid),
                        quote(&r.created_at),
                        r.location.as_deref().map_or("NULL".into(), quote),
                        r.size.map_or("NULL".into(), |s| s.to_string()),
                        r.content_type.as_deref().map_or("NULL".into(), quote),
                    )
                })
                .collect();
            self.psql(&format!(
                "INSERT INTO files (uid, created_at, file_location, size_bytes, content_type) VALUES {}",
                values.join(", ")
            ));
        }
    }

    /// uid → archived, for every row.
    pub fn archived_flags(&self) -> HashMap<String, bool> {
        self.psql("SELECT uid, archived FROM files")
            .lines()
            .map(|l| {
                let (u, a) = l.split_once('|').unwrap();
                (u.to_string(), a == "t")
            })
            .collect()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_server();
    }
}

pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A row to insert.
#[derive(Debug, Clone)]
pub struct Seed {
    pub uid: String,
    pub created_at: String,
    pub location: Option<String>,
    pub size: Option<i64>,
    pub content_type: Option<String>,
}

/// Writes a file of distinct content for `uid` under `dir`; returns a row
/// pointing to it.
pub fn seed_file(dir: &Path, uid: &str, created_at: &str, len: usize) -> (Seed, Vec<u8>) {
    let data: Vec<u8> = format!("{uid}@{created_at}:")
        .bytes()
        .chain((0..len).map(|i| (i * 7 % 251) as u8))
        .collect();
    let path = dir.join(format!("{uid}.bin"));
    std::fs::write(&path, &data).unwrap();
    (
        Seed {
            uid: uid.to_string(),
            created_at: created_at.to_string(),
            location: Some(path.to_string_lossy().into_owned()),
            size: Some(data.len() as i64),
            content_type: Some("application/octet-stream".into()),
        },
        data,
    )
}

/// RFC 3339 of `now - days` (+ `secs` seconds), for rows relative to now.
pub fn ago(days: i64, secs: i64) -> String {
    let t = Timestamp::now().micros() - days * 86_400_000_000 + secs * 1_000_000;
    Timestamp::from_micros(t).to_rfc3339()
}

pub fn migrate_cmd(pg: &PgCluster, store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_des-migrate"));
    c.args(["--database-url", &pg.url()])
        .args(["--out", store.to_str().unwrap()])
        .args(["--n-bits", "4", "--size-column", "size_bytes"])
        .args(["--content-type-column", "content_type", "--quiet"])
        .env_remove("DES_STORE")
        .env_remove("DES_METRICS_FILE")
        .env_remove("DES_PUSHGATEWAY_URL")
        .env_remove("DES_MIGRATE_PAUSE_AT")
        .env_remove("DES_PACK_PAUSE_AT");
    c
}

pub fn run(cmd: &mut Command) -> (i32, serde_json::Value, String) {
    let out: Output = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), report, stderr)
}

/// A runtime for reading the store from tests.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

pub fn open_store(rt: &tokio::runtime::Runtime, dir: &Path) -> des_storage::DesStore {
    let objects: Arc<dyn des_storage::ObjectStore> =
        Arc::new(des_storage::LocalStore::new(dir).unwrap());
    rt.block_on(des_storage::DesStore::open(objects)).unwrap()
}

/// (uid, day) → how many entries the whole store holds for it.
pub fn store_entries(dir: &Path) -> HashMap<(String, String), usize> {
    let rt = rt();
    let store = open_store(&rt, dir);
    let mut out = HashMap::new();
    for meta in rt.block_on(store.list_shards()).unwrap() {
        let ix = rt.block_on(store.load_index(&meta.key)).unwrap().unwrap();
        let day = meta.key.split('/').next().unwrap().to_string();
        for e in ix.index.located() {
            *out.entry((e.uid, day.clone())).or_default() += 1;
        }
    }
    out
}

pub fn get_file(dir: &Path, uid: &str, created_at: &str) -> Vec<u8> {
    let rt = rt();
    let store = open_store(&rt, dir);
    let ts = Timestamp::parse_rfc3339(created_at).unwrap();
    rt.block_on(store.get_file(uid, ts)).unwrap().1
}

/// Waits until process `pid` is stopped (SIGSTOP at a pause point).
pub fn wait_stopped(pid: u32, what: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the parenthesised command name.
        let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
        if state == Some('T') {
            return;
        }
        if let Ok(Some(status)) = what.try_wait() {
            panic!("des-migrate exited ({status}) before pausing");
        }
        assert!(Instant::now() < deadline, "des-migrate never paused");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

/// A one-request HTTP server standing in for a Pushgateway: returns the
/// URL to give, and a handle yielding (request line, body).
pub fn pushgateway_stub() -> (String, std::thread::JoinHandle<(String, String)>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h.trim().is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).unwrap();
        let mut w = stream;
        w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .unwrap();
        (
            request_line.trim().to_string(),
            String::from_utf8(body).unwrap(),
        )
    });
    (url, handle)
}
