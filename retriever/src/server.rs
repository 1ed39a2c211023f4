//! The actix application (routes, request ids, access log) and the server
//! around it.

use std::future::Future;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{App, HttpServer, web};
use prometheus::IntCounterVec;
use std::sync::Arc;
use tracing::Instrument;

use crate::auth::Auth;
use crate::config::{LogFormat, Settings};
use crate::error::{ApiError, ErrorKind};
use crate::http;
use crate::state::AppState;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const MAX_REQUEST_ID_LEN: usize = 128;

/// The caller's id if it is safe to log and echo, else a fresh random one.
pub fn request_id(incoming: Option<&HeaderValue>) -> String {
    let usable = incoming.and_then(|v| v.to_str().ok()).filter(|s| {
        !s.is_empty()
            && s.len() <= MAX_REQUEST_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    });
    match usable {
        Some(id) => id.to_string(),
        None => format!("{:016x}", rand::random::<u64>()),
    }
}

/// Routes and middleware of the public port; used by the binary and by tests alike.
pub fn app(
    state: web::Data<AppState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let requests = state.retriever.metrics().http_requests.clone();
    App::new()
        .app_data(state)
        .route("/health", web::get().to(http::health))
        .route("/ready", web::get().to(http::ready_public))
        .route("/metrics", web::get().to(http::metrics_public))
        .default_service(web::to(http::files_or_no_route))
        .wrap_fn(move |req, srv| {
            if let Some(conn) = req.conn_data::<OpenConnection>() {
                conn.requests
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let id = request_id(req.headers().get(&REQUEST_ID));
            let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.path());
            let started = Instant::now();
            let fut = span.in_scope(|| srv.call(req));
            access_log(fut, id, started, requests.clone()).instrument(span)
        })
}

/// The admin port (`--admin-listen`): health, detailed readiness and
/// metrics, without keys; reachable only where the operator lets it be.
pub fn admin_app(
    state: web::Data<AppState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(state)
        .route("/health", web::get().to(http::health))
        .route("/ready", web::get().to(http::ready_admin))
        .route("/metrics", web::get().to(http::metrics))
        .default_service(web::to(http::no_route))
}

async fn access_log<B>(
    fut: impl Future<Output = Result<ServiceResponse<B>, actix_web::Error>>,
    id: String,
    started: Instant,
    requests: IntCounterVec,
) -> Result<ServiceResponse<B>, actix_web::Error> {
    let mut res = fut.await?;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    let status = res.status();
    // The route pattern, never the raw path: label values must stay few.
    let req = res.request();
    let route = match req.match_pattern() {
        Some(p) => route_label(&p),
        None if http::files_path_rest(req.path()).is_some() => http::FILES_ROUTE.to_string(),
        None => "unmatched".to_string(),
    };
    requests
        .with_label_values(&[route.as_str(), status.as_str()])
        .inc();
    let status = status.as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let overloaded = |e: &actix_web::Error| {
        e.as_error::<ApiError>()
            .is_some_and(|e| e.kind == ErrorKind::Overloaded)
    };
    match res.response().error() {
        // Counted in des_overload_rejections_total; a crowd turned away
        // must not flood the log at error level.
        Some(e) if overloaded(e) => tracing::debug!(status, ms, error = %e, "request refused"),
        Some(e) if status >= 500 => tracing::error!(status, ms, error = %e, "request failed"),
        Some(e) => tracing::info!(status, ms, error = %e, "request done"),
        None => tracing::info!(status, ms, "request done"),
    }
    Ok(res)
}

/// A route pattern without its segment regexes: `/files/{uid:.*}` → `/files/{uid}`.
/// (Our patterns' regexes contain no braces.)
pub fn route_label(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let (mut in_segment, mut in_regex) = (false, false);
    for c in pattern.chars() {
        match c {
            '{' => in_segment = true,
            ':' if in_segment => in_regex = true,
            '}' => (in_segment, in_regex) = (false, false),
            _ => {}
        }
        if !in_regex {
            out.push(c);
        }
    }
    out
}

/// One open connection in `des_http_connections`, for as long as it lives.
/// One that closes before a complete request arrived (a slow or idle head
/// cut off by `client_request_timeout`, or a client that never sent one) is
/// counted in `des_http_connections_without_request_total`.
struct OpenConnection {
    open: prometheus::IntGauge,
    without_request: prometheus::IntCounter,
    requests: std::sync::atomic::AtomicU64,
}

