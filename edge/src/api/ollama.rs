//! The Ollama surface (`/api/...`), for clients that speak only Ollama's API (Open WebUI's
//! `OLLAMA_BASE_URL`, n8n's Ollama credential, the `ollama` Python client).
//!
//! Request path: parse the body → route by model name (as on the OpenAI surface) →
//! an Ollama provider gets the request natively, its NDJSON relayed chunk by chunk, untouched,
//! with only the model name rewritten; an OpenAI-compatible provider gets it translated
//! (`translate`), and its SSE stream is written back as Ollama NDJSON as each event arrives.
//!
//! Admin calls (pull, delete, copy, create) need the admin key, are recorded in the audit log
//! before they run (fail closed), and go to every endpoint of the Ollama provider, so a model
//! name stays served by all of them.
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};

use super::stream::{self, ndjson, LineBuffer, Read, TimedBody};
use super::{EdgeState, RequestContext};
use crate::config::ProviderKind;
use crate::policy::Refusal;
use crate::providers::{
    model_matches, retry_after_secs, Endpoint, InFlight, ModelEntry, Plan, Provider, ProviderRoute,
    RouteError, UpstreamError, UpstreamResponse,
};

mod translate;

use translate::{BadRequest, Shape, StreamTranslator};

/// Pull and create progress is bounded by the idle timeout only: pulling a large model can
/// take far longer than any inference request, but Ollama reports progress every few seconds.
const ADMIN_STREAM_TOTAL: Duration = Duration::from_secs(24 * 3600);

/// Reported by `/api/version` when no Ollama endpoint answers: the Ollama release whose API
/// this surface follows.
const OLLAMA_API_VERSION: &str = "0.12.6";

/// Ollama's error shape: `{"error": "..."}` with the status.
#[derive(Debug)]
pub struct OllamaError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

impl OllamaError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let kind = match status.as_u16() {
            400 | 413 | 422 => "invalid_request",
            401 | 403 => "unauthorized",
            404 => "model_not_found",
            502 => "upstream_unreachable",
            503 => "unavailable",
            504 => "upstream_timeout",
            _ => "upstream_error",
        };
        Self {
            status,
            message: message.into(),
            kind,
            retry_after: None,
        }
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(json!({"error": self.message}))).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

impl From<RouteError> for OllamaError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NotFound(m) => OllamaError::new(
                StatusCode::NOT_FOUND,
                format!("model \"{m}\" not found, try pulling it first"),
            ),
            e @ RouteError::Ambiguous(..) => {
                OllamaError::new(StatusCode::BAD_REQUEST, e.to_string())
            }
        }
    }
}

impl From<UpstreamError> for OllamaError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::Unreachable(..) => {
                OllamaError::new(StatusCode::BAD_GATEWAY, e.to_string())
            }
            UpstreamError::Timeout(..) => {
                OllamaError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string())
            }
            UpstreamError::AllEjected(_, wait) => {
                let mut err = OllamaError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
                err.retry_after = Some(retry_after_secs(wait));
                err
            }
        }
    }
}

impl From<BadRequest> for OllamaError {
    fn from(e: BadRequest) -> Self {
        OllamaError::new(StatusCode::BAD_REQUEST, e.0)
    }
}

type Result<T> = std::result::Result<T, OllamaError>;

pub fn routes() -> Router<Arc<EdgeState>> {
    Router::new()
        .route("/api/version", get(version))
        .route("/api/tags", get(tags))
        .route("/api/ps", get(ps))
        .route("/api/show", post(show))
        .route("/api/chat", post(chat))
        .route("/api/generate", post(generate))
        .route("/api/embed", post(embed))
        .route("/api/embeddings", post(embeddings))
        .route("/api/pull", post(pull))
        .route("/api/delete", delete(delete_model))
        .route("/api/copy", post(copy))
        .route("/api/create", post(create))
}

/// Runs one handler body with the request marked as the Ollama surface; errors are logged in
/// the request's meta and answered in Ollama's shape.
async fn answer(
    ctx: &RequestContext,
    work: impl std::future::Future<Output = Result<Response>>,
) -> Response {
    ctx.update(|m| m.surface = "ollama");
    work.await.unwrap_or_else(|e| fail(ctx, e))
}

