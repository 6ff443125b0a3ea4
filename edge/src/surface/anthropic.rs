//! The Anthropic surface: `POST /v1/messages` and `POST /v1/messages/count_tokens`, so Claude
//! Code and Anthropic's SDKs work with local models.
//!
//! Request path: Anthropic body → OpenAI chat body (`translate::anthropic`) → the OpenAI
//! surface's chat path (routing, policy, failover, request ids, usage; Ollama providers get
//! the OpenAI → Ollama translation there) → the answer or chunk stream back to Anthropic's
//! shape. Errors are Anthropic's `{"type":"error","error":{"type","message"}}`.
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use http::{header, HeaderValue};
use serde_json::{json, Value};

use super::chat_sse::{self, ChatStreamTranslator, NamedEvent};
use super::{openai, EdgeState, RequestContext};
use crate::error::{EdgeError, Shape};
use crate::outcome::Outcome;
use crate::translate::anthropic::{self as tr, MessagesStreamTranslator};

fn parse_body(body: &Bytes) -> Result<Value, EdgeError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| EdgeError::InvalidJson(e.to_string()))?;
    if !v.is_object() {
        return Err(EdgeError::NotAnObject { what: "" });
    }
    Ok(v)
}

fn translate(req: &Value) -> Result<Value, EdgeError> {
    tr::messages_to_chat(req).map_err(|e| EdgeError::invalid(e.message))
}

/// What every answer of this surface carries: its outcome's surface, and the request id.
fn answered(ctx: &RequestContext, resp: Result<Response, EdgeError>) -> Response {
    let resp = resp.unwrap_or_else(|e| e.render(&Shape::Anthropic));
    with_request_id(
        Outcome {
            surface: "anthropic",
            ..Outcome::default()
        }
        .attach(resp),
        ctx,
    )
}

pub async fn messages(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    body: Bytes,
) -> Response {
    answered(&ctx, create(&state, &ctx, &body).await)
}

/// Anthropic's SDKs read the id from `request-id` (`message._request_id`); the gateway adds
/// `X-Request-ID` to every response as well.
fn with_request_id(mut resp: Response, ctx: &RequestContext) -> Response {
    if let Ok(v) = HeaderValue::from_str(&ctx.id) {
        resp.headers_mut().insert("request-id", v);
    }
    resp
}

async fn create(
    state: &EdgeState,
    ctx: &RequestContext,
    raw: &Bytes,
) -> Result<Response, EdgeError> {
    let chat = translate(&parse_body(raw)?)?;
    let model = chat["model"].as_str().unwrap_or_default().to_owned();
    let stream = chat["stream"] == true;
    let id = format!("msg_{}", ctx.id.replace('-', ""));
    // Errors of the chat path come back in this surface's shape already.
    let resp = openai::chat::chat_translated(state, ctx, chat, &Shape::Anthropic).await;
    if !resp.status().is_success() {
        return Ok(resp);
    }
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !stream || !is_sse {
        let chat_outcome = resp
            .extensions()
            .get::<Outcome>()
            .cloned()
            .unwrap_or_default();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .map_err(|e| EdgeError::UpstreamStreamFailed(e.to_string()))?;
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|_| EdgeError::UpstreamBadResponse)?;
        let out = Json(tr::chat_response_to_message(&v, &id, &model)).into_response();
        return Ok(chat_outcome.attach(out));
    }
    let translator = MessagesStreamTranslator::new(id, model);
    let first = vec![translator.start()];
    Ok(chat_sse::translated(resp, translator, first, None))
}

impl ChatStreamTranslator for MessagesStreamTranslator {
    fn on_chunk(&mut self, chunk: &Value) -> Vec<NamedEvent> {
        MessagesStreamTranslator::on_chunk(self, chunk)
    }
    fn finish(&mut self) -> Vec<NamedEvent> {
        MessagesStreamTranslator::finish(self)
    }
    fn finished(&self) -> bool {
        self.finished
    }
    fn saw_finish(&self) -> bool {
        MessagesStreamTranslator::saw_finish(self)
    }
}
/// `POST /v1/messages/count_tokens`: the model is resolved (404 and 403 as for messages),
/// then the input is estimated; local models share no tokenizer the edge could run.
pub async fn count_tokens(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    body: Bytes,
) -> Response {
    let mut seen = Outcome::default();
    let result = async {
        let mut req = parse_body(&body)?;
        // count_tokens takes no max_tokens; the translation wants one.
        req["max_tokens"] = json!(1);
        let chat = translate(&req)?;
        let model = chat["model"].as_str().unwrap_or_default();
        openai::route(&state, &ctx, model, &mut seen)?;
        Ok(Json(json!({"input_tokens": tr::estimate_input_tokens(&chat)})).into_response())
    }
    .await;
    let resp = result.unwrap_or_else(|e: EdgeError| e.render(&Shape::Anthropic));
    answered(&ctx, Ok(seen.attach(resp)))
}

/// Anthropic's SDKs send `anthropic-version` on every call; `GET /v1/models` then answers in
/// Anthropic's list shape instead of OpenAI's.
pub fn wants_anthropic(headers: &http::HeaderMap) -> bool {
    headers.contains_key("anthropic-version")
}

fn model_info(id: &str, created: i64) -> Value {
    let created_at = time::OffsetDateTime::from_unix_timestamp(created)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned());
    json!({"type": "model", "id": id, "display_name": id, "created_at": created_at})
}

/// The OpenAI model entries (`id`, `created`) the OpenAI surface listed, as Anthropic's page.
pub fn model_list(openai_entries: &[Value]) -> Value {
    let data: Vec<Value> = openai_entries
        .iter()
        .map(|m| {
            model_info(
                m["id"].as_str().unwrap_or_default(),
                m["created"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    json!({"data": data, "has_more": false,
           "first_id": data.first().map(|m| m["id"].clone()),
           "last_id": data.last().map(|m| m["id"].clone())})
}

/// `GET /v1/models/{id}` for Anthropic's SDKs: the model resolved as for messages.
pub async fn get_model(state: &EdgeState, ctx: &RequestContext, id: &str) -> Response {
    let forbidden = || EdgeError::ModelForbidden {
        client: ctx.client.name.clone(),
        model: id.to_owned(),
    };
    let answer = if let Some(alias) = state.providers.alias(id) {
        if ctx.client.allows_alias(&alias.name) {
            Ok(Json(model_info(&alias.name, 0)).into_response())
        } else {
            Err(forbidden())
        }
    } else {
        match state.providers.route(id) {
            Ok(r) if r.provider.find_model(&r.model).is_none() => {
                Err(EdgeError::NotFound(format!("model: {id}")))
            }
            Ok(r) if !ctx.client.allows_model(&r.provider.name, &r.model) => Err(forbidden()),
            Ok(r) => Ok(
                Json(model_info(&format!("{}/{}", r.provider.name, r.model), 0)).into_response(),
            ),
            Err(e) => Err(EdgeError::NotFound(e.to_string())),
        }
    };
    answer.unwrap_or_else(|e| e.render(&Shape::Anthropic))
}
