//! Settings from the command line, `DES_*` environment variables and a TOML
//! file, in that order of precedence, then defaults.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use des_storage::Layout;
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_CACHE_BYTES: u64 = 512 << 20;
pub const DEFAULT_SUFFIX_BYTES: u64 = 64 << 10;
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_NEGATIVE_TTL_SECS: u64 = 5;

pub const EXIT_OK: u8 = 0;
/// The server stopped with an I/O error after it had started.
pub const EXIT_RUNTIME: u8 = 1;
/// Bad usage or configuration, the store could not be opened, or the listen address could not be bound.
pub const EXIT_CONFIG: u8 = 2;

const EXIT_HELP: &str = "Every option can also be set as DES_<OPTION> (e.g. DES_CACHE_BYTES) or as \
<option> (e.g. cache_bytes) in the --config TOML file; precedence is command line > environment > \
file > default.\n\nExit codes: 0 clean shutdown (SIGTERM/SIGINT), 1 server error after start, \
2 bad usage or configuration, store not openable, or listen address not bindable.";

#[derive(Debug, Clone, Default, Parser)]
#[command(name = "des-retriever", about = "Serves files from a DES store over HTTP", after_help = EXIT_HELP)]
pub struct Cli {
    /// Store location: a directory or file:// URL.
    #[arg(long)]
    pub store: Option<String>,
    /// Store layout: v3 (n_bits read from the store) or legacy (Python DES; needs --n-bits).
    #[arg(long)]
    pub layout: Option<LayoutName>,
    /// Routing bits of a legacy store, which does not record them.
    #[arg(long)]
    pub n_bits: Option<u8>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<String>,
    /// Bytes of shard indexes kept in memory [default: 512 MiB].
    #[arg(long)]
    pub cache_bytes: Option<u64>,
    /// Reload a cached shard index after this many seconds [default: never].
    #[arg(long)]
    pub cache_ttl_secs: Option<u64>,
    /// Seconds "no such shard" is remembered, and the age after which a cached
    /// index is re-read when a requested uid is not in it [default: 5].
    #[arg(long)]
    pub negative_ttl_secs: Option<u64>,
    /// Bytes read from the end of a shard to get its index in one request [default: 64 KiB].
    #[arg(long)]
    pub suffix_bytes: Option<u64>,
    /// HTTP worker threads [default: one per CPU].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Seconds in-flight requests get to finish after SIGTERM [default: 30].
    #[arg(long)]
    pub shutdown_timeout_secs: Option<u64>,
    /// Log JSON lines instead of text.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub log_json: Option<Switch>,
    /// TOML file with any of the settings above (keys in snake_case).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutName(pub Layout);

impl FromStr for LayoutName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "v3" => Ok(Self(Layout::V3)),
            "legacy" => Ok(Self(Layout::Legacy)),
            other => Err(format!("layout must be v3 or legacy, not {other:?}")),
        }
    }
}

impl<'de> Deserialize<'de> for LayoutName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A boolean that also accepts the spellings people put in environments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Switch(pub bool);

impl FromStr for Switch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Self(true)),
            "0" | "false" | "no" | "off" | "" => Ok(Self(false)),
            other => Err(format!("expected true or false, not {other:?}")),
        }
    }
}

/// The TOML file: the same settings as the command line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    store: Option<String>,
    layout: Option<LayoutName>,
    n_bits: Option<u8>,
    listen: Option<String>,
    cache_bytes: Option<u64>,
    cache_ttl_secs: Option<u64>,
    negative_ttl_secs: Option<u64>,
    suffix_bytes: Option<u64>,
    workers: Option<usize>,
    shutdown_timeout_secs: Option<u64>,
    log_json: Option<Switch>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub store: String,
    pub layout: Layout,
    /// Only for legacy stores; v3 stores record their own.
    pub n_bits: Option<u8>,
    pub listen: String,
    pub cache_bytes: u64,
    pub cache_ttl: Option<Duration>,
    pub negative_ttl: Duration,
    pub suffix_bytes: u64,
    pub workers: Option<usize>,
    pub shutdown_timeout: Duration,
    pub log_json: bool,
}

/// CLI value, else the environment variable `DES_<NAME>`, else the file's.
fn pick<T>(
    name: &str,
    cli: Option<T>,
    env: &dyn Fn(&str) -> Option<String>,
    file: Option<T>,
) -> Result<Option<T>, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    if cli.is_some() {
        return Ok(cli);
    }
    let var = format!("DES_{}", name.to_ascii_uppercase());
    match env(&var) {
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| ConfigError(format!("{var}={v:?}: {e}"))),
        None => Ok(file),
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ConfigError(format!("config {}: {e}", path.display())))
}

