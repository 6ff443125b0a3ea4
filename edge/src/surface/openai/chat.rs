//! `/v1/chat/completions`: routed by model, translated for Ollama providers (its NDJSON stream
//! relayed as SSE), passed through to OpenAI-compatible ones.
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use super::frames::{event_stream, SseFromNdjson};
use super::upstream::{
    ollama_status_error, passthrough, read_json, relay, send_bytes, send_json, timing,
};
use super::{answered, model_of, parse_body, plan, requested_model, unix_now, Result};
use crate::config::ProviderKind;
use crate::error::{EdgeError, Shape};
use crate::model_field::ModelField;
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
    if let Some(result) = chat_unparsed(&state, &ctx, &body, &mut seen).await {
        return answered(seen, result);
    }
    let result = match parse_body(&body) {
        Ok(body) => chat_parsed(&state, &ctx, body, &Shape::OpenAi, &mut seen).await,
        Err(e) => Err(e),
    };
    answered(seen, result)
}

/// What the pass-through needs to know of a chat body, read without building a JSON tree.
#[derive(Deserialize)]
struct ChatHead {
    messages: Option<IgnoredAny>,
    stream: Option<bool>,
    stream_options: Option<StreamOptionsHead>,
}

#[derive(Deserialize)]
struct StreamOptionsHead {
    include_usage: Option<bool>,
}

/// Chat passed through to OpenAI-compatible providers with only `model` rewritten in the
/// client's own bytes (`model_field`). Taken when every target is OpenAI-compatible and the edge
/// adds nothing to the body (a stream whose usage the edge must ask for is not); `None` sends
/// the request down the parsed path, which also gives every malformed body its usual answer.
async fn chat_unparsed(
    state: &EdgeState,
    ctx: &RequestContext,
    raw: &Bytes,
    seen: &mut Outcome,
) -> Option<Result<Response>> {
    let head: ChatHead = serde_json::from_slice(raw).ok()?;
    head.messages.as_ref()?;
    let usage_asked = head
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    if head.stream == Some(true) && !usage_asked {
        return None;
    }
    let field = model_of(raw).ok()?;
    let plan = match plan(state, ctx, field.value(), seen) {
        Ok(plan) => plan,
        Err(e) => return Some(Err(e)),
    };
    if plan
        .targets
        .iter()
        .any(|t| t.route.provider.kind != ProviderKind::Openai)
    {
        return None;
    }
    let field = &field;
    Some(Ok(crate::surface::fallback::run(
        state,
        ctx,
        plan,
        move |route| unparsed_on(state, ctx, field, route),
    )
    .await))
}

/// One attempt of an unparsed pass-through on one target.
async fn unparsed_on(
    state: &EdgeState,
    ctx: &RequestContext,
    field: &ModelField<'_>,
    route: ProviderRoute,
) -> Response {
    let mut tried = Outcome {
        provider: Some(route.provider.name.clone()),
        ..Outcome::default()
    };
    let body = Bytes::from(field.replaced(&route.model));
    let result = async {
        let up = send_bytes(state, ctx, &route, "/chat/completions", body, &mut tried).await?;
        relay(state, ctx, up, false, &mut tried).await
    }
    .await;
    tried.attach(result.unwrap_or_else(|e| e.render(&Shape::OpenAi)))
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
