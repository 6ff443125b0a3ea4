//! The OpenAI surface: `/v1/models`, `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`.
//!
//! Request path: parse the body → route by model name → Ollama (translated) or an
//! OpenAI-compatible server (passed through, only `model` rewritten) → stream back.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};

use super::stream::{self, sse, LineBuffer, Read, TimedBody};
use super::{EdgeState, RequestContext};
use crate::config::ProviderKind;
use crate::policy::Refusal;
use crate::providers::{
    retry_after_secs, InFlight, Plan, ProviderRoute, RouteError, UpstreamError, UpstreamResponse,
};
use crate::translate::completions::{self as legacy, CompletionStreamTranslator};
use crate::translate::{self, ChatIds, ChatStreamTranslator, NdjsonTranslator};

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

impl From<translate::TranslateError> for OpenAiError {
    fn from(e: translate::TranslateError) -> Self {
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

pub async fn list_models(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    headers: http::HeaderMap,
) -> Response {
    // A provider never listed yet is asked now, for at most 2 s; a slow one never delays more.
    if state
        .providers
        .providers
        .iter()
        .any(|p| p.models().is_none())
    {
        let _ = tokio::time::timeout(Duration::from_secs(2), state.providers.refresh(false)).await;
    }
    let mut data = Vec::new();
    for p in &state.providers.providers {
        for m in p.models().unwrap_or_default() {
            if !ctx.client.allows_model(&p.name, &m.id) {
                continue;
            }
            let created = m.raw.get("created").and_then(Value::as_i64).unwrap_or(0);
            data.push(
                json!({"id": format!("{}/{}", p.name, m.id), "object": "model",
                             "created": created, "owned_by": p.name}),
            );
        }
    }
    for alias in &state.providers.aliases {
        if ctx.client.allows_alias(&alias.name) {
            data.push(alias_entry(&alias.name));
        }
    }
    if super::anthropic::wants_anthropic(&headers) {
        return Json(super::anthropic::model_list(&data)).into_response();
    }
    Json(json!({"object": "list", "data": data})).into_response()
}

/// An alias (`[[models]]`) as `/v1/models` lists it: owned by the edge, which resolves it.
fn alias_entry(name: &str) -> Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": "aibox"})
}

pub async fn get_model(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    Path(id): Path<String>,
    headers: http::HeaderMap,
) -> Response {
    if super::anthropic::wants_anthropic(&headers) {
        return super::anthropic::get_model(&state, &ctx, &id).await;
    }
    if let Some(alias) = state.providers.alias(&id) {
        return if ctx.client.allows_alias(&alias.name) {
            Json(alias_entry(&alias.name)).into_response()
        } else {
            forbidden_model(&ctx.client.name, &id).into_response()
        };
    }
    match state.providers.route(&id) {
        Ok(r) if !ctx.client.allows_model(&r.provider.name, &r.model) => {
            forbidden_model(&ctx.client.name, &id).into_response()
        }
        Ok(r) if r.provider.find_model(&r.model).is_some() => Json(json!({
            "id": format!("{}/{}", r.provider.name, r.model), "object": "model",
            "created": 0, "owned_by": r.provider.name}))
        .into_response(),
        _ => OpenAiError::from(RouteError::NotFound(id)).into_response(),
    }
}

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
    Ok(super::fallback::run(state, ctx, plan, move |route| {
        chat_on(state, ctx, body, route, model)
    })
    .await)
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
fn sse_from_ndjson<T: NdjsonTranslator + 'static>(
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

pub async fn completions(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    body: Bytes,
) -> Response {
    ctx.update(|m| m.surface = "openai");
    let result = async {
        let body = parse_body(&body)?;
        let model = requested_model(&body)?;
        if body.get("prompt").is_none() {
            return Err(OpenAiError::new(
                StatusCode::BAD_REQUEST,
                "Missing required parameter: 'prompt'",
            )
            .param("prompt"));
        }
        let plan = plan(&state, &ctx, &model)?;
        let (state, ctx, body, model) = (&*state, &ctx, &body, model.as_str());
        Ok(
            super::fallback::run(state, ctx, plan, move |route| async move {
                match route.provider.kind {
                    ProviderKind::Openai => {
                        passthrough(state, ctx, body.clone(), &route, "/completions").await
                    }
                    ProviderKind::Ollama => {
                        ollama_completion(state, ctx, body, &route, model.to_owned()).await
                    }
                }
                .unwrap_or_else(|e| fail(ctx, e))
            })
            .await,
        )
    }
    .await;
    result.unwrap_or_else(|e| fail(&ctx, e))
}

/// Legacy completions on Ollama: `/api/generate`, translated both ways.
async fn ollama_completion(
    state: &EdgeState,
    ctx: &RequestContext,
    body: &Value,
    route: &ProviderRoute,
    model: String,
) -> Result<Response> {
    let upstream_body = legacy::completion_to_generate(body, &route.model)?;
    let stream = upstream_body["stream"].as_bool().unwrap_or(false);
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let ids = ChatIds {
        id: format!("cmpl-{}", ctx.id.replace('-', "")),
        created: unix_now(),
        model,
    };
    let up = send(state, ctx, route, "/api/generate", &upstream_body).await?;
    if !up.response.status().is_success() {
        return Err(ollama_status_error(up.response).await);
    }
    if !stream {
        let v = read_json(state, up).await?;
        let (tin, tout) = translate::ollama_usage(&v);
        ctx.update(|m| {
            m.tokens_in = tin;
            m.tokens_out = tout;
        });
        return Ok(Json(legacy::generate_response_to_completion(&v, &ids)).into_response());
    }
    let translator = CompletionStreamTranslator::new(ids, include_usage);
    Ok(sse_from_ndjson(state, ctx, up, translator))
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

pub async fn embeddings(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    body: Bytes,
) -> Response {
    ctx.update(|m| m.surface = "openai");
    let result = async {
        let body = parse_body(&body)?;
        let model = requested_model(&body)?;
        let plan = plan(&state, &ctx, &model)?;
        let (state, ctx, body, model) = (&*state, &ctx, &body, model.as_str());
        let embed = move |route: ProviderRoute| async move {
            match route.provider.kind {
                ProviderKind::Openai => {
                    passthrough(state, ctx, body.clone(), &route, "/embeddings").await
                }
                ProviderKind::Ollama => {
                    let up_body = translate::embeddings_to_ollama(body, &route.model)?;
                    let up = send(state, ctx, &route, "/api/embed", &up_body).await?;
                    if !up.response.status().is_success() {
                        return Err(ollama_status_error(up.response).await);
                    }
                    let v = read_json(state, up).await?;
                    let tin = v
                        .get("prompt_eval_count")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    ctx.update(|m| m.tokens_in = tin);
                    Ok(Json(translate::embeddings_response_to_openai(&v, model)).into_response())
                }
            }
        };
        Ok(
            super::fallback::run(state, ctx, plan, move |route| async move {
                let r: Result<Response> = embed(route).await;
                r.unwrap_or_else(|e| fail(ctx, e))
            })
            .await,
        )
    }
    .await;
    result.unwrap_or_else(|e| fail(&ctx, e))
}

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
async fn ollama_status_error(response: reqwest::Response) -> OpenAiError {
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
