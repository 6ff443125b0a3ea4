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
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};

use super::chat_sse::{self, ChatStreamTranslator, NamedEvent};
use super::{openai, EdgeState, RequestContext};
use crate::policy::Refusal;
use crate::translate::anthropic::{self as tr, MessagesStreamTranslator};

/// The largest error body read from the chat path to reshape it.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// An error in Anthropic's shape with its HTTP status.
#[derive(Debug)]
pub struct AnthropicError {
    status: StatusCode,
    message: String,
    retry_after: Option<HeaderValue>,
}

impl AnthropicError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        let body = tr::error_body(self.status.as_u16(), &self.message);
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(v) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

fn fail(ctx: &RequestContext, e: AnthropicError) -> Response {
    let kind = tr::error_type(e.status.as_u16());
    ctx.update(|m| m.error = m.error.or(Some(kind)));
    e.into_response()
}

/// A refusal from the gateway's admission (401, 403, 429 with `Retry-After`).
pub fn refused(client: &str, refusal: &Refusal) -> Response {
    let status = match refusal {
        Refusal::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
        Refusal::ModelForbidden(_) => StatusCode::FORBIDDEN,
        Refusal::Limited { .. } => StatusCode::TOO_MANY_REQUESTS,
    };
    let mut e = AnthropicError::new(status, refusal.message(client));
    if let Refusal::Limited { retry_after, .. } = refusal {
        e.retry_after = Some(HeaderValue::from(crate::policy::retry_after_secs(
            *retry_after,
        )));
    }
    e.into_response()
}

/// An error response of the chat path (OpenAI's shape) in Anthropic's shape, status and
/// `Retry-After` kept.
async fn reshape_error(resp: Response) -> AnthropicError {
    let status = resp.status();
    let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
    let bytes = axum::body::to_bytes(resp.into_body(), ERROR_BODY_LIMIT)
        .await
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            e.get("message")
                .and_then(Value::as_str)
                .or_else(|| e.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("upstream answered HTTP {}", status.as_u16()));
    AnthropicError {
        status,
        message,
        retry_after,
    }
}

fn parse_body(body: &Bytes) -> Result<Value, AnthropicError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        AnthropicError::new(
            StatusCode::BAD_REQUEST,
            format!("The request body is not valid JSON: {e}"),
        )
    })?;
    if !v.is_object() {
        return Err(AnthropicError::new(
            StatusCode::BAD_REQUEST,
            "The request body must be a JSON object",
        ));
    }
    Ok(v)
}

fn translate(req: &Value) -> Result<Value, AnthropicError> {
    tr::messages_to_chat(req).map_err(|e| AnthropicError::new(StatusCode::BAD_REQUEST, e.message))
}

pub async fn messages(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    body: Bytes,
) -> Response {
    ctx.update(|m| m.surface = "anthropic");
    let resp = match create(&state, &ctx, &body).await {
        Ok(r) => r,
        Err(e) => fail(&ctx, e),
    };
    with_request_id(resp, &ctx)
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
) -> Result<Response, AnthropicError> {
    let chat = translate(&parse_body(raw)?)?;
    let model = chat["model"].as_str().unwrap_or_default().to_owned();
    let stream = chat["stream"] == true;
    let id = format!("msg_{}", ctx.id.replace('-', ""));
    let resp = openai::chat::chat_translated(state, ctx, chat).await;
    if !resp.status().is_success() {
        return Err(reshape_error(resp).await);
    }
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !stream || !is_sse {
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .map_err(|e| AnthropicError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| {
            AnthropicError::new(
                StatusCode::BAD_GATEWAY,
                "The upstream answered with a body that is not JSON",
            )
        })?;
        return Ok(Json(tr::chat_response_to_message(&v, &id, &model)).into_response());
    }
    let translator = MessagesStreamTranslator::new(id, model);
    let first = vec![translator.start()];
    Ok(chat_sse::translated(resp, translator, first, ctx, None))
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
    ctx.update(|m| m.surface = "anthropic");
    let result = async {
        let mut req = parse_body(&body)?;
        // count_tokens takes no max_tokens; the translation wants one.
        req["max_tokens"] = json!(1);
        let chat = translate(&req)?;
        let model = chat["model"].as_str().unwrap_or_default();
        if let Err(e) = openai::route(&state, &ctx, model) {
            return Err(reshape_error(e.into_response()).await);
        }
        Ok(Json(json!({"input_tokens": tr::estimate_input_tokens(&chat)})).into_response())
    }
    .await;
    with_request_id(result.unwrap_or_else(|e| fail(&ctx, e)), &ctx)
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
    if let Some(alias) = state.providers.alias(id) {
        return if ctx.client.allows_alias(&alias.name) {
            Json(model_info(&alias.name, 0)).into_response()
        } else {
            AnthropicError::new(
                StatusCode::FORBIDDEN,
                Refusal::ModelForbidden(id.to_owned()).message(&ctx.client.name),
            )
            .into_response()
        };
    }
    match state.providers.route(id) {
        Ok(r) if r.provider.find_model(&r.model).is_none() => {
            AnthropicError::new(StatusCode::NOT_FOUND, format!("model: {id}")).into_response()
        }
        Ok(r) if !ctx.client.allows_model(&r.provider.name, &r.model) => AnthropicError::new(
            StatusCode::FORBIDDEN,
            Refusal::ModelForbidden(id.to_owned()).message(&ctx.client.name),
        )
        .into_response(),
        Ok(r) => Json(model_info(&format!("{}/{}", r.provider.name, r.model), 0)).into_response(),
        Err(e) => AnthropicError::new(StatusCode::NOT_FOUND, e.to_string()).into_response(),
    }
}
