//! The Ollama surface (`/api/...`), for clients that speak only Ollama's API (Open WebUI's
//! `OLLAMA_BASE_URL`, n8n's Ollama credential, the `ollama` Python client).
//!
//! Request path: parse the body → route by model name (as on the OpenAI surface) →
//! an Ollama provider gets the request natively, its NDJSON relayed chunk by chunk, untouched,
//! with only the model name rewritten; an OpenAI-compatible provider gets it translated
//! (`translate`), and its SSE stream is written back as Ollama NDJSON as each event arrives.
//!
//! Admin calls (pull, delete, copy, create) need the admin key, are recorded in the audit log
//! before they run (fail closed), and go to every endpoint of the Ollama provider, so a model
//! name stays served by all of them.
use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};

use crate::policy::Refusal;
use crate::providers::{
    retry_after_secs, Plan, ProviderRoute, RouteError, UpstreamError, UpstreamResponse,
};
use crate::surface::stream::{self};
use crate::surface::{EdgeState, RequestContext};

pub mod admin;
pub mod embed;
pub mod inference;
pub mod models;

use crate::translate::ollama_to_openai::BadRequest;
use admin::{copy, create, delete_model, pull};
use embed::{embed, embeddings};
use inference::{chat, generate};
use models::{ps, show, tags, version};

/// Ollama's error shape: `{"error": "..."}` with the status.
#[derive(Debug)]
pub struct OllamaError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

impl OllamaError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let kind = match status.as_u16() {
            400 | 413 | 422 => "invalid_request",
            401 | 403 => "unauthorized",
            404 => "model_not_found",
            502 => "upstream_unreachable",
            503 => "unavailable",
            504 => "upstream_timeout",
            _ => "upstream_error",
        };
        Self {
            status,
            message: message.into(),
            kind,
            retry_after: None,
        }
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(json!({"error": self.message}))).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

impl From<RouteError> for OllamaError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NotFound(m) => OllamaError::new(
                StatusCode::NOT_FOUND,
                format!("model \"{m}\" not found, try pulling it first"),
            ),
            e @ RouteError::Ambiguous(..) => {
                OllamaError::new(StatusCode::BAD_REQUEST, e.to_string())
            }
        }
    }
}

impl From<UpstreamError> for OllamaError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::Unreachable(..) => {
                OllamaError::new(StatusCode::BAD_GATEWAY, e.to_string())
            }
            UpstreamError::Timeout(..) => {
                OllamaError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string())
            }
            UpstreamError::AllEjected(_, wait) => {
                let mut err = OllamaError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
                err.retry_after = Some(retry_after_secs(wait));
                err
            }
        }
    }
}

impl From<BadRequest> for OllamaError {
    fn from(e: BadRequest) -> Self {
        OllamaError::new(StatusCode::BAD_REQUEST, e.0)
    }
}

type Result<T> = std::result::Result<T, OllamaError>;

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

/// Runs one handler body with the request marked as the Ollama surface; errors are logged in
/// the request's meta and answered in Ollama's shape.
async fn answer(
    ctx: &RequestContext,
    work: impl std::future::Future<Output = Result<Response>>,
) -> Response {
    ctx.update(|m| m.surface = "ollama");
    work.await.unwrap_or_else(|e| fail(ctx, e))
}

/// An error in Ollama's shape, its kind kept in the request's meta.
fn fail(ctx: &RequestContext, e: OllamaError) -> Response {
    let kind = e.kind;
    ctx.update(|m| m.error = Some(kind));
    e.into_response()
}

fn parse_body(raw: &Bytes) -> Result<Value> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(OllamaError::new(
            StatusCode::BAD_REQUEST,
            "missing request body",
        ));
    }
    aibox_wire::body::from_slice::<Value>(raw).map_err(|e| match e {
        aibox_wire::body::BodyError::NotAnObject { what } => OllamaError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body must be a JSON object, not {what}"),
        ),
        aibox_wire::body::BodyError::Invalid(e) => OllamaError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid JSON in request body: {e}"),
        ),
    })
}

/// The model a request names: `model`, or the older `name` field.
fn model_field(body: &Value, keys: &[&str]) -> Result<String> {
    for key in keys {
        match body.get(*key) {
            Some(Value::String(s)) if !s.is_empty() => return Ok(s.clone()),
            None | Some(Value::Null) => {}
            Some(Value::String(_)) => {}
            Some(_) => {
                return Err(OllamaError::new(
                    StatusCode::BAD_REQUEST,
                    format!("{key} must be a string"),
                ))
            }
        }
    }
    Err(OllamaError::new(
        StatusCode::BAD_REQUEST,
        format!("{} is required", keys[0]),
    ))
}

/// The first target of `model`'s plan (for calls without fallback), policy checked.
fn route(state: &EdgeState, ctx: &RequestContext, model: &str) -> Result<ProviderRoute> {
    Ok(plan(state, ctx, model)?.targets.swap_remove(0).route)
}

/// Where `model` may go, in order, after the client's policy (as on the OpenAI surface).
fn plan(state: &EdgeState, ctx: &RequestContext, model: &str) -> Result<Plan> {
    let plan = state.providers.plan(model)?;
    let first = plan.first();
    ctx.update(|m| {
        m.provider = Some(first.provider.name.clone());
        m.model = Some(model.to_owned());
    });
    let allowed = match &plan.alias {
        Some(alias) => ctx.client.allows_alias(&alias.name),
        None => ctx.client.allows_model(&first.provider.name, &first.model),
    };
    if !allowed {
        let refusal = Refusal::ModelForbidden(model.to_owned());
        let mut e = OllamaError::new(StatusCode::FORBIDDEN, refusal.message(&ctx.client.name));
        e.kind = refusal.kind();
        return Err(e);
    }
    Ok(plan)
}

/// The body for an Ollama upstream: the client's, with the model name it knows.
fn native_body(mut body: Value, upstream_model: &str) -> Value {
    if let Some(o) = body.as_object_mut() {
        o.remove("name");
        o.insert("model".into(), json!(upstream_model));
    }
    body
}

async fn send(
    state: &EdgeState,
    ctx: &RequestContext,
    route: &ProviderRoute,
    path: &str,
    body: &Value,
) -> Result<UpstreamResponse> {
    Ok(crate::surface::openai::upstream::send(state, ctx, route, path, body).await?)
}

/// The whole upstream body; a break-off is a 502 in Ollama's shape.
async fn read_all(state: &EdgeState, response: reqwest::Response) -> Result<Bytes> {
    stream::read_to_end(response, &state.config.timeouts)
        .await
        .map_err(|msg| OllamaError::new(StatusCode::BAD_GATEWAY, msg))
}

/// An upstream error status in Ollama's shape, status kept: Ollama's own `{"error": "..."}`
/// or an OpenAI-compatible `{"error": {"message": ...}}`.
async fn upstream_status_error(state: &EdgeState, response: reqwest::Response) -> OllamaError {
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
    let mut e = OllamaError::new(status, message);
    e.kind = "upstream_status";
    e
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

fn record_ollama_tokens(ctx: &RequestContext, v: &Value) {
    let tin = v
        .get("prompt_eval_count")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let tout = v.get("eval_count").and_then(Value::as_u64).unwrap_or(0);
    if tin > 0 || tout > 0 {
        ctx.update(|m| {
            m.tokens_in = tin;
            m.tokens_out = tout;
        });
    }
}
