use std::collections::HashMap;

use super::*;

fn resolve(args: &[&str], env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let cli =
        Cli::try_parse_from(std::iter::once("des-retriever").chain(args.iter().copied())).unwrap();
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::resolve(cli.opts, &|k| env.get(k).cloned())
}

/// A config file holding `toml`, and its path (the directory lives as long
/// as the returned guard).
fn config_file(toml: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.toml");
    std::fs::write(&file, toml).unwrap();
    let path = file.to_str().unwrap().to_string();
    (dir, path)
}

#[test]
fn defaults() {
    let s = resolve(&["--store", "/data", "--no-auth"], &[]).unwrap();
    assert_eq!(s.source, Source::Location("/data".into()));
    assert_eq!(s.layout, Layout::V3);
    assert_eq!(s.listen, DEFAULT_LISTEN);
    assert_eq!(s.cache_bytes, 512 << 20);
    assert_eq!(s.suffix_bytes, 48 << 10);
    assert_eq!(s.page_cache_bytes, 256 << 20);
    assert_eq!(s.cache_ttl, None);
    assert_eq!(s.payload_cache_bytes, 128 << 20);
    assert_eq!(s.payload_cache_max_entry_bytes, 256 << 10);
    assert_eq!(s.workers, None);
    assert_eq!(s.auth, AuthSetting::Off);
    assert_eq!(s.rate_limits, RateLimits::default());
    assert_eq!(s.log_format, LogFormat::Text);
}

#[test]
fn precedence_cli_env_file_default() {
    let (_dir, f) = config_file(
        "store = \"/from-file\"\nlisten = \"0.0.0.0:1\"\ncache_bytes = 1\nsuffix_bytes = 2\n\
         log_format = \"json\"\nauth = \"off\"\nrate_limit_per_ip = 7\n",
    );
    let f = f.as_str();
    let s = resolve(
        &["--config", f, "--listen", "127.0.0.1:3"],
        &[
            ("DES_RETRIEVER_LISTEN", "127.0.0.1:2"),
            ("DES_RETRIEVER_CACHE_BYTES", "20"),
            ("DES_RETRIEVER_CACHE_TTL_SECS", "9"),
            ("DES_RETRIEVER_RATE_LIMIT_BURST", "30"),
        ],
    )
    .unwrap();
    assert_eq!(s.listen, "127.0.0.1:3", "cli beats env and file");
    assert_eq!(s.cache_bytes, 20, "env beats file");
    assert_eq!(s.suffix_bytes, 2, "file beats default");
    assert_eq!(s.source, Source::Location("/from-file".into()));
    assert_eq!(s.cache_ttl, Some(Duration::from_secs(9)));
    assert_eq!(s.log_format, LogFormat::Json);
    assert_eq!(s.auth, AuthSetting::Off);
    let ip = s.rate_limits.per_ip.unwrap();
    assert_eq!((ip.per_second.get(), ip.burst.get()), (7, 30));
    assert_eq!(s.rate_limits.per_key, None);
    // The config file itself can come from the environment.
    let s = resolve(
        &[],
        &[
            ("DES_RETRIEVER_CONFIG", f),
            ("DES_RETRIEVER_LOG_FORMAT", "text"),
        ],
    )
    .unwrap();
    assert_eq!(s.source, Source::Location("/from-file".into()));
    assert_eq!(s.log_format, LogFormat::Text);
    // A zones file from the environment replaces the file's store.
    let s = resolve(
        &[],
        &[
            ("DES_RETRIEVER_CONFIG", f),
            ("DES_RETRIEVER_ZONES", "z.yaml"),
        ],
    )
    .unwrap();
    assert_eq!(s.source, Source::Zones("z.yaml".into()));
}

