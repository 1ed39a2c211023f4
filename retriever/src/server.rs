//! The actix application (routes, request ids, access log) and the server
//! around it.

use std::future::Future;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{App, HttpServer, web};
use des_storage::{DesStore, Layout, ObjectStore};
use std::sync::Arc;
use tracing::Instrument;

use crate::config::Settings;
use crate::http;
use crate::lookup::{CacheConfig, Retriever};

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

/// Routes and middleware; used by the binary and by tests alike.
pub fn app(
    retriever: web::Data<Retriever>,
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
        .app_data(retriever)
        .route("/health", web::get().to(http::health))
        .route("/ready", web::get().to(http::ready))
        .service(
            web::resource("/files/{uid:.*}")
                .route(web::get().to(http::get_file))
                .route(web::head().to(http::get_file)),
        )
        .default_service(web::to(http::no_route))
        .wrap_fn(|req, srv| {
            let id = request_id(req.headers().get(&REQUEST_ID));
            let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.path());
            let started = Instant::now();
            let fut = span.in_scope(|| srv.call(req));
            access_log(fut, id, started).instrument(span)
        })
}

async fn access_log<B>(
    fut: impl Future<Output = Result<ServiceResponse<B>, actix_web::Error>>,
    id: String,
    started: Instant,
) -> Result<ServiceResponse<B>, actix_web::Error> {
    let mut res = fut.await?;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    let status = res.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match res.response().error() {
        Some(e) if status >= 500 => tracing::error!(status, ms, error = %e, "request failed"),
        Some(e) => tracing::info!(status, ms, error = %e, "request done"),
        None => tracing::info!(status, ms, "request done"),
    }
    Ok(res)
}

/// Opens the configured store on `objects` (the caller may wrap the backend).
pub async fn open_retriever(
    objects: Arc<dyn ObjectStore>,
    settings: &Settings,
) -> Result<Retriever, des_storage::Error> {
    let store = match (settings.layout, settings.n_bits) {
        (Layout::Legacy, Some(n)) => DesStore::legacy(objects, n)?,
        (Layout::Legacy, None) => {
            return Err(des_storage::Error::Invalid(
                "a legacy store needs n_bits".into(),
            ));
        }
        (Layout::V3, _) => DesStore::open(objects).await?,
    };
    let cache = CacheConfig {
        index_bytes: settings.cache_bytes,
        index_ttl: settings.cache_ttl,
        negative_ttl: settings.negative_ttl,
        ..CacheConfig::default()
    };
    Ok(Retriever::new(
        store.with_suffix_len(settings.suffix_bytes),
        &cache,
    ))
}

/// Binds and runs until SIGTERM/SIGINT, then lets in-flight requests finish
/// for `shutdown_timeout`. Bind errors come back before anything is served.
pub fn bind(settings: &Settings, retriever: Retriever) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::new(retriever);
    let mut server = HttpServer::new(move || app(data.clone()))
        .shutdown_timeout(settings.shutdown_timeout.as_secs())
        .bind(&settings.listen)?;
    if let Some(n) = settings.workers {
        server = server.workers(n);
    }
    for addr in server.addrs() {
        tracing::info!(%addr, store = %settings.store, "listening");
    }
    Ok(server.run())
}

/// Installs the global subscriber: `RUST_LOG` filter (default info), text or JSON on stderr.
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // Another subscriber (a test harness) may already be installed; keep it.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
