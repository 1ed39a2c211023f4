//! Settings from the command line, `DES_RETRIEVER_*` environment variables
//! and a TOML file, in that order of precedence, then defaults. This is the
//! one place that knows every setting and how it is spelt in each source.

use std::fmt::Display;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use des_storage::Layout;
use des_storage::cli::{Connection, StoreArgs};
use des_storage::units::{Secs, Size};
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_CACHE_BYTES: u64 = 512 << 20;
pub const DEFAULT_PAGE_CACHE_BYTES: u64 = 256 << 20;
pub const DEFAULT_PAYLOAD_CACHE_BYTES: u64 = 128 << 20;
pub const DEFAULT_PAYLOAD_CACHE_MAX_ENTRY_BYTES: u64 = 256 << 10;
pub const DEFAULT_SUFFIX_BYTES: u64 = des_storage::store::DEFAULT_SUFFIX_LEN;
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_NEGATIVE_TTL_SECS: u64 = 5;
pub const DEFAULT_TOMBSTONE_POLL_SECS: u64 = 10;
/// How often the API keys file is checked for changes.
pub const DEFAULT_KEYS_POLL_SECS: u64 = 10;
/// Prefix of every environment variable the retriever reads.
pub const ENV_PREFIX: &str = "DES_RETRIEVER_";

pub const EXIT_OK: u8 = 0;
/// The server stopped with an I/O error after it had started.
pub const EXIT_RUNTIME: u8 = 1;
/// Bad usage or configuration, the store could not be opened, or the listen address could not be bound.
pub const EXIT_CONFIG: u8 = 2;

const AFTER_HELP: &str = "Every option can also be set as DES_RETRIEVER_<OPTION> (e.g. \
DES_RETRIEVER_CACHE_BYTES) or as <option> (e.g. cache_bytes) in the --config TOML file; precedence \
is command line > environment > file > default (DES_STORE and DES_ZONES, which every DES tool \
reads, count as command line). S3 credentials come from the usual AWS_* variables (and DES_S3_*); \
`breaker` in the file is true or false.\n\nExit codes: 0 clean shutdown (SIGTERM/SIGINT), 1 server error \
after start, 2 bad usage or configuration, store not openable, or listen address not bindable.";

#[derive(Debug, Clone, Parser)]
#[command(name = "des-retriever", about = "Serves files from a DES store over HTTP", after_help = des_storage::units::after_help(AFTER_HELP))]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub opts: Options,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Make a new API key and print the entry to add to the keys file.
    HashKey(HashKeyArgs),
    /// GET a URL once; exit 0 on a 2xx answer, 1 otherwise (container HEALTHCHECK).
    Healthcheck(HealthcheckArgs),
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// Plain http:// URL to check.
    #[arg(long, default_value = "http://127.0.0.1:8080/health")]
    pub url: String,
    /// Seconds (or any duration) allowed for connecting and for the answer.
    #[arg(long, default_value = "2")]
    pub timeout_secs: Secs,
}

#[derive(Debug, Clone, Args)]
pub struct HashKeyArgs {
    /// Name of the key's holder (shown in logs and metrics).
    #[arg(long)]
    pub name: String,
    /// Scopes to grant (read, delete, metrics); repeat for several [default: read].
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// Hash the key read from standard input instead of making a random one.
    #[arg(long)]
    pub stdin: bool,
}

