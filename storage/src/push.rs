//! Pushing a batch run's metrics to a Prometheus Pushgateway
//! (`--pushgateway URL`, env `DES_PUSHGATEWAY_URL`) for the batch tools:
//! `des-pack`, `des-migrate`, `des-repack` and `des-verify`.
//!
//! A batch pod on Kubernetes is gone before Prometheus could scrape it, so
//! at the end of a run the tool PUTs the text its `--metrics-file` holds to
//! `{URL}/metrics/job/{binary}`. Metrics are secondary to the run: the
//! caller reports a failed push on stderr and keeps its exit status (pushes
//! that stop arriving show up as a stale `push_time_seconds` /
//! `des_verify_last_run_timestamp_seconds`, which alerts can watch).
//!
//! Grouping key: the job alone, no `instance`. A CronJob's pod, and so its
//! hostname, is new on every run, and the Pushgateway never expires a group:
//! with the pod as `instance` every run would leave a group behind for good,
//! and `max(des_verify_corrupt_entries_total)` would still see a corrupt run
//! weeks after clean ones. With the job alone each run's PUT replaces the
//! whole previous group, so the Pushgateway holds exactly the last run, no
//! metric of an earlier run lingers, and Prometheus (`honor_labels: true`)
//! sees `job="des-repack"` / `job="des-verify"`, `instance=""`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::Connect;
use hyper_util::rt::TokioExecutor;

/// The Prometheus text exposition format the tools write.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";
/// Per attempt (connect, send, answer): a Pushgateway answers in
/// milliseconds, and a batch pod should not hang on one that does not.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Between the two attempts, for a Pushgateway pod that is restarting.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// The Pushgateway's error answers are one line of text.
const ERROR_BODY_MAX: usize = 4 << 10;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("{url:?} is not a Pushgateway URL: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("{job:?} cannot be a job label in a Pushgateway URL")]
    InvalidJob { job: String },
    #[error("https: setting up TLS (root certificates)")]
    Tls(#[source] std::io::Error),
    #[error("PUT {url}")]
    Transport {
        url: String,
        #[source]
        source: BoxError,
    },
    #[error("PUT {url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("PUT {url}: the Pushgateway answered {status}: {body}")]
    Rejected {
        url: String,
        status: StatusCode,
        body: String,
    },
}

impl PushError {
    /// Worth one more attempt: the Pushgateway may be restarting or briefly
    /// unreachable. A 4xx (metrics it refuses) would be refused again.
    fn is_transient(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::Timeout { .. } => true,
            Self::Rejected { status, .. } => status.is_server_error(),
            Self::InvalidUrl { .. } | Self::InvalidJob { .. } | Self::Tls(_) => false,
        }
    }
}

/// A validated Pushgateway base URL: `http://` or `https://`, a host, an
/// optional path prefix (a Pushgateway behind a proxy), no query, fragment
/// or credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushgateway {
    /// Without a trailing `/`.
    base: String,
    https: bool,
    timeout: Duration,
}

