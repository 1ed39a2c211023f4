//! S3 settings: `s3://bucket/prefix` parsing, environment overrides, and the
//! SDK client built from them.

use std::fmt;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};

use super::lean::LeanGet;
use crate::error::{Error, Result};
use crate::object::check_key;

/// Default multipart part size: large enough that a 10 000-part upload holds
/// 80 GiB, small enough that a writer's memory stays modest.
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// S3's minimum size for every part but the last.
pub const MIN_PART_SIZE: usize = 5 << 20;
/// S3's maximum part size.
pub const MAX_PART_SIZE: usize = 5 << 30;

/// Explicit credentials; without them the AWS default provider chain
/// (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, profiles, web identity,
/// container and instance metadata) is used.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl S3Credentials {
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        }
    }
}

impl fmt::Debug for S3Credentials {
    // Secrets must not end up in logs through `{:?}` of a config.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`; object
    /// `k` is stored as `prefix/k` (or `k` when the prefix is empty).
    pub prefix: String,
    /// `None`: `AWS_REGION` / profile, falling back to `us-east-1`.
    pub region: Option<String>,
    /// `None`: `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` (read by aws-config), else AWS.
    pub endpoint: Option<String>,
    /// Path-style addressing (`http://host/bucket/key`); Garage, MinIO and Ceph
    /// usually need it. Implied for IP and `localhost` endpoints.
    pub force_path_style: bool,
    /// Multipart part size for `put_writer` (at least [`MIN_PART_SIZE`]).
    pub part_size: usize,
    pub credentials: Option<S3Credentials>,
    /// Overrides the conditional-write probe: `Some(true)` trusts the server to
    /// enforce `If-None-Match`/`If-Match` on PUT, `Some(false)` declares it does not.
    pub conditional_put: Option<bool>,
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response.
    pub read_timeout: Duration,
    /// Object GETs on plain-`http://` path-style endpoints are signed and sent
    /// without the SDK's orchestrator (see `s3/lean.rs`); `false` keeps every
    /// request on the SDK.
    pub lean_get: bool,
}

impl S3Config {
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            prefix: String::new(),
            region: None,
            endpoint: None,
            force_path_style: false,
            part_size: DEFAULT_PART_SIZE,
            credentials: None,
            conditional_put: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            lean_get: true,
        }
    }

    /// Parses `s3://bucket[/prefix]` and applies the DES environment overrides:
    /// `DES_S3_FORCE_PATH_STYLE` (1/true; otherwise implied by an
    /// `AWS_ENDPOINT_URL[_S3]` on an IP or localhost), `DES_S3_PART_SIZE`
    /// (bytes), `DES_S3_CONDITIONAL_PUT` (1/true/0/false) and `DES_S3_LEAN_GET`
    /// (1/true/0/false, default true). Region, endpoint
    /// and credentials come from the standard `AWS_*` variables when the
    /// client is built.
    pub fn from_url(url: &str) -> Result<Self> {
        Self::from_url_with_env(url, |name| std::env::var(name).ok())
    }

    pub(crate) fn from_url_with_env(
        url: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| Error::Invalid(format!("{url}: expected s3://bucket/prefix")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let mut cfg = Self::new(bucket);
        cfg.prefix = prefix.trim_end_matches('/').to_string();
        if let Some(v) = env("DES_S3_FORCE_PATH_STYLE") {
            cfg.force_path_style = parse_bool("DES_S3_FORCE_PATH_STYLE", &v)?;
        } else if let Some(e) = env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL")) {
            // aws-config applies the endpoint itself; only the addressing
            // style has to be inferred here, as for an explicit endpoint.
            cfg.force_path_style = endpoint_needs_path_style(&e);
        }
        if let Some(v) = env("DES_S3_CONDITIONAL_PUT") {
            cfg.conditional_put = Some(parse_bool("DES_S3_CONDITIONAL_PUT", &v)?);
        }
        if let Some(v) = env("DES_S3_LEAN_GET") {
            cfg.lean_get = parse_bool("DES_S3_LEAN_GET", &v)?;
        }
        if let Some(v) = env("DES_S3_PART_SIZE") {
            cfg.part_size = v
                .trim()
                .parse()
                .map_err(|_| Error::Invalid(format!("DES_S3_PART_SIZE={v:?}: expected bytes")))?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Sets the key prefix; surrounding `/` are dropped.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().trim_matches('/').to_string();
        self
    }

    /// Path-style addressing, explicitly asked for or implied by an endpoint
    /// on an IP address or `localhost`, where virtual-host style (bucket as
    /// a subdomain) cannot resolve.
    pub fn path_style(&self) -> bool {
        self.force_path_style
            || self
                .endpoint
                .as_deref()
                .is_some_and(endpoint_needs_path_style)
    }

    /// Rejects settings that would fail later in confusing ways.
    pub fn validate(&self) -> Result<()> {
        let b = &self.bucket;
        let bucket_ok = (3..=63).contains(&b.len())
            && b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_');
        if !bucket_ok {
            return Err(Error::Invalid(format!("invalid S3 bucket name {b:?}")));
        }
        if !self.prefix.is_empty() {
            check_key(&self.prefix)
                .map_err(|_| Error::Invalid(format!("invalid S3 key prefix {:?}", self.prefix)))?;
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return Err(Error::Invalid(format!(
                "S3 part size {} outside {MIN_PART_SIZE}..={MAX_PART_SIZE}",
                self.part_size
            )));
        }
        Ok(())
    }

    /// `s3://bucket/prefix`, for logs.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    /// Builds the SDK client, and the lean GET client where it applies. Loads
    /// the shared AWS configuration (environment, profiles), so it is async;
    /// the store calls it once, on first use.
    pub(crate) async fn build_client(&self) -> (aws_sdk_s3::Client, Option<LeanGet>) {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            // Retries belong to the wrapper store above us, so every request we
            // make is one the caller asked for and request counts stay exact.
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts)
            // Checksums only where S3 requires them: with "when supported" the
            // SDK switches uploads to aws-chunked bodies with trailing
            // checksums, which several S3-compatible servers reject.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &self.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(c) = &self.credentials {
            loader = loader.credentials_provider(Credentials::new(
                &c.access_key_id,
                &c.secret_access_key,
                c.session_token.clone(),
                None,
                "des-s3-config",
            ));
        }
        let shared = loader.load().await;
        let mut builder =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(self.path_style());
        if shared.region().is_none() {
            // Custom endpoints still need a region to sign with; us-east-1 is
            // what S3-compatible servers accept when they do not care.
            builder = builder.region(Region::new("us-east-1"));
        }
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
            .or_else(|| shared.endpoint_url().map(str::to_string));
        let plain_http = endpoint.as_ref().filter(|e| e.starts_with("http://"));
        if plain_http.is_some() {
            builder = builder.http_client(super::quickack::client(
                self.connect_timeout,
                self.read_timeout,
            ));
        }
        let config = builder.build();
        let lean = match (plain_http, config.region(), shared.credentials_provider()) {
            (Some(endpoint), Some(region), Some(credentials))
                if self.lean_get && self.path_style() =>
            {
                Some(LeanGet::new(
                    endpoint,
                    &self.bucket,
                    region.to_string(),
                    credentials,
                    self.connect_timeout,
                    self.read_timeout,
                ))
            }
            _ => None,
        };
        (aws_sdk_s3::Client::from_conf(config), lean)
    }
}