#[derive(Debug, Clone, Default, Args)]
pub struct Options {
    /// --store/--zones (also DES_STORE/DES_ZONES, as for every tool), S3
    /// and resilience settings.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Store layout: v3 (n_bits read from the store), legacy (Python DES;
    /// needs --n-bits) or auto (both, as during an in-place des-upgrade: v3
    /// first, then legacy parts; --n-bits needed until the store has
    /// `_des/store.json`).
    #[arg(long)]
    pub layout: Option<LayoutName>,
    /// Routing bits of a legacy store, which does not record them.
    #[arg(long)]
    pub n_bits: Option<u8>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<String>,
    /// Bytes of shard indexes kept in memory: whole indexes of small or flat
    /// shards, page directories of paged ones [default: 512 MiB].
    #[arg(long)]
    pub cache_bytes: Option<Size>,
    /// Bytes of index pages of paged shards kept in memory [default: 256 MiB].
    #[arg(long)]
    pub page_cache_bytes: Option<Size>,
    /// Reload a cached shard index after this many seconds [default: never].
    #[arg(long)]
    pub cache_ttl_secs: Option<Secs>,
    /// Bytes of small files kept in memory decoded and verified, so popular
    /// files are served without a storage read; 0 turns this off [default: 128 MiB].
    #[arg(long)]
    pub payload_cache_bytes: Option<Size>,
    /// Largest file (decoded bytes) the payload cache keeps [default: 256 KiB].
    #[arg(long)]
    pub payload_cache_max_entry_bytes: Option<Size>,
    /// Seconds "no such shard" is remembered, and the age after which a cached
    /// index is re-read when a requested uid is not in it [default: 5].
    #[arg(long)]
    pub negative_ttl_secs: Option<Secs>,
    /// Bytes read from the end of a shard to get its index (or page directory)
    /// in one request [default: 48 KiB].
    #[arg(long)]
    pub suffix_bytes: Option<Size>,
    /// HTTP worker threads [default: one per CPU].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Seconds in-flight requests get to finish after SIGTERM [default: 30].
    #[arg(long)]
    pub shutdown_timeout_secs: Option<Secs>,
    /// Seconds between polls of the tombstone log, so deletes made through
    /// other replicas take effect here [default: 10].
    #[arg(long)]
    pub tombstone_poll_interval_secs: Option<Secs>,
    /// API keys file (TOML or YAML); reloaded on SIGHUP.
    #[arg(long)]
    pub api_keys: Option<PathBuf>,
    /// Seconds between checks of the API keys file for changes, which are
    /// then reloaded as on SIGHUP (a Kubernetes Secret is updated in place);
    /// 0: on SIGHUP only [default: 10].
    #[arg(long)]
    pub keys_poll_interval_secs: Option<Secs>,
    /// `off` serves everyone without a key; `on` (the default) needs --api-keys.
    #[arg(long)]
    pub auth: Option<AuthMode>,
    /// Same as --auth off.
    #[arg(long, conflicts_with = "auth")]
    pub no_auth: bool,
    /// Requests per second allowed per API key (burst: --rate-limit-burst) [default: unlimited].
    #[arg(long)]
    pub rate_limit_per_key: Option<u32>,
    /// Requests per second allowed per client IP address [default: unlimited].
    #[arg(long)]
    pub rate_limit_per_ip: Option<u32>,
    /// Requests a key or address may make at once before its rate applies [default: the rate].
    #[arg(long)]
    pub rate_limit_burst: Option<u32>,
    /// Log format: text or json [default: text].
    #[arg(long)]
    pub log_format: Option<LogFormat>,
    /// TOML file with any of the settings above (keys in snake_case).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub guards: GuardOptions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutName {
    Fixed(Layout),
    /// Both layouts: `Settings::layout_auto`.
    Auto,
}

impl FromStr for LayoutName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "v3" => Ok(Self::Fixed(Layout::V3)),
            "legacy" => Ok(Self::Fixed(Layout::Legacy)),
            "auto" => Ok(Self::Auto),
            other => Err(format!("layout must be v3, legacy or auto, not {other:?}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    On,
    Off,
}

impl FromStr for AuthMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!("auth must be on or off, not {other:?}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("log format must be text or json, not {other:?}")),
        }
    }
}

/// Deserializes any of the `FromStr` values above from a TOML string.
macro_rules! deserialize_via_from_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
deserialize_via_from_str!(LayoutName, AuthMode, LogFormat);