impl Settings {
    /// `env` looks up environment variables (injected so tests need not touch the process's).
    pub fn resolve(cli: Cli, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let file = match pick("config", cli.config.clone(), env, None)? {
            Some(path) => read_file(&path)?,
            None => FileConfig::default(),
        };
        let store = pick("store", cli.store, env, file.store)?.ok_or_else(|| {
            ConfigError("no store given (--store, DES_STORE or `store` in the config file)".into())
        })?;
        let layout = pick("layout", cli.layout, env, file.layout)?.map_or(Layout::V3, |l| l.0);
        let n_bits = pick("n_bits", cli.n_bits, env, file.n_bits)?;
        match (layout, n_bits) {
            (Layout::Legacy, None) => {
                return Err(ConfigError(
                    "a legacy store needs --n-bits (it does not record it)".into(),
                ));
            }
            (Layout::Legacy, Some(n)) => {
                des_format::routing::check_n_bits(n).map_err(|e| ConfigError(e.to_string()))?
            }
            (Layout::V3, Some(_)) => {
                return Err(ConfigError(
                    "--n-bits is for legacy stores; a v3 store records its own".into(),
                ));
            }
            (Layout::V3, None) => {}
        }
        let workers = pick("workers", cli.workers, env, file.workers)?;
        if workers == Some(0) {
            return Err(ConfigError("workers must be at least 1".into()));
        }
        let secs = |s: u64| Duration::from_secs(s);
        Ok(Self {
            store,
            layout,
            n_bits,
            listen: pick("listen", cli.listen, env, file.listen)?
                .unwrap_or_else(|| DEFAULT_LISTEN.into()),
            cache_bytes: pick("cache_bytes", cli.cache_bytes, env, file.cache_bytes)?
                .unwrap_or(DEFAULT_CACHE_BYTES),
            cache_ttl: pick(
                "cache_ttl_secs",
                cli.cache_ttl_secs,
                env,
                file.cache_ttl_secs,
            )?
            .map(secs),
            negative_ttl: secs(
                pick(
                    "negative_ttl_secs",
                    cli.negative_ttl_secs,
                    env,
                    file.negative_ttl_secs,
                )?
                .unwrap_or(DEFAULT_NEGATIVE_TTL_SECS),
            ),
            suffix_bytes: pick("suffix_bytes", cli.suffix_bytes, env, file.suffix_bytes)?
                .unwrap_or(DEFAULT_SUFFIX_BYTES),
            workers,
            shutdown_timeout: secs(
                pick(
                    "shutdown_timeout_secs",
                    cli.shutdown_timeout_secs,
                    env,
                    file.shutdown_timeout_secs,
                )?
                .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_SECS),
            ),
            log_json: pick("log_json", cli.log_json, env, file.log_json)?.is_some_and(|s| s.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(args: &[&str], env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("des-retriever").chain(args.iter().copied()))
            .unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::resolve(cli, &|k| env.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let s = resolve(&["--store", "/data"], &[]).unwrap();
        assert_eq!(s.store, "/data");
        assert_eq!(s.layout, Layout::V3);
        assert_eq!(s.listen, DEFAULT_LISTEN);
        assert_eq!(s.cache_bytes, 512 << 20);
        assert_eq!(s.suffix_bytes, 64 << 10);
        assert_eq!(s.cache_ttl, None);
        assert_eq!(s.workers, None);
        assert!(!s.log_json);
    }

    #[test]
    fn precedence_cli_env_file_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.toml");
        std::fs::write(
            &file,
            "store = \"/from-file\"\nlisten = \"0.0.0.0:1\"\ncache_bytes = 1\nsuffix_bytes = 2\nlog_json = true\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let s = resolve(
            &["--config", f, "--listen", "127.0.0.1:3"],
            &[
                ("DES_LISTEN", "127.0.0.1:2"),
                ("DES_CACHE_BYTES", "20"),
                ("DES_CACHE_TTL_SECS", "9"),
            ],
        )
        .unwrap();
        assert_eq!(s.listen, "127.0.0.1:3", "cli beats env and file");
        assert_eq!(s.cache_bytes, 20, "env beats file");
        assert_eq!(s.suffix_bytes, 2, "file beats default");
        assert_eq!(s.store, "/from-file");
        assert_eq!(s.cache_ttl, Some(Duration::from_secs(9)));
        assert!(s.log_json);
        // The config file itself can come from the environment.
        let s = resolve(&[], &[("DES_CONFIG", f), ("DES_LOG_JSON", "0")]).unwrap();
        assert_eq!(s.store, "/from-file");
        assert!(!s.log_json);
    }

    #[test]
    fn invalid() {
        assert!(resolve(&[], &[]).is_err(), "store is required");
        assert!(
            resolve(&["--store", "x", "--layout", "legacy"], &[]).is_err(),
            "legacy needs n_bits"
        );
        assert!(
            resolve(&["--store", "x", "--n-bits", "8"], &[]).is_err(),
            "v3 records n_bits"
        );
        assert!(
            resolve(
                &["--store", "x", "--layout", "legacy", "--n-bits", "3"],
                &[]
            )
            .is_err()
        );
        assert!(resolve(&["--store", "x", "--workers", "0"], &[]).is_err());
        assert!(resolve(&["--store", "x"], &[("DES_CACHE_BYTES", "lots")]).is_err());
        assert!(resolve(&["--store", "x"], &[("DES_LAYOUT", "v2")]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.toml");
        std::fs::write(&file, "stor = \"typo\"\n").unwrap();
        assert!(resolve(&["--store", "x", "--config", file.to_str().unwrap()], &[]).is_err());
        assert!(resolve(&["--store", "x", "--config", "/nonexistent.toml"], &[]).is_err());
        let s = resolve(
            &[
                "--store",
                "x",
                "--layout",
                "legacy",
                "--n-bits",
                "4",
                "--log-json",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            (s.layout, s.n_bits, s.log_json),
            (Layout::Legacy, Some(4), true)
        );
    }
}