#[test]
fn every_setting_from_each_source() {
    let (_dir, f) = config_file(
        "zones = \"z.yaml\"\napi_keys = \"k.toml\"\nrate_limit_per_key = 3\nworkers = 2\n\
         shutdown_timeout_secs = 4\nnegative_ttl_secs = 6\ntombstone_poll_interval_secs = 3\n",
    );
    let s = resolve(&["--config", &f], &[]).unwrap();
    assert_eq!(s.source, Source::Zones("z.yaml".into()));
    assert_eq!(s.auth, AuthSetting::Keys("k.toml".into()));
    assert_eq!(s.rate_limits.per_key.unwrap().per_second.get(), 3);
    assert_eq!(s.workers, Some(2));
    assert_eq!(s.shutdown_timeout, Duration::from_secs(4));
    assert_eq!(s.negative_ttl, Duration::from_secs(6));
    assert_eq!(s.tombstone_poll_interval, Duration::from_secs(3));
    let s = resolve(
        &[],
        &[
            ("DES_RETRIEVER_ZONES", "z.toml"),
            ("DES_RETRIEVER_API_KEYS", "keys.yaml"),
            ("DES_RETRIEVER_RATE_LIMIT_PER_KEY", "5"),
            ("DES_RETRIEVER_TOMBSTONE_POLL_INTERVAL_SECS", "7"),
        ],
    )
    .unwrap();
    assert_eq!(s.tombstone_poll_interval, Duration::from_secs(7));
    assert_eq!(s.source, Source::Zones("z.toml".into()));
    assert_eq!(s.auth, AuthSetting::Keys("keys.yaml".into()));
    assert_eq!(s.rate_limits.per_key.unwrap().burst.get(), 5);
    let s = resolve(
        &[
            "--zones",
            "z.yaml",
            "--api-keys",
            "k.toml",
            "--rate-limit-per-ip",
            "9",
            "--rate-limit-burst",
            "1",
            "--log-format",
            "json",
            "--tombstone-poll-interval-secs",
            "2",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(s.tombstone_poll_interval, Duration::from_secs(2));
    assert_eq!(s.source, Source::Zones("z.yaml".into()));
    assert_eq!(s.rate_limits.per_ip.unwrap().burst.get(), 1);
    assert_eq!(s.log_format, LogFormat::Json);
    let s = resolve(&["--store", "x"], &[("DES_RETRIEVER_AUTH", "off")]).unwrap();
    assert_eq!(s.auth, AuthSetting::Off);
}

#[test]
fn payload_cache_from_each_source() {
    let (_dir, f) = config_file(
        "store = \"/s\"\nauth = \"off\"\npayload_cache_bytes = 0\n\
         payload_cache_max_entry_bytes = 4096\n",
    );
    let f = f.as_str();
    let s = resolve(&["--config", f], &[]).unwrap();
    assert_eq!(s.payload_cache_bytes, 0, "0 (off) from the file");
    assert_eq!(s.payload_cache_max_entry_bytes, 4096);
    let s = resolve(
        &["--config", f],
        &[
            ("DES_RETRIEVER_PAYLOAD_CACHE_BYTES", "1048576"),
            ("DES_RETRIEVER_PAYLOAD_CACHE_MAX_ENTRY_BYTES", " 512 "),
        ],
    )
    .unwrap();
    assert_eq!(s.payload_cache_bytes, 1 << 20, "env beats file");
    assert_eq!(s.payload_cache_max_entry_bytes, 512);
    let s = resolve(
        &[
            "--config",
            f,
            "--payload-cache-bytes",
            "7",
            "--payload-cache-max-entry-bytes",
            "8",
        ],
        &[("DES_RETRIEVER_PAYLOAD_CACHE_BYTES", "1048576")],
    )
    .unwrap();
    assert_eq!(
        (s.payload_cache_bytes, s.payload_cache_max_entry_bytes),
        (7, 8),
        "cli beats env and file"
    );
    let env = |v| [("DES_RETRIEVER_PAYLOAD_CACHE_BYTES", v)];
    let s = resolve(&["--store", "x", "--no-auth"], &env("128M")).unwrap();
    assert_eq!(
        s.payload_cache_bytes,
        128 << 20,
        "a size in the shared grammar"
    );
    assert!(resolve(&["--store", "x", "--no-auth"], &env("128 parsecs")).is_err());
}

#[test]
fn invalid() {
    let bad = |args: &[&str], env: &[(&str, &str)], why: &str| {
        assert!(resolve(args, env).is_err(), "{why}: {args:?} {env:?}");
    };
    bad(&["--no-auth"], &[], "store is required");
    bad(&["--store", "x"], &[], "auth needs keys or an explicit off");
    bad(
        &["--store", "x", "--no-auth", "--api-keys", "k"],
        &[],
        "off and keys contradict",
    );
    bad(
        &["--store", "x", "--no-auth"],
        &[("DES_RETRIEVER_ZONES", "z.yaml")],
        "store and zones",
    );
    bad(
        &["--store", "x", "--no-auth", "--layout", "legacy"],
        &[],
        "legacy needs n_bits",
    );
    bad(
        &["--store", "x", "--no-auth", "--n-bits", "8"],
        &[],
        "v3 records n_bits",
    );
    bad(
        &[
            "--store",
            "x",
            "--no-auth",
            "--layout",
            "legacy",
            "--n-bits",
            "3",
        ],
        &[],
        "n_bits out of range",
    );
    bad(
        &["--store", "x", "--no-auth", "--workers", "0"],
        &[],
        "workers",
    );
    bad(
        &[
            "--store",
            "x",
            "--no-auth",
            "--tombstone-poll-interval-secs",
            "0",
        ],
        &[],
        "poll interval",
    );
    bad(
        &["--store", "x", "--no-auth", "--rate-limit-per-ip", "0"],
        &[],
        "zero rate",
    );
    bad(
        &["--store", "x", "--no-auth"],
        &[("DES_RETRIEVER_CACHE_BYTES", "lots")],
        "not a number",
    );
    bad(
        &["--store", "x", "--no-auth"],
        &[("DES_RETRIEVER_LAYOUT", "v2")],
        "bad layout",
    );
    bad(
        &["--store", "x"],
        &[("DES_RETRIEVER_AUTH", "maybe")],
        "bad auth",
    );
    let (_dir, f) = config_file("stor = \"typo\"\n");
    bad(
        &["--store", "x", "--no-auth", "--config", &f],
        &[],
        "unknown key",
    );
    bad(
        &["--store", "x", "--no-auth", "--config", "/nonexistent.toml"],
        &[],
        "missing file",
    );
    assert!(
        Cli::try_parse_from(["des-retriever", "--store", "x", "--zones", "z"]).is_err(),
        "clap rejects both"
    );
    let s = resolve(
        &[
            "--store",
            "x",
            "--no-auth",
            "--layout",
            "legacy",
            "--n-bits",
            "4",
        ],
        &[],
    )
    .unwrap();
    assert_eq!((s.layout, s.n_bits), (Layout::Legacy, Some(4)));
}

#[test]
fn hash_key_subcommand_parses() {
    let cli = Cli::try_parse_from([
        "des-retriever",
        "hash-key",
        "--name",
        "ops",
        "--scope",
        "read",
        "--scope",
        "delete",
    ])
    .unwrap();
    let Some(Command::HashKey(args)) = cli.command else {
        panic!("no subcommand");
    };
    assert_eq!(args.name, "ops");
    assert_eq!(args.scopes, ["read", "delete"]);
}

/// `--no-auth` is a setting like the others: `DES_RETRIEVER_NO_AUTH` too.
#[test]
fn no_auth_from_the_environment() {
    let s = resolve(&["--store", "/data"], &[("DES_RETRIEVER_NO_AUTH", "true")]).unwrap();
    assert_eq!(s.auth, AuthSetting::Off);
    assert!(resolve(&["--store", "/data"], &[("DES_RETRIEVER_NO_AUTH", "false")]).is_err());
    assert!(resolve(&["--store", "/data"], &[("DES_RETRIEVER_NO_AUTH", "maybe")]).is_err());
}

/// The keys file is checked for changes every 10 s unless told otherwise;
/// 0 leaves SIGHUP as the only way to reload it.
#[test]
fn keys_poll_interval_from_each_source() {
    let base = ["--store", "/data", "--no-auth"];
    let s = resolve(&base, &[]).unwrap();
    assert_eq!(s.keys_poll_interval, Some(Duration::from_secs(10)));
    let (_dir, f) = config_file("store = \"/s\"\nauth = \"off\"\nkeys_poll_interval_secs = 3\n");
    let s = resolve(&["--config", &f], &[]).unwrap();
    assert_eq!(s.keys_poll_interval, Some(Duration::from_secs(3)));
    let env = [("DES_RETRIEVER_KEYS_POLL_INTERVAL_SECS", "0")];
    assert_eq!(resolve(&base, &env).unwrap().keys_poll_interval, None);
    let cli = [&base[..], &["--keys-poll-interval-secs", "4"]].concat();
    let s = resolve(&cli, &env).unwrap();
    assert_eq!(
        s.keys_poll_interval,
        Some(Duration::from_secs(4)),
        "cli beats env"
    );
}

#[test]
fn guards_from_every_source() {
    let s = resolve(&["--store", "/d", "--no-auth"], &[]).unwrap();
    assert_eq!(s.guards, Guards::default());
    assert_eq!(s.guards.caching.max_age, Duration::from_secs(3600));
    assert!(!s.guards.caching.immutable);
    let (_dir, f) = config_file(
        "store = \"/d\"\nauth = \"off\"\nmax_big_streams = 3\ncache_immutable = true\n\
         admin_listen = \"127.0.0.1:9\"\nmax_connections = 10\nrate_limit_ipv6_prefix = 48\n",
    );
    let s = resolve(
        &["--config", &f, "--max-connections", "20"],
        &[
            ("DES_RETRIEVER_MAX_BIG_STREAMS", "4"),
            ("DES_RETRIEVER_MAX_PAYLOAD_BYTES_IN_FLIGHT", "1000"),
            ("DES_RETRIEVER_CACHE_MAX_AGE_SECS", "60"),
            ("DES_RETRIEVER_CLIENT_REQUEST_TIMEOUT_SECS", "2"),
            ("DES_RETRIEVER_KEEP_ALIVE_SECS", "0"),
        ],
    )
    .unwrap();
    let g = &s.guards;
    assert_eq!(g.max_connections, 20, "cli beats file");
    assert_eq!(g.max_big_streams, 4, "env beats file");
    assert_eq!(g.max_payload_bytes_in_flight, 1000);
    assert_eq!(g.caching.max_age, Duration::from_secs(60));
    assert!(g.caching.immutable, "from the file");
    assert_eq!(g.admin_listen.as_deref(), Some("127.0.0.1:9"));
    assert_eq!(g.client_request_timeout, Duration::from_secs(2));
    assert_eq!(g.keep_alive, Duration::ZERO, "0 switches keep-alive off");
    assert_eq!(g.ipv6_prefix, 48);
    let s = resolve(&["--store", "/d", "--no-auth", "--cache-immutable"], &[]).unwrap();
    assert!(s.guards.caching.immutable);
}

#[test]
fn guards_refuse_useless_values_and_files_unknown_keys() {
    for (var, value) in [
        ("DES_RETRIEVER_MAX_BIG_STREAMS", "0"),
        ("DES_RETRIEVER_MAX_CONNECTIONS", "0"),
        ("DES_RETRIEVER_MAX_PAYLOAD_BYTES_IN_FLIGHT", "0"),
        ("DES_RETRIEVER_CLIENT_REQUEST_TIMEOUT_SECS", "0"),
        ("DES_RETRIEVER_RATE_LIMIT_IPV6_PREFIX", "129"),
        ("DES_RETRIEVER_RATE_LIMIT_IPV6_PREFIX", "0"),
        ("DES_RETRIEVER_MAX_BIG_STREAMS", "many"),
    ] {
        let e = resolve(&["--store", "/d", "--no-auth"], &[(var, value)]).unwrap_err();
        assert!(
            e.to_string()
                .to_lowercase()
                .contains(&var[14..].to_lowercase()),
            "{var}={value}: {e}"
        );
    }
    let (_dir, f) = config_file("store = \"/d\"\nauth = \"off\"\nmax_big_stream = 3\n");
    let e = resolve(&["--config", &f], &[]).unwrap_err();
    assert!(e.to_string().contains("max_big_stream"), "{e}");
}

/// Sizes and durations in the shared grammar from every source; bare
/// numbers keep meaning bytes and seconds.
#[test]
fn sizes_and_durations_in_the_shared_grammar() {
    let (_dir, f) = config_file(
        "store = \"/s\"\nauth = \"off\"\ncache_bytes = \"1GiB\"\nsuffix_bytes = 4096\n\
         negative_ttl_secs = \"2m\"\nkeep_alive_secs = 7\nmax_payload_bytes_in_flight = \"64M\"\n",
    );
    let s = resolve(
        &["--config", f.as_str(), "--cache-ttl-secs", "1h"],
        &[
            ("DES_RETRIEVER_PAYLOAD_CACHE_BYTES", "32MiB"),
            ("DES_RETRIEVER_SHUTDOWN_TIMEOUT_SECS", "1500ms"),
        ],
    )
    .unwrap();
    assert_eq!(s.cache_bytes, 1 << 30);
    assert_eq!(s.suffix_bytes, 4096);
    assert_eq!(s.negative_ttl, Duration::from_secs(120));
    assert_eq!(s.guards.keep_alive, Duration::from_secs(7));
    assert_eq!(s.guards.max_payload_bytes_in_flight, 64 << 20);
    assert_eq!(s.cache_ttl, Some(Duration::from_secs(3600)));
    assert_eq!(s.payload_cache_bytes, 32 << 20);
    assert_eq!(s.shutdown_timeout, Duration::from_secs(2), "rounded up");
    let bad = resolve(
        &["--store", "/s", "--no-auth"],
        &[("DES_RETRIEVER_CACHE_BYTES", "lots")],
    );
    assert!(
        bad.unwrap_err()
            .to_string()
            .contains("DES_RETRIEVER_CACHE_BYTES")
    );
}

#[test]
fn connection_settings_from_each_source() {
    use des_storage::units::Dur;
    let (_dir, f) = config_file(
        "store = \"/s\"\nauth = \"off\"\nretry_attempts = 2\nretry_deadline = \"1m\"\n\
         breaker = false\nbreaker_cool_down = 3\ns3_region = \"file-region\"\n",
    );
    let s = resolve(
        &[
            "--config",
            &f,
            "--retry-attempts",
            "6",
            "--attempt-timeout",
            "750ms",
        ],
        &[
            ("DES_RETRIEVER_RETRY_ATTEMPTS", "5"),
            ("DES_RETRIEVER_RETRY_DEADLINE", "2m"),
            ("DES_RETRIEVER_BREAKER_FAILURES", "9"),
            ("DES_RETRIEVER_S3_ENDPOINT", "http://127.0.0.1:3900"),
        ],
    )
    .unwrap();
    let c = &s.connection;
    assert_eq!(c.retry_attempts, Some(6), "cli beats env and file");
    assert_eq!(c.attempt_timeout, Some(Dur(Duration::from_millis(750))));
    assert_eq!(
        c.retry_deadline,
        Some(Dur(Duration::from_secs(120))),
        "env beats file"
    );
    assert_eq!(c.breaker_failures, Some(9));
    assert_eq!(c.s3_endpoint.as_deref(), Some("http://127.0.0.1:3900"));
    assert_eq!(c.breaker, Some(false), "file");
    assert_eq!(
        c.breaker_cool_down,
        Some(Dur(Duration::from_secs(3))),
        "a bare number is seconds"
    );
    assert_eq!(c.s3_region.as_deref(), Some("file-region"));

    let on = resolve(
        &["--store", "/s", "--no-auth"],
        &[("DES_RETRIEVER_BREAKER", "off")],
    )
    .unwrap();
    assert_eq!(on.connection.breaker, Some(false));
    let bad = resolve(
        &["--store", "/s", "--no-auth"],
        &[("DES_RETRIEVER_BREAKER", "maybe")],
    );
    assert!(
        bad.unwrap_err()
            .to_string()
            .contains("DES_RETRIEVER_BREAKER")
    );
    // Zero attempts is refused when the store is opened, like a zones file's.
    let zero = resolve(
        &[
            "--store",
            "s3://bucket/p",
            "--no-auth",
            "--retry-attempts",
            "0",
        ],
        &[],
    )
    .unwrap();
    let err = crate::backend::Storage::open(&zero.source, &zero.connection).unwrap_err();
    assert!(err.to_string().contains("max_attempts"), "{err}");
}