fn endpoint_needs_path_style(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.strip_prefix('[') {
        Some(v6) => return v6.contains(']'),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost" || host.parse::<std::net::Ipv4Addr>().is_ok()
}

fn parse_bool(name: &str, v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(Error::Invalid(format!(
            "{name}={v:?}: expected 1/true or 0/false"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn parses_urls() {
        let c = S3Config::from_url_with_env("s3://my-bucket/some/prefix/", env(&[])).unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("my-bucket", "some/prefix")
        );
        assert_eq!(c.url(), "s3://my-bucket/some/prefix");
        assert_eq!(c.part_size, DEFAULT_PART_SIZE);
        assert!(!c.force_path_style);
        let c = S3Config::from_url_with_env("s3://bkt", env(&[])).unwrap();
        assert_eq!(c.prefix, "");
        assert_eq!(c.url(), "s3://bkt");
        for bad in [
            "s3://",
            "s3:///x",
            "file:///x",
            "s3://b/x",
            "s3://bkt/a//b",
            "s3://bkt/../x",
        ] {
            assert!(S3Config::from_url_with_env(bad, env(&[])).is_err(), "{bad}");
        }
    }

    #[test]
    fn environment_overrides() {
        let vars = [
            ("DES_S3_FORCE_PATH_STYLE", "1"),
            ("DES_S3_PART_SIZE", "6291456"),
            ("DES_S3_CONDITIONAL_PUT", "false"),
            ("DES_S3_LEAN_GET", "0"),
        ];
        let c = S3Config::from_url_with_env("s3://bkt/p", env(&vars)).unwrap();
        assert!(!c.lean_get);
        assert!(
            S3Config::from_url_with_env("s3://bkt/p", env(&[]))
                .unwrap()
                .lean_get
        );
        assert!(c.force_path_style);
        assert_eq!(c.part_size, 6 << 20);
        assert_eq!(c.conditional_put, Some(false));
        let local = [("AWS_ENDPOINT_URL", "http://127.0.0.1:3900")];
        assert!(
            S3Config::from_url_with_env("s3://bkt", env(&local))
                .unwrap()
                .force_path_style
        );
        let off = [
            ("AWS_ENDPOINT_URL_S3", "http://localhost:3900"),
            ("DES_S3_FORCE_PATH_STYLE", "0"),
        ];
        assert!(
            !S3Config::from_url_with_env("s3://bkt", env(&off))
                .unwrap()
                .force_path_style
        );
        let small = [("DES_S3_PART_SIZE", "1024")];
        assert!(S3Config::from_url_with_env("s3://bkt", env(&small)).is_err());
        let junk = [("DES_S3_FORCE_PATH_STYLE", "maybe")];
        assert!(S3Config::from_url_with_env("s3://bkt", env(&junk)).is_err());
    }

    #[test]
    fn path_style_for_ip_endpoints() {
        let with = |e: &str| S3Config {
            endpoint: Some(e.into()),
            ..S3Config::new("bkt")
        };
        assert!(with("http://127.0.0.1:3900").path_style());
        assert!(with("http://localhost:9000/").path_style());
        assert!(with("http://[::1]:3900").path_style());
        assert!(!with("https://s3.eu-west-1.amazonaws.com").path_style());
        assert!(!with("https://garage.example.com:3900").path_style());
        assert!(!S3Config::new("bkt").path_style());
        let forced = S3Config {
            force_path_style: true,
            ..S3Config::new("bkt")
        };
        assert!(forced.path_style());
    }

    #[test]
    fn secrets_are_not_printed() {
        let mut c = S3Config::new("bkt");
        c.credentials = Some(S3Credentials::new("AKID", "very-secret"));
        let shown = format!("{c:?}");
        assert!(
            shown.contains("AKID") && !shown.contains("very-secret"),
            "{shown}"
        );
    }
}
