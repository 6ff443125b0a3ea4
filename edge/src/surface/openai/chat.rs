//! `/v1/chat/completions`: routed by model, translated for Ollama providers (its NDJSON stream
//! relayed as SSE), passed through to OpenAI-compatible ones.
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::Value;

use super::frames::{event_stream, SseFromNdjson};
use super::upstream::{ollama_status_error, passthrough, read_json, send_json, timing};
use super::{answered, parse_body, plan, requested_model, unix_now, Result};
use crate::config::ProviderKind;
use crate::error::{EdgeError, Shape};
use crate::outcome::Outcome;
use crate::providers::{ProviderRoute, UpstreamResponse};
use crate::relay::{Framing, Relay};
use crate::surface::stream;
use crate::surface::{EdgeState, RequestContext};
use crate::translate::openai_to_ollama::{
    self as translate, ChatIds, ChatStreamTranslator, NdjsonTranslator,
};

pub async fn chat_completions(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    body: Bytes,
) -> Response {
    let mut seen = Outcome::on("openai");
    let result = match parse_body(&body) {
        Ok(body) => chat_parsed(&state, &ctx, body, &Shape::OpenAi, &mut seen).await,
        Err(e) => Err(e),
    };
    answered(seen, result)
}

/// The chat path for a body another surface translated (Anthropic Messages, Responses): the
/// same routing, policy, failover and usage accounting, errors rendered in `shape`.
pub async fn chat_translated(
    state: &EdgeState,
    ctx: &RequestContext,
    body: Value,
    shape: &Shape,
) -> Response {
    let mut seen = Outcome::default();
    let result = chat_parsed(state, ctx, body, shape, &mut seen).await;
    seen.attach(result.unwrap_or_else(|e| e.render(shape)))
}

async fn chat_parsed(
    state: &EdgeState,
    ctx: &RequestContext,
    body: Value,
    shape: &Shape,
    seen: &mut Outcome,
) -> Result<Response> {
    let model = requested_model(&body)?;
    if body.get("messages").is_none() {
        return Err(EdgeError::MissingParam("messages"));
    }
    let plan = plan(state, ctx, &model, seen)?;
    let (body, model) = (&body, model.as_str());
    Ok(
        crate::surface::fallback::run(state, ctx, plan, move |route| {
            chat_on(state, ctx, body, route, model, shape)
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
    shape: &Shape,
) -> Response {
    let mut tried = Outcome {
        provider: Some(route.provider.name.clone()),
        ..Outcome::default()
    };
    let result = match route.provider.kind {
        ProviderKind::Ollama => {
            ollama_chat(state, ctx, body, &route, model.to_owned(), &mut tried).await
        }
        ProviderKind::Openai => {
            passthrough(
                state,
                ctx,
                body.clone(),
                &route,
                "/chat/completions",
                &mut tried,
            )
            .await
        }
    };
    tried.attach(result.unwrap_or_else(|e| e.render(shape)))
}

async fn ollama_chat(
    state: &EdgeState,
    ctx: &RequestContext,
    body: &Value,
    route: &ProviderRoute,
    model: String,
    seen: &mut Outcome,
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
    let up = send_json(state, ctx, route, "/api/chat", &upstream_body, seen).await?;
    if !up.response.status().is_success() {
        return Err(ollama_status_error(up.response).await);
    }
    if !stream {
        let v = read_json(state, up).await?;
        let out = translate::chat_response_to_openai(&v, &ids);
        (seen.tokens_in, seen.tokens_out) = translate::ollama_usage(&v);
        return Ok(Json(out).into_response());
    }
    let translator = ChatStreamTranslator::new(ids, include_usage);
    Ok(sse_from_ndjson(state, ctx, up, translator))
}

/// An Ollama NDJSON stream relayed as OpenAI SSE through `translator`.
pub fn sse_from_ndjson<T: NdjsonTranslator + 'static>(
    state: &EdgeState,
    ctx: &RequestContext,
    up: UpstreamResponse,
    translator: T,
) -> Response {
    event_stream(
        Relay::translate(
            stream::body(up.response),
            Framing::Ndjson,
            SseFromNdjson(translator),
        )
        .timed(timing(state, ctx))
        .logged(&ctx.id, &up.endpoint.url)
        .holding(up.in_flight),
    )
}