/// The TOML file: the same settings as the command line.
#[derive(Debug, Default, Deserialize)]
struct FileConfig {
    store: Option<String>,
    zones: Option<PathBuf>,
    #[serde(flatten)]
    connection: Connection,
    layout: Option<LayoutName>,
    n_bits: Option<u8>,
    listen: Option<String>,
    cache_bytes: Option<Size>,
    page_cache_bytes: Option<Size>,
    cache_ttl_secs: Option<Secs>,
    payload_cache_bytes: Option<Size>,
    payload_cache_max_entry_bytes: Option<Size>,
    negative_ttl_secs: Option<Secs>,
    suffix_bytes: Option<Size>,
    workers: Option<usize>,
    shutdown_timeout_secs: Option<Secs>,
    tombstone_poll_interval_secs: Option<Secs>,
    api_keys: Option<PathBuf>,
    keys_poll_interval_secs: Option<Secs>,
    auth: Option<AuthMode>,
    rate_limit_per_key: Option<u32>,
    rate_limit_per_ip: Option<u32>,
    rate_limit_burst: Option<u32>,
    log_format: Option<LogFormat>,
    #[serde(flatten)]
    guards: GuardFile,
    /// Whatever no field above took: refused, as `deny_unknown_fields`
    /// would (which cannot be combined with `flatten`). Must come last.
    #[serde(flatten)]
    unknown: std::collections::BTreeMap<String, toml::Value>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// Where the shards are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A directory, `file://` or `s3://` URL.
    Location(String),
    /// A zones file.
    Zones(PathBuf),
}

impl Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Location(l) => f.write_str(l),
            Self::Zones(p) => write!(f, "zones {}", p.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSetting {
    /// Explicitly switched off: every request is served.
    Off,
    /// Keys from this file.
    Keys(PathBuf),
}

/// A token bucket: `per_second` refill, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimits {
    pub per_key: Option<Rate>,
    pub per_ip: Option<Rate>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub source: Source,
    /// S3 endpoint and region, retries and breakers for the source.
    pub connection: Connection,
    pub layout: Layout,
    /// `--layout auto`: `layout` is V3 and lookups that miss the v3 shard
    /// also search the legacy parts of the same (date, shard), while the
    /// store may still have some (`DesStore::open_auto`).
    pub layout_auto: bool,
    /// Only for legacy (and auto) stores; v3 stores record their own.
    pub n_bits: Option<u8>,
    pub listen: String,
    pub cache_bytes: u64,
    pub page_cache_bytes: u64,
    pub cache_ttl: Option<Duration>,
    /// Hot payload cache bound; 0: no cache.
    pub payload_cache_bytes: u64,
    pub payload_cache_max_entry_bytes: u64,
    pub negative_ttl: Duration,
    pub suffix_bytes: u64,
    pub workers: Option<usize>,
    pub shutdown_timeout: Duration,
    pub tombstone_poll_interval: Duration,
    /// `None`: the keys file is reloaded on SIGHUP only.
    pub keys_poll_interval: Option<Duration>,
    pub auth: AuthSetting,
    pub rate_limits: RateLimits,
    pub log_format: LogFormat,
    pub guards: Guards,
}

impl Settings {
    /// Defaults for a store location, auth off: a starting point for tests and tools.
    pub fn for_location(location: impl Into<String>) -> Self {
        Self {
            source: Source::Location(location.into()),
            connection: Connection::default(),
            layout: Layout::V3,
            layout_auto: false,
            n_bits: None,
            listen: DEFAULT_LISTEN.into(),
            cache_bytes: DEFAULT_CACHE_BYTES,
            page_cache_bytes: DEFAULT_PAGE_CACHE_BYTES,
            cache_ttl: None,
            payload_cache_bytes: DEFAULT_PAYLOAD_CACHE_BYTES,
            payload_cache_max_entry_bytes: DEFAULT_PAYLOAD_CACHE_MAX_ENTRY_BYTES,
            negative_ttl: Duration::from_secs(DEFAULT_NEGATIVE_TTL_SECS),
            suffix_bytes: DEFAULT_SUFFIX_BYTES,
            workers: None,
            shutdown_timeout: Duration::from_secs(DEFAULT_SHUTDOWN_TIMEOUT_SECS),
            tombstone_poll_interval: Duration::from_secs(DEFAULT_TOMBSTONE_POLL_SECS),
            keys_poll_interval: Some(Duration::from_secs(DEFAULT_KEYS_POLL_SECS)),
            auth: AuthSetting::Off,
            rate_limits: RateLimits::default(),
            log_format: LogFormat::Text,
            guards: Guards::default(),
        }
    }
}

