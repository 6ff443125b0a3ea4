//! The keys admin API (admin key only), for the dashboard's Keys page:
//!
//! - `GET /api/edge/keys` — every client with its policy and use over the last hour and day
//! - `POST /api/edge/keys` `{"name", "models"?, "mcp_servers"?, "rpm"?, "tpm"?, "concurrency"?}`
//!   — a new key, answered once (`201 {"name", "key"}`) and stored as a hash in the keys file
//! - `DELETE /api/edge/keys/{name}` — revokes a key of the keys file
//!
//! Writes go through `crate::keys` (the same code as `edge key`), are audited before they are
//! made (no record, no change), and take effect at once: the directory is reloaded here.
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use http::StatusCode;
use serde_json::json;

use super::ops::problem;
use super::{EdgeState, RequestContext};
use crate::config::ClientConfig;
use crate::keys::{self, KeysError};

fn require_admin(ctx: &RequestContext) -> Result<(), Box<Response>> {
    if ctx.client.admin {
        Ok(())
    } else {
        Err(Box::new(problem(
            StatusCode::UNAUTHORIZED,
            "the admin key is required",
        )))
    }
}

fn keys_file(state: &EdgeState) -> Result<std::path::PathBuf, Box<Response>> {
    state
        .clients
        .keys_file()
        .map(ToOwned::to_owned)
        .ok_or_else(|| {
            Box::new(problem(
                StatusCode::CONFLICT,
                "no keys file is configured (clients_file in the edge config, or EDGE_CLIENTS_FILE)",
            ))
        })
}

pub async fn list(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
) -> Response {
    if let Err(r) = require_admin(&ctx) {
        return *r;
    }
    Json(json!({
        "keys_file": state.clients.keys_file().map(|p| p.display().to_string()),
        "clients": state.clients.summaries(),
    }))
    .into_response()
}

/// The fields a new key may set; the key and its hash are made here.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    models: Option<Vec<String>>,
    mcp_servers: Option<Vec<String>>,
    rpm: Option<u32>,
    tpm: Option<u32>,
    concurrency: Option<u32>,
}

pub async fn create(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    headers: http::HeaderMap,
    raw: Bytes,
) -> Response {
    if let Err(r) = require_admin(&ctx) {
        return *r;
    }
    let path = match keys_file(&state) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let new: NewKey = match serde_json::from_slice(&raw) {
        Ok(n) => n,
        Err(e) => return problem(StatusCode::BAD_REQUEST, &format!("invalid body: {e}")),
    };
    if state.clients.defined_in_config(&new.name) {
        return problem(
            StatusCode::CONFLICT,
            &format!("client {:?} is defined in the edge config", new.name),
        );
    }
    let entry = ClientConfig {
        name: new.name.clone(),
        models: new.models,
        mcp_servers: new.mcp_servers,
        rpm: new.rpm,
        tpm: new.tpm,
        concurrency: new.concurrency,
        ..Default::default()
    };
    // Checked before the audit record so a refused request is not recorded as a change.
    if let Err(e) = crate::config::check_client_name(&entry.name)
        .map_err(KeysError::BadName)
        .and_then(|()| {
            entry
                .policy()
                .resolve("policy")
                .map(|_| ())
                .map_err(Into::into)
        })
    {
        return problem(StatusCode::BAD_REQUEST, &e.to_string());
    }
    let metadata = json!({"models": entry.models, "mcp_servers": entry.mcp_servers,
        "rpm": entry.rpm, "tpm": entry.tpm, "concurrency": entry.concurrency});
    let intent = match audit(&state, &ctx, &headers, "key_create", &new.name, metadata).await {
        Ok(intent) => intent,
        Err(r) => return *r,
    };
    let added = keys::add(&path, entry, None);
    if let Some(intent) = intent {
        intent.finish(added.is_ok(), json!({}));
    }
    match added {
        Ok(key) => {
            state.clients.reload_if_changed();
            tracing::info!(request_id = %ctx.id, client = %new.name, "key created");
            (
                StatusCode::CREATED,
                Json(json!({"name": new.name, "key": key})),
            )
                .into_response()
        }
        Err(e) => keys_problem(e),
    }
}

pub async fn revoke(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    headers: http::HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = require_admin(&ctx) {
        return *r;
    }
    let path = match keys_file(&state) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    if state.clients.defined_in_config(&name) {
        return problem(
            StatusCode::CONFLICT,
            &format!("client {name:?} is defined in the edge config; remove it there"),
        );
    }
    let known = keys::read(&path)
        .map(|f| f.clients.iter().any(|c| c.name == name))
        .unwrap_or(false);
    if !known {
        return keys_problem(KeysError::Unknown(name));
    }
    let intent = match audit(&state, &ctx, &headers, "key_revoke", &name, json!({})).await {
        Ok(intent) => intent,
        Err(r) => return *r,
    };
    let revoked = keys::revoke(&path, &name);
    if let Some(intent) = intent {
        intent.finish(revoked.is_ok(), json!({}));
    }
    match revoked {
        Ok(()) => {
            state.clients.reload_if_changed();
            tracing::info!(request_id = %ctx.id, client = %name, "key revoked");
            Json(json!({"name": name, "revoked": true})).into_response()
        }
        Err(e) => keys_problem(e),
    }
}

fn keys_problem(e: KeysError) -> Response {
    let status = match e {
        KeysError::Exists(_) => StatusCode::CONFLICT,
        KeysError::Unknown(_) => StatusCode::NOT_FOUND,
        KeysError::BadName(_) | KeysError::Config(_) => StatusCode::BAD_REQUEST,
        KeysError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    problem(status, &e.to_string())
}

/// The intent of a key change (docs/audit/SCHEMA.md, "Intent and outcome"); the caller writes the
/// outcome. Fail closed: a change whose intent cannot be recorded is not made. Without a controller the change
/// is made and the log says it is not audited (as for the other admin calls).
async fn audit(
    state: &EdgeState,
    ctx: &RequestContext,
    headers: &http::HeaderMap,
    action: &str,
    name: &str,
    mut metadata: serde_json::Value,
) -> Result<Option<aibox_mcp::audited::OpenIntent>, Box<Response>> {
    metadata["client"] = json!(ctx.client.name);
    // The signed-in dashboard user, as the dashboard names them to the controller too.
    if let Some(user) = headers
        .get("x-actor-user")
        .and_then(|v| v.to_str().ok())
        .filter(|u| !u.is_empty() && u.len() <= 128)
    {
        metadata["user"] = json!(user);
    }
    match &state.audit {
        Some(audit) => aibox_mcp::audited::begin(
            audit.clone(),
            aibox_mcp::AuditRecord {
                action: action.to_owned(),
                resource: format!("key:{name}"),
                actor: Some("edge".to_owned()),
                correlation_id: Some(ctx.id.clone()),
                metadata: metadata.as_object().cloned(),
                ..Default::default()
            },
        )
        .await
        .map(Some)
        .map_err(|e| {
            Box::new(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the key was not changed because the change could not be audited: {e}"),
            ))
        }),
        None => {
            tracing::warn!(request_id = %ctx.id, action, client = name,
                "no controller is configured, so this key change is not in the audit log");
            Ok(None)
        }
    }
}
