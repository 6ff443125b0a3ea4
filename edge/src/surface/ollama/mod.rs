//! The Ollama surface (`/api/...`), for clients that speak only Ollama's API (Open WebUI's
//! `OLLAMA_BASE_URL`, n8n's Ollama credential, the `ollama` Python client).
//!
//! Request path: parse the body → route by model name (as on the OpenAI surface) →
//! an Ollama provider gets the request natively, its NDJSON relayed chunk by chunk, untouched,
//! with only the model name rewritten; an OpenAI-compatible provider gets it translated
//! (`translate::ollama_to_openai`), and its SSE stream is written back as Ollama NDJSON as each
//! event arrives. Both go through the one relay (`inference`); errors are `EdgeError`s rendered
//! in Ollama's shape, and what a handler learned goes back to the gateway as its `Outcome`.
//!
//! Admin calls (pull, delete, copy, create) need the admin key, are recorded in the audit log
//! before they run (fail closed), and go to every endpoint of the Ollama provider, so a model
//! name stays served by all of them.
use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};

use crate::error::{EdgeError, Shape};
use crate::outcome::Outcome;
use crate::surface::openai::upstream::read_all;
use crate::surface::stream;
use crate::surface::EdgeState;

pub mod admin;
pub mod embed;
pub mod inference;
pub mod models;

use admin::{copy, create, delete_model, pull};
use embed::{embed, embeddings};
use inference::{chat, generate};
use models::{ps, show, tags, version};

type Result<T> = std::result::Result<T, EdgeError>;

pub fn routes() -> Router<Arc<EdgeState>> {
    Router::new()
        .route("/api/version", get(version))
        .route("/api/tags", get(tags))
        .route("/api/ps", get(ps))
        .route("/api/show", post(show))
        .route("/api/chat", post(chat))
        .route("/api/generate", post(generate))
        .route("/api/embed", post(embed))
        .route("/api/embeddings", post(embeddings))
        .route("/api/pull", post(pull))
        .route("/api/delete", delete(delete_model))
        .route("/api/copy", post(copy))
        .route("/api/create", post(create))
}

/// What an Ollama handler learned, starting with the surface.
fn seen() -> Outcome {
    Outcome::on("ollama")
}

/// A handler's (or one attempt's) answer, or its error in Ollama's shape, with what it learned
/// on the way.
fn answered(seen: Outcome, result: Result<Response>) -> Response {
    seen.attach(result.unwrap_or_else(|e| e.render(&Shape::Ollama)))
}

/// What one attempt on a target learned, starting with the target's provider.
fn tried(route: &crate::providers::ProviderRoute) -> Outcome {
    Outcome {
        provider: Some(route.provider.name.clone()),
        ..Outcome::default()
    }
}

fn parse_body(raw: &Bytes) -> Result<Value> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(EdgeError::EmptyBody);
    }
    Ok(aibox_wire::body::from_slice::<Value>(raw)?)
}

/// The model a request names: the first of `keys` present (`model`, or the older `name`).
fn model_field(body: &Value, keys: &[&'static str]) -> Result<String> {
    for key in keys {
        match body.get(*key) {
            Some(Value::String(s)) if !s.is_empty() => return Ok(s.clone()),
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(_) => return Err(EdgeError::invalid(format!("{key} must be a string"))),
        }
    }
    Err(EdgeError::MissingParam(
        keys.first().copied().unwrap_or("model"),
    ))
}

/// The body for an Ollama upstream: the client's, with the model name it knows.
fn native_body(mut body: Value, upstream_model: &str) -> Value {
    if let Some(o) = body.as_object_mut() {
        o.remove("name");
        o.insert("model".into(), json!(upstream_model));
    }
    body
}

/// An upstream error status, status kept: Ollama's own `{"error": "..."}` or an
/// OpenAI-compatible `{"error": {"message": ...}}`.
async fn upstream_status_error(state: &EdgeState, response: reqwest::Response) -> EdgeError {
    let status = stream::upstream_status(&response);
    let bytes = read_all(state, response).await.unwrap_or_default();
    let parsed = serde_json::from_slice::<Value>(&bytes).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|e| {
            e.as_str()
                .or_else(|| e.get("message").and_then(Value::as_str))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| {
            format!(
                "upstream answered HTTP {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).trim()
            )
        });
    EdgeError::upstream_status(status, message)
}

fn ndjson_response(body: Body) -> Response {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}

fn json_bytes_response(status: StatusCode, bytes: Bytes) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        bytes,
    )
        .into_response()
}

/// The tokens of an Ollama answer (its `done` line, or a whole body), when it counted any.
fn ollama_tokens(v: &Value) -> Option<(u64, u64)> {
    let count = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (tin, tout) = (count("prompt_eval_count"), count("eval_count"));
    (tin > 0 || tout > 0).then_some((tin, tout))
}

fn note_tokens(seen: &mut Outcome, v: &Value) {
    if let Some((tin, tout)) = ollama_tokens(v) {
        (seen.tokens_in, seen.tokens_out) = (tin, tout);
    }
}
