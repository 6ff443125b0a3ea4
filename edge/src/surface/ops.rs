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

/// The address the request came from, as the gateway saw it.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<std::net::IpAddr>);

/// Open to `metrics_open_cidrs` (loopback and internal networks by default); the admin key elsewhere.
pub async fn metrics(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    peer: Option<Extension<Peer>>,
) -> Response {
    let peer = peer.and_then(|Extension(p)| p.0);
    if !ctx.client.admin && !state.config.metrics_open_to(peer) {
        return problem(
            StatusCode::UNAUTHORIZED,
            "/metrics from this network needs the admin key (Authorization: Bearer <admin token>); see metrics_open_cidrs",
        );
    }
    for p in &state.providers.providers {
        for e in &p.endpoints {
            state
                .metrics
                .set_endpoint_in_flight(&p.name, &e.url, e.in_flight());
        }
    }
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
        return crate::error::EdgeError::AdminKeyRequired.render(&crate::error::Shape::Problem);
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