/// An error in Ollama's shape, its kind kept in the request's meta.
fn fail(ctx: &RequestContext, e: OllamaError) -> Response {
    let kind = e.kind;
    ctx.update(|m| m.error = Some(kind));
    e.into_response()
}

fn parse_body(raw: &Bytes) -> Result<Value> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(OllamaError::new(
            StatusCode::BAD_REQUEST,
            "missing request body",
        ));
    }
    aibox_wire::body::from_slice::<Value>(raw).map_err(|e| match e {
        aibox_wire::body::BodyError::NotAnObject { what } => OllamaError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body must be a JSON object, not {what}"),
        ),
        aibox_wire::body::BodyError::Invalid(e) => OllamaError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid JSON in request body: {e}"),
        ),
    })
}

/// The model a request names: `model`, or the older `name` field.
fn model_field(body: &Value, keys: &[&str]) -> Result<String> {
    for key in keys {
        match body.get(*key) {
            Some(Value::String(s)) if !s.is_empty() => return Ok(s.clone()),
            None | Some(Value::Null) => {}
            Some(Value::String(_)) => {}
            Some(_) => {
                return Err(OllamaError::new(
                    StatusCode::BAD_REQUEST,
                    format!("{key} must be a string"),
                ))
            }
        }
    }
    Err(OllamaError::new(
        StatusCode::BAD_REQUEST,
        format!("{} is required", keys[0]),
    ))
}

/// The first target of `model`'s plan (for calls without fallback), policy checked.
fn route(state: &EdgeState, ctx: &RequestContext, model: &str) -> Result<ProviderRoute> {
    Ok(plan(state, ctx, model)?.targets.swap_remove(0).route)
}

/// Where `model` may go, in order, after the client's policy (as on the OpenAI surface).
fn plan(state: &EdgeState, ctx: &RequestContext, model: &str) -> Result<Plan> {
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
        let refusal = Refusal::ModelForbidden(model.to_owned());
        let mut e = OllamaError::new(StatusCode::FORBIDDEN, refusal.message(&ctx.client.name));
        e.kind = refusal.kind();
        return Err(e);
    }
    Ok(plan)
}

/// A refusal from the gateway's admission (401, 429 with `Retry-After`) in Ollama's shape.
pub fn refused(client: &str, refusal: &Refusal) -> Response {
    let status = match refusal {
        Refusal::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
        Refusal::ModelForbidden(_) => StatusCode::FORBIDDEN,
        Refusal::Limited { .. } => StatusCode::TOO_MANY_REQUESTS,
    };
    let mut r = OllamaError::new(status, refusal.message(client)).into_response();
    if let Refusal::Limited { retry_after, .. } = refusal {
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(crate::policy::retry_after_secs(*retry_after)),
        );
    }
    r
}

/// The body for an Ollama upstream: the client's, with the model name it knows.
fn native_body(mut body: Value, upstream_model: &str) -> Value {
    if let Some(o) = body.as_object_mut() {
        o.remove("name");
        o.insert("model".into(), json!(upstream_model));
    }
    body
}

async fn send(
    state: &EdgeState,
    ctx: &RequestContext,
    route: &ProviderRoute,
    path: &str,
    body: &Value,
) -> Result<UpstreamResponse> {
    Ok(super::openai::send(state, ctx, route, path, body).await?)
}

/// The whole upstream body; a break-off is a 502 in Ollama's shape.
async fn read_all(state: &EdgeState, response: reqwest::Response) -> Result<Bytes> {
    stream::read_to_end(response, &state.config.timeouts)
        .await
        .map_err(|msg| OllamaError::new(StatusCode::BAD_GATEWAY, msg))
}

/// An upstream error status in Ollama's shape, status kept: Ollama's own `{"error": "..."}`
/// or an OpenAI-compatible `{"error": {"message": ...}}`.
async fn upstream_status_error(state: &EdgeState, response: reqwest::Response) -> OllamaError {
    let status = stream::upstream_status(&response);
    let bytes = read_all(state, response).await.unwrap_or_default();
    let parsed = serde_json::from_slice::<Value>(&bytes).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|e| {
            e.as_str()
                .or_else(|| e.get("message").and_then(Value::as_str))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| {
            format!(
                "upstream answered HTTP {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).trim()
            )
        });
    let mut e = OllamaError::new(status, message);
    e.kind = "upstream_status";
    e
}

fn ndjson_response(body: Body) -> Response {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}

