//! `/api/chat` and `/api/generate`: relayed natively to Ollama providers (their NDJSON passed on
//! as it came, lines only looked at), translated for OpenAI-compatible ones (their SSE written
//! back as NDJSON as each event arrives). Both streams go through the one relay.
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};

use super::{
    answered, json_bytes_response, model_field, native_body, ndjson_response, note_tokens,
    ollama_tokens, parse_body, read_all, seen, tried, upstream_status_error, Result,
};
use crate::config::ProviderKind;
use crate::error::{ndjson_error_line, EdgeError};
use crate::outcome::Outcome;
use crate::providers::{ProviderRoute, UpstreamResponse};
use crate::relay::{sse_data, Emit, Frames, Framing, Relay};
use crate::surface::openai::plan;
use crate::surface::openai::upstream::{send_json, timing};
use crate::surface::stream::{self, ndjson};
use crate::surface::{EdgeState, RequestContext};
use crate::translate::ollama_to_openai::{self as translate, Shape, StreamTranslator};

pub async fn chat(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    raw: Bytes,
) -> Response {
    let mut seen = seen();
    let result = inference(&state, &ctx, &raw, Shape::Chat, &mut seen).await;
    answered(seen, result)
}

pub async fn generate(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    raw: Bytes,
) -> Response {
    let mut seen = seen();
    let result = inference(&state, &ctx, &raw, Shape::Generate, &mut seen).await;
    answered(seen, result)
}

async fn inference(
    state: &EdgeState,
    ctx: &RequestContext,
    raw: &Bytes,
    shape: Shape,
    seen: &mut Outcome,
) -> Result<Response> {
    let body = parse_body(raw)?;
    let model = model_field(&body, &["model"])?;
    let plan = plan(state, ctx, &model, seen)?;
    let (body, model) = (&body, model.as_str());
    Ok(
        crate::surface::fallback::run(state, ctx, plan, move |route| async move {
            let mut tried = tried(&route);
            let result = attempt(state, ctx, body, &route, shape, model, &mut tried).await;
            answered(tried, result)
        })
        .await,
    )
}

/// Chat or generate on one target.
async fn attempt(
    state: &EdgeState,
    ctx: &RequestContext,
    body: &Value,
    route: &ProviderRoute,
    shape: Shape,
    model: &str,
    seen: &mut Outcome,
) -> Result<Response> {
    match route.provider.kind {
        ProviderKind::Ollama => {
            let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(true);
            let mut up_body = native_body(body.clone(), &route.model);
            // Sent explicitly so the upstream's default can never differ from ours.
            up_body["stream"] = json!(stream);
            let path = match shape {
                Shape::Chat => "/api/chat",
                Shape::Generate => "/api/generate",
            };
            let up = send_json(state, ctx, route, path, &up_body, seen).await?;
            relay(state, ctx, up, true, seen).await
        }
        ProviderKind::Openai => {
            translated(state, ctx, body, route, shape, model.to_owned(), seen).await
        }
    }
}

/// A native Ollama answer passed on: error statuses as they are, NDJSON streams line for line
/// (tokens read on the side), whole JSON bodies as they are.
async fn relay(
    state: &EdgeState,
    ctx: &RequestContext,
    up: UpstreamResponse,
    expect_done: bool,
    seen: &mut Outcome,
) -> Result<Response> {
    if !up.response.status().is_success() {
        return Err(upstream_status_error(state, up.response).await);
    }
    let is_ndjson = up
        .response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    if !is_ndjson {
        let status = stream::upstream_status(&up.response);
        let bytes = read_all(state, up.response).await?;
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            note_tokens(seen, &v);
        }
        return Ok(json_bytes_response(status, bytes));
    }
    let lines = NativeLines {
        expect_done,
        saw_done: false,
    };
    Ok(
        Relay::forward(stream::body(up.response), Framing::Ndjson, lines)
            .timed(timing(state, ctx))
            .logged(&ctx.id, &up.endpoint.url)
            .holding(up.in_flight)
            .respond(StatusCode::OK, ndjson_type()),
    )
}

fn ndjson_type() -> HeaderValue {
    HeaderValue::from_static("application/x-ndjson")
}

/// A whole (not streamed) native answer, passed on with its status.
pub(super) async fn relay_json(state: &EdgeState, up: UpstreamResponse) -> Result<Response> {
    if !up.response.status().is_success() {
        return Err(upstream_status_error(state, up.response).await);
    }
    let status = stream::upstream_status(&up.response);
    let bytes = read_all(state, up.response).await?;
    Ok(json_bytes_response(status, bytes))
}

/// Upstream NDJSON goes on exactly as it came in. Lines are looked at only to count tokens (the
/// `done` line) and notice errors; a failure of the upstream ends the stream with an error line.
struct NativeLines {
    /// Chat and generate streams end with a `"done":true` line; one that does not was cut short.
    expect_done: bool,
    saw_done: bool,
}

