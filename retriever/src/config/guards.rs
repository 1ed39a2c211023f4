//! Settings that bound what hostile or merely many clients can take from a
//! pod (connections, slow headers, big-file streams, payload bytes held in
//! memory), the caching headers, and the admin listener. Resolved like every
//! other setting (command line > `DES_RETRIEVER_*` > file > default).

use std::time::Duration;

use clap::Args;
use des_storage::units::{Secs, Size};

use super::{ConfigError, FileConfig, Sources};

/// Connections accepted at once, over all workers; more wait in the
/// listen backlog until one closes.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// A client must send its request head within this (slowloris).
pub const DEFAULT_CLIENT_REQUEST_TIMEOUT_SECS: u64 = 5;
/// An idle keep-alive connection is closed after this.
pub const DEFAULT_KEEP_ALIVE_SECS: u64 = 5;
/// Big-file responses streaming at once; each holds a few 256 KiB chunks.
pub const DEFAULT_MAX_BIG_STREAMS: usize = 64;
/// Decoded and stored bytes of inline payloads held by responses at once.
pub const DEFAULT_MAX_PAYLOAD_BYTES_IN_FLIGHT: u64 = 256 << 20;
/// One hour: well inside the deletion bound the shipped schedule gives
/// (docs/DEPLOYMENT.md), so a shared cache cannot outlive a deletion by more.
pub const DEFAULT_CACHE_MAX_AGE_SECS: u64 = 3600;
/// Per-IP limits key an IPv6 client by its /64: one host usually owns a
/// whole /64, so keying on the full address would leave it unlimited.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

#[derive(Debug, Clone, Default, Args)]
pub struct GuardOptions {
    /// Also serve /health, /ready (with details) and /metrics on this address
    /// only; the public port then answers /metrics with 404 and /ready with
    /// its status alone [default: none].
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Connections open at once, over all workers; more wait to be accepted [default: 4096].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Seconds a client has to send its request line and headers [default: 5].
    #[arg(long)]
    pub client_request_timeout_secs: Option<Secs>,
    /// Seconds an idle keep-alive connection stays open [default: 5].
    #[arg(long)]
    pub keep_alive_secs: Option<Secs>,
    /// Big-file (external) responses streaming at once; more get 503 [default: 64].
    #[arg(long)]
    pub max_big_streams: Option<usize>,
    /// Bytes of small-file payloads held by responses at once; more get 503 [default: 256 MiB].
    #[arg(long)]
    pub max_payload_bytes_in_flight: Option<Size>,
    /// `max-age` of file responses, in seconds [default: 3600].
    #[arg(long)]
    pub cache_max_age_secs: Option<Secs>,
    /// Mark file responses `immutable` (only if deleted files may stay in caches for max-age).
    #[arg(long)]
    pub cache_immutable: bool,
    /// Per-IP rate limits key IPv6 clients by this prefix length [default: 64].
    #[arg(long)]
    pub rate_limit_ipv6_prefix: Option<u8>,
}

/// The file's spelling of the same settings (flat keys, as every other).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GuardFile {
    admin_listen: Option<String>,
    max_connections: Option<usize>,
    client_request_timeout_secs: Option<Secs>,
    keep_alive_secs: Option<Secs>,
    max_big_streams: Option<usize>,
    max_payload_bytes_in_flight: Option<Size>,
    cache_max_age_secs: Option<Secs>,
    cache_immutable: Option<bool>,
    rate_limit_ipv6_prefix: Option<u8>,
}

/// What file responses may be cached for, and by whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpCaching {
    pub max_age: Duration,
    pub immutable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guards {
    pub admin_listen: Option<String>,
    pub max_connections: usize,
    pub client_request_timeout: Duration,
    pub keep_alive: Duration,
    pub max_big_streams: usize,
    pub max_payload_bytes_in_flight: u64,
    pub caching: HttpCaching,
    pub ipv6_prefix: u8,
}

impl Default for Guards {
    fn default() -> Self {
        Self {
            admin_listen: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            client_request_timeout: Duration::from_secs(DEFAULT_CLIENT_REQUEST_TIMEOUT_SECS),
            keep_alive: Duration::from_secs(DEFAULT_KEEP_ALIVE_SECS),
            max_big_streams: DEFAULT_MAX_BIG_STREAMS,
            max_payload_bytes_in_flight: DEFAULT_MAX_PAYLOAD_BYTES_IN_FLIGHT,
            caching: HttpCaching {
                max_age: Duration::from_secs(DEFAULT_CACHE_MAX_AGE_SECS),
                immutable: false,
            },
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }
}

pub(super) fn guards(
    src: &Sources<'_>,
    cli: GuardOptions,
    file: &FileConfig,
) -> Result<Guards, ConfigError> {
    let f = &file.guards;
    let at_least_one = |name: &str, n: Option<u64>| match n {
        Some(0) => Err(ConfigError(format!("{name} must be at least 1"))),
        _ => Ok(n),
    };
    let d = Guards::default();
    let max_connections = src.pick("max_connections", cli.max_connections, f.max_connections)?;
    let max_big_streams = src.pick("max_big_streams", cli.max_big_streams, f.max_big_streams)?;
    at_least_one("max_connections", max_connections.map(|n| n as u64))?;
    at_least_one("max_big_streams", max_big_streams.map(|n| n as u64))?;
    let in_flight = at_least_one(
        "max_payload_bytes_in_flight",
        src.pick(
            "max_payload_bytes_in_flight",
            cli.max_payload_bytes_in_flight,
            f.max_payload_bytes_in_flight,
        )?
        .map(|v| v.0),
    )?;
    let request_timeout = at_least_one(
        "client_request_timeout_secs",
        src.pick(
            "client_request_timeout_secs",
            cli.client_request_timeout_secs,
            f.client_request_timeout_secs,
        )?
        .map(|v| v.0),
    )?;
    let prefix = src.pick(
        "rate_limit_ipv6_prefix",
        cli.rate_limit_ipv6_prefix,
        f.rate_limit_ipv6_prefix,
    )?;
    if prefix.is_some_and(|p| p == 0 || p > 128) {
        return Err(ConfigError(
            "rate_limit_ipv6_prefix must be 1 to 128".into(),
        ));
    }
    let secs = Duration::from_secs;
    Ok(Guards {
        admin_listen: src.pick("admin_listen", cli.admin_listen, f.admin_listen.clone())?,
        max_connections: max_connections.unwrap_or(d.max_connections),
        client_request_timeout: request_timeout.map_or(d.client_request_timeout, secs),
        keep_alive: src
            .pick("keep_alive_secs", cli.keep_alive_secs, f.keep_alive_secs)?
            .map(|v| v.0)
            .map_or(d.keep_alive, secs),
        max_big_streams: max_big_streams.unwrap_or(d.max_big_streams),
        max_payload_bytes_in_flight: in_flight.unwrap_or(d.max_payload_bytes_in_flight),
        caching: HttpCaching {
            max_age: src
                .pick(
                    "cache_max_age_secs",
                    cli.cache_max_age_secs,
                    f.cache_max_age_secs,
                )?
                .map(|v| v.0)
                .map_or(d.caching.max_age, secs),
            immutable: src
                .pick(
                    "cache_immutable",
                    cli.cache_immutable.then_some(true),
                    f.cache_immutable,
                )?
                .unwrap_or(false),
        },
        ipv6_prefix: prefix.unwrap_or(d.ipv6_prefix),
    })
}
