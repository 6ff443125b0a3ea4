//! Talking to the provider for the OpenAI surface: send (with failover), read a whole answer,
//! and relay an OpenAI-compatible answer as it came (SSE, JSON, or any other body).

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, StatusCode};
use serde_json::{json, Value};

use crate::providers::{InFlight, ProviderRoute, UpstreamError, UpstreamResponse};
use crate::surface::stream::{self, sse, Read, TimedBody};
use crate::surface::{EdgeState, RequestContext};
use crate::translate::openai_to_ollama as translate;

use super::{event_stream, log_stream_failure, OpenAiError, Result};

/// Send a JSON body to `path` on the route's provider (with failover), recording upstream time.
pub async fn send(
    state: &EdgeState,
    ctx: &RequestContext,
    route: &ProviderRoute,
    path: &str,
    body: &Value,
) -> std::result::Result<UpstreamResponse, UpstreamError> {
    let encoded = Bytes::from(serde_json::to_vec(body).expect("JSON values serialize"));
    let http = &state.providers.http;
    send_with(state, ctx, route, |ep| {
        http.post(format!("{}{path}", ep.url))
            .header(header::CONTENT_TYPE, "application/json")
            .body(encoded.clone())
    })
    .await
}

/// Send the request `build` makes for an endpoint (with failover), with the request id, and
/// record the endpoint and upstream time for the log line.
pub async fn send_with(
    state: &EdgeState,
    ctx: &RequestContext,
    route: &ProviderRoute,
    build: impl Fn(&crate::providers::Endpoint) -> reqwest::RequestBuilder,
) -> std::result::Result<UpstreamResponse, UpstreamError> {
    let up = state
        .providers
        .send(route, |ep| {
            let req = build(ep)
                .header("x-request-id", &ctx.id)
                .header("traceparent", ctx.trace.traceparent());
            match &ctx.trace.tracestate {
                Some(state) => req.header("tracestate", state),
                None => req,
            }
        })
        .await?;
    let t = up.upstream_time;
    let endpoint = up.endpoint.url.clone();
    ctx.update(|m| {
        m.upstream_time = Some(t);
        m.endpoint = Some(endpoint);
    });
    Ok(up)
}

/// The whole upstream body as JSON, bounded by the idle and total timeouts.
pub async fn read_json(state: &EdgeState, up: UpstreamResponse) -> Result<Value> {
    let bytes = read_all(state, up.response).await?;
    serde_json::from_slice(&bytes).map_err(|_| {
        OpenAiError::new(
            StatusCode::BAD_GATEWAY,
            "The upstream answered with a body that is not JSON",
        )
        .code("upstream_bad_response")
    })
}

async fn read_all(state: &EdgeState, response: reqwest::Response) -> Result<Bytes> {
    stream::read_to_end(response, &state.config.timeouts)
        .await
        .map_err(|msg| {
            OpenAiError::new(StatusCode::BAD_GATEWAY, msg).code("upstream_stream_failed")
        })
}

/// An Ollama error status (`{"error": "..."}`) in OpenAI's shape, status kept.
pub(super) async fn ollama_status_error(response: reqwest::Response) -> OpenAiError {
    let status = stream::upstream_status(&response);
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| format!("upstream answered HTTP {}", status.as_u16()));
    match status {
        StatusCode::NOT_FOUND => OpenAiError::new(status, message)
            .code("model_not_found")
            .param("model"),
        s if s.is_client_error() => OpenAiError::new(s, message),
        s => OpenAiError::new(s, message).code("upstream_error"),
    }
}

