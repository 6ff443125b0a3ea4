//! Admin calls (pull, delete, copy, create): admin key, audited before they run (fail
//! closed), sent to every endpoint of the Ollama provider so a model name stays served by all.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use http::{header, StatusCode};
use serde_json::{json, Value};

use super::{
    answer, json_bytes_response, model_field, ndjson_response, parse_body, read_all,
    upstream_status_error, OllamaError, Result,
};
use crate::config::ProviderKind;
use crate::providers::{model_matches, Endpoint, Provider, UpstreamError};
use crate::surface::stream::{self, ndjson, LineBuffer, Read, TimedBody};
use crate::surface::{EdgeState, RequestContext};

/// Pull and create progress is bounded by the idle timeout only: pulling a large model can
/// take far longer than any inference request, but Ollama reports progress every few seconds.
const ADMIN_STREAM_TOTAL: Duration = Duration::from_secs(24 * 3600);

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