impl OpenConnection {
    fn new(open: prometheus::IntGauge, without_request: prometheus::IntCounter) -> Self {
        open.inc();
        Self {
            open,
            without_request,
            requests: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.dec();
        if *self.requests.get_mut() == 0 {
            self.without_request.inc();
        }
    }
}

/// The public server and, if configured, the admin one.
pub struct Servers {
    public: actix_web::dev::Server,
    admin: Option<actix_web::dev::Server>,
}

impl Servers {
    /// Runs until SIGTERM/SIGINT (each server stops on it); the first error wins.
    pub async fn run(self) -> std::io::Result<()> {
        match self.admin {
            Some(admin) => futures::try_join!(self.public, admin).map(|_| ()),
            None => self.public.await,
        }
    }
}

/// Binds and runs until SIGTERM/SIGINT, then lets in-flight requests finish
/// for `shutdown_timeout`. Bind errors come back before anything is served.
pub fn bind(settings: &Settings, state: AppState) -> std::io::Result<Servers> {
    let data = web::Data::new(state);
    let guards = &settings.guards;
    let workers = settings.workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let public_data = data.clone();
    let metrics = data.retriever.metrics();
    let connections = metrics.http_connections.clone();
    let without_request = metrics.http_connections_without_request.clone();
    metrics
        .http_connections_max
        .set(i64::try_from(guards.max_connections).unwrap_or(i64::MAX));
    let public = HttpServer::new(move || app(public_data.clone()))
        // Kept in the connection's own data, so dropped (and uncounted) when it closes.
        .on_connect(move |_, ext| {
            ext.insert(OpenConnection::new(
                connections.clone(),
                without_request.clone(),
            ));
        })
        .workers(workers)
        // actix counts connections per worker; the setting is for the process.
        .max_connections(guards.max_connections.div_ceil(workers))
        .client_request_timeout(guards.client_request_timeout)
        .keep_alive(guards.keep_alive)
        .shutdown_timeout(settings.shutdown_timeout.as_secs())
        .bind(&settings.listen)?;
    for addr in public.addrs() {
        tracing::info!(%addr, store = %settings.source, "listening");
    }
    let admin = match &guards.admin_listen {
        Some(listen) => {
            let server = HttpServer::new(move || admin_app(data.clone()))
                .workers(1)
                .client_request_timeout(guards.client_request_timeout)
                .shutdown_timeout(settings.shutdown_timeout.as_secs())
                .bind(listen)?;
            for addr in server.addrs() {
                tracing::info!(%addr, "admin listening (/health, /ready, /metrics)");
            }
            Some(server.run())
        }
        None => None,
    };
    Ok(Servers {
        public: public.run(),
        admin,
    })
}

/// Reloads the API keys on every SIGHUP until the runtime stops. Requests
/// in flight keep the keys they started with; a bad file keeps the old keys.
pub fn reload_keys_on_sighup(auth: Arc<Auth>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    actix_web::rt::spawn(async move {
        while hangups.recv().await.is_some() {
            match auth.reload() {
                Ok(n) => tracing::info!(keys = n, "API keys reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "API keys not reloaded; keeping the previous keys")
                }
            }
        }
    });
    Ok(())
}

/// Reloads the API keys whenever the file's content changes, checked every
/// `every`: a Kubernetes Secret mounted as a volume is replaced in place (an
/// atomic swap of the `..data` symlink), and the image has no `kill` to send
/// SIGHUP. The content is compared, not the mtime, so the swap is seen
/// whatever the timestamps say; a broken file keeps the old keys (once
/// logged, until it changes again).
pub fn reload_keys_when_changed(auth: Arc<Auth>, every: std::time::Duration) {
    let Some(path) = auth.path().map(std::path::Path::to_path_buf) else {
        return;
    };
    actix_web::rt::spawn(async move {
        let mut seen = std::fs::read(&path).ok();
        loop {
            actix_web::rt::time::sleep(every).await;
            // Missing for a moment (mid-swap) is no change.
            let Ok(now) = std::fs::read(&path) else {
                continue;
            };
            if seen.as_deref() == Some(now.as_slice()) {
                continue;
            }
            seen = Some(now);
            match auth.reload() {
                Ok(n) => tracing::info!(keys = n, "API keys reloaded (file changed)"),
                Err(e) => {
                    tracing::error!(error = %e, "API keys not reloaded; keeping the previous keys")
                }
            }
        }
    });
}

/// Installs the global subscriber: `RUST_LOG` filter (default info), text or JSON on stderr.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // Another subscriber (a test harness) may already be installed; keep it.
    let _ = if format == LogFormat::Json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn route_labels_drop_regexes() {
        assert_eq!(super::route_label("/files/{uid:.*}"), "/files/{uid}");
        assert_eq!(super::route_label("/a/{x}/b:c"), "/a/{x}/b:c");
        assert_eq!(super::route_label("/health"), "/health");
    }
}