/// OpenAI-compatible upstream: same body with `model` rewritten, response streamed byte for byte.
pub(crate) async fn passthrough(
    state: &EdgeState,
    ctx: &RequestContext,
    mut body: Value,
    route: &ProviderRoute,
    path: &str,
) -> Result<Response> {
    body["model"] = json!(route.model);
    let strip_usage = ask_for_usage(&mut body, path);
    let up = send(state, ctx, route, path, &body).await?;
    relay(state, ctx, up, strip_usage).await
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
) -> Result<Response> {
    let status = stream::upstream_status(&up.response);
    let content_type = up.response.headers().get(header::CONTENT_TYPE).cloned();
    let is_stream = content_type
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !status.is_success() {
        let bytes = read_all(state, up.response).await?;
        ctx.update(|m| m.error = Some("upstream_status"));
        let shaped = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .filter(|v| v.get("error").is_some_and(Value::is_object));
        return Ok(match shaped {
            Some(_) => {
                (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
            }
            None => OpenAiError::new(
                status,
                format!(
                    "upstream answered HTTP {}: {}",
                    status.as_u16(),
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ),
            )
            .code("upstream_error")
            .into_response(),
        });
    }
    let is_json = content_type
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_stream && !is_json && content_type.is_some() {
        let timed = TimedBody::new(
            up.response,
            state.config.timeouts.idle(),
            state.config.timeouts.total(),
            ctx.started,
        );
        let relay = RawRelay {
            timed,
            ctx: ctx.clone(),
            done: false,
            _in_flight: up.in_flight,
        };
        let mut resp = Response::new(Body::from_stream(futures::stream::unfold(
            relay,
            RawRelay::step,
        )));
        *resp.status_mut() = status;
        if let Some(ct) = content_type {
            resp.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        return Ok(resp);
    }
    if !is_stream {
        let bytes = read_all(state, up.response).await?;
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            record_openai_usage(ctx, &v);
        }
        let mut resp = Response::new(Body::from(bytes));
        *resp.status_mut() = status;
        if let Some(ct) = content_type {
            resp.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        return Ok(resp);
    }
    let timed = TimedBody::new(
        up.response,
        state.config.timeouts.idle(),
        state.config.timeouts.total(),
        ctx.started,
    );
    let state = SsePassthrough {
        timed,
        ctx: ctx.clone(),
        done: false,
        _in_flight: up.in_flight,
        tail: Vec::new(),
        strip_usage,
        events: Vec::new(),
    };
    Ok(event_stream(Body::from_stream(futures::stream::unfold(
        state,
        SsePassthrough::step,
    ))))
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

/// The chunk `include_usage` adds at the end: `choices` empty, `usage` set.
fn is_usage_only_event(event: &[u8]) -> bool {
    let Some(data) = event
        .split(|b| *b == b'\n')
        .find_map(|line| line.strip_prefix(b"data:"))
    else {
        return false;
    };
    // Every event of the stream comes through here, so the probe skips the content instead of
    // building a `Value` tree of each chunk: only `usage` (an object) and `choices` (an array,
    // its items ignored) are read.
    #[derive(serde::Deserialize)]
    struct Probe {
        usage: Option<serde_json::Map<String, Value>>,
        choices: Option<Vec<serde::de::IgnoredAny>>,
    }
    serde_json::from_slice::<Probe>(data.trim_ascii())
        .is_ok_and(|p| p.usage.is_some() && p.choices.is_some_and(|c| c.is_empty()))
}

/// The end of the first complete SSE event in `buf` (after its blank line), if any.
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Tokens from an answer's `usage`: chat and completions name them `prompt_tokens` and
/// `completion_tokens`; Responses `input_tokens` and `output_tokens`, and a Responses stream
/// carries them in `response.completed`'s `response.usage`.
fn record_openai_usage(ctx: &RequestContext, v: &Value) {
    let usage = v
        .get("usage")
        .filter(|u| u.is_object())
        .or_else(|| v.pointer("/response/usage").filter(|u| u.is_object()));
    if let Some(u) = usage {
        let get = |a: &str, b: &str| {
            u.get(a)
                .or_else(|| u.get(b))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let tin = get("prompt_tokens", "input_tokens");
        let tout = get("completion_tokens", "output_tokens");
        ctx.update(|m| {
            m.tokens_in = tin;
            m.tokens_out = tout;
        });
    }
}

/// Bytes go out exactly as they came in; usage is read on the side when a chunk carries it.
struct SsePassthrough {
    timed: TimedBody,
    ctx: RequestContext,
    done: bool,
    _in_flight: InFlight,
    /// The last partial line, kept only to find a `usage` object split across chunks.
    tail: Vec<u8>,
    /// The edge asked for the usage chunk the client did not: events are then passed whole,
    /// and that one is left out.
    strip_usage: bool,
    /// Bytes of an event not complete yet (only when `strip_usage`).
    events: Vec<u8>,
}

impl SsePassthrough {
    async fn step(
        mut self,
    ) -> Option<(std::result::Result<Bytes, std::convert::Infallible>, Self)> {
        if self.done {
            return None;
        }
        loop {
            match self.timed.next().await {
                Read::Chunk(chunk) if self.strip_usage => {
                    self.scan_usage(&chunk);
                    self.events.extend_from_slice(&chunk);
                    let mut out = Vec::new();
                    while let Some(end) = event_end(&self.events) {
                        let event: Vec<u8> = self.events.drain(..end).collect();
                        if !is_usage_only_event(&event) {
                            out.extend_from_slice(&event);
                        }
                    }
                    if !out.is_empty() {
                        return Some((Ok(Bytes::from(out)), self));
                    }
                }
                Read::Chunk(chunk) => {
                    self.scan_usage(&chunk);
                    return Some((Ok(chunk), self));
                }
                Read::End if !self.events.is_empty() => {
                    self.done = true;
                    let rest = std::mem::take(&mut self.events);
                    return Some((Ok(Bytes::from(rest)), self));
                }
                Read::End => return None,
                Read::Failed(msg) => {
                    self.done = true;
                    log_stream_failure(&self.ctx, &msg);
                    self.ctx
                        .update(|m| m.error = Some("upstream_stream_failed"));
                    return Some((Ok(sse(&translate::stream_error(&msg))), self));
                }
            }
        }
    }

    fn scan_usage(&mut self, chunk: &[u8]) {
        let needle = b"\"usage\"";
        let has = |b: &[u8]| b.windows(needle.len()).any(|w| w == needle);
        if !has(chunk) && self.tail.is_empty() {
            return;
        }
        self.tail.extend_from_slice(chunk);
        while let Some(pos) = self.tail.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.tail.drain(..=pos).collect();
            if let Some(data) = line.strip_prefix(b"data: ") {
                if has(data) {
                    if let Ok(v) = serde_json::from_slice::<Value>(data) {
                        record_openai_usage(&self.ctx, &v);
                    }
                }
            }
        }
        if !has(&self.tail) {
            self.tail.clear();
        }
    }
}

/// A binary body (speech audio, ...) relayed chunk by chunk. A failure after the headers can
/// only cut the body short: the client sees a truncated file, and the log says why.
struct RawRelay {
    timed: TimedBody,
    ctx: RequestContext,
    done: bool,
    _in_flight: InFlight,
}

impl RawRelay {
    async fn step(mut self) -> Option<(std::result::Result<Bytes, std::io::Error>, Self)> {
        if self.done {
            return None;
        }
        match self.timed.next().await {
            Read::Chunk(chunk) => Some((Ok(chunk), self)),
            Read::End => None,
            Read::Failed(msg) => {
                self.done = true;
                log_stream_failure(&self.ctx, &msg);
                self.ctx
                    .update(|m| m.error = Some("upstream_stream_failed"));
                Some((Err(std::io::Error::other(msg)), self))
            }
        }
    }
}