fn json_bytes_response(status: StatusCode, bytes: Bytes) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        bytes,
    )
        .into_response()
}

fn record_ollama_tokens(ctx: &RequestContext, v: &Value) {
    let tin = v
        .get("prompt_eval_count")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let tout = v.get("eval_count").and_then(Value::as_u64).unwrap_or(0);
    if tin > 0 || tout > 0 {
        ctx.update(|m| {
            m.tokens_in = tin;
            m.tokens_out = tout;
        });
    }
}

// ------------------------------------------------------------------ listings ----

pub async fn version(State(state): State<Arc<EdgeState>>) -> Response {
    let endpoint = state
        .providers
        .providers
        .iter()
        .filter(|p| p.kind == ProviderKind::Ollama)
        .flat_map(|p| p.endpoints.iter())
        .find(|e| !e.is_ejected())
        .cloned();
    if let Some(e) = endpoint {
        let asked = state
            .providers
            .http
            .get(format!("{}/api/version", e.url))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if let Ok(resp) = asked.and_then(|r| r.error_for_status()) {
            if let Ok(v) = resp.json::<Value>().await {
                if v.get("version").is_some_and(Value::is_string) {
                    return Json(json!({"version": v["version"]})).into_response();
                }
            }
        }
    }
    Json(json!({"version": OLLAMA_API_VERSION})).into_response()
}

/// Every model of every provider once, named as a client may ask for it: bare when one
/// provider serves the name, `provider/model` when several do (bare would go to the default).
fn listed_models(state: &EdgeState) -> Vec<(Arc<Provider>, ModelEntry, String)> {
    let mut out = Vec::new();
    for p in &state.providers.providers {
        for m in p.models().unwrap_or_default() {
            // Every model, not only the caller's: the bare-or-prefixed choice depends on all.
            let owners = state
                .providers
                .providers
                .iter()
                .filter(|q| q.find_model(&m.id).is_some())
                .count();
            let name = if owners <= 1 && !m.id.contains('/') {
                m.id.clone()
            } else if owners <= 1
                && state
                    .providers
                    .get(m.id.split('/').next().unwrap_or(""))
                    .is_none()
            {
                // `org/model` ids (vLLM, Hugging Face) route bare unless `org` names a provider.
                m.id.clone()
            } else {
                format!("{}/{}", p.name, m.id)
            };
            out.push((p.clone(), m, name));
        }
    }
    out
}

fn shown_name(state: &EdgeState, provider: &str, id: &str) -> String {
    listed_models(state)
        .into_iter()
        .find(|(p, m, _)| p.name == provider && model_matches(p.kind, &m.id, id))
        .map(|(_, _, n)| n)
        .unwrap_or_else(|| id.to_owned())
}

/// What an OpenAI-compatible model can honestly say about itself in Ollama's `details`.
fn openai_details() -> Value {
    json!({"parent_model": "", "format": "openai-compatible", "family": "", "families": null,
           "parameter_size": "", "quantization_level": ""})
}

pub async fn tags(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
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
    let models: Vec<Value> = listed_models(&state)
        .into_iter()
        .filter(|(p, m, _)| ctx.client.allows_model(&p.name, &m.id))
        .map(|(p, m, name)| match p.kind {
            ProviderKind::Ollama => {
                let mut raw = m.raw.clone();
                raw["name"] = json!(name);
                raw["model"] = json!(name);
                raw
            }
            ProviderKind::Openai => {
                let created = m.raw.get("created").and_then(Value::as_i64).unwrap_or(0);
                json!({"name": name, "model": name, "modified_at": translate::rfc3339(created),
                       "size": 0, "digest": "", "details": openai_details()})
            }
        })
        .collect();
    let mut models = models;
    for alias in &state.providers.aliases {
        if ctx.client.allows_alias(&alias.name) {
            models.push(alias_tag(&state, &alias.name));
        }
    }
    Json(json!({"models": models})).into_response()
}

/// An alias as `/api/tags` lists it: its first target's entry (details, size) under the
/// alias's name, or an OpenAI-style entry when that target is not listed (yet).
fn alias_tag(state: &EdgeState, name: &str) -> Value {
    let first = state
        .providers
        .plan(name)
        .ok()
        .map(|mut p| p.targets.swap_remove(0).route);
    let listed = first.as_ref().and_then(|r| {
        (r.provider.kind == ProviderKind::Ollama)
            .then(|| r.provider.find_model(&r.model))
            .flatten()
    });
    match listed {
        Some(entry) => {
            let mut raw = entry.raw;
            raw["name"] = json!(name);
            raw["model"] = json!(name);
            raw
        }
        None => json!({"name": name, "model": name, "modified_at": translate::rfc3339(0),
                       "size": 0, "digest": "", "details": openai_details()}),
    }
}

