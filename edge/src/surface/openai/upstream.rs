//! Talking to the provider for the OpenAI surface: send (with failover), read a whole answer,
//! and relay an OpenAI-compatible answer as it came (SSE, JSON, or any other body).
use axum::response::Response;
use bytes::Bytes;
use http::{header, StatusCode};
use serde_json::{json, Value};

use super::frames::{event_stream, usage_of, SsePassthrough};
use super::Result;
use crate::error::{EdgeError, UpstreamStatus};
use crate::outcome::Outcome;
use crate::providers::{ProviderRoute, UpstreamRequest, UpstreamResponse};
use crate::relay::{self, Framing, Relay, Timing, Untouched};
use crate::surface::stream;
use crate::surface::{EdgeState, RequestContext};

/// Send a JSON body to `path` on the route's provider (with failover).
pub async fn send_json(
    state: &EdgeState,
    ctx: &RequestContext,
    route: &ProviderRoute,
    path: &str,
    body: &Value,
    seen: &mut Outcome,
) -> Result<UpstreamResponse> {
    let encoded = serde_json::to_vec(body).map_err(|e| EdgeError::Internal(e.to_string()))?;
    send_bytes(state, ctx, route, path, Bytes::from(encoded), seen).await
}

/// Send JSON bytes to `path` on the route's provider (with failover).
pub async fn send_bytes(
    state: &EdgeState,
    ctx: &RequestContext,
    route: &ProviderRoute,
    path: &str,
    encoded: Bytes,
    seen: &mut Outcome,
) -> Result<UpstreamResponse> {
    let request = UpstreamRequest::json(http::Method::POST, path, encoded);
    send_req(state, ctx, route, request, seen).await
}

/// Send `request` (with failover), with the request id and trace context; the endpoint that
/// answered and the upstream time go into `seen`.
pub async fn send_req(
    state: &EdgeState,
    ctx: &RequestContext,
    route: &ProviderRoute,
    request: UpstreamRequest,
    seen: &mut Outcome,
) -> Result<UpstreamResponse> {
    let mut request = request
        .header_str("x-request-id", &ctx.id)
        .header_str("traceparent", &ctx.trace.traceparent());
    if let Some(state) = &ctx.trace.tracestate {
        request = request.header_str("tracestate", state);
    }
    let up = state.providers.send(route, &request).await?;
    seen.upstream_time = Some(up.upstream_time);
    seen.endpoint = Some(up.endpoint.url.clone());
    Ok(up)
}

/// A streamed body's idle and total timeouts, counted from the request's start.
pub fn timing(state: &EdgeState, ctx: &RequestContext) -> Timing {
    Timing::new(
        state.config.timeouts.idle(),
        state.config.timeouts.total(),
        ctx.started,
    )
}

/// The whole upstream body, bounded by the idle and total timeouts.
pub async fn read_all(state: &EdgeState, response: crate::providers::Response) -> Result<Bytes> {
    let timing = Timing::new(
        state.config.timeouts.idle(),
        state.config.timeouts.total(),
        std::time::Instant::now(),
    );
    relay::read_to_end(stream::body(response), Some(timing)).await
}

/// The whole upstream body as JSON, bounded by the idle and total timeouts.
pub async fn read_json(state: &EdgeState, up: UpstreamResponse) -> Result<Value> {
    let bytes = read_all(state, up.response).await?;
    serde_json::from_slice(&bytes).map_err(|_| EdgeError::UpstreamBadResponse)
}

/// An Ollama error status (`{"error": "..."}`), status kept.
pub async fn ollama_status_error(response: crate::providers::Response) -> EdgeError {
    let status = stream::upstream_status(&response);
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| format!("upstream answered HTTP {}", status.as_u16()));
    let (code, param) = match status {
        StatusCode::NOT_FOUND => (Some("model_not_found"), Some("model")),
        s if s.is_client_error() => (None, None),
        _ => (Some("upstream_error"), None),
    };
    EdgeError::UpstreamStatus(Box::new(UpstreamStatus {
        status,
        message,
        code,
        param,
        openai_body: None,
    }))
}

