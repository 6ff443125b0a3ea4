//! The edge's own HTTP API, as one axum Router that the Pingora gateway calls in-process:
//! the OpenAI surface (`/v1`), the Ollama surface (`/api/...`), MCP (`/mcp`, `/api/mcp`), and
//! operations (`/health`, `/ready`, `/metrics`, `/api/edge/stats`).
use std::sync::Arc;
use std::time::Instant;

use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::clients::{ClientDirectory, ClientIdentity};
use crate::config::EdgeConfig;
use crate::error::{EdgeError, Shape};
use crate::metrics::Metrics;
use crate::policy::Refusal;
use crate::providers::ProviderSet;

pub mod anthropic;
pub mod chat_sse;
pub mod fallback;
pub mod keys;
pub mod ollama;
pub mod openai;
pub mod ops;
pub mod stream;

/// Shared by every request; built once at start-up.
pub struct EdgeState {
    pub config: EdgeConfig,
    pub providers: Arc<ProviderSet>,
    pub metrics: Arc<Metrics>,
    pub clients: Arc<ClientDirectory>,
    pub audit: Option<Arc<dyn aibox_mcp::AuditSink>>,
    /// Recent `/v1/responses` ids: translated answers, and which provider made the others.
    pub responses: openai::responses::ResponseStore,
}

/// The per-request extension the gateway inserts before calling the router.
#[derive(Clone)]
pub struct RequestContext {
    pub id: String,
    pub client: ClientIdentity,
    pub started: Instant,
    /// W3C trace context: the caller's trace (or a new one) and the edge's span in it.
    pub trace: crate::trace::TraceContext,
}

pub fn router(state: Arc<EdgeState>, mcp: Router) -> Router {
    let api = Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/api/edge/stats", get(ops::stats))
        .route("/api/edge/keys", get(keys::list).post(keys::create))
        .route("/api/edge/keys/{name}", axum::routing::delete(keys::revoke))
        .route("/v1/models", get(openai::models::list_models))
        .route("/v1/models/{*id}", get(openai::models::get_model))
        .route("/v1/chat/completions", post(openai::chat::chat_completions))
        .route("/v1/completions", post(openai::completions::completions))
        .route("/v1/embeddings", post(openai::embeddings::embeddings))
        .route("/v1/responses", post(openai::responses::create))
        .route(
            "/v1/responses/{id}",
            get(openai::responses::retrieve).delete(openai::responses::delete),
        )
        .merge(openai::passthrough::routes())
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .merge(ollama::routes())
        .route_layer(axum::middleware::from_fn(record_route))
        .fallback(fallback)
        .with_state(state);
    api.merge(mcp)
}

/// Notes the matched route template in the response's outcome (the metrics' `route` label).
async fn record_route(
    matched: axum::extract::MatchedPath,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = matched.as_str().to_owned();
    let mut resp = next.run(request).await;
    crate::outcome::Outcome::of(&mut resp)
        .route
        .get_or_insert(route);
    resp
}

async fn fallback(method: http::Method, uri: http::Uri) -> Response {
    let path = uri.path();
    let e = EdgeError::UnknownUrl {
        method: method.to_string(),
        path: path.to_owned(),
    };
    // Only the OpenAI surface has a shape of its own for an unknown URL.
    let shape = if path.starts_with("/v1/") {
        Shape::OpenAi
    } else {
        Shape::Ollama
    };
    e.render(&shape)
}

/// `413` in the shape of the surface the path belongs to.
pub fn too_large(path: &str, limit: usize) -> Response {
    let shape = match shape_of(path, &[]) {
        Shape::OpenAi if path == "/v1" => Shape::Ollama,
        shape => shape,
    };
    EdgeError::TooLarge { limit }.render(&shape)
}

/// The error shape of the surface `path` belongs to. On `/mcp` it is a JSON-RPC error
/// answering the request's own `id` when the body has one.
pub fn shape_of(path: &str, body: &[u8]) -> Shape {
    if is_anthropic(path) {
        Shape::Anthropic
    } else if path.starts_with("/v1/") || path == "/v1" {
        Shape::OpenAi
    } else if path.starts_with("/mcp") {
        let id = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("id").cloned())
            .unwrap_or(serde_json::Value::Null);
        Shape::JsonRpc(id)
    } else {
        Shape::Ollama
    }
}

/// Anthropic's Messages API, which answers in its own error shape.
pub fn is_anthropic(path: &str) -> bool {
    path == "/v1/messages" || path.starts_with("/v1/messages/")
}

/// Paths held to the caller's policy: the model surfaces and MCP. The edge's admin routes
/// (`/api/edge/*`, `/api/mcp/*`) check the admin key themselves; `/api/version` stays open
/// because Ollama clients probe it before they send a key.
pub fn governed(path: &str) -> bool {
    (path.starts_with("/v1/") || path == "/v1")
        || (path.starts_with("/api/")
            && path != "/api/version"
            && !path.starts_with("/api/edge/")
            && !path.starts_with("/api/mcp/"))
        || path == "/mcp"
        || path.starts_with("/mcp/")
}

/// A refusal (401, 403, 429) in the shape of the surface the path belongs to.
pub fn refused(path: &str, client: &str, refusal: &Refusal, body: &[u8]) -> Response {
    EdgeError::refusal(client, refusal).render(&shape_of(path, body))
}