/// Models in memory on every Ollama endpoint, asked live (2 s each, all at once).
pub async fn ps(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
) -> Response {
    let asks = state
        .providers
        .providers
        .iter()
        .filter(|p| p.kind == ProviderKind::Ollama)
        .flat_map(|p| p.endpoints.iter().map(move |e| (p.clone(), e.clone())))
        .filter(|(_, e)| !e.is_ejected())
        .map(|(p, e)| {
            let req = p.authorize(
                state
                    .providers
                    .http
                    .get(format!("{}/api/ps", e.url))
                    .timeout(Duration::from_secs(2)),
            );
            async move {
                let v: Value = req.send().await.ok()?.json().await.ok()?;
                Some((p, v))
            }
        });
    let mut seen = HashSet::new();
    let mut models = Vec::new();
    for (p, v) in futures::future::join_all(asks).await.into_iter().flatten() {
        for m in v
            .get("models")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let id = m
                .get("name")
                .or_else(|| m.get("model"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if !ctx.client.allows_model(&p.name, &id) {
                continue;
            }
            let name = shown_name(&state, &p.name, &id);
            if seen.insert(name.clone()) {
                let mut m = m;
                m["name"] = json!(name);
                m["model"] = json!(name);
                models.push(m);
            }
        }
    }
    Json(json!({"models": models})).into_response()
}

pub async fn show(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    raw: Bytes,
) -> Response {
    answer(&ctx, async {
        let body = parse_body(&raw)?;
        let model = model_field(&body, &["model", "name"])?;
        let route = route(&state, &ctx, &model)?;
        match route.provider.kind {
            ProviderKind::Ollama => {
                let up = send(
                    &state,
                    &ctx,
                    &route,
                    "/api/show",
                    &native_body(body, &route.model),
                )
                .await?;
                relay_json(&state, up).await
            }
            ProviderKind::Openai => {
                let Some(entry) = route.provider.find_model(&route.model) else {
                    return Err(RouteError::NotFound(model).into());
                };
                let created = entry
                    .raw
                    .get("created")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                let mut info = json!({"general.architecture": "openai-compatible",
                                      "general.basename": entry.id});
                if let Some(n) = entry.raw.get("max_model_len").and_then(Value::as_u64) {
                    info["openai-compatible.context_length"] = json!(n);
                }
                Ok(Json(json!({
                    "modelfile": "", "parameters": "", "template": "",
                    "details": openai_details(), "model_info": info,
                    "capabilities": ["completion"],
                    "modified_at": translate::rfc3339(created),
                }))
                .into_response())
            }
        }
    })
    .await
}

// ------------------------------------------------------------- inference ----

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
        super::fallback::run(state, ctx, plan, move |route| async move {
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

async fn relay_json(state: &EdgeState, up: UpstreamResponse) -> Result<Response> {
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

pub async fn embed(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    raw: Bytes,
) -> Response {
    answer(&ctx, embed_any(&state, &ctx, &raw, false)).await
}

/// The legacy `/api/embeddings` (`prompt` in, one `embedding` out).
pub async fn embeddings(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    raw: Bytes,
) -> Response {
    answer(&ctx, embed_any(&state, &ctx, &raw, true)).await
}

async fn embed_any(
    state: &EdgeState,
    ctx: &RequestContext,
    raw: &Bytes,
    legacy: bool,
) -> Result<Response> {
    let body = parse_body(raw)?;
    let model = model_field(&body, &["model"])?;
    let plan = plan(state, ctx, &model)?;
    let attempt = async |route: ProviderRoute| -> Result<Response> {
        match route.provider.kind {
            ProviderKind::Ollama => {
                let path = if legacy {
                    "/api/embeddings"
                } else {
                    "/api/embed"
                };
                let up = send(
                    state,
                    ctx,
                    &route,
                    path,
                    &native_body(body.clone(), &route.model),
                )
                .await?;
                if !up.response.status().is_success() {
                    return Err(upstream_status_error(state, up.response).await);
                }
                let status = stream::upstream_status(&up.response);
                let bytes = read_all(state, up.response).await?;
                if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                    record_ollama_tokens(ctx, &v);
                }
                Ok(json_bytes_response(status, bytes))
            }
            ProviderKind::Openai => {
                let up_body = translate::embed_to_openai(&body, &route.model, legacy)?;
                let up = send(state, ctx, &route, "/embeddings", &up_body).await?;
                if !up.response.status().is_success() {
                    return Err(upstream_status_error(state, up.response).await);
                }
                let bytes = read_all(state, up.response).await?;
                let v: Value = serde_json::from_slice(&bytes).map_err(|_| {
                    OllamaError::new(
                        StatusCode::BAD_GATEWAY,
                        "the upstream answered with a body that is not JSON",
                    )
                })?;
                let nanos = ctx.started.elapsed().as_nanos() as u64;
                let out = translate::embed_from_openai(&v, &model, legacy, nanos);
                record_ollama_tokens(ctx, &out);
                Ok(Json(out).into_response())
            }
        }
    };
    Ok(
        super::fallback::run(state, ctx, plan, move |route| async move {
            let r: Result<Response> = attempt(route).await;
            r.unwrap_or_else(|e| fail(ctx, e))
        })
        .await,
    )
}

// ------------------------------------------------------------ admin calls ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum AdminAction {
    Pull,
    Delete,
    Copy,
    Create,
}

impl AdminAction {
    fn audit_name(self) -> &'static str {
        match self {
            AdminAction::Pull => "model_pull",
            AdminAction::Delete => "model_delete",
            AdminAction::Copy => "model_copy",
            AdminAction::Create => "model_create",
        }
    }
    fn path(self) -> &'static str {
        match self {
            AdminAction::Pull => "/api/pull",
            AdminAction::Delete => "/api/delete",
            AdminAction::Copy => "/api/copy",
            AdminAction::Create => "/api/create",
        }
    }
    /// Pull and create stream progress unless told not to.
    fn streams(self, body: &Value) -> bool {
        matches!(self, AdminAction::Pull | AdminAction::Create)
            && body.get("stream").and_then(Value::as_bool).unwrap_or(true)
    }
}