/// Looks settings up in the three sources in precedence order.
struct Sources<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Sources<'_> {
    /// CLI value, else `DES_RETRIEVER_<NAME>`, else the file's.
    fn pick<T>(&self, name: &str, cli: Option<T>, file: Option<T>) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        if cli.is_some() {
            return Ok(cli);
        }
        let var = format!("{ENV_PREFIX}{}", name.to_ascii_uppercase());
        match (self.env)(&var) {
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| ConfigError(format!("{var}={v:?}: {e}"))),
            None => Ok(file),
        }
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config {}: {e}", path.display())))?;
    let file: FileConfig = toml::from_str(&text)
        .map_err(|e| ConfigError(format!("config {}: {e}", path.display())))?;
    match file.unknown.keys().next() {
        Some(key) => Err(ConfigError(format!(
            "config {}: unknown setting `{key}`",
            path.display()
        ))),
        None => Ok(file),
    }
}

impl Settings {
    /// `env` looks up environment variables (injected so tests need not touch the process's).
    pub fn resolve(
        cli: Options,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let src = Sources { env };
        let file = match src.pick("config", cli.config.clone(), None)? {
            Some(path) => read_file(&path)?,
            None => FileConfig::default(),
        };
        let source = source(&src, &cli, &file)?;
        let connection = connection(&src, &cli.store.connection, &file.connection)?;
        let (layout, layout_auto, n_bits) = layout(&src, &cli, &file)?;
        let auth = auth(&src, &cli, &file)?;
        let rate_limits = rate_limits(&src, &cli, &file)?;
        let guards = guards::guards(&src, cli.guards.clone(), &file)?;
        let workers = src.pick("workers", cli.workers, file.workers)?;
        if workers == Some(0) {
            return Err(ConfigError("workers must be at least 1".into()));
        }
        let poll = src
            .pick(
                "tombstone_poll_interval_secs",
                cli.tombstone_poll_interval_secs,
                file.tombstone_poll_interval_secs,
            )?
            .map(|v| v.0)
            .unwrap_or(DEFAULT_TOMBSTONE_POLL_SECS);
        if poll == 0 {
            return Err(ConfigError(
                "tombstone_poll_interval_secs must be at least 1".into(),
            ));
        }
        let secs = Duration::from_secs;
        Ok(Self {
            source,
            connection,
            layout,
            layout_auto,
            n_bits,
            listen: src
                .pick("listen", cli.listen, file.listen)?
                .unwrap_or_else(|| DEFAULT_LISTEN.into()),
            cache_bytes: src
                .pick("cache_bytes", cli.cache_bytes, file.cache_bytes)?
                .map(|v| v.0)
                .unwrap_or(DEFAULT_CACHE_BYTES),
            page_cache_bytes: src
                .pick(
                    "page_cache_bytes",
                    cli.page_cache_bytes,
                    file.page_cache_bytes,
                )?
                .map(|v| v.0)
                .unwrap_or(DEFAULT_PAGE_CACHE_BYTES),
            cache_ttl: src
                .pick("cache_ttl_secs", cli.cache_ttl_secs, file.cache_ttl_secs)?
                .map(|v| v.0)
                .map(secs),
            payload_cache_bytes: src
                .pick(
                    "payload_cache_bytes",
                    cli.payload_cache_bytes,
                    file.payload_cache_bytes,
                )?
                .map(|v| v.0)
                .unwrap_or(DEFAULT_PAYLOAD_CACHE_BYTES),
            payload_cache_max_entry_bytes: src
                .pick(
                    "payload_cache_max_entry_bytes",
                    cli.payload_cache_max_entry_bytes,
                    file.payload_cache_max_entry_bytes,
                )?
                .map(|v| v.0)
                .unwrap_or(DEFAULT_PAYLOAD_CACHE_MAX_ENTRY_BYTES),
            negative_ttl: secs(
                src.pick(
                    "negative_ttl_secs",
                    cli.negative_ttl_secs,
                    file.negative_ttl_secs,
                )?
                .map(|v| v.0)
                .unwrap_or(DEFAULT_NEGATIVE_TTL_SECS),
            ),
            suffix_bytes: src
                .pick("suffix_bytes", cli.suffix_bytes, file.suffix_bytes)?
                .map(|v| v.0)
                .unwrap_or(DEFAULT_SUFFIX_BYTES),
            workers,
            shutdown_timeout: secs(
                src.pick(
                    "shutdown_timeout_secs",
                    cli.shutdown_timeout_secs,
                    file.shutdown_timeout_secs,
                )?
                .map(|v| v.0)
                .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_SECS),
            ),
            tombstone_poll_interval: secs(poll),
            keys_poll_interval: Some(
                src.pick(
                    "keys_poll_interval_secs",
                    cli.keys_poll_interval_secs,
                    file.keys_poll_interval_secs,
                )?
                .map(|v| v.0)
                .unwrap_or(DEFAULT_KEYS_POLL_SECS),
            )
            .filter(|s| *s > 0)
            .map(secs),
            auth,
            rate_limits,
            log_format: src
                .pick("log_format", cli.log_format, file.log_format)?
                .unwrap_or_default(),
            guards,
        })
    }
}

