//! `/v1/chat/completions`: routed by model, translated for Ollama providers (its NDJSON stream
//! relayed as SSE), passed through to OpenAI-compatible ones.
use std::collections::VecDeque;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;

use crate::config::ProviderKind;
use crate::providers::{InFlight, ProviderRoute, UpstreamResponse};
use crate::surface::stream::{sse, LineBuffer, Read, TimedBody};
use crate::surface::{EdgeState, RequestContext};
use crate::translate::openai_to_ollama::{
    self as translate, ChatIds, ChatStreamTranslator, NdjsonTranslator,
};

use super::upstream::{ollama_status_error, passthrough, read_json, send};
use super::{
    event_stream, fail, log_stream_failure, parse_body, plan, requested_model, unix_now,
    OpenAiError, Result,
};

pub async fn chat_completions(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    body: Bytes,
) -> Response {
    ctx.update(|m| m.surface = "openai");
    match chat(&state, &ctx, &body).await {
        Ok(r) => r,
        Err(e) => fail(&ctx, e),
    }
}

async fn chat(state: &EdgeState, ctx: &RequestContext, raw: &Bytes) -> Result<Response> {
    chat_parsed(state, ctx, parse_body(raw)?).await
}

/// The chat path for a body another surface translated (Anthropic Messages): the same
/// routing, policy, failover and usage accounting; errors come back in OpenAI's shape, for
/// the caller to reshape.
pub async fn chat_translated(state: &EdgeState, ctx: &RequestContext, body: Value) -> Response {
    chat_parsed(state, ctx, body)
        .await
        .unwrap_or_else(|e| fail(ctx, e))
}

async fn chat_parsed(state: &EdgeState, ctx: &RequestContext, body: Value) -> Result<Response> {
    let model = requested_model(&body)?;
    if body.get("messages").is_none() {
        return Err(OpenAiError::new(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'messages'",
        )
        .param("messages"));
    }
    let plan = plan(state, ctx, &model)?;
    let (body, model) = (&body, model.as_str());
    Ok(
        crate::surface::fallback::run(state, ctx, plan, move |route| {
            chat_on(state, ctx, body, route, model)
        })
        .await,
    )
}

/// One attempt of a chat request on one target.
async fn chat_on(
    state: &EdgeState,
    ctx: &RequestContext,
    body: &Value,
    route: ProviderRoute,
    model: &str,
) -> Response {
    match route.provider.kind {
        ProviderKind::Ollama => ollama_chat(state, ctx, body, &route, model.to_owned()).await,
        ProviderKind::Openai => {
            passthrough(state, ctx, body.clone(), &route, "/chat/completions").await
        }
    }
    .unwrap_or_else(|e| fail(ctx, e))
}

async fn ollama_chat(
    state: &EdgeState,
    ctx: &RequestContext,
    body: &Value,
    route: &ProviderRoute,
    model: String,
) -> Result<Response> {
    let upstream_body = translate::chat_to_ollama(body, &route.model)?;
    let stream = upstream_body["stream"].as_bool().unwrap_or(false);
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let ids = ChatIds {
        id: format!("chatcmpl-{}", ctx.id.replace('-', "")),
        created: unix_now(),
        model,
    };
    let up = send(state, ctx, route, "/api/chat", &upstream_body).await?;
    if !up.response.status().is_success() {
        return Err(ollama_status_error(up.response).await);
    }
    if !stream {
        let v = read_json(state, up).await?;
        let out = translate::chat_response_to_openai(&v, &ids);
        let (tin, tout) = translate::ollama_usage(&v);
        ctx.update(|m| {
            m.tokens_in = tin;
            m.tokens_out = tout;
        });
        return Ok(Json(out).into_response());
    }
    let translator = ChatStreamTranslator::new(ids, include_usage);
    Ok(sse_from_ndjson(state, ctx, up, translator))
}

/// An Ollama NDJSON stream relayed as OpenAI SSE through `translator`.
pub(super) fn sse_from_ndjson<T: NdjsonTranslator + 'static>(
    state: &EdgeState,
    ctx: &RequestContext,
    up: UpstreamResponse,
    translator: T,
) -> Response {
    let timed = TimedBody::new(
        up.response,
        state.config.timeouts.idle(),
        state.config.timeouts.total(),
        ctx.started,
    );
    let body = Body::from_stream(futures::stream::unfold(
        SseFromNdjson {
            timed,
            lines: LineBuffer::default(),
            translator,
            pending: VecDeque::new(),
            done: false,
            ctx: ctx.clone(),
            _in_flight: up.in_flight,
        },
        SseFromNdjson::step,
    ));
    event_stream(body)
}

/// Ollama NDJSON in, OpenAI SSE out, one upstream chunk at a time.
struct SseFromNdjson<T> {
    timed: TimedBody,
    lines: LineBuffer,
    translator: T,
    pending: VecDeque<Bytes>,
    done: bool,
    ctx: RequestContext,
    _in_flight: InFlight,
}

impl<T: NdjsonTranslator> SseFromNdjson<T> {
    async fn step(
        mut self,
    ) -> Option<(std::result::Result<Bytes, std::convert::Infallible>, Self)> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Some((Ok(b), self));
            }
            if self.done {
                return None;
            }
            match self.timed.next().await {
                Read::Chunk(chunk) => {
                    for line in self.lines.push(&chunk) {
                        self.translate_line(&line);
                    }
                }
                Read::End => {
                    if let Some(line) = self.lines.finish() {
                        self.translate_line(&line);
                    }
                    if !self.translator.finished() {
                        self.fail("upstream closed the stream before it was done");
                    }
                    self.finish();
                }
                Read::Failed(msg) => {
                    self.fail(&msg);
                    self.finish();
                }
            }
        }
    }

    fn translate_line(&mut self, line: &[u8]) {
        if self.done || self.translator.finished() {
            return;
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(v) => {
                let failed = v.get("error").is_some();
                for payload in self.translator.on_line(&v) {
                    self.pending.push_back(sse(&payload));
                }
                if failed {
                    self.ctx.update(|m| m.error = Some("upstream_error"));
                }
            }
            Err(_) => self.fail("upstream sent a line that is not JSON"),
        }
    }

    fn fail(&mut self, msg: &str) {
        if !self.translator.finished() {
            log_stream_failure(&self.ctx, msg);
            self.pending.push_back(sse(&translate::stream_error(msg)));
            self.translator.mark_finished();
            self.ctx
                .update(|m| m.error = Some("upstream_stream_failed"));
        }
    }

    fn finish(&mut self) {
        let failed = self
            .ctx
            .meta
            .lock()
            .map(|m| m.error.is_some())
            .unwrap_or(true);
        if !failed {
            self.pending
                .push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        }
        let (tin, tout) = self.translator.usage();
        self.ctx.update(|m| {
            m.tokens_in = tin;
            m.tokens_out = tout;
        });
        self.done = true;
    }
}
