//! Every way a request to the edge can fail, as one type.
//!
//! Handlers return `EdgeError`; the surface a request came in on picks the shape it is rendered
//! in (`render`): OpenAI's `{"error": {message, type, param, code}}`, Ollama's
//! `{"error": "..."}`, Anthropic's `{"type": "error", "error": {type, message}}`, a JSON-RPC
//! error for MCP, or a problem+json document for the edge's admin routes. A stream that fails
//! after its headers went out ends with the surface's in-stream error event instead
//! (`sse_event`, `ndjson_line`). `kind()` is the short label logs and metrics use.
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};

use crate::outcome::Outcome;

/// The shape an error is rendered in: the API the caller speaks.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    OpenAi,
    Ollama,
    Anthropic,
    /// A JSON-RPC error answering the request `id` (MCP).
    JsonRpc(Value),
    /// RFC 9457 problem+json (the edge's own admin routes).
    Problem,
}

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("the request body is empty")]
    EmptyBody,
    #[error("the request body must be a JSON object, not {what}")]
    NotAnObject { what: &'static str },
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("Missing required parameter: '{0}'")]
    MissingParam(&'static str),
    /// A request the edge understood but cannot accept (a bad field, a bad form).
    #[error("{message}")]
    Invalid {
        message: String,
        param: Option<String>,
    },
    #[error("The model `{0}` does not exist or is not served by any provider")]
    ModelNotFound(String),
    #[error("The model `{model}` is served by several providers ({providers}); prefix it with one, e.g. `{example}/{model}`")]
    ModelAmbiguous {
        model: String,
        providers: String,
        example: String,
    },
    #[error("Client `{client}` may not use the model `{model}`")]
    ModelForbidden { client: String, model: String },
    #[error("{}", unauthenticated_message(*key_presented))]
    Unauthenticated { key_presented: bool },
    #[error("Client `{client}` is over its {} limit; retry after {} s", limit_name(limit), crate::policy::retry_after_secs(*retry_after))]
    Limited {
        client: String,
        limit: &'static str,
        retry_after: Duration,
    },
    #[error("Request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("Unknown request URL: {method} {path}")]
    UnknownUrl { method: String, path: String },
    /// A provider kind that has no such API (Ollama has no `/v1/rerank`).
    #[error("The model `{model}` is served by provider `{provider}` ({provider_kind}), which does not serve {path}")]
    RouteNotSupported {
        model: String,
        provider: String,
        provider_kind: &'static str,
        path: String,
    },
    #[error("Response with id '{0}' not found.")]
    ResponseNotFound(String),
    #[error("Previous response with id '{0}' not found.")]
    PreviousResponseNotFound(String),
    /// Anything else that is not there, with its own message.
    #[error("{0}")]
    NotFound(String),
    #[error("the admin key is required")]
    AdminKeyRequired,
    /// A client with a key, but not the admin one, on an admin call.
    #[error("the admin key is required; client `{0}` is not an admin")]
    NotAdmin(String),
    /// An audited action not taken because its intent could not be recorded (fail closed).
    #[error("the action was not taken because it could not be audited: {0}")]
    AuditUnavailable(String),
    #[error("upstream {provider} is unreachable: {reason}")]
    UpstreamUnreachable { provider: String, reason: String },
    #[error("upstream {provider} did not answer within {after:?}")]
    UpstreamTimeout { provider: String, after: Duration },
    /// Every endpoint of the provider is resting after failures: 503 with `Retry-After`.
    #[error("every endpoint of upstream {provider} is failing; retry after {} s", crate::providers::retry_after_secs(*retry_after))]
    AllEjected {
        provider: String,
        retry_after: Duration,
    },
    /// The upstream answered an error status; it is passed on with its status.
    #[error("{}", .0.message)]
    UpstreamStatus(Box<UpstreamStatus>),
    /// The upstream reported an error inside its stream.
    #[allow(dead_code)] // for the Ollama surface, moving onto the relay
    #[error("{0}")]
    UpstreamReported(String),
    #[error("The upstream answered with a body that is not JSON")]
    UpstreamBadResponse,
    /// The upstream's body broke off (connection lost, stalled, over the total timeout).
    #[error("{0}")]
    UpstreamStreamFailed(String),
    #[error("{0}")]
    Internal(String),
}

/// An upstream's error status, as the edge passes it on.
#[derive(Debug)]
pub struct UpstreamStatus {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `code` and `param` for it.
    pub code: Option<&'static str>,
    pub param: Option<&'static str>,
    /// The upstream's own body, already in OpenAI's error shape: sent on as it came.
    pub openai_body: Option<Bytes>,
}

