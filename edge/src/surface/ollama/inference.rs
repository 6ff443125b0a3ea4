//! `/api/chat` and `/api/generate`: relayed natively to Ollama providers, translated for
//! OpenAI-compatible ones (their SSE written back as NDJSON as each event arrives).
use std::collections::VecDeque;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use http::{header, StatusCode};
use serde_json::{json, Value};

use super::{
    answer, fail, json_bytes_response, model_field, native_body, ndjson_response, parse_body, plan,
    read_all, record_ollama_tokens, send, upstream_status_error, OllamaError, Result,
};
use crate::config::ProviderKind;
use crate::providers::{InFlight, ProviderRoute, UpstreamResponse};
use crate::surface::stream::{self, ndjson, LineBuffer, Read, TimedBody};
use crate::surface::{EdgeState, RequestContext};
use crate::translate::ollama_to_openai::{self as translate, Shape, StreamTranslator};

pub async fn chat(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    raw: Bytes,
) -> Response {
    answer(&ctx, inference(&state, &ctx, &raw, Shape::Chat)).await
}

pub async fn generate(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    raw: Bytes,
) -> Response {
    answer(&ctx, inference(&state, &ctx, &raw, Shape::Generate)).await
}

async fn inference(
    state: &EdgeState,
    ctx: &RequestContext,
    raw: &Bytes,
    shape: Shape,
) -> Result<Response> {
    let body = parse_body(raw)?;
    let model = model_field(&body, &["model"])?;
    let plan = plan(state, ctx, &model)?;
    let path = match shape {
        Shape::Chat => "/api/chat",
        Shape::Generate => "/api/generate",
    };
    let (body, model) = (&body, model.as_str());
    let attempt = move |route: ProviderRoute| async move {
        match route.provider.kind {
            ProviderKind::Ollama => {
                let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(true);
                let mut up_body = native_body(body.clone(), &route.model);
                // Sent explicitly so the upstream's default can never differ from ours.
                up_body["stream"] = json!(stream);
                let up = send(state, ctx, &route, path, &up_body).await?;
                relay(state, ctx, up, true).await
            }
            ProviderKind::Openai => {
                translated(state, ctx, body, &route, shape, model.to_owned()).await
            }
        }
    };
    Ok(
        crate::surface::fallback::run(state, ctx, plan, move |route| async move {
            let r: Result<Response> = attempt(route).await;
            r.unwrap_or_else(|e| fail(ctx, e))
        })
        .await,
    )
}

/// A native Ollama answer passed on: error statuses as they are, NDJSON streams line for line
/// (tokens read on the side), whole JSON bodies as they are.
async fn relay(
    state: &EdgeState,
    ctx: &RequestContext,
    up: UpstreamResponse,
    expect_done: bool,
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
            record_ollama_tokens(ctx, &v);
        }
        return Ok(json_bytes_response(status, bytes));
    }
    let timed = TimedBody::new(
        up.response,
        state.config.timeouts.idle(),
        state.config.timeouts.total(),
        ctx.started,
    );
    let relay = NdjsonRelay {
        timed,
        lines: LineBuffer::default(),
        ctx: ctx.clone(),
        expect_done,
        endpoint: up.endpoint.url.clone(),
        saw_done: false,
        at_line_start: true,
        done: false,
        _in_flight: up.in_flight,
    };
    Ok(ndjson_response(Body::from_stream(futures::stream::unfold(
        relay,
        NdjsonRelay::step,
    ))))
}

pub(super) async fn relay_json(state: &EdgeState, up: UpstreamResponse) -> Result<Response> {
    if !up.response.status().is_success() {
        return Err(upstream_status_error(state, up.response).await);
    }
    let status = stream::upstream_status(&up.response);
    let bytes = read_all(state, up.response).await?;
    Ok(json_bytes_response(status, bytes))
}

/// Upstream NDJSON out exactly as it came in. Lines are looked at only to count tokens (the
/// `done` line) and notice errors; a failure of the upstream ends the stream with an error line.
struct NdjsonRelay {
    timed: TimedBody,
    lines: LineBuffer,
    ctx: RequestContext,
    /// Chat and generate streams end with a `"done":true` line; one that does not was cut short.
    expect_done: bool,
    /// For the log line when the upstream fails mid-stream.
    endpoint: String,
    saw_done: bool,
    at_line_start: bool,
    done: bool,
    _in_flight: InFlight,
}

impl NdjsonRelay {
    async fn step(
        mut self,
    ) -> Option<(std::result::Result<Bytes, std::convert::Infallible>, Self)> {
        if self.done {
            return None;
        }
        match self.timed.next().await {
            Read::Chunk(chunk) => {
                for line in self.lines.push(&chunk) {
                    self.inspect(&line);
                }
                self.at_line_start = chunk.last() == Some(&b'\n');
                Some((Ok(chunk), self))
            }
            Read::End => {
                self.done = true;
                if let Some(line) = self.lines.finish() {
                    self.inspect(&line);
                }
                if self.expect_done && !self.saw_done {
                    let e = self.error_line("upstream closed the stream before it was done");
                    return Some((Ok(e), self));
                }
                None
            }
            Read::Failed(msg) => {
                self.done = true;
                let e = self.error_line(&msg);
                Some((Ok(e), self))
            }
        }
    }