pub async fn pull(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    raw: Bytes,
) -> Response {
    answer(&ctx, admin_task(state, ctx.clone(), raw, AdminAction::Pull)).await
}

pub async fn delete_model(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    raw: Bytes,
) -> Response {
    answer(
        &ctx,
        admin_task(state, ctx.clone(), raw, AdminAction::Delete),
    )
    .await
}

pub async fn copy(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    raw: Bytes,
) -> Response {
    answer(&ctx, admin_task(state, ctx.clone(), raw, AdminAction::Copy)).await
}

pub async fn create(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    raw: Bytes,
) -> Response {
    answer(
        &ctx,
        admin_task(state, ctx.clone(), raw, AdminAction::Create),
    )
    .await
}

/// The Ollama provider an admin call is for, and the model name that provider knows. A model
/// being pulled or created is listed nowhere yet, so it goes to the provider its prefix names,
/// else to the one that lists it, else to the default provider (or the first Ollama one).
fn admin_target(state: &EdgeState, name: &str) -> Result<(Arc<Provider>, String)> {
    let providers = &state.providers;
    let (provider, model) = match name.split_once('/').and_then(|(p, rest)| {
        providers
            .get(p)
            .filter(|_| !rest.is_empty())
            .map(|p| (p.clone(), rest.to_owned()))
    }) {
        Some(found) => found,
        None => {
            let owners: Vec<&Arc<Provider>> = providers
                .providers
                .iter()
                .filter(|p| p.find_model(name).is_some())
                .collect();
            let chosen = owners
                .iter()
                .find(|p| p.name == providers.default_provider)
                .or(owners.first())
                .map(|p| (*p).clone())
                .or_else(|| {
                    providers
                        .get(&providers.default_provider)
                        .filter(|p| p.kind == ProviderKind::Ollama)
                        .or_else(|| {
                            providers
                                .providers
                                .iter()
                                .find(|p| p.kind == ProviderKind::Ollama)
                        })
                        .cloned()
                });
            match chosen {
                Some(p) => (p, name.to_owned()),
                None => {
                    return Err(OllamaError::new(
                        StatusCode::BAD_REQUEST,
                        "no Ollama provider is configured; pull, delete, copy and create work only on Ollama providers",
                    ))
                }
            }
        }
    };
    if provider.kind != ProviderKind::Ollama {
        return Err(OllamaError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "model \"{name}\" is on the OpenAI-compatible provider \"{}\"; pull, delete, copy and create work only on Ollama providers",
                provider.name
            ),
        ));
    }
    Ok((provider, model))
}

