//! Admin calls (pull, delete, copy, create): admin key, audited before they run (fail
//! closed), sent to every endpoint of the Ollama provider so a model name stays served by all.
use std::collections::VecDeque;
use std::future::ready;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, StatusCode};
use serde_json::{json, Value};

use super::{
    answered, json_bytes_response, model_field, parse_body, read_all, seen, upstream_status_error,
    Result,
};
use crate::config::ProviderKind;
use crate::error::{ndjson_error_line, EdgeError, Shape};
use crate::outcome::Outcome;
use crate::providers::{model_matches, Endpoint, Provider, UpstreamRequest};
use crate::relay::{Emit, Frames, Framing, Relay, Timing};
use crate::surface::stream::{self, UpstreamBody};
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
    admin_task(state, ctx, raw, AdminAction::Pull).await
}

pub async fn delete_model(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    raw: Bytes,
) -> Response {
    admin_task(state, ctx, raw, AdminAction::Delete).await
}

pub async fn copy(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    raw: Bytes,
) -> Response {
    admin_task(state, ctx, raw, AdminAction::Copy).await
}

pub async fn create(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    raw: Bytes,
) -> Response {
    admin_task(state, ctx, raw, AdminAction::Create).await
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
                    return Err(EdgeError::invalid(
                        "no Ollama provider is configured; pull, delete, copy and create work only on Ollama providers",
                    ))
                }
            }
        }
    };
    if provider.kind != ProviderKind::Ollama {
        return Err(EdgeError::invalid(format!(
            "model \"{name}\" is on the OpenAI-compatible provider \"{}\"; pull, delete, copy and create work only on Ollama providers",
            provider.name
        )));
    }
    Ok((provider, model))
}

