//! What the Ollama surface lists: `/api/version`, `/api/tags`, `/api/ps`, `/api/show`.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::{json, Value};

use super::inference::relay_json;
use super::{answered, model_field, native_body, parse_body, seen, Result};
use crate::config::ProviderKind;
use crate::error::EdgeError;
use crate::outcome::Outcome;
use crate::providers::{model_matches, ModelEntry, Provider};
use crate::surface::openai::route;
use crate::surface::openai::upstream::send_json;
use crate::surface::{EdgeState, RequestContext};
use crate::translate::ollama_to_openai::{self as translate};

/// Reported by `/api/version` when no Ollama endpoint answers: the Ollama release whose API
/// this surface follows.
const OLLAMA_API_VERSION: &str = "0.12.6";

pub async fn version(State(state): State<Arc<EdgeState>>) -> Response {
    if let Some(version) = state.providers.ollama_version().await {
        return Json(json!({ "version": version })).into_response();
    }
    Json(json!({"version": OLLAMA_API_VERSION})).into_response()
}

/// Every model of every provider once, named as a client may ask for it: bare when one
/// provider serves the name, `provider/model` when several do (bare would go to the default).
fn listed_models(state: &EdgeState) -> Vec<(Arc<Provider>, ModelEntry, String)> {
    let mut out = Vec::new();
    for p in &state.providers.providers {
        for m in p.models().unwrap_or_default() {
            // Every model, not only the caller's: the bare-or-prefixed choice depends on all.
            let owners = state
                .providers
                .providers
                .iter()
                .filter(|q| q.find_model(&m.id).is_some())
                .count();
            let name = if owners <= 1 && !m.id.contains('/') {
                m.id.clone()
            } else if owners <= 1
                && state
                    .providers
                    .get(m.id.split('/').next().unwrap_or(""))
                    .is_none()
            {
                // `org/model` ids (vLLM, Hugging Face) route bare unless `org` names a provider.
                m.id.clone()
            } else {
                format!("{}/{}", p.name, m.id)
            };
            out.push((p.clone(), m, name));
        }
    }
    out
}

fn shown_name(state: &EdgeState, provider: &str, id: &str) -> String {
    listed_models(state)
        .into_iter()
        .find(|(p, m, _)| p.name == provider && model_matches(p.kind, &m.id, id))
        .map(|(_, _, n)| n)
        .unwrap_or_else(|| id.to_owned())
}

/// What an OpenAI-compatible model can honestly say about itself in Ollama's `details`.
fn openai_details() -> Value {
    json!({"parent_model": "", "format": "openai-compatible", "family": "", "families": null,
           "parameter_size": "", "quantization_level": ""})
}

pub async fn tags(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
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
    let models: Vec<Value> = listed_models(&state)
        .into_iter()
        .filter(|(p, m, _)| ctx.client.allows_model(&p.name, &m.id))
        .map(|(p, m, name)| match p.kind {
            ProviderKind::Ollama => {
                let mut raw = m.raw.clone();
                raw["name"] = json!(name);
                raw["model"] = json!(name);
                raw
            }
            ProviderKind::Openai => {
                let created = m.raw.get("created").and_then(Value::as_i64).unwrap_or(0);
                json!({"name": name, "model": name, "modified_at": translate::rfc3339(created),
                       "size": 0, "digest": "", "details": openai_details()})
            }
        })
        .collect();
    let mut models = models;
    for alias in &state.providers.aliases {
        if ctx.client.allows_alias(&alias.name) {
            models.push(alias_tag(&state, &alias.name));
        }
    }
    Json(json!({"models": models})).into_response()
}

/// An alias as `/api/tags` lists it: its first target's entry (details, size) under the
/// alias's name, or an OpenAI-style entry when that target is not listed (yet).
fn alias_tag(state: &EdgeState, name: &str) -> Value {
    let first = state
        .providers
        .plan(name)
        .ok()
        .map(|mut p| p.targets.swap_remove(0).route);
    let listed = first.as_ref().and_then(|r| {
        (r.provider.kind == ProviderKind::Ollama)
            .then(|| r.provider.find_model(&r.model))
            .flatten()
    });
    match listed {
        Some(entry) => {
            let mut raw = entry.raw;
            raw["name"] = json!(name);
            raw["model"] = json!(name);
            raw
        }
        None => json!({"name": name, "model": name, "modified_at": translate::rfc3339(0),
                       "size": 0, "digest": "", "details": openai_details()}),
    }
}

/// Models in memory on every Ollama endpoint, asked live (2 s each, all at once).
pub async fn ps(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
) -> Response {
    let mut seen = HashSet::new();
    let mut models = Vec::new();
    for (p, v) in state.providers.loaded_models().await {
        for m in v
            .get("models")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let id = m
                .get("name")
                .or_else(|| m.get("model"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if !ctx.client.allows_model(&p.name, &id) {
                continue;
            }
            let name = shown_name(&state, &p.name, &id);
            if seen.insert(name.clone()) {
                let mut m = m;
                m["name"] = json!(name);
                m["model"] = json!(name);
                models.push(m);
            }
        }
    }
    Json(json!({"models": models})).into_response()
}

pub async fn show(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    raw: Bytes,
) -> Response {
    let mut seen = seen();
    let result = show_model(&state, &ctx, &raw, &mut seen).await;
    answered(seen, result)
}

async fn show_model(
    state: &EdgeState,
    ctx: &RequestContext,
    raw: &Bytes,
    seen: &mut Outcome,
) -> Result<Response> {
    let body = parse_body(raw)?;
    let model = model_field(&body, &["model", "name"])?;
    let route = route(state, ctx, &model, seen)?;
    match route.provider.kind {
        ProviderKind::Ollama => {
            let body = native_body(body, &route.model);
            let up = send_json(state, ctx, &route, "/api/show", &body, seen).await?;
            relay_json(state, up).await
        }
        ProviderKind::Openai => {
            let Some(entry) = route.provider.find_model(&route.model) else {
                return Err(EdgeError::ModelNotFound(model));
            };
            let created = entry
                .raw
                .get("created")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let mut info = json!({"general.architecture": "openai-compatible",
                                  "general.basename": entry.id});
            if let Some(n) = entry.raw.get("max_model_len").and_then(Value::as_u64) {
                info["openai-compatible.context_length"] = json!(n);
            }
            Ok(Json(json!({
                "modelfile": "", "parameters": "", "template": "",
                "details": openai_details(), "model_info": info,
                "capabilities": ["completion"],
                "modified_at": translate::rfc3339(created),
            }))
            .into_response())
        }
    }
}