async fn admin(
    state: Arc<EdgeState>,
    ctx: &RequestContext,
    raw: &Bytes,
    action: AdminAction,
) -> Result<Response> {
    if !ctx.client.admin {
        let status = if ctx.client.name == crate::clients::ANONYMOUS {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::FORBIDDEN
        };
        return Err(OllamaError::new(
            status,
            "this call needs the admin key (Authorization: Bearer <admin token>)",
        ));
    }
    let mut body = parse_body(raw)?;
    let (asked, mut metadata) = if action == AdminAction::Copy {
        let source = model_field(&body, &["source"])?;
        let destination = model_field(&body, &["destination"])?;
        (source, json!({"destination": destination}))
    } else {
        (model_field(&body, &["model", "name"])?, json!({}))
    };
    let (provider, model) = admin_target(&state, &asked)?;
    ctx.update(|m| {
        m.provider = Some(provider.name.clone());
        m.model = Some(asked.clone());
    });
    if let Some(o) = body.as_object_mut() {
        if action == AdminAction::Copy {
            o.insert("source".into(), json!(model));
            let dest = metadata["destination"].as_str().unwrap_or_default();
            let dest = match dest.split_once('/') {
                Some((p, rest)) if p == provider.name => rest.to_owned(),
                Some((p, _)) if state.providers.get(p).is_some() => {
                    return Err(OllamaError::new(
                        StatusCode::BAD_REQUEST,
                        "a model can only be copied within one provider",
                    ))
                }
                _ => dest.to_owned(),
            };
            o.insert("destination".into(), json!(dest));
        } else {
            o.remove("name");
            o.insert("model".into(), json!(model));
            // `create` may name its base model as the client lists it, prefix included.
            let prefix = format!("{}/", provider.name);
            if let Some(base) = o
                .get("from")
                .and_then(Value::as_str)
                .and_then(|f| f.strip_prefix(&prefix))
            {
                let base = base.to_owned();
                o.insert("from".into(), json!(base));
            }
        }
    }

    // Endpoints: delete and copy go where the model is; pull and create everywhere it may be
    // served. If none lists it, all are asked, so the answer (404) comes from Ollama itself.
    let listing: Vec<Arc<Endpoint>> = provider
        .endpoints
        .iter()
        .filter(|e| {
            e.models()
                .is_some_and(|ms| ms.iter().any(|m| model_matches(e.kind, &m.id, &model)))
        })
        .cloned()
        .collect();
    let up: Vec<Arc<Endpoint>> = provider
        .endpoints
        .iter()
        .filter(|e| !e.is_ejected())
        .cloned()
        .collect();
    let targets = match action {
        AdminAction::Delete | AdminAction::Copy if !listing.is_empty() => listing,
        _ if !up.is_empty() => up,
        _ => provider.endpoints.clone(),
    };

    metadata["client"] = json!(ctx.client.name);
    metadata["model"] = json!(asked);
    metadata["provider"] = json!(provider.name);
    metadata["endpoints"] = json!(targets.iter().map(|e| e.url.clone()).collect::<Vec<_>>());
    // The intent is on record before anything is asked upstream (fail closed); the outcome is
    // written when the action ends, or as "interrupted" if the client leaves a streamed pull.
    let mut intent = match &state.audit {
        Some(audit) => {
            let record = aibox_mcp::AuditRecord {
                action: action.audit_name().to_owned(),
                resource: format!("model:{}/{}", provider.name, model),
                actor: Some("edge".to_owned()),
                correlation_id: Some(ctx.id.clone()),
                metadata: metadata.as_object().cloned(),
                ..Default::default()
            };
            match aibox_mcp::audited::begin(audit.clone(), record).await {
                Ok(intent) => Some(intent),
                Err(e) => {
                    return Err(OllamaError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("the action was not taken because it could not be audited: {e}"),
                    ))
                }
            }
        }
        None => {
            tracing::warn!(
                request_id = %ctx.id,
                action = action.audit_name(),
                model = %asked,
                "no controller is configured, so this admin call is not in the audit log"
            );
            None
        }
    };
    let result = admin_act(state, ctx, body, action, provider, targets, &mut intent).await;
    if let Some(intent) = intent {
        let detail = match &result {
            Ok(_) => json!({}),
            Err(e) => json!({"error": e.message}),
        };
        // Inside the admin task: the answer follows the outcome event.
        let _ = intent.finish(result.is_ok(), detail).await;
    }
    result
}