fn unauthenticated_message(key_presented: bool) -> &'static str {
    if key_presented {
        "The API key is not valid (unknown or revoked)"
    } else {
        "An API key is required: send it as `Authorization: Bearer <key>`"
    }
}

fn limit_name(limit: &str) -> &'static str {
    match limit {
        "rpm" => "requests-per-minute",
        "tpm" => "tokens-per-minute",
        _ => "concurrent-requests",
    }
}

impl EdgeError {
    pub fn invalid(message: impl Into<String>) -> Self {
        EdgeError::Invalid {
            message: message.into(),
            param: None,
        }
    }

    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        EdgeError::Invalid {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    /// An upstream error status whose body is not in OpenAI's shape: its message kept.
    #[allow(dead_code)] // for the Ollama surface, moving onto `EdgeError`
    pub fn upstream_status(status: StatusCode, message: impl Into<String>) -> Self {
        EdgeError::UpstreamStatus(Box::new(UpstreamStatus {
            status,
            message: message.into(),
            code: Some("upstream_error"),
            param: None,
            openai_body: None,
        }))
    }

    pub fn status(&self) -> StatusCode {
        use EdgeError::*;
        match self {
            EmptyBody | NotAnObject { .. } | InvalidJson(_) | MissingParam(_) | Invalid { .. } => {
                StatusCode::BAD_REQUEST
            }
            ModelAmbiguous { .. } => StatusCode::BAD_REQUEST,
            ModelNotFound(_)
            | UnknownUrl { .. }
            | RouteNotSupported { .. }
            | ResponseNotFound(_)
            | PreviousResponseNotFound(_)
            | NotFound(_) => StatusCode::NOT_FOUND,
            ModelForbidden { .. } => StatusCode::FORBIDDEN,
            Unauthenticated { .. } | AdminKeyRequired => StatusCode::UNAUTHORIZED,
            NotAdmin(_) => StatusCode::FORBIDDEN,
            AuditUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Limited { .. } => StatusCode::TOO_MANY_REQUESTS,
            TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            UpstreamUnreachable { .. }
            | UpstreamReported(_)
            | UpstreamBadResponse
            | UpstreamStreamFailed(_) => StatusCode::BAD_GATEWAY,
            UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            AllEjected { .. } => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamStatus(s) => s.status,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The short label for logs and metrics (`aibox_request_errors_total{kind}`).
    pub fn kind(&self) -> &'static str {
        use EdgeError::*;
        match self {
            EmptyBody => "empty_body",
            NotAnObject { .. } => "not_an_object",
            InvalidJson(_) => "invalid_json",
            MissingParam(_) | Invalid { .. } => "invalid_request",
            ModelNotFound(_) => "model_not_found",
            ModelAmbiguous { .. } => "model_ambiguous",
            ModelForbidden { .. } => "model_not_allowed",
            Unauthenticated { .. } => "unauthenticated",
            Limited { .. } => "rate_limited",
            TooLarge { .. } => "request_too_large",
            UnknownUrl { .. } => "unknown_url",
            RouteNotSupported { .. } => "route_not_supported",
            ResponseNotFound(_) => "response_not_found",
            PreviousResponseNotFound(_) => "previous_response_not_found",
            NotFound(_) => "not_found",
            AdminKeyRequired => "admin_key_required",
            NotAdmin(_) => "not_admin",
            AuditUnavailable(_) => "audit_unavailable",
            UpstreamUnreachable { .. } => "upstream_unreachable",
            UpstreamTimeout { .. } => "upstream_timeout",
            AllEjected { .. } => "upstream_unavailable",
            UpstreamStatus(_) => "upstream_status",
            UpstreamReported(_) => "upstream_error",
            UpstreamBadResponse => "upstream_bad_response",
            UpstreamStreamFailed(_) => "upstream_stream_failed",
            Internal(_) => "internal",
        }
    }

    /// Seconds for a `Retry-After` header, when the caller should come back later.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            EdgeError::Limited { retry_after, .. } => {
                Some(crate::policy::retry_after_secs(*retry_after))
            }
            EdgeError::AllEjected { retry_after, .. } => {
                Some(crate::providers::retry_after_secs(*retry_after))
            }
            _ => None,
        }
    }

    /// The message in `shape`: Ollama's own wording where it differs from OpenAI's.
    pub fn message(&self, shape: &Shape) -> String {
        use EdgeError::*;
        match (self, shape) {
            (EmptyBody, Shape::Ollama) => "missing request body".into(),
            (EmptyBody, _) => "The request body is empty; send a JSON object".into(),
            (NotAnObject { .. }, Shape::Ollama) => self.to_string(),
            (NotAnObject { .. }, Shape::Anthropic) => {
                "The request body must be a JSON object".into()
            }
            (NotAnObject { what }, _) => {
                format!("The request body must be a JSON object, not {what}")
            }
            (InvalidJson(e), Shape::Ollama) => format!("invalid JSON in request body: {e}"),
            (InvalidJson(e), _) => format!("The request body is not valid JSON: {e}"),
            (MissingParam(p), Shape::Ollama) => format!("{p} is required"),
            (ModelNotFound(m), Shape::Ollama) => {
                format!("model \"{m}\" not found, try pulling it first")
            }
            (UnknownUrl { .. }, Shape::Ollama) => "404 page not found".into(),
            (AdminKeyRequired | NotAdmin(_), Shape::Ollama) => {
                "this call needs the admin key (Authorization: Bearer <admin token>)".into()
            }
            (UpstreamBadResponse, Shape::Ollama) => {
                "the upstream answered with a body that is not JSON".into()
            }
            _ => self.to_string(),
        }
    }

    /// OpenAI's `code` for this error.
    fn openai_code(&self) -> Option<&'static str> {
        use EdgeError::*;
        match self {
            InvalidJson(_) => Some("invalid_json"),
            ModelNotFound(_) => Some("model_not_found"),
            ModelAmbiguous { .. } => Some("model_ambiguous"),
            ModelForbidden { .. } => Some("model_not_allowed"),
            Unauthenticated { .. } => Some("invalid_api_key"),
            Limited { .. } => Some("rate_limit_exceeded"),
            TooLarge { .. } => Some("request_too_large"),
            UnknownUrl { .. } => Some("unknown_url"),
            RouteNotSupported { .. } => Some("route_not_supported"),
            ResponseNotFound(_) => Some("response_not_found"),
            PreviousResponseNotFound(_) => Some("previous_response_not_found"),
            UpstreamUnreachable { .. } => Some("upstream_unreachable"),
            UpstreamTimeout { .. } => Some("upstream_timeout"),
            AllEjected { .. } => Some("upstream_unavailable"),
            UpstreamStatus(s) => s.code,
            UpstreamReported(_) => Some("upstream_error"),
            UpstreamBadResponse => Some("upstream_bad_response"),
            UpstreamStreamFailed(_) => Some("upstream_stream_failed"),
            _ => None,
        }
    }

    /// OpenAI's `param` for this error.
    fn openai_param(&self) -> Option<String> {
        use EdgeError::*;
        match self {
            MissingParam(p) => Some((*p).to_owned()),
            Invalid { param, .. } => param.clone(),
            ModelNotFound(_)
            | ModelAmbiguous { .. }
            | ModelForbidden { .. }
            | RouteNotSupported { .. } => Some("model".into()),
            PreviousResponseNotFound(_) => Some("previous_response_id".into()),
            UpstreamStatus(s) => s.param.map(str::to_owned),
            _ => None,
        }
    }

    /// OpenAI's `{"error": {...}}` body.
    pub fn openai_body(&self) -> Value {
        json!({"error": {"message": self.message(&Shape::OpenAi),
                         "type": openai_type(self.status()),
                         "param": self.openai_param(), "code": self.openai_code()}})
    }

    /// The JSON-RPC error code (MCP).
    fn jsonrpc_code(&self) -> i64 {
        match self {
            EdgeError::Unauthenticated { .. } | EdgeError::AdminKeyRequired => -32001,
            EdgeError::ModelForbidden { .. } => -32003,
            EdgeError::Limited { .. } => -32029,
            e if e.status().is_client_error() => -32600,
            _ => -32603,
        }
    }

    /// The body in `shape` (for a JSON-RPC shape, the error object answering its id).
    pub fn body(&self, shape: &Shape) -> Value {
        match shape {
            Shape::OpenAi => self.openai_body(),
            Shape::Ollama => json!({"error": self.message(shape)}),
            Shape::Anthropic => anthropic_body(self.status(), &self.message(shape)),
            Shape::JsonRpc(id) => json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": self.jsonrpc_code(), "message": self.message(shape)}}),
            Shape::Problem => {
                let status = self.status();
                json!({"type": "about:blank", "title": status.canonical_reason().unwrap_or(""),
                       "status": status.as_u16(), "detail": self.message(shape)})
            }
        }
    }

    /// The error as a response in `shape`, its kind noted in the response's `Outcome`.
    pub fn render(&self, shape: &Shape) -> Response {
        let status = self.status();
        let mut resp = match (self, shape) {
            (EdgeError::UpstreamStatus(s), Shape::OpenAi) if s.openai_body.is_some() => (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                s.openai_body.clone().unwrap_or_default(),
            )
                .into_response(),
            (_, Shape::Problem) => (
                status,
                [(header::CONTENT_TYPE, "application/problem+json")],
                self.body(shape).to_string(),
            )
                .into_response(),
            _ => (status, axum::Json(self.body(shape))).into_response(),
        };
        if let Some(secs) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp.extensions_mut().insert(Outcome::failed(self.kind()));
        resp
    }

    /// The in-stream error event of an OpenAI SSE stream whose headers already went out.
    pub fn sse_event(&self) -> Bytes {
        sse_error_event(&self.message(&Shape::OpenAi))
    }

    /// The in-stream error line of an Ollama NDJSON stream.
    #[allow(dead_code)] // for the Ollama surface, moving onto the relay
    pub fn ndjson_line(&self) -> Bytes {
        ndjson_error_line(&self.message(&Shape::Ollama))
    }
}