/// Each connection setting from the CLI, `DES_RETRIEVER_<NAME>` or the file.
fn connection(
    src: &Sources<'_>,
    cli: &Connection,
    file: &Connection,
) -> Result<Connection, ConfigError> {
    let (c, f) = (cli.clone(), file.clone());
    Ok(Connection {
        s3_endpoint: src.pick("s3_endpoint", c.s3_endpoint, f.s3_endpoint)?,
        s3_region: src.pick("s3_region", c.s3_region, f.s3_region)?,
        retry_attempts: src.pick("retry_attempts", c.retry_attempts, f.retry_attempts)?,
        attempt_timeout: src.pick("attempt_timeout", c.attempt_timeout, f.attempt_timeout)?,
        retry_deadline: src.pick("retry_deadline", c.retry_deadline, f.retry_deadline)?,
        breaker: src
            .pick("breaker", c.breaker.map(OnOff), f.breaker.map(OnOff))?
            .map(|b| b.0),
        breaker_failures: src.pick("breaker_failures", c.breaker_failures, f.breaker_failures)?,
        breaker_cool_down: src.pick(
            "breaker_cool_down",
            c.breaker_cool_down,
            f.breaker_cool_down,
        )?,
    })
}

/// `--breaker`'s grammar for `Sources::pick`.
struct OnOff(bool);

impl FromStr for OnOff {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        des_storage::cli::parse_on_off(s).map(Self)
    }
}

/// Exactly one of store and zones; a CLI or environment value of one
/// overrides the file's value of the other, so a file can hold a default.
fn source(src: &Sources<'_>, cli: &Options, file: &FileConfig) -> Result<Source, ConfigError> {
    let store = src.pick("store", cli.store.store.clone(), None)?;
    let zones = src.pick("zones", cli.store.zones.clone(), None)?;
    let (store, zones) = match (store, zones) {
        (None, None) => (file.store.clone(), file.zones.clone()),
        given => given,
    };
    match (store, zones) {
        (Some(s), None) => Ok(Source::Location(s)),
        (None, Some(z)) => Ok(Source::Zones(z)),
        (Some(_), Some(_)) => Err(ConfigError(
            "give either a store (--store) or a zones file (--zones), not both".into(),
        )),
        (None, None) => Err(ConfigError(
            "no store given (--store or --zones, DES_RETRIEVER_STORE/ZONES, or `store`/`zones` \
             in the config file)"
                .into(),
        )),
    }
}

