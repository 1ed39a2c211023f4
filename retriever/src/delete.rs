//! `DELETE /files/{uid}?created_at=…&reason=…[&ticket_id=…][&deleted_by=…]`:
//! a request to tombstone one file. Parameters and the `delete` scope are
//! checked here; [`delete_file`] logs the tombstone.

use actix_web::{HttpRequest, HttpResponse, web};
use des_format::Timestamp;
use serde::Deserialize;

use des_storage::tombstones::{DeleteReason, MAX_LABEL_LEN, Tombstone};

use crate::auth::Scope;
use crate::error::{ApiError, ErrorKind};
use crate::http::parse_created_at;
use crate::state::AppState;

/// Free-text fields end up in an append-only audit log: keep them short and
/// printable so the log stays readable and bounded.
const MAX_TEXT_LEN: usize = MAX_LABEL_LEN;

/// The reason, spelt exactly as the API documents it (the log's own parser
/// is more lenient, for command lines).
fn reason(raw: Option<&str>) -> Result<DeleteReason, ApiError> {
    let raw = raw
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "query parameter reason (gdpr, retention_expired, user_request) is required",
            )
        })?;
    DeleteReason::ALL
        .into_iter()
        .find(|r| r.as_str() == raw)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "reason must be gdpr, retention_expired or user_request, not {raw:?}"
            ))
        })
}

/// A validated, authorised delete request.
#[derive(Debug, Clone)]
pub struct DeleteRequest {
    pub uid: String,
    pub created_at: Timestamp,
    pub reason: DeleteReason,
    pub ticket_id: Option<String>,
    /// As given by the caller (e.g. the person behind a service key).
    pub deleted_by: Option<String>,
    /// The API key that made the request; `None` when auth is off.
    pub key_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    created_at: Option<String>,
    reason: Option<String>,
    ticket_id: Option<String>,
    deleted_by: Option<String>,
}

fn text(name: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(v) = value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    if v.len() > MAX_TEXT_LEN || v.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{name} must be printable and at most {MAX_TEXT_LEN} bytes"
        )));
    }
    Ok(Some(v))
}

fn parse(
    req: &HttpRequest,
    uid: String,
    key_name: Option<String>,
) -> Result<DeleteRequest, ApiError> {
    let q = web::Query::<Query>::from_query(req.query_string())
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .into_inner();
    let reason = reason(q.reason.as_deref())?;
    Ok(DeleteRequest {
        uid,
        created_at: parse_created_at(q.created_at)?,
        reason,
        ticket_id: text("ticket_id", q.ticket_id)?,
        deleted_by: text("deleted_by", q.deleted_by)?,
        key_name,
    })
}

/// The route: 429/401/403 from the gate, 400 for bad parameters, then
/// whatever [`delete_file`] answers.
pub async fn delete_route(
    req: HttpRequest,
    uid: String,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if uid.is_empty() {
        return Err(ApiError::bad_request(
            "missing uid: use /files/{uid}?created_at=…&reason=…",
        ));
    }
    let principal = state.admit(&req, Scope::Delete, &uid)?;
    let request = parse(&req, uid, principal.name().map(str::to_string))?;
    delete_file(&state, request).await
}

impl DeleteRequest {
    /// Who the log names: the caller's `deleted_by` and the key used.
    fn deleted_by(&self) -> Result<String, ApiError> {
        let by = match (&self.deleted_by, &self.key_name) {
            (Some(who), Some(key)) => format!("{who} (key {key})"),
            (Some(who), None) => who.clone(),
            (None, Some(key)) => format!("key {key}"),
            (None, None) => "anonymous".into(),
        };
        if by.len() > MAX_LABEL_LEN {
            return Err(ApiError::bad_request(format!(
                "deleted_by and key name together exceed {MAX_LABEL_LEN} bytes"
            )));
        }
        Ok(by)
    }
}

/// Records a tombstone for `request`: 202 with the record, 404 for a file
/// that does not exist, 410 for one already deleted. The bytes stay in
/// their shard until the repacker removes them; reads answer 410 at once
/// here and after their next log poll on other replicas.
pub async fn delete_file(
    state: &AppState,
    request: DeleteRequest,
) -> Result<HttpResponse, ApiError> {
    let Some(deleted) = &state.deleted else {
        return Err(ApiError::new(
            ErrorKind::NotImplemented,
            "a legacy (Python DES) store is read-only: files cannot be deleted",
        ));
    };
    state.check_not_deleted(&request.uid, request.created_at)?;
    // Only files that exist get a tombstone: a typo must not silently succeed.
    state
        .retriever
        .locate(&request.uid, request.created_at)
        .await?;
    let mut t = Tombstone::new(
        request.uid.as_str(),
        request.created_at,
        request.reason,
        request.deleted_by()?,
    );
    t.ticket_id.clone_from(&request.ticket_id);
    let key = deleted.append(&t).await?;
    tracing::info!(uid = %t.uid, date = t.date, reason = %t.reason, deleted_by = %t.deleted_by, %key, "file deleted (tombstone logged)");
    let body = serde_json::to_value(&t).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(HttpResponse::Accepted()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(body))
}
