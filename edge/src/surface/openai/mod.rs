//! The OpenAI surface: `/v1/models`, `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`.
//!
//! Request path: parse the body → route by model name → Ollama (translated) or an
//! OpenAI-compatible server (passed through, only `model` rewritten) → stream back.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};

use crate::policy::Refusal;
use crate::surface::{EdgeState, RequestContext};
pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod models;
pub mod passthrough;
pub mod responses;
pub mod upstream;

use crate::providers::{retry_after_secs, Plan, ProviderRoute, RouteError, UpstreamError};
use crate::translate::TranslateError;

/// `{"error": {"message", "type", "param", "code"}}` with its HTTP status.
#[derive(Debug)]
pub struct OpenAiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

impl OpenAiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let kind = match status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 | 400 | 413 | 422 => "invalid_request_error",
            429 => "rate_limit_error",
            502..=504 => "upstream_error",
            _ => "api_error",
        };
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }
    /// Short kind for logs and metrics.
    pub fn kind(&self) -> &'static str {
        self.code.unwrap_or(self.kind)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind,
                                    "param": self.param, "code": self.code}});
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

impl From<TranslateError> for OpenAiError {
    fn from(e: TranslateError) -> Self {
        let mut err = OpenAiError::new(StatusCode::BAD_REQUEST, e.message);
        err.param = e.param;
        err
    }
}

impl From<RouteError> for OpenAiError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NotFound(_) => OpenAiError::new(StatusCode::NOT_FOUND, e.to_string())
                .code("model_not_found")
                .param("model"),
            RouteError::Ambiguous(..) => OpenAiError::new(StatusCode::BAD_REQUEST, e.to_string())
                .code("model_ambiguous")
                .param("model"),
        }
    }
}

impl From<UpstreamError> for OpenAiError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::Unreachable(..) => {
                OpenAiError::new(StatusCode::BAD_GATEWAY, e.to_string())
                    .code("upstream_unreachable")
            }
            UpstreamError::Timeout(..) => {
                OpenAiError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string())
                    .code("upstream_timeout")
            }
            UpstreamError::AllEjected(_, wait) => {
                let mut err = OpenAiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                    .code("upstream_unavailable");
                err.retry_after = Some(retry_after_secs(wait));
                err
            }
        }
    }
}

type Result<T> = std::result::Result<T, OpenAiError>;

pub fn fail(ctx: &RequestContext, e: OpenAiError) -> Response {
    let kind = e.kind();
    ctx.update(|m| m.error = Some(kind));
    e.into_response()
}

pub(crate) fn parse_body(body: &Bytes) -> Result<Value> {
    if body.is_empty() {
        return Err(OpenAiError::new(
            StatusCode::BAD_REQUEST,
            "The request body is empty; send a JSON object",
        ));
    }
    aibox_wire::body::from_slice::<Value>(body).map_err(|e| match e {
        aibox_wire::body::BodyError::NotAnObject { what } => OpenAiError::new(
            StatusCode::BAD_REQUEST,
            format!("The request body must be a JSON object, not {what}"),
        ),
        aibox_wire::body::BodyError::Invalid(e) => OpenAiError::new(
            StatusCode::BAD_REQUEST,
            format!("The request body is not valid JSON: {e}"),
        )
        .code("invalid_json"),
    })
}

pub(crate) fn requested_model(body: &Value) -> Result<String> {
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m.clone()),
        None | Some(Value::Null) => Err(OpenAiError::new(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'model'",
        )
        .param("model")),
        _ => Err(OpenAiError::new(
            StatusCode::BAD_REQUEST,
            "'model' must be a non-empty string",
        )
        .param("model")),
    }
}

/// The first target of `model`'s plan (for routes without fallback), policy checked.
pub fn route(state: &EdgeState, ctx: &RequestContext, model: &str) -> Result<ProviderRoute> {
    Ok(plan(state, ctx, model)?.targets.swap_remove(0).route)
}

/// Where `model` may go, in order (an alias's targets, or one route), after the client's
/// policy: an alias by its own name, a model by `provider/model`.
pub fn plan(state: &EdgeState, ctx: &RequestContext, model: &str) -> Result<Plan> {
    let plan = state.providers.plan(model)?;
    let first = plan.first();
    ctx.update(|m| {
        m.provider = Some(first.provider.name.clone());
        m.model = Some(model.to_owned());
    });
    let allowed = match &plan.alias {
        Some(alias) => ctx.client.allows_alias(&alias.name),
        None => ctx.client.allows_model(&first.provider.name, &first.model),
    };
    if !allowed {
        return Err(forbidden_model(&ctx.client.name, model));
    }
    Ok(plan)
}

/// 403 naming the model (the client's policy does not list it).
fn forbidden_model(client: &str, model: &str) -> OpenAiError {
    let refusal = Refusal::ModelForbidden(model.to_owned());
    OpenAiError::new(StatusCode::FORBIDDEN, refusal.message(client))
        .code("model_not_allowed")
        .param("model")
}

/// A refusal from the gateway's admission (401, 429 with `Retry-After`) in OpenAI's shape.
pub fn refused(client: &str, refusal: &Refusal) -> Response {
    let message = refusal.message(client);
    match refusal {
        Refusal::Unauthenticated { .. } => OpenAiError::new(StatusCode::UNAUTHORIZED, message)
            .code("invalid_api_key")
            .into_response(),
        Refusal::ModelForbidden(model) => forbidden_model(client, model).into_response(),
        Refusal::Limited { retry_after, .. } => {
            let mut r = OpenAiError::new(StatusCode::TOO_MANY_REQUESTS, message)
                .code("rate_limit_exceeded")
                .into_response();
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(crate::policy::retry_after_secs(*retry_after)),
            );
            r
        }
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A stream that broke after its headers went out, logged with the endpoint that sent it (as
/// the Ollama surface does), so an operator can tell which host broke it.
fn log_stream_failure(ctx: &RequestContext, msg: &str) {
    let endpoint = ctx
        .meta
        .lock()
        .ok()
        .and_then(|m| m.endpoint.clone())
        .unwrap_or_default();
    tracing::warn!(request_id = %ctx.id, endpoint = %endpoint, error = msg, "upstream stream failed");
}

pub fn event_stream(body: Body) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
