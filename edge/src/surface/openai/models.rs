//! `/v1/models` and `/v1/models/{id}`: every provider's models and the aliases, as the client may ask for them.
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use crate::surface::{EdgeState, RequestContext};

use super::forbidden_model;
use crate::error::EdgeError;

pub async fn list_models(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    headers: http::HeaderMap,
) -> Response {
    // A provider never listed yet is asked now, for at most 2 s; a slow one never delays more.
    if state
        .providers
        .providers
        .iter()
        .any(|p| p.models().is_none())
    {
        let _ = tokio::time::timeout(Duration::from_secs(2), state.providers.refresh(false)).await;
    }
    let mut data = Vec::new();
    for p in &state.providers.providers {
        for m in p.models().unwrap_or_default() {
            if !ctx.client.allows_model(&p.name, &m.id) {
                continue;
            }
            let created = m.raw.get("created").and_then(Value::as_i64).unwrap_or(0);
            data.push(
                json!({"id": format!("{}/{}", p.name, m.id), "object": "model",
                             "created": created, "owned_by": p.name}),
            );
        }
    }
    for alias in &state.providers.aliases {
        if ctx.client.allows_alias(&alias.name) {
            data.push(alias_entry(&alias.name));
        }
    }
    if crate::surface::anthropic::wants_anthropic(&headers) {
        return Json(crate::surface::anthropic::model_list(&data)).into_response();
    }
    Json(json!({"object": "list", "data": data})).into_response()
}

/// An alias (`[[models]]`) as `/v1/models` lists it: owned by the edge, which resolves it.
fn alias_entry(name: &str) -> Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": "aibox"})
}

pub async fn get_model(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    Path(id): Path<String>,
    headers: http::HeaderMap,
) -> Response {
    if crate::surface::anthropic::wants_anthropic(&headers) {
        return crate::surface::anthropic::get_model(&state, &ctx, &id).await;
    }
    if let Some(alias) = state.providers.alias(&id) {
        return if ctx.client.allows_alias(&alias.name) {
            Json(alias_entry(&alias.name)).into_response()
        } else {
            super::fail(forbidden_model(&ctx.client.name, &id))
        };
    }
    match state.providers.route(&id) {
        Ok(r) if !ctx.client.allows_model(&r.provider.name, &r.model) => {
            super::fail(forbidden_model(&ctx.client.name, &id))
        }
        Ok(r) if r.provider.find_model(&r.model).is_some() => Json(json!({
            "id": format!("{}/{}", r.provider.name, r.model), "object": "model",
            "created": 0, "owned_by": r.provider.name}))
        .into_response(),
        _ => super::fail(EdgeError::ModelNotFound(id)),
    }
}