impl NativeLines {
    /// An error line as Ollama writes one mid-stream, on a line of its own.
    fn error_line(message: &str, out: &mut Emit) {
        if !out.at_frame_start {
            out.push(Bytes::from_static(b"\n"));
        }
        out.push(ndjson_error_line(message));
    }
}

impl Frames for NativeLines {
    fn frame(&mut self, line: &Bytes, out: &mut Emit) {
        let has = |needle: &[u8]| line.windows(needle.len()).any(|w| w == needle);
        if !has(b"\"done\"") && !has(b"\"error\"") {
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        if v.get("error").is_some() {
            self.saw_done = true;
            out.failed("upstream_error");
        } else if v.get("done") == Some(&Value::Bool(true)) {
            self.saw_done = true;
            if let Some((tin, tout)) = ollama_tokens(&v) {
                out.tokens(tin, tout);
            }
        }
    }

    fn end(&mut self, out: &mut Emit) {
        if self.expect_done && !self.saw_done {
            let why = "upstream closed the stream before it was done";
            out.broke(why);
            Self::error_line(why, out);
        }
    }

    fn fail(&mut self, err: &EdgeError, out: &mut Emit) {
        out.failed(err.kind());
        Self::error_line(&err.to_string(), out);
    }
}

/// Chat or generate on an OpenAI-compatible provider, via `/chat/completions`.
async fn translated(
    state: &EdgeState,
    ctx: &RequestContext,
    body: &Value,
    route: &ProviderRoute,
    shape: Shape,
    model: String,
    seen: &mut Outcome,
) -> Result<Response> {
    if shape == Shape::Generate
        && body
            .get("prompt")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        // Ollama's "load the model" call: nothing to load on an OpenAI-compatible server.
        return Ok(Json(
            json!({"model": model, "created_at": translate::rfc3339_now(),
                              "response": "", "done": true, "done_reason": "load"}),
        )
        .into_response());
    }
    let up_body = match shape {
        Shape::Chat => translate::chat_to_openai(body, &route.model)?,
        Shape::Generate => translate::generate_to_openai(body, &route.model)?,
    };
    let stream = up_body["stream"] == true;
    let up = send_json(state, ctx, route, "/chat/completions", &up_body, seen).await?;
    if !up.response.status().is_success() {
        return Err(upstream_status_error(state, up.response).await);
    }
    let is_sse = up
        .response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_sse {
        let bytes = read_all(state, up.response).await?;
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|_| EdgeError::UpstreamBadResponse)?;
        let nanos = ctx.started.elapsed().as_nanos() as u64;
        let out = translate::response_from_openai(&v, shape, &model, nanos);
        note_tokens(seen, &out);
        // A server that ignored `stream: true` still gets the client a stream of one line.
        return Ok(if stream {
            ndjson_response(Body::from(ndjson(&out)))
        } else {
            Json(out).into_response()
        });
    }
    let frames = NdjsonFromSse {
        translator: StreamTranslator::new(shape, model),
        started: ctx.started,
    };
    Ok(
        Relay::translate(stream::body(up.response), Framing::Sse, frames)
            .timed(timing(state, ctx))
            .logged(&ctx.id, &up.endpoint.url)
            .holding(up.in_flight)
            .respond(StatusCode::OK, ndjson_type()),
    )
}

/// OpenAI SSE in, Ollama NDJSON out, one event at a time.
struct NdjsonFromSse {
    translator: StreamTranslator,
    /// The request's start, for the final line's durations.
    started: Instant,
}

impl NdjsonFromSse {
    /// The final line (or an error line, when the upstream never finished the choice) and the
    /// tokens counted.
    fn close(&mut self, out: &mut Emit) {
        let lines = self
            .translator
            .finish(self.started.elapsed().as_nanos() as u64);
        if lines.iter().any(|v| v.get("error").is_some()) {
            out.failed("upstream_stream_failed");
        }
        let (tin, tout) = self.translator.usage;
        out.tokens(tin, tout);
        emit(lines, out);
    }
}

fn emit(lines: Vec<Value>, out: &mut Emit) {
    for v in &lines {
        out.push(ndjson(v));
    }
}

impl Frames for NdjsonFromSse {
    fn frame(&mut self, event: &Bytes, out: &mut Emit) {
        // Comments, `event:` and `id:` lines carry nothing for Ollama.
        for data in sse_data(event) {
            if self.translator.finished {
                return;
            }
            if data == b"[DONE]" {
                self.close(out);
                return;
            }
            match serde_json::from_slice::<Value>(data) {
                Ok(v) => {
                    if v.get("error").is_some() {
                        out.failed("upstream_error");
                    }
                    emit(self.translator.on_event(&v), out);
                }
                Err(_) => {
                    let why = "upstream sent an event that is not JSON";
                    out.broke(why);
                    emit(self.translator.fail(why), out);
                }
            }
        }
    }

    fn end(&mut self, out: &mut Emit) {
        self.close(out);
    }

    fn fail(&mut self, err: &EdgeError, out: &mut Emit) {
        if !self.translator.finished {
            out.failed(err.kind());
        }
        emit(self.translator.fail(&err.to_string()), out);
    }
}