impl Pushgateway {
    /// For clap's `value_parser`: a bad URL is a usage error (exit 2)
    /// before the tool does any work.
    pub fn parse(url: &str) -> Result<Self, PushError> {
        let invalid = |reason: &str| PushError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (https, rest) = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
            _ => return Err(invalid("it must start with http:// or https://")),
        };
        if rest.is_empty() || rest.starts_with('/') {
            return Err(invalid("it has no host"));
        }
        // `Uri` silently drops a fragment; the Pushgateway takes no query.
        if url.contains('?') {
            return Err(invalid("it must not have a query (?…)"));
        }
        if url.contains('#') {
            return Err(invalid("it must not have a fragment (#…)"));
        }
        let uri: Uri = url.parse().map_err(|e| invalid(&format!("{e}")))?;
        let Some(authority) = uri.authority() else {
            return Err(invalid("it has no host"));
        };
        // Nothing would send them: refuse rather than push unauthenticated.
        if authority.as_str().contains('@') {
            return Err(invalid("credentials in the URL are not supported"));
        }
        if authority.host().is_empty() {
            return Err(invalid("it has no host"));
        }
        let scheme = if https { "https" } else { "http" };
        let path = uri.path().trim_end_matches('/');
        Ok(Self {
            base: format!("{scheme}://{authority}{path}"),
            https,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Another per-attempt timeout than [`DEFAULT_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Where a job's group lives: `{base}/metrics/job/{job}`.
    pub fn job_url(&self, job: &str) -> Result<String, PushError> {
        // Other characters would need the Pushgateway's `@base64` form; the
        // jobs are binary names, so they never do.
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if job.is_empty() || !job.chars().all(plain) {
            return Err(PushError::InvalidJob {
                job: job.to_string(),
            });
        }
        Ok(format!("{}/metrics/job/{job}", self.base))
    }

    /// PUTs `text` (Prometheus text format) as the whole group of `job`,
    /// replacing what an earlier run pushed. One retry after a connection
    /// error, a timeout or a 5xx.
    pub async fn push(&self, job: &str, text: &str) -> Result<(), PushError> {
        let url = self.job_url(job)?;
        let uri: Uri = url.parse().map_err(|e| PushError::InvalidUrl {
            url: url.clone(),
            reason: format!("{e}"),
        })?;
        let put = Put {
            uri,
            url,
            body: Bytes::copy_from_slice(text.as_bytes()),
            timeout: self.timeout,
        };
        if self.https {
            // Roots are loaded only for https, so a plain-http push works in
            // an image without CA certificates. The provider is named
            // explicitly: rustls panics on a default it cannot choose.
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
                .map_err(PushError::Tls)?
                .https_only()
                .enable_http1()
                .build();
            put.with_retry(Client::builder(TokioExecutor::new()).build(connector))
                .await
        } else {
            put.with_retry(Client::builder(TokioExecutor::new()).build_http())
                .await
        }
    }
}

impl FromStr for Pushgateway {
    type Err = PushError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Pushgateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

struct Put {
    uri: Uri,
    url: String,
    body: Bytes,
    timeout: Duration,
}

impl Put {
    async fn with_retry<C>(&self, client: Client<C, Full<Bytes>>) -> Result<(), PushError>
    where
        C: Connect + Clone + Send + Sync + 'static,
    {
        match self.once(&client).await {
            Err(e) if e.is_transient() => {
                tokio::time::sleep(RETRY_PAUSE).await;
                self.once(&client).await
            }
            done => done,
        }
    }

    async fn once<C>(&self, client: &Client<C, Full<Bytes>>) -> Result<(), PushError>
    where
        C: Connect + Clone + Send + Sync + 'static,
    {
        let transport = |source: BoxError| PushError::Transport {
            url: self.url.clone(),
            source,
        };
        let request = Request::builder()
            .method(Method::PUT)
            .uri(self.uri.clone())
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .body(Full::new(self.body.clone()))
            .map_err(|e| transport(e.into()))?;
        let attempt = async {
            let response = client
                .request(request)
                .await
                .map_err(|e| transport(e.into()))?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let body = match Limited::new(response.into_body(), ERROR_BODY_MAX)
                .collect()
                .await
            {
                Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
                Err(_) => "(no readable message)".to_string(),
            };
            Err(PushError::Rejected {
                url: self.url.clone(),
                status,
                body,
            })
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(PushError::Timeout {
                    url: self.url.clone(),
                    timeout: self.timeout,
                })
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn urls_are_validated() {
        let ok = Pushgateway::parse("http://pushgateway.monitoring.svc:9091").unwrap();
        assert_eq!(
            ok.job_url("des-repack").unwrap(),
            "http://pushgateway.monitoring.svc:9091/metrics/job/des-repack"
        );
        let prefixed = Pushgateway::parse("HTTPS://gw.example/push/").unwrap();
        assert_eq!(
            prefixed.job_url("des-verify").unwrap(),
            "https://gw.example/push/metrics/job/des-verify"
        );
        for (bad, why) in [
            ("pushgateway:9091", "http:// or https://"),
            ("ftp://gw:21", "http:// or https://"),
            ("", "http:// or https://"),
            ("http://gw:9091/?x=1", "query"),
            ("http://gw:9091/#top", "fragment"),
            ("http://user:pw@gw:9091", "credentials"),
            ("http://", "host"),
            ("http://gw 9091", "not a Pushgateway URL"),
        ] {
            let e = Pushgateway::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(ok.job_url("a/b").is_err());
        assert!(ok.job_url("").is_err());
    }

    /// One request as the server saw it.
    struct Seen {
        request_line: String,
        content_type: String,
        body: String,
    }

    /// A server answering each connection with the next of `statuses`.
    fn server(statuses: &'static [u16]) -> (Pushgateway, mpsc::Receiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let gw = Pushgateway::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for status in statuses {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let (mut content_type, mut length) = (String::new(), 0usize);
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    let (name, value) = line.split_once(':').unwrap();
                    match name.to_ascii_lowercase().as_str() {
                        "content-type" => content_type = value.trim().to_string(),
                        "content-length" => length = value.trim().parse().unwrap(),
                        _ => {}
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let answer = "refused for a reason\n";
                write!(
                    &stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                )
                .unwrap();
                let _ = tx.send(Seen {
                    request_line: request_line.trim_end().to_string(),
                    content_type,
                    body: String::from_utf8(body).unwrap(),
                });
            }
        });
        (gw, rx)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn puts_the_text_to_the_job_group() {
        let (gw, seen) = server(&[200]);
        rt().block_on(gw.push("des-repack", "m 1\n")).unwrap();
        let s = seen.recv().unwrap();
        assert_eq!(s.request_line, "PUT /metrics/job/des-repack HTTP/1.1");
        assert_eq!(s.content_type, CONTENT_TYPE);
        assert_eq!(s.body, "m 1\n");
    }

    #[test]
    fn a_server_error_is_retried_once() {
        let (gw, seen) = server(&[503, 202]);
        rt().block_on(gw.push("des-verify", "m 1\n")).unwrap();
        assert_eq!(seen.iter().take(2).count(), 2);

        let (gw, _) = server(&[503, 502]);
        let e = rt().block_on(gw.push("des-verify", "m 1\n")).unwrap_err();
        assert!(e.to_string().contains("502"), "{e}");
    }

    #[test]
    fn refused_metrics_are_not_retried() {
        let (gw, seen) = server(&[400, 200]);
        let e = rt().block_on(gw.push("des-verify", "m 1\n")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("400") && msg.contains("refused for a reason"),
            "{msg}"
        );
        assert_eq!(seen.iter().take(1).count(), 1);
        assert!(seen.try_recv().is_err(), "a second attempt was made");
    }

    #[test]
    fn https_sets_up_tls_without_panicking() {
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let gw = Pushgateway::parse(&format!("https://{closed}")).unwrap();
        let e = rt().block_on(gw.push("des-verify", "m 1\n")).unwrap_err();
        // Tls only where the system has no CA certificates at all.
        assert!(
            matches!(e, PushError::Transport { .. } | PushError::Tls(_)),
            "{e}"
        );
    }

    #[test]
    fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let gw = Pushgateway::parse(&format!("http://{}", listener.local_addr().unwrap()))
            .unwrap()
            .with_timeout(Duration::from_millis(200));
        // Connections are accepted by the kernel's backlog and never answered.
        let e = rt().block_on(gw.push("des-verify", "m 1\n")).unwrap_err();
        assert!(matches!(e, PushError::Timeout { .. }), "{e}");
        drop(listener);
    }
}
