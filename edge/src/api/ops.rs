//! Operations routes: liveness, readiness, Prometheus metrics, and the traffic table.
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::{header, StatusCode};
use serde_json::json;

use super::{EdgeState, RequestContext};

/// Liveness: answers without calling anything upstream.
pub async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Readiness: which providers and endpoints answer, as the probes last saw them.
pub async fn ready(State(state): State<Arc<EdgeState>>) -> Response {
    let status = state.providers.status();
    let code = if status.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(status)).into_response()
}

pub async fn metrics(State(state): State<Arc<EdgeState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Requests, errors and tokens per client and model over the last hour (admin key only).
pub async fn stats(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
) -> Response {
    if !ctx.client.admin {
        return problem(StatusCode::UNAUTHORIZED, "the admin key is required");
    }
    Json(state.metrics.stats()).into_response()
}

/// A JSON problem (RFC 9457) for the edge's own admin routes.
pub fn problem(status: StatusCode, detail: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        json!({"type": "about:blank", "title": status.canonical_reason().unwrap_or(""),
               "status": status.as_u16(), "detail": detail})
        .to_string(),
    )
        .into_response()
}