/// OpenAI-compatible upstream: same body with `model` rewritten, response streamed byte for byte.
pub(crate) async fn passthrough(
    state: &EdgeState,
    ctx: &RequestContext,
    mut body: Value,
    route: &ProviderRoute,
    path: &str,
    seen: &mut Outcome,
) -> Result<Response> {
    body["model"] = json!(route.model);
    let strip_usage = ask_for_usage(&mut body, path);
    let up = send_json(state, ctx, route, path, &body, seen).await?;
    relay(state, ctx, up, strip_usage, seen).await
}

/// An OpenAI-compatible upstream's answer as it came: an error status with its body (or in
/// OpenAI's shape when it had none), JSON read whole (for its usage), SSE and any other body
/// (audio, images) streamed chunk by chunk under the idle and total timeouts. `strip_usage`: the
/// edge asked for the stream's usage chunk on the client's behalf (`ask_for_usage`), so it is
/// taken out again.
pub(crate) async fn relay(
    state: &EdgeState,
    ctx: &RequestContext,
    up: UpstreamResponse,
    strip_usage: bool,
    seen: &mut Outcome,
) -> Result<Response> {
    let status = stream::upstream_status(&up.response);
    let content_type = up.response.headers().get(header::CONTENT_TYPE).cloned();
    let starts = |prefix: &str| {
        content_type
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(prefix))
    };
    let (is_stream, is_json) = (starts("text/event-stream"), starts("application/json"));
    if !status.is_success() {
        let bytes = read_all(state, up.response).await?;
        return Err(upstream_status_error(status, bytes));
    }
    if !is_stream && !is_json {
        if let Some(ct) = content_type {
            let relay = Relay::translate(stream::body(up.response), Framing::Raw, Untouched)
                .timed(timing(state, ctx))
                .logged(&ctx.id, &up.endpoint.url)
                .holding(up.in_flight);
            return Ok(relay.respond(status, ct));
        }
    }
    if !is_stream {
        let bytes = read_all(state, up.response).await?;
        if let Some((tin, tout)) = usage_of(&bytes) {
            seen.tokens_in = tin;
            seen.tokens_out = tout;
        }
        let mut resp = Response::new(axum::body::Body::from(bytes));
        *resp.status_mut() = status;
        if let Some(ct) = content_type {
            resp.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        return Ok(resp);
    }
    let frames = SsePassthrough { strip_usage };
    let body = stream::body(up.response);
    let relay = if strip_usage {
        Relay::translate(body, Framing::Sse, frames)
    } else {
        Relay::forward(body, Framing::Sse, frames)
    };
    Ok(event_stream(
        relay
            .timed(timing(state, ctx))
            .logged(&ctx.id, &up.endpoint.url)
            .holding(up.in_flight),
    ))
}

/// An OpenAI-compatible upstream's error status: its own body when it is in OpenAI's shape
/// (sent on as it came), else one in OpenAI's shape quoting it.
fn upstream_status_error(status: StatusCode, bytes: Bytes) -> EdgeError {
    let shaped = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(|v| v.get("error").is_some_and(Value::is_object));
    let quoted = || {
        format!(
            "upstream answered HTTP {}: {}",
            status.as_u16(),
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        )
    };
    EdgeError::UpstreamStatus(Box::new(match shaped {
        Some(v) => UpstreamStatus {
            status,
            message: v
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("upstream answered HTTP {}", status.as_u16())),
            code: None,
            param: None,
            openai_body: Some(bytes),
        },
        None => UpstreamStatus {
            status,
            message: quoted(),
            code: Some("upstream_error"),
            param: None,
            openai_body: None,
        },
    }))
}

/// A streamed chat or legacy completion asks upstream for its usage chunk
/// (`stream_options.include_usage`), so that token metrics and token limits are exact. Returns
/// whether the client did not ask for it itself, i.e. whether that chunk must be taken out of
/// its stream again.
fn ask_for_usage(body: &mut Value, path: &str) -> bool {
    let streamed = body.get("stream") == Some(&Value::Bool(true));
    let asked = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if !streamed || asked || !matches!(path, "/chat/completions" | "/completions") {
        return false;
    }
    match body
        .get_mut("stream_options")
        .and_then(Value::as_object_mut)
    {
        Some(options) => {
            options.insert("include_usage".into(), json!(true));
        }
        None => body["stream_options"] = json!({"include_usage": true}),
    }
    true
}
