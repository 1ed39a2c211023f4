//! The store options every tool takes: where the shards live
//! (`--store`/`--zones`), how to reach S3, and how hard to retry. One set of
//! clap arguments (flattened into each binary) and one [`StoreArgs::open`],
//! so every tool opens its store the same way, with the same resilience.

use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

use crate::error::Result;
use crate::units::Dur;
use crate::zones::{Opened, S3Location, ZoneSettings};

const HEADING: &str = "Store";

/// `--store LOCATION` or `--zones FILE`, plus the [`Connection`] settings.
/// Global, so tools with subcommands take them before or after one.
#[derive(Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// Where the shards live: a directory, file:// or s3://bucket/prefix URL.
    #[arg(
        long,
        env = "DES_STORE",
        alias = "out",
        value_name = "LOCATION",
        conflicts_with = "zones",
        global = true, help_heading = HEADING
    )]
    pub store: Option<String>,
    /// A zones file (YAML or TOML): shards spread over several S3 locations.
    #[arg(long, env = "DES_ZONES", value_name = "FILE", global = true, help_heading = HEADING)]
    pub zones: Option<PathBuf>,
    #[command(flatten)]
    pub connection: Connection,
}

impl StoreArgs {
    /// A store location with default connection settings.
    pub fn at(location: impl Into<String>) -> Self {
        Self {
            store: Some(location.into()),
            ..Self::default()
        }
    }

    /// For a tool's `#[command(group = …)]`: one of `--store`/`--zones` is
    /// required (an environment value counts).
    pub fn required_group() -> clap::ArgGroup {
        clap::ArgGroup::new("store_or_zones")
            .args(["store", "zones"])
            .required(true)
    }

    /// The store, with retries and a circuit breaker on every S3 location.
    pub fn open(&self) -> Result<Opened> {
        crate::zones::open(
            self.store.as_deref(),
            self.zones.as_deref(),
            &self.connection,
        )
    }

    /// What the store is, for reports and logs.
    pub fn describe(&self) -> String {
        match (&self.store, &self.zones) {
            (Some(s), _) => s.clone(),
            (None, Some(z)) => format!("zones {}", z.display()),
            (None, None) => "(none)".into(),
        }
    }
}

/// How to reach S3 and how hard to try: for `s3://` stores and every zone
/// location. Unset fields keep the zones file's value, then the defaults.
/// The retriever reads the same fields from its config file and
/// `DES_RETRIEVER_*` variables.
#[derive(Args, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Connection {
    /// S3 endpoint URL, for locations that name none [default: AWS_ENDPOINT_URL_S3,
    /// AWS_ENDPOINT_URL, else AWS].
    #[arg(long, value_name = "URL", global = true, help_heading = HEADING)]
    pub s3_endpoint: Option<String>,
    /// S3 region, for locations that name none [default: AWS_REGION, else us-east-1].
    #[arg(long, value_name = "REGION", global = true, help_heading = HEADING)]
    pub s3_region: Option<String>,
    /// Attempts per storage request, the first included; 1 never retries [default: 4].
    #[arg(long, value_name = "N", global = true, help_heading = HEADING)]
    pub retry_attempts: Option<u32>,
    /// Time one attempt gets to answer [default: 10s].
    #[arg(long, value_name = "DURATION", global = true, help_heading = HEADING)]
    pub attempt_timeout: Option<Dur>,
    /// Time all attempts of one request get together [default: 30s].
    #[arg(long, value_name = "DURATION", global = true, help_heading = HEADING)]
    pub retry_deadline: Option<Dur>,
    /// A circuit breaker per S3 location: on or off [default: on].
    #[arg(long, value_name = "on|off", value_parser = parse_on_off, global = true,
          help_heading = HEADING)]
    pub breaker: Option<bool>,
    /// Failures in a row that open a breaker; 0 leaves only its failure-rate
    /// trigger [default: 5].
    #[arg(long, value_name = "N", global = true, help_heading = HEADING)]
    pub breaker_failures: Option<u32>,
    /// How long an open breaker refuses requests before it lets one probe through [default: 10s].
    #[arg(long, value_name = "DURATION", global = true, help_heading = HEADING)]
    pub breaker_cool_down: Option<Dur>,
}

impl Connection {
    /// `settings` with every field given here in place of its value.
    pub(crate) fn tune(&self, settings: &mut ZoneSettings) -> Result<()> {
        let retry = &mut settings.retry;
        retry.max_attempts = self.retry_attempts.unwrap_or(retry.max_attempts);
        if let Some(Dur(d)) = self.attempt_timeout {
            retry.attempt_timeout = Some(d);
        }
        if let Some(Dur(d)) = self.retry_deadline {
            retry.deadline = Some(d);
        }
        let breaker = &mut settings.breaker;
        breaker.enabled = self.breaker.unwrap_or(breaker.enabled);
        breaker.consecutive_failures = self
            .breaker_failures
            .unwrap_or(breaker.consecutive_failures);
        if let Some(Dur(d)) = self.breaker_cool_down {
            breaker.cool_down = d;
        }
        settings.retry.validate()?;
        settings.breaker.validate()
    }

    /// `location` with this endpoint and region where it names none: a
    /// zones file's own values are the more specific.
    pub(crate) fn fill(&self, mut location: S3Location) -> S3Location {
        if location.endpoint_url.is_none() {
            location.endpoint_url.clone_from(&self.s3_endpoint);
        }
        if location.region_name.is_none() {
            location.region_name.clone_from(&self.s3_region);
        }
        location
    }
}

/// `on`/`off` (also true/false, yes/no, 1/0): `--breaker` and the
/// retriever's `DES_RETRIEVER_BREAKER`.
pub fn parse_on_off(s: &str) -> std::result::Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{s:?}: expected on or off")),
    }
}