async fn admin(
    state: Arc<EdgeState>,
    ctx: &RequestContext,
    raw: &Bytes,
    action: AdminAction,
    seen: &mut Outcome,
) -> Result<Response> {
    if !ctx.client.admin {
        return Err(if ctx.client.name == crate::clients::ANONYMOUS {
            EdgeError::AdminKeyRequired
        } else {
            EdgeError::NotAdmin(ctx.client.name.clone())
        });
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
    seen.provider = Some(provider.name.clone());
    seen.model = Some(asked.clone());
    if let Some(o) = body.as_object_mut() {
        if action == AdminAction::Copy {
            o.insert("source".into(), json!(model));
            let dest = metadata["destination"].as_str().unwrap_or_default();
            let dest = match dest.split_once('/') {
                Some((p, rest)) if p == provider.name => rest.to_owned(),
                Some((p, _)) if state.providers.get(p).is_some() => {
                    return Err(EdgeError::invalid(
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
                Err(e) => return Err(EdgeError::AuditUnavailable(e.to_string())),
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
    let result = admin_act(
        state,
        ctx,
        body,
        action,
        provider,
        targets,
        &mut intent,
        seen,
    )
    .await;
    if let Some(intent) = intent {
        let detail = match &result {
            Ok(_) => json!({}),
            Err(e) => json!({"error": e.message(&Shape::Ollama)}),
        };
        // Inside the admin task: the answer follows the outcome event.
        let _ = intent.finish(result.is_ok(), detail).await;
    }
    result
}

/// The admin call in a task of its own: a client that hangs up cancels neither the upstream
/// delete/copy nor the audit outcome (a streamed pull stops with its stream, recorded as such).
#[allow(
    clippy::disallowed_methods,
    reason = "the task is awaited right here: its owner is this request, it only outlives a client that hung up"
)]
async fn admin_task(
    state: Arc<EdgeState>,
    ctx: RequestContext,
    raw: Bytes,
    action: AdminAction,
) -> Response {
    tokio::spawn(async move {
        let mut seen = seen();
        let result = admin(state, &ctx, &raw, action, &mut seen).await;
        answered(seen, result)
    })
    .await
    .unwrap_or_else(|e| {
        let e = EdgeError::Internal(format!("the admin call failed: {e}"));
        answered(seen(), Err(e))
    })
}

/// Sends the admin call to its endpoints; a streamed answer takes over `intent` and finishes it.
#[allow(clippy::too_many_arguments)]
async fn admin_act(
    state: Arc<EdgeState>,
    ctx: &RequestContext,
    mut body: Value,
    action: AdminAction,
    provider: Arc<Provider>,
    targets: Vec<Arc<Endpoint>>,
    intent: &mut Option<aibox_mcp::audited::OpenIntent>,
    seen: &mut Outcome,
) -> Result<Response> {
    let streams = action.streams(&body);
    let progress = matches!(action, AdminAction::Pull | AdminAction::Create);
    if progress {
        // Always streamed upstream: a whole pull can take longer than any first-byte timeout,
        // and progress lines keep the idle timeout satisfied. `stream: false` is answered below.
        body["stream"] = json!(true);
    }
    let body = serde_json::to_vec(&body).map_err(|e| EdgeError::Internal(e.to_string()))?;
    let call = AdminCall {
        state: state.clone(),
        provider,
        action,
        body: Bytes::from(body),
        request_id: ctx.id.clone(),
    };
    let mut targets: VecDeque<Arc<Endpoint>> = targets.into();
    let first = targets
        .pop_front()
        .ok_or_else(|| EdgeError::Internal("the provider has no endpoint".into()))?;
    let started = Instant::now();
    let response = call.send(&first).await?;
    seen.upstream_time = Some(started.elapsed());
    seen.endpoint = Some(first.url.clone());
    if !response.status().is_success() {
        return Err(upstream_status_error(&state, response).await);
    }
    if progress {
        let failed = Arc::new(OnceLock::new());
        let frames = AdminProgress {
            failed: failed.clone(),
            success: None,
            intent: intent.take(),
            done: false,
        };
        let relay = Relay::translate(
            progress_body(call, response, targets, failed),
            Framing::Ndjson,
            frames,
        )
        .timed(Timing::new(
            state.config.timeouts.idle(),
            ADMIN_STREAM_TOTAL,
            Instant::now(),
        ))
        .logged(&ctx.id, &first.url);
        if streams {
            return Ok(relay.respond(
                StatusCode::OK,
                HeaderValue::from_static("application/x-ndjson"),
            ));
        }
        // `stream: false`: the last line is the answer, as Ollama gives it.
        let all = axum::body::to_bytes(relay.into_body(), usize::MAX)
            .await
            .map_err(|e| EdgeError::UpstreamStreamFailed(e.to_string()))?;
        let last = all
            .split(|b| *b == b'\n')
            .rfind(|l| !l.trim_ascii().is_empty())
            .unwrap_or_default();
        let v: Value = serde_json::from_slice(last).unwrap_or_default();
        if let Some(e) = v.get("error").and_then(Value::as_str) {
            return Err(EdgeError::upstream_status(
                StatusCode::INTERNAL_SERVER_ERROR,
                e,
            ));
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
#[derive(Clone)]
struct AdminCall {
    state: Arc<EdgeState>,
    provider: Arc<Provider>,
    action: AdminAction,
    body: Bytes,
    request_id: String,
}

impl AdminCall {
    async fn send(&self, endpoint: &Arc<Endpoint>) -> Result<crate::providers::Response> {
        let method = match self.action {
            AdminAction::Delete => http::Method::DELETE,
            _ => http::Method::POST,
        };
        let request = UpstreamRequest::json(method, self.action.path(), self.body.clone())
            .header_str("x-request-id", &self.request_id);
        Ok(self
            .state
            .providers
            .admin(&self.provider, endpoint, &request)
            .await?)
    }

    /// The progress body of `endpoint`; a refusal or failure to answer becomes an error line.
    async fn progress(self, endpoint: Arc<Endpoint>) -> UpstreamBody {
        let refused = match self.send(&endpoint).await {
            Ok(r) if r.status().is_success() => return stream::body(r),
            Ok(r) => {
                let e = upstream_status_error(&self.state, r).await;
                format!("{}: {}", endpoint.url, e.message(&Shape::Ollama))
            }
            Err(e) => e.message(&Shape::Ollama),
        };
        Box::pin(futures::stream::once(ready(Ok(ndjson_error_line(
            &refused,
        )))))
    }
}

/// Progress of a pull or create, endpoint after endpoint: the first endpoint's body (already
/// answering), then each next endpoint's, asked only while no failure was seen; the model
/// listing is refreshed at the end, so the next `/api/tags` shows the change.
fn progress_body(
    call: AdminCall,
    first: crate::providers::Response,
    rest: VecDeque<Arc<Endpoint>>,
    failed: Arc<OnceLock<String>>,
) -> UpstreamBody {
    let state = call.state.clone();
    let next = futures::stream::iter(rest)
        .take_while(move |_| ready(failed.get().is_none()))
        .then(move |endpoint| call.clone().progress(endpoint))
        .flatten();
    let refresh = futures::stream::once(async move { state.providers.refresh(true).await })
        .filter_map(|()| ready(None));
    Box::pin(stream::body(first).chain(next).chain(refresh))
}

/// The progress lines as the client sees them: passed on line for line, except that only the
/// last `success` is (a client stops reading at the first one it sees, so it must mean every
/// endpoint is done); the first error ends the stream. The audit outcome is written when the
/// stream ends; dropped with the stream (client gone), the intent records "interrupted".
struct AdminProgress {
    /// The first failure, also read by `progress_body` so that no further endpoint is asked.
    failed: Arc<OnceLock<String>>,
    /// The latest `success` line, held back until the end.
    success: Option<Bytes>,
    intent: Option<aibox_mcp::audited::OpenIntent>,
    done: bool,
}

impl AdminProgress {
    fn finish(&mut self) {
        self.done = true;
        if let Some(intent) = self.intent.take() {
            let detail = match self.failed.get() {
                None => json!({}),
                Some(e) => json!({"error": e}),
            };
            // The write runs in a task of its own, so the client leaving cannot cancel it.
            drop(intent.finish(self.failed.get().is_none(), detail));
        }
    }
}

impl Frames for AdminProgress {
    fn frame(&mut self, line: &Bytes, out: &mut Emit) {
        if self.done {
            return;
        }
        let parsed = serde_json::from_slice::<Value>(line).ok();
        if let Some(e) = parsed.as_ref().and_then(|v| v.get("error")) {
            let _ = self
                .failed
                .set(e.as_str().map_or_else(|| e.to_string(), String::from));
            out.failed("upstream_error");
            out.push(Bytes::from([line.as_ref(), b"\n"].concat()));
            self.finish();
            return;
        }
        let line = Bytes::from([line.as_ref(), b"\n"].concat());
        if parsed
            .as_ref()
            .is_some_and(|v| v.get("status").and_then(Value::as_str) == Some("success"))
        {
            self.success = Some(line);
        } else {
            out.push(line);
        }
    }

    fn end(&mut self, out: &mut Emit) {
        if self.done {
            return;
        }
        if let Some(line) = self.success.take() {
            out.push(line);
        }
        self.finish();
    }

    fn fail(&mut self, err: &EdgeError, out: &mut Emit) {
        if self.done {
            return;
        }
        let _ = self.failed.set(err.to_string());
        out.failed(err.kind());
        out.push(err.ndjson_line());
        self.finish();
    }
}