/// The admin call in a task of its own: a client that hangs up cancels neither the upstream
/// delete/copy nor the audit outcome (a streamed pull stops with its stream, recorded as such).
async fn admin_task(
    state: Arc<EdgeState>,
    ctx: RequestContext,
    raw: Bytes,
    action: AdminAction,
) -> Result<Response> {
    tokio::spawn(async move { admin(state, &ctx, &raw, action).await })
        .await
        .unwrap_or_else(|e| {
            Err(OllamaError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the admin call failed: {e}"),
            ))
        })
}

/// Sends the admin call to its endpoints; a streamed answer takes over `intent` and finishes it.
async fn admin_act(
    state: Arc<EdgeState>,
    ctx: &RequestContext,
    mut body: Value,
    action: AdminAction,
    provider: Arc<Provider>,
    targets: Vec<Arc<Endpoint>>,
    intent: &mut Option<aibox_mcp::audited::OpenIntent>,
) -> Result<Response> {
    let streams = action.streams(&body);
    let progress = matches!(action, AdminAction::Pull | AdminAction::Create);
    if progress {
        // Always streamed upstream: a whole pull can take longer than any first-byte timeout,
        // and progress lines keep the idle timeout satisfied. `stream: false` is answered below.
        body["stream"] = json!(true);
    }
    let body = Bytes::from(serde_json::to_vec(&body).expect("JSON values serialize"));
    let call = AdminCall {
        state: state.clone(),
        provider,
        action,
        body,
        request_id: ctx.id.clone(),
    };
    let mut targets: VecDeque<Arc<Endpoint>> = targets.into();
    let first = targets
        .pop_front()
        .expect("a provider has at least one endpoint");
    let started = Instant::now();
    let response = call.send(&first).await?;
    ctx.update(|m| m.upstream_time = Some(started.elapsed()));
    if !response.status().is_success() {
        return Err(upstream_status_error(&state, response).await);
    }
    if progress {
        let timed = TimedBody::new(
            response,
            state.config.timeouts.idle(),
            ADMIN_STREAM_TOTAL,
            Instant::now(),
        );
        let mut stream = AdminStream {
            call,
            remaining: targets,
            current: Some(timed),
            lines: LineBuffer::default(),
            pending: VecDeque::new(),
            ctx: ctx.clone(),
            done: false,
            intent: intent.take(),
            failure: None,
        };
        if streams {
            return Ok(ndjson_response(Body::from_stream(futures::stream::unfold(
                stream,
                AdminStream::step,
            ))));
        }
        // `stream: false`: the last line is the answer, as Ollama gives it.
        let mut last = Bytes::new();
        while let Some((Ok(line), next)) = stream.step().await {
            last = line;
            stream = next;
        }
        let v: Value = serde_json::from_slice(&last).unwrap_or_default();
        if let Some(e) = v.get("error").and_then(Value::as_str) {
            return Err(OllamaError::new(StatusCode::INTERNAL_SERVER_ERROR, e));
        }
        return Ok(Json(v).into_response());
    }
    // Delete and copy: one endpoint after another; the first failure is the answer.
    let mut status = stream::upstream_status(&response);
    let mut bytes = read_all(&state, response).await?;
    for e in targets {
        let response = call.send(&e).await?;
        if !response.status().is_success() {
            state.providers.refresh(true).await;
            return Err(upstream_status_error(&state, response).await);
        }
        status = stream::upstream_status(&response);
        bytes = read_all(&state, response).await?;
    }
    // The next `/api/tags` shows the change.
    state.providers.refresh(true).await;
    Ok(if bytes.is_empty() {
        status.into_response()
    } else {
        json_bytes_response(status, bytes)
    })
}

/// One admin request, sent to each target endpoint in turn.
struct AdminCall {
    state: Arc<EdgeState>,
    provider: Arc<Provider>,
    action: AdminAction,
    body: Bytes,
    request_id: String,
}

