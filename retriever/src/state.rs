//! What every request handler shares: the retriever, the API keys and the
//! rate limiters, and the gate a file request passes before any lookup.

use std::sync::Arc;

use actix_web::HttpRequest;

use crate::admission::Admission;
use crate::auth::{Auth, AuthError, Principal, Scope};
use crate::backend::Storage;
use crate::config::{AuthSetting, Settings};
use crate::error::ApiError;
use crate::limits::Limits;
use crate::lookup::{CacheConfig, Retriever};
use crate::metrics::{Metrics, MetricsError};
use crate::representation::CacheHeaders;
use crate::retention::Retention;
use crate::tombstones::Deleted;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open store: {0}")]
    Storage(#[from] des_storage::Error),
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Metrics(#[from] MetricsError),
}

#[derive(Debug)]
pub struct AppState {
    pub retriever: Retriever,
    pub auth: Arc<Auth>,
    pub limits: Limits,
    /// Deleted files; `None` for legacy stores, which cannot be deleted from.
    pub deleted: Option<Arc<Deleted>>,
    /// Files expired by retention rules; `None` for legacy stores. Polled
    /// with the tombstones (`Deleted` holds it for that).
    pub retention: Option<Arc<Retention>>,
    pub admission: Admission,
    pub cache_headers: CacheHeaders,
    /// An admin listener serves `/metrics`; the public port does not.
    pub admin_listener: bool,
    /// The last readiness probe, reused for a moment (see [`crate::http::ready`]).
    pub readiness: crate::ready::Readiness,
}

impl AppState {
    /// Opens everything `settings` asks for on `storage`.
    pub async fn open(storage: &Storage, settings: &Settings) -> Result<Self, StartError> {
        let auth = Arc::new(Auth::from_setting(&settings.auth)?);
        let metrics = Arc::new(Metrics::new()?);
        let retriever = open_retriever(storage, settings, Arc::clone(&metrics)).await?;
        let (deleted, retention) = match retriever.store().layout() {
            des_storage::Layout::V3 => {
                let hot = retriever.hot().cloned();
                let retention =
                    Arc::new(Retention::load(retriever.store(), &metrics, hot.clone()).await?);
                let deleted = Deleted::load(retriever.store(), &metrics, hot)
                    .await?
                    .with_retention(Arc::clone(&retention));
                (Some(Arc::new(deleted)), Some(retention))
            }
            des_storage::Layout::Legacy => (None, None),
        };
        let auth_on = !matches!(settings.auth, AuthSetting::Off);
        Ok(Self {
            admission: Admission::new(&settings.guards, &metrics),
            cache_headers: CacheHeaders::new(settings.guards.caching, auth_on),
            readiness: crate::ready::Readiness::default(),
            admin_listener: settings.guards.admin_listen.is_some(),
            retriever,
            auth,
            limits: Limits::new(&settings.rate_limits, settings.guards.ipv6_prefix),
            deleted,
            retention,
        })
    }

    /// Rate limits, then the key, then what the key may do: 429, 401, 403.
    /// Runs before any lookup, so a refused request learns nothing about
    /// which files exist and costs no storage request.
    pub fn admit(&self, req: &HttpRequest, scope: Scope, uid: &str) -> Result<Principal, ApiError> {
        self.limits.check_ip(req.peer_addr().map(|a| a.ip()))?;
        let principal = self.auth.authenticate(req.headers())?;
        self.limits.check_key(principal.name())?;
        principal.authorize(scope, uid)?;
        Ok(principal)
    }

    /// 410 if `(uid, created_at)` was deleted, or a retention rule expired
    /// it (`reason: retention_expired`) and no legal hold keeps it.
    pub fn check_not_deleted(
        &self,
        uid: &str,
        created_at: des_format::Timestamp,
    ) -> Result<(), ApiError> {
        match &self.deleted {
            Some(d) if d.contains(uid, created_at) => Err(ApiError::gone(format!(
                "{uid:?} of {} was deleted",
                created_at.date_dir()
            ))),
            _ => self.check_not_expired(uid, created_at),
        }
    }

    fn check_not_expired(
        &self,
        uid: &str,
        created_at: des_format::Timestamp,
    ) -> Result<(), ApiError> {
        let Some(e) = self
            .retention
            .as_ref()
            .and_then(|r| r.expired(uid, created_at))
        else {
            return Ok(());
        };
        Err(ApiError::gone_because(
            "retention_expired",
            format!(
                "{uid:?} of {} expired on {} under retention rule {:?} ({} days, rules version {})",
                created_at.date_dir(),
                e.expired_on,
                e.uid_prefix,
                e.max_age_days,
                e.rules_version
            ),
        ))
    }
}

/// Opens the DES store on `storage` (reads counted in `metrics`).
pub async fn open_retriever(
    storage: &Storage,
    settings: &Settings,
    metrics: Arc<Metrics>,
) -> Result<Retriever, des_storage::Error> {
    use des_storage::{DesStore, Layout};
    let placement = storage.metered(&metrics);
    let store = match (settings.layout, settings.n_bits) {
        // An auto store is a v3 one (deletes, tombstones) whose lookups may
        // fall back to legacy parts.
        _ if settings.layout_auto => DesStore::open_auto_placed(placement, settings.n_bits).await?,
        (Layout::Legacy, Some(n)) => DesStore::legacy_placed(placement, n)?,
        (Layout::Legacy, None) => {
            return Err(des_storage::Error::Invalid(
                "a legacy store needs n_bits".into(),
            ));
        }
        (Layout::V3, _) => DesStore::open_placed(placement).await?,
    };
    let cache = CacheConfig {
        index_bytes: settings.cache_bytes,
        page_bytes: settings.page_cache_bytes,
        index_ttl: settings.cache_ttl,
        negative_ttl: settings.negative_ttl,
        payload_bytes: settings.payload_cache_bytes,
        payload_max_entry: settings.payload_cache_max_entry_bytes,
        ..CacheConfig::default()
    };
    Ok(Retriever::new(
        store.with_suffix_len(settings.suffix_bytes),
        storage.backends.clone(),
        metrics,
        &cache,
    ))
}