/// `data: {"error": {...}}` as the OpenAI surface ends a broken stream with.
pub fn sse_error_event(message: &str) -> Bytes {
    let v = json!({"error": {"message": message, "type": "upstream_error", "param": null,
                             "code": "upstream_error"}});
    Bytes::from(format!("data: {v}\n\n"))
}

/// `{"error": "..."}` on a line of its own, as Ollama ends a broken stream.
#[allow(dead_code)] // for the Ollama surface, moving onto the relay
pub fn ndjson_error_line(message: &str) -> Bytes {
    Bytes::from(format!("{}\n", json!({"error": message})))
}

/// OpenAI's error `type`, by status.
fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 | 400 | 413 | 422 => "invalid_request_error",
        429 => "rate_limit_error",
        502..=504 => "upstream_error",
        _ => "api_error",
    }
}

/// Anthropic's `{"type": "error", "error": {"type", "message"}}`.
pub fn anthropic_body(status: StatusCode, message: &str) -> Value {
    json!({"type": "error", "error": {"type": anthropic_type(status.as_u16()), "message": message}})
}

/// Anthropic's error `type`, by status.
pub fn anthropic_type(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

impl From<crate::providers::RouteError> for EdgeError {
    fn from(e: crate::providers::RouteError) -> Self {
        use crate::providers::RouteError;
        match e {
            RouteError::NotFound(model) => EdgeError::ModelNotFound(model),
            RouteError::Ambiguous(model, providers, example) => EdgeError::ModelAmbiguous {
                model,
                providers,
                example,
            },
        }
    }
}

impl From<crate::providers::UpstreamError> for EdgeError {
    fn from(e: crate::providers::UpstreamError) -> Self {
        use crate::providers::UpstreamError;
        match e {
            UpstreamError::Unreachable(provider, reason) => {
                EdgeError::UpstreamUnreachable { provider, reason }
            }
            UpstreamError::Timeout(provider, after) => {
                EdgeError::UpstreamTimeout { provider, after }
            }
            UpstreamError::AllEjected(provider, retry_after) => EdgeError::AllEjected {
                provider,
                retry_after,
            },
        }
    }
}

impl From<crate::translate::TranslateError> for EdgeError {
    fn from(e: crate::translate::TranslateError) -> Self {
        EdgeError::Invalid {
            message: e.message,
            param: e.param,
        }
    }
}

impl From<aibox_wire::body::BodyError> for EdgeError {
    fn from(e: aibox_wire::body::BodyError) -> Self {
        match e {
            aibox_wire::body::BodyError::NotAnObject { what } => EdgeError::NotAnObject { what },
            aibox_wire::body::BodyError::Invalid(e) => EdgeError::InvalidJson(e.to_string()),
        }
    }
}

impl EdgeError {
    /// A policy refusal for `client`.
    pub fn refusal(client: &str, refusal: &crate::policy::Refusal) -> Self {
        use crate::policy::Refusal;
        match refusal {
            Refusal::Unauthenticated { key_presented } => EdgeError::Unauthenticated {
                key_presented: *key_presented,
            },
            Refusal::Limited { limit, retry_after } => EdgeError::Limited {
                client: client.to_owned(),
                limit,
                retry_after: *retry_after,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Refusal;

    async fn parts(r: Response) -> (u16, Option<String>, Value) {
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, retry, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn openai_shape() {
        let e = EdgeError::MissingParam("model");
        assert_eq!(
            parts(e.render(&Shape::OpenAi)).await,
            (
                400,
                None,
                json!({"error": {"message": "Missing required parameter: 'model'",
                "type": "invalid_request_error", "param": "model", "code": null}})
            )
        );
        let e = EdgeError::AllEjected {
            provider: "local".into(),
            retry_after: Duration::from_millis(1500),
        };
        let (status, retry, body) = parts(e.render(&Shape::OpenAi)).await;
        assert_eq!((status, retry.as_deref()), (503, Some("2")));
        assert_eq!(body["error"]["code"], "upstream_unavailable");
        assert_eq!(body["error"]["type"], "upstream_error");
        let e = EdgeError::UnknownUrl {
            method: "GET".into(),
            path: "/v1/nope".into(),
        };
        let (_, _, body) = parts(e.render(&Shape::OpenAi)).await;
        assert_eq!(
            body["error"]["message"],
            "Unknown request URL: GET /v1/nope"
        );
        assert_eq!(body["error"]["code"], "unknown_url");
    }

    #[tokio::test]
    async fn an_upstream_error_in_openai_shape_is_passed_on_as_it_came() {
        let raw = Bytes::from_static(br#"{"error":{"message":"no","code":"x"}}"#);
        let e = EdgeError::UpstreamStatus(Box::new(UpstreamStatus {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: "no".into(),
            code: None,
            param: None,
            openai_body: Some(raw.clone()),
        }));
        let r = e.render(&Shape::OpenAi);
        assert_eq!(r.status(), 422);
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        assert_eq!(bytes, raw);
    }

    #[tokio::test]
    async fn ollama_shape() {
        let e = EdgeError::ModelNotFound("qwen".into());
        assert_eq!(
            parts(e.render(&Shape::Ollama)).await,
            (
                404,
                None,
                json!({"error": "model \"qwen\" not found, try pulling it first"})
            )
        );
        assert_eq!(
            EdgeError::EmptyBody.body(&Shape::Ollama),
            json!({"error": "missing request body"})
        );
    }

    #[tokio::test]
    async fn anthropic_shape() {
        let e = EdgeError::refusal(
            "bob",
            &Refusal::Limited {
                limit: "rpm",
                retry_after: Duration::from_secs(3),
            },
        );
        assert_eq!(
            parts(e.render(&Shape::Anthropic)).await,
            (
                429,
                Some("3".into()),
                json!({"type": "error", "error": {"type": "rate_limit_error",
                "message": "Client `bob` is over its requests-per-minute limit; retry after 3 s"}})
            )
        );
    }

    #[tokio::test]
    async fn jsonrpc_shape_answers_the_request_id() {
        let e = EdgeError::refusal(
            "bob",
            &Refusal::Unauthenticated {
                key_presented: false,
            },
        );
        let (status, _, body) = parts(e.render(&Shape::JsonRpc(json!(7)))).await;
        assert_eq!(status, 401);
        assert_eq!(
            body,
            json!({"jsonrpc": "2.0", "id": 7, "error": {"code": -32001,
            "message": "An API key is required: send it as `Authorization: Bearer <key>`"}})
        );
    }

    #[tokio::test]
    async fn problem_shape() {
        let r = EdgeError::AdminKeyRequired.render(&Shape::Problem);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(
            parts(r).await.2,
            json!({"type": "about:blank", "title": "Unauthorized", "status": 401,
                   "detail": "the admin key is required"})
        );
    }

    #[test]
    fn in_stream_events() {
        let e = EdgeError::UpstreamStreamFailed("upstream stalled".into());
        assert_eq!(
            e.sse_event(),
            Bytes::from(
                "data: {\"error\":{\"code\":\"upstream_error\",\"message\":\"upstream stalled\",\"param\":null,\"type\":\"upstream_error\"}}\n\n"
            )
        );
        assert_eq!(
            e.ndjson_line(),
            Bytes::from("{\"error\":\"upstream stalled\"}\n")
        );
    }

    #[test]
    fn every_kind_has_its_status() {
        let e = EdgeError::from(crate::providers::UpstreamError::Timeout(
            "p".into(),
            Duration::from_secs(1),
        ));
        assert_eq!(
            (e.status(), e.kind()),
            (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
        );
        let e = EdgeError::from(crate::providers::RouteError::NotFound("m".into()));
        assert_eq!(
            (e.status(), e.kind()),
            (StatusCode::NOT_FOUND, "model_not_found")
        );
        let e = EdgeError::TooLarge { limit: 10 };
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