    fn inspect(&mut self, line: &[u8]) {
        let has = |needle: &[u8]| line.windows(needle.len()).any(|w| w == needle);
        if !has(b"\"done\"") && !has(b"\"error\"") {
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        if v.get("error").is_some() {
            self.saw_done = true;
            self.ctx.update(|m| m.error = Some("upstream_error"));
        } else if v.get("done") == Some(&Value::Bool(true)) {
            self.saw_done = true;
            record_ollama_tokens(&self.ctx, &v);
        }
    }

    /// An error line as Ollama writes one mid-stream, on a line of its own.
    fn error_line(&mut self, msg: &str) -> Bytes {
        tracing::warn!(request_id = %self.ctx.id, endpoint = %self.endpoint, error = msg,
                       "upstream stream failed");
        self.ctx
            .update(|m| m.error = Some("upstream_stream_failed"));
        let line = ndjson(&json!({"error": msg}));
        if self.at_line_start {
            line
        } else {
            Bytes::from([b"\n".as_slice(), &line].concat())
        }
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
    let up = send(state, ctx, route, "/chat/completions", &up_body).await?;
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
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| {
            OllamaError::new(
                StatusCode::BAD_GATEWAY,
                "the upstream answered with a body that is not JSON",
            )
        })?;
        let nanos = ctx.started.elapsed().as_nanos() as u64;
        let out = translate::response_from_openai(&v, shape, &model, nanos);
        record_ollama_tokens(ctx, &out);
        // A server that ignored `stream: true` still gets the client a stream of one line.
        return Ok(if stream {
            ndjson_response(Body::from(ndjson(&out)))
        } else {
            Json(out).into_response()
        });
    }
    let timed = TimedBody::new(
        up.response,
        state.config.timeouts.idle(),
        state.config.timeouts.total(),
        ctx.started,
    );
    let s = NdjsonFromSse {
        timed,
        lines: LineBuffer::default(),
        translator: StreamTranslator::new(shape, model),
        pending: VecDeque::new(),
        ctx: ctx.clone(),
        _in_flight: up.in_flight,
    };
    Ok(ndjson_response(Body::from_stream(futures::stream::unfold(
        s,
        NdjsonFromSse::step,
    ))))
}

/// OpenAI SSE in, Ollama NDJSON out, one upstream chunk at a time.
struct NdjsonFromSse {
    timed: TimedBody,
    lines: LineBuffer,
    translator: StreamTranslator,
    pending: VecDeque<Bytes>,
    ctx: RequestContext,
    _in_flight: InFlight,
}

impl NdjsonFromSse {
    async fn step(
        mut self,
    ) -> Option<(std::result::Result<Bytes, std::convert::Infallible>, Self)> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Some((Ok(b), self));
            }
            if self.translator.finished {
                return None;
            }
            match self.timed.next().await {
                Read::Chunk(chunk) => {
                    for line in self.lines.push(&chunk) {
                        self.on_line(&line);
                    }
                }
                Read::End => {
                    if let Some(line) = self.lines.finish() {
                        self.on_line(&line);
                    }
                    self.end();
                }
                Read::Failed(msg) => {
                    let out = self.translator.fail(&msg);
                    self.ctx
                        .update(|m| m.error = Some("upstream_stream_failed"));
                    self.emit(out);
                }
            }
        }
    }

    fn on_line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return; // comments, `event:` and `id:` lines carry nothing for Ollama
        };
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            self.end();
            return;
        }
        match serde_json::from_slice::<Value>(data) {
            Ok(v) => {
                if v.get("error").is_some() {
                    self.ctx.update(|m| m.error = Some("upstream_error"));
                }
                let out = self.translator.on_event(&v);
                self.emit(out);
            }
            Err(_) => {
                let out = self
                    .translator
                    .fail("upstream sent an event that is not JSON");
                self.ctx
                    .update(|m| m.error = Some("upstream_stream_failed"));
                self.emit(out);
            }
        }
    }

    fn end(&mut self) {
        let out = self
            .translator
            .finish(self.ctx.started.elapsed().as_nanos() as u64);
        if out.iter().any(|v| v.get("error").is_some()) {
            self.ctx
                .update(|m| m.error = Some("upstream_stream_failed"));
        }
        let (tin, tout) = self.translator.usage;
        self.ctx.update(|m| {
            m.tokens_in = tin;
            m.tokens_out = tout;
        });
        self.emit(out);
    }

    fn emit(&mut self, values: Vec<Value>) {
        self.pending.extend(values.iter().map(ndjson));
    }
}