fn layout(
    src: &Sources<'_>,
    cli: &Options,
    file: &FileConfig,
) -> Result<(Layout, bool, Option<u8>), ConfigError> {
    let layout = src
        .pick("layout", cli.layout, file.layout)?
        .unwrap_or(LayoutName::Fixed(Layout::V3));
    let n_bits = src.pick("n_bits", cli.n_bits, file.n_bits)?;
    let checked = |n: u8| {
        des_format::routing::check_n_bits(n)
            .map(|()| Some(n))
            .map_err(|e| ConfigError(e.to_string()))
    };
    match (layout, n_bits) {
        (LayoutName::Fixed(Layout::Legacy), None) => Err(ConfigError(
            "a legacy store needs --n-bits (it does not record it)".into(),
        )),
        (LayoutName::Fixed(Layout::Legacy), Some(n)) => Ok((Layout::Legacy, false, checked(n)?)),
        (LayoutName::Fixed(Layout::V3), Some(_)) => Err(ConfigError(
            "--n-bits is for legacy stores; a v3 store records its own".into(),
        )),
        (LayoutName::Fixed(Layout::V3), None) => Ok((Layout::V3, false, None)),
        // Needed only while the store has no store.json (checked when opened).
        (LayoutName::Auto, None) => Ok((Layout::V3, true, None)),
        (LayoutName::Auto, Some(n)) => Ok((Layout::V3, true, checked(n)?)),
    }
}

/// Auth is off only when asked for; no keys file and no `off` is an error,
/// so a forgotten setting can never publish a store.
fn auth(src: &Sources<'_>, cli: &Options, file: &FileConfig) -> Result<AuthSetting, ConfigError> {
    // `--no-auth` is also `DES_RETRIEVER_NO_AUTH=true` (and `no_auth = true`
    // in the file is spelled `auth = "off"`).
    let no_auth = src.pick("no_auth", cli.no_auth.then_some(true), None)?;
    let flag = no_auth.unwrap_or(false).then_some(AuthMode::Off);
    let mode = src.pick("auth", cli.auth.or(flag), file.auth)?;
    let keys = src.pick("api_keys", cli.api_keys.clone(), file.api_keys.clone())?;
    match (mode, keys) {
        (Some(AuthMode::Off), None) => Ok(AuthSetting::Off),
        (Some(AuthMode::Off), Some(_)) => Err(ConfigError(
            "auth is off but an API keys file is given: drop one of them".into(),
        )),
        (_, Some(path)) => Ok(AuthSetting::Keys(path)),
        (_, None) => Err(ConfigError(
            "no API keys file (--api-keys): give one, or switch auth off explicitly with \
             --no-auth / auth = \"off\""
                .into(),
        )),
    }
}

fn rate_limits(
    src: &Sources<'_>,
    cli: &Options,
    file: &FileConfig,
) -> Result<RateLimits, ConfigError> {
    let burst = src.pick(
        "rate_limit_burst",
        cli.rate_limit_burst,
        file.rate_limit_burst,
    )?;
    let rate = |name: &str, value: Option<u32>| -> Result<Option<Rate>, ConfigError> {
        let Some(per_second) = value else {
            return Ok(None);
        };
        let positive = |what: &str, n: u32| {
            NonZeroU32::new(n).ok_or_else(|| ConfigError(format!("{what} must be at least 1")))
        };
        let per_second = positive(name, per_second)?;
        let burst = match burst {
            Some(b) => positive("rate_limit_burst", b)?,
            None => per_second,
        };
        Ok(Some(Rate { per_second, burst }))
    };
    Ok(RateLimits {
        per_key: rate(
            "rate_limit_per_key",
            src.pick(
                "rate_limit_per_key",
                cli.rate_limit_per_key,
                file.rate_limit_per_key,
            )?,
        )?,
        per_ip: rate(
            "rate_limit_per_ip",
            src.pick(
                "rate_limit_per_ip",
                cli.rate_limit_per_ip,
                file.rate_limit_per_ip,
            )?,
        )?,
    })
}

mod guards;
use guards::GuardFile;
pub use guards::{GuardOptions, Guards, HttpCaching};

#[cfg(test)]
mod tests;