impl AdminCall {
    async fn send(&self, endpoint: &Endpoint) -> Result<reqwest::Response> {
        let http = &self.state.providers.http;
        let url = format!("{}{}", endpoint.url, self.action.path());
        let req = match self.action {
            AdminAction::Delete => http.delete(url),
            _ => http.post(url),
        }
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-request-id", &self.request_id)
        .body(self.body.clone());
        let timeout = self.state.config.timeouts.first_byte_loading();
        match tokio::time::timeout(timeout, self.provider.authorize(req).send()).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(UpstreamError::Unreachable(
                format!("{} ({})", self.provider.name, endpoint.url),
                crate::providers::describe_reqwest_error(&e),
            )
            .into()),
            Err(_) => Err(UpstreamError::Timeout(self.provider.name.clone(), timeout).into()),
        }
    }
}

/// Progress of a pull or create, endpoint after endpoint, line for line. Only the last
/// endpoint's `success` is passed on, so a client stops reading when every endpoint is done.
struct AdminStream {
    call: AdminCall,
    remaining: VecDeque<Arc<Endpoint>>,
    current: Option<TimedBody>,
    lines: LineBuffer,
    pending: VecDeque<Bytes>,
    ctx: RequestContext,
    done: bool,
    /// Finished when the stream ends; dropped with the stream (client gone) it records "interrupted".
    intent: Option<aibox_mcp::audited::OpenIntent>,
    /// The first error seen in the stream, for the audit outcome.
    failure: Option<String>,
}

impl AdminStream {
    async fn step(
        mut self,
    ) -> Option<(std::result::Result<Bytes, std::convert::Infallible>, Self)> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Some((Ok(b), self));
            }
            if self.done {
                if let Some(intent) = self.intent.take() {
                    let detail = match &self.failure {
                        None => json!({}),
                        Some(e) => json!({"error": e}),
                    };
                    let _ = intent.finish(self.failure.is_none(), detail).await;
                }
                return None;
            }
            let Some(current) = self.current.as_mut() else {
                match self.remaining.pop_front() {
                    Some(e) => self.start(&e).await,
                    None => {
                        self.call.state.providers.refresh(true).await;
                        self.done = true;
                    }
                }
                continue;
            };
            match current.next().await {
                Read::Chunk(chunk) => {
                    for line in self.lines.push(&chunk) {
                        self.on_line(line);
                    }
                }
                Read::End => {
                    if let Some(line) = self.lines.finish() {
                        self.on_line(line);
                    }
                    self.current = None;
                }
                Read::Failed(msg) => self.fail(&msg),
            }
        }
    }

    async fn start(&mut self, endpoint: &Endpoint) {
        match self.call.send(endpoint).await {
            Ok(r) if r.status().is_success() => {
                self.current = Some(TimedBody::new(
                    r,
                    self.call.state.config.timeouts.idle(),
                    ADMIN_STREAM_TOTAL,
                    Instant::now(),
                ));
            }
            Ok(r) => {
                let e = upstream_status_error(&self.call.state, r).await;
                self.fail(&format!("{}: {}", endpoint.url, e.message));
            }
            Err(e) => self.fail(&e.message),
        }
    }

    fn on_line(&mut self, line: Vec<u8>) {
        if self.done {
            return;
        }
        let parsed = serde_json::from_slice::<Value>(&line).ok();
        if let Some(e) = parsed.as_ref().and_then(|v| v.get("error")) {
            self.failure
                .get_or_insert_with(|| e.as_str().map_or_else(|| e.to_string(), String::from));
            self.ctx.update(|m| m.error = Some("upstream_error"));
            self.done = true;
            self.current = None;
        } else if !self.remaining.is_empty()
            && parsed
                .as_ref()
                .is_some_and(|v| v.get("status").and_then(Value::as_str) == Some("success"))
        {
            return;
        }
        let mut line = line;
        line.push(b'\n');
        self.pending.push_back(Bytes::from(line));
    }

    fn fail(&mut self, msg: &str) {
        self.failure.get_or_insert_with(|| msg.to_owned());
        self.ctx
            .update(|m| m.error = Some("upstream_stream_failed"));
        self.pending.push_back(ndjson(&json!({"error": msg})));
        self.done = true;
        self.current = None;
    }
}
