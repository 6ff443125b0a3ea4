//! The HTTP API (reference: docs/controller.md). Every admin action is audited before it is
//! answered; if the audit log cannot be written the action is refused.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use aibox_wire::audit::{AuditCheck, AuditHeadReport, AuditRecord};
use aibox_wire::mcp::ToolContainerList;

use crate::audit::{AuditError, AuditEvent, AuditFilter, AuditLog, NewEvent, INTENT};
use crate::audited::{self, AuditedError, Outcome};
use crate::engine::{DockerError, Engine, ServiceAction, UpStep};
use crate::logstream::{LogDecoder, LogLine};

const MAX_TAIL: u32 = 5000;
const MAX_AUDIT_LIMIT: usize = 1000;
/// Keeps one event well under a rotated file's size and readable in the dashboard.
const MAX_METADATA_BYTES: usize = 16 * 1024;

pub struct AppState {
    pub engine: Engine,
    pub audit: Arc<AuditLog>,
    pub token: String,
    /// The last self-check of the log against its head anchor; an alarm stays until restart.
    pub audit_check: std::sync::Mutex<Option<AuditCheck>>,
    /// Tool containers of the MCP registry, when the box runs them.
    pub tools: Option<Arc<crate::tools::Tools>>,
}

impl AppState {
    pub fn last_check(&self) -> Option<AuditCheck> {
        self.audit_check
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

type Shared = Arc<AppState>;

/// Who is calling, as the caller says (recorded, never used for authorization).
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor: String,
    pub user: Option<String>,
    pub correlation_id: String,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Option<Map<String, Value>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }
    fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl ApiError {
    /// The JSON body this error is answered with.
    fn body(&self) -> Value {
        // `{"error": {"code", "message"}}` (aibox_wire::controller::ErrorBody), plus any extra fields.
        let mut body = self.extra.clone().unwrap_or_default();
        let detail = aibox_wire::controller::ErrorDetail {
            code: self.code.to_string(),
            message: self.message.clone(),
        };
        body.insert(
            "error".into(),
            // Two strings: serialising them cannot fail.
            serde_json::to_value(detail).unwrap_or_default(),
        );
        Value::Object(body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<DockerError> for ApiError {
    fn from(e: DockerError) -> Self {
        let (status, code) = match &e {
            DockerError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "docker_unavailable"),
            DockerError::UnknownService { .. } => (StatusCode::NOT_FOUND, "unknown_service"),
            DockerError::NotAllowed(_) => (StatusCode::FORBIDDEN, "service_not_allowed"),
            DockerError::Gone(_) => (StatusCode::NOT_FOUND, "unknown_service"),
            DockerError::Api { .. } => (StatusCode::BAD_GATEWAY, "docker_error"),
            DockerError::Compose(_) => (StatusCode::UNPROCESSABLE_ENTITY, "compose_model_error"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

fn audit_refused(e: AuditError) -> ApiError {
    tracing::error!(error = %e, "audit log unavailable; refusing the action");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "audit_unavailable",
        format!("the action was refused because the audit log cannot be written: {e}"),
    )
}

fn audit_lost(e: AuditError, what: &str) -> ApiError {
    tracing::error!(error = %e, what, "audit event could not be written after the action ran");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "audit_write_failed",
        format!("{what} was performed but its audit event could not be written: {e}; further actions are refused until the log is writable"),
    )
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/services", get(list_services))
        .route("/services/{name}/logs", get(service_logs))
        .route("/services/{name}/{action}", post(service_action))
        .route("/images/pull", post(pull_images))
        .route("/mcp/containers", get(list_tool_containers))
        .route("/audit", get(audit_query).post(audit_record))
        .route("/audit/verify", get(audit_verify))
        .route("/audit/head", get(audit_head))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolContainersQuery {
    tail: Option<String>,
}

/// Log lines a tool container listing may carry per container.
const MAX_TOOL_TAIL: u32 = 100;

/// The MCP tool containers and their state (`enabled: false` when the box does not run them).
/// `?tail=N` adds each one's last N log lines: a log read, audited like `GET /services/{name}/logs`.
async fn list_tool_containers(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<ToolContainersQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ToolContainerList>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let tail = match q.tail.as_deref() {
        None | Some("0") => 0,
        Some(t) => bounded_param("tail", Some(t), 0, MAX_TOOL_TAIL)?,
    };
    let Some(tools) = &state.tools else {
        return Ok(Json(ToolContainerList::default()));
    };
    if tail > 0 {
        // Before any log line is read (fail closed, as for service logs).
        ready(&state).await?;
        let mut metadata = Map::new();
        metadata.insert("tail".into(), json!(tail));
        append(
            &state,
            caller.event("mcp_container_logs", "mcp", "ok", metadata),
        )
        .await
        .map_err(audit_refused)?;
    }
    let containers = tools.views(tail).await?;
    Ok(Json(ToolContainerList {
        enabled: true,
        containers,
    }))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Request id, caller identity and the bearer token, for every route.
async fn guard(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    let headers = req.headers();
    let correlation_id = header_str(headers, "x-request-id")
        .filter(|s| s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(String::from)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    // Visible ASCII (checked above) or a UUID: always a valid header value.
    let rid = HeaderValue::from_str(&correlation_id)
        .unwrap_or_else(|_| HeaderValue::from_static("invalid-request-id"));
    let result = (|| {
        if req.uri().path() != "/health" {
            let presented = header_str(req.headers(), "authorization")
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim())
                .unwrap_or("");
            let ok: bool = presented.as_bytes().ct_eq(state.token.as_bytes()).into();
            if !ok {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing or wrong bearer token",
                ));
            }
        }
        let headers = req.headers();
        let actor = header_str(headers, "x-actor").unwrap_or("api").to_string();
        if !valid_name(&actor) {
            return Err(ApiError::bad_request(
                "invalid_request",
                "X-Actor must be 1-64 characters of [A-Za-z0-9_.-]",
            ));
        }
        let user =
            header_str(headers, "x-actor-user").map(|u| u.chars().take(256).collect::<String>());
        Ok(Caller {
            actor,
            user,
            correlation_id: correlation_id.clone(),
        })
    })();
    let mut resp = match result {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    };
    resp.headers_mut().insert("x-request-id", rid);
    resp
}

impl Caller {
    fn event(
        &self,
        action: &str,
        resource: &str,
        result: &str,
        mut metadata: Map<String, Value>,
    ) -> NewEvent {
        if let Some(user) = &self.user {
            metadata
                .entry("user")
                .or_insert_with(|| Value::String(user.clone()));
        }
        NewEvent {
            action: action.to_string(),
            resource: resource.to_string(),
            actor: self.actor.clone(),
            result: result.to_string(),
            correlation_id: self.correlation_id.clone(),
            metadata,
        }
    }
}

async fn append(state: &Shared, event: NewEvent) -> Result<AuditEvent, AuditError> {
    audited::append(&state.audit, event).await
}

fn audited_error(e: AuditedError, what: &str) -> ApiError {
    match e {
        AuditedError::Refused(e) => audit_refused(e),
        AuditedError::OutcomeLost(e) => audit_lost(e, what),
    }
}

async fn ready(state: &Shared) -> Result<(), ApiError> {
    let audit = state.audit.clone();
    tokio::task::spawn_blocking(move || audit.ready())
        .await
        .unwrap_or_else(|e| Err(AuditError::Unavailable(e.to_string())))
        .map_err(audit_refused)
}

/// Open (no token): liveness, and the audit head anchor so it can be copied elsewhere.
async fn health(State(state): State<Shared>) -> Json<Value> {
    let check = state.last_check();
    Json(json!({"ok": true, "audit": {
        "head": state.audit.head(),
        "alarm": check.and_then(|c| c.alarm),
    }}))
}

async fn audit_head(State(state): State<Shared>) -> Json<AuditHeadReport> {
    Json(AuditHeadReport {
        head: state.audit.head(),
        check: state.last_check(),
    })
}

async fn list_services(State(state): State<Shared>) -> Result<Json<Value>, ApiError> {
    let services = state.engine.services().await?;
    Ok(Json(
        serde_json::to_value(aibox_wire::controller::ServiceList {
            project: state.engine.project().to_string(),
            services,
        })
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Confirmation {
    #[serde(default)]
    confirm: bool,
    #[serde(default)]
    dry_run: bool,
    /// The service's name, typed: required to stop a service that would lock the user out.
    #[serde(default)]
    confirm_service: Option<String>,
}

const CONFIRM_HELP: &str =
    "send {\"confirm\": true} to act or {\"dry_run\": true} to see what would happen";

/// The map inside a `json!({...})` literal.
fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// JSON bodies are objects only (an array would otherwise fill a struct field by field).
fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    aibox_wire::body::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))
}

async fn service_action(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path((name, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    if action == "up" {
        return service_up(state, caller, name, body).await;
    }
    let action = ServiceAction::parse(&action).ok_or_else(|| {
        ApiError::bad_request(
            "unknown_action",
            format!("unknown action {action:?}; use start, stop, restart or up"),
        )
    })?;
    let (containers, current_state) = state.engine.describe(&name).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("confirmation_required", CONFIRM_HELP));
    }
    let confirmation: Confirmation = parse_json(&body)?;
    // Stopping the edge, the dashboard or the controller cuts the user off from the dashboard.
    let lockout = (action == ServiceAction::Stop)
        .then(|| aibox_wire::controller::lockout_risk(&name))
        .flatten();
    if confirmation.dry_run {
        let mut answer = object(json!({
            "ok": true, "dry_run": true,
            "would": format!("{} {name}", action.verb()),
            "service": name, "action": action.verb(),
            "containers": containers, "state": current_state,
        }));
        if let Some(why) = lockout {
            answer.insert("warning".into(), json!(why));
            answer.insert("confirm_service_required".into(), json!(true));
        }
        return Ok(Json(Value::Object(answer)));
    }
    if !confirmation.confirm {
        return Err(ApiError::bad_request("confirmation_required", CONFIRM_HELP));
    }
    if let Some(why) = lockout {
        if confirmation.confirm_service.as_deref() != Some(name.as_str()) {
            return Err(ApiError::bad_request(
                "service_name_required",
                format!("stopping {name} locks you out: {why} To stop it anyway, send \"confirm_service\": \"{name}\" with \"confirm\": true."),
            ));
        }
    }
    let mut intent_meta = Map::new();
    intent_meta.insert("containers".into(), json!(containers));
    let intent = caller.event(action.verb(), &name, INTENT, intent_meta);
    let task_state = state.clone();
    let task_name = name.clone();
    let outcome = audited::run(state.audit.clone(), intent, async move {
        let outcome = task_state.engine.act(&task_name, action).await;
        let audited = match &outcome {
            Ok(o) => Outcome::ok(object(
                json!({"containers": o.containers, "changed": o.changed}),
            )),
            Err(e) => Outcome::error(e, object(json!({"containers": containers}))),
        };
        (outcome, audited)
    })
    .await
    .map_err(|e| audited_error(e, &format!("{} {name}", action.verb())))?;
    let outcome = outcome?;
    tracing::info!(service = %name, action = action.verb(), actor = %caller.actor, changed = outcome.changed, "service action");
    Ok(Json(json!({
        "ok": true, "service": name, "action": action.past(),
        "changed": outcome.changed, "containers": outcome.containers,
    })))
}

/// `up`: create, recreate or start one service as `docker compose up -d <service>` would.
async fn service_up(
    state: Shared,
    caller: Caller,
    name: String,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let plan = state.engine.up_plan(&name).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("confirmation_required", CONFIRM_HELP));
    }
    let confirmation: Confirmation = parse_json(&body)?;
    let would = match plan.step {
        UpStep::Create => format!("create and start {name}"),
        UpStep::Recreate => format!("recreate {name} with the image {} now names", plan.image),
        UpStep::Start => format!("start {name}"),
        UpStep::Nothing => format!("nothing: {name} runs its current image"),
    };
    if confirmation.dry_run {
        let mut answer = object(json!({
            "ok": true, "dry_run": true, "would": would, "service": name, "action": "up",
        }));
        answer.extend(object(json!(plan)));
        return Ok(Json(Value::Object(answer)));
    }
    if !confirmation.confirm {
        return Err(ApiError::bad_request("confirmation_required", CONFIRM_HELP));
    }
    let intent_meta =
        object(json!({"step": plan.step, "containers": plan.containers, "image": plan.image}));
    let intent = caller.event("up", &name, INTENT, intent_meta);
    let task_state = state.clone();
    let task_name = name.clone();
    let result = audited::run(state.audit.clone(), intent, async move {
        let result = task_state.engine.up(&task_name).await;
        let audited = match &result {
            Ok((plan, o)) => {
                let mut m = object(json!({"step": plan.step, "containers": o.containers,
                    "changed": o.changed, "image": plan.image,
                    "container_image_id": plan.container_image_id, "image_id": plan.current_image_id}));
                m.retain(|_, v| !v.is_null());
                Outcome::ok(m)
            }
            Err(e) => Outcome::error(e, Map::new()),
        };
        (result, audited)
    })
    .await
    .map_err(|e| audited_error(e, &format!("up {name}")))?;
    let (plan, outcome) = result?;
    tracing::info!(service = %name, step = ?plan.step, actor = %caller.actor, changed = outcome.changed, "up");
    Ok(Json(json!({
        "ok": true, "service": name, "action": "up", "step": plan.step,
        "changed": outcome.changed, "containers": outcome.containers,
        "image_id": plan.current_image_id,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    tail: Option<String>,
    follow: Option<String>,
    timestamps: Option<String>,
}

fn parse_bool(key: &str, v: Option<&str>) -> Result<bool, ApiError> {
    match v {
        None | Some("false") | Some("0") | Some("") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(ApiError::bad_request(
            "invalid_query",
            format!("{key} must be true or false, not {other:?}"),
        )),
    }
}

fn ndjson(lines: &[LogLine]) -> Bytes {
    let mut out = Vec::new();
    for l in lines {
        // A log line is strings and numbers: it always serialises.
        if serde_json::to_writer(&mut out, l).is_ok() {
            out.push(b'\n');
        }
    }
    Bytes::from(out)
}

/// A query parameter that must be a whole number from 1 to `max`; `default` when absent.
fn bounded_param<N>(name: &str, value: Option<&str>, default: N, max: N) -> Result<N, ApiError>
where
    N: std::str::FromStr + PartialOrd + From<u8> + std::fmt::Display + Copy,
{
    let Some(v) = value else {
        return Ok(default);
    };
    v.parse::<N>()
        .ok()
        .filter(|n| *n >= N::from(1) && *n <= max)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("{name} must be a number from 1 to {max}"),
            )
        })
}

async fn service_logs(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let tail = bounded_param("tail", q.tail.as_deref(), 100, MAX_TAIL)?;
    let follow = parse_bool("follow", q.follow.as_deref())?;
    let timestamps = parse_bool("timestamps", q.timestamps.as_deref())?;
    state.engine.describe(&name).await?;
    ready(&state).await?;
    let source = state.engine.logs(&name, tail, follow, timestamps).await;
    let mut metadata = Map::new();
    metadata.insert("tail".into(), json!(tail));
    metadata.insert("follow".into(), json!(follow));
    let result = match &source {
        Ok(s) => {
            metadata.insert("container".into(), json!(s.container));
            "ok"
        }
        Err(e) => {
            metadata.insert("error".into(), json!(e.to_string()));
            "error"
        }
    };
    append(&state, caller.event("logs", &name, result, metadata))
        .await
        .map_err(audit_refused)?;
    let source = source?;
    let mut decoder = LogDecoder::new(source.tty, timestamps);
    if !follow {
        let mut lines = Vec::new();
        let mut body = source.body;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "docker_unavailable",
                    e.to_string(),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                lines.extend(decoder.push(&data));
            }
        }
        lines.extend(decoder.finish());
        return Ok(Json(json!({
            "service": name, "container": source.container, "tty": source.tty, "lines": lines,
        }))
        .into_response());
    }
    // The stream lives as long as the client reads it; when it goes, the Docker connection is dropped.
    let stream = futures::stream::unfold(Some((source.body, decoder)), |st| async move {
        let (mut body, mut decoder) = st?;
        loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let lines = decoder.push(&data);
                    if !lines.is_empty() {
                        return Some((Ok::<_, Infallible>(ndjson(&lines)), Some((body, decoder))));
                    }
                }
                Some(Err(_)) | None => {
                    let lines = decoder.finish();
                    return Some((Ok(ndjson(&lines)), None));
                }
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PullRequest {
    services: Vec<String>,
    #[serde(default)]
    confirm: bool,
    #[serde(default)]
    dry_run: bool,
}

const PULL_NOTE: &str = "Pulling does not change running containers; services with \"drift\": true run an older image than the one now pulled and need a recreate (POST /services/<service>/up, or docker compose up -d <service>) to use it.";

#[derive(Debug, Deserialize)]
struct PullQuery {
    stream: Option<String>,
}

/// Streamed when asked for by `Accept: application/x-ndjson` or `?stream=true`.
fn wants_stream(
    headers: &HeaderMap,
    query: Result<Query<PullQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<bool, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let by_query = parse_bool("stream", q.stream.as_deref())?;
    let by_accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/x-ndjson")
        });
    Ok(by_query || by_accept)
}

async fn pull_images(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    query: Result<Query<PullQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let stream = wants_stream(&headers, query)?;
    let req: PullRequest = parse_json(&body)?;
    if req.services.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "services must name at least one service",
        ));
    }
    let mut services = req.services.clone();
    services.dedup();
    let images = state.engine.image_refs(&services).await?;
    if req.dry_run {
        let list: Vec<Value> = images
            .iter()
            .map(|(s, i)| json!({"service": s, "image": i}))
            .collect();
        return Ok(Json(json!({
            "ok": true, "dry_run": true,
            "would": format!("pull images for {}", services.join(", ")),
            "images": list,
        }))
        .into_response());
    }
    if !req.confirm {
        return Err(ApiError::bad_request("confirmation_required", CONFIRM_HELP));
    }
    ready(&state).await?;
    if !stream {
        // In a task of its own: a caller that hangs up does not stop the pulls or their audit.
        let task = tokio::spawn(async move { run_pulls(&state, &caller, &services, None).await });
        return task
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?
            .map(|v| Json(v).into_response());
    }
    // The pulls run in their own task, so that every started pull is audited even when the client
    // goes away; the client going away closes the channel, which stops reading Docker's stream.
    let (tx, rx) = tokio::sync::mpsc::channel::<Value>(64);
    tokio::spawn(async move {
        let outcome = run_pulls(&state, &caller, &services, Some(tx.clone())).await;
        let mut last = match outcome {
            Ok(v) => object(v),
            Err(e) => object(e.body()),
        };
        last.insert("done".into(), json!(true));
        let _ = tx.send(Value::Object(last)).await;
    });
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_vec(&event).ok()?;
        line.push(b'\n');
        Some((Ok::<_, Infallible>(Bytes::from(line)), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// Pulls each service in turn, auditing each; the answer of the non-streamed request (and the
/// final line of the streamed one).
async fn run_pulls(
    state: &Shared,
    caller: &Caller,
    services: &[String],
    events: Option<tokio::sync::mpsc::Sender<Value>>,
) -> Result<Value, ApiError> {
    let mut results = Vec::new();
    for service in services {
        if events.as_ref().is_some_and(|tx| tx.is_closed()) {
            break; // the client is gone: start nothing more
        }
        let intent = caller.event("pull", service, INTENT, Map::new());
        let (task_state, task_service, task_events) =
            (state.clone(), service.clone(), events.clone());
        let outcome = audited::run(state.audit.clone(), intent, async move {
            let outcome = task_state
                .engine
                .pull(&task_service, task_events.as_ref())
                .await;
            let audited = match &outcome {
                Ok(r) => {
                    let mut metadata = object(json!({"image": r.image, "pulled_image_id": r.pulled_image_id,
                        "container_image_id": r.container_image_id, "drift": r.drift, "error": r.error}));
                    metadata.retain(|_, v| !v.is_null());
                    Outcome {
                        ok: r.ok,
                        metadata,
                    }
                }
                Err(e) => Outcome::error(e, Map::new()),
            };
            match &outcome {
                Ok(r) if r.ok => tracing::info!(service = %task_service, image = %r.image, drift = ?r.drift, "pulled"),
                Ok(r) => tracing::warn!(service = %task_service, image = %r.image, error = ?r.error, "pull failed"),
                Err(e) => tracing::warn!(service = %task_service, error = %e, "pull failed"),
            }
            (outcome, audited)
        })
        .await
        .map_err(|e| audited_error(e, &format!("pull {service}")))?;
        results.push(outcome?);
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.service.as_str())
        .collect();
    if failed.is_empty() {
        return Ok(json!({"ok": true, "note": PULL_NOTE, "results": results}));
    }
    let message = results
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.service)))
        .collect::<Vec<_>>()
        .join("; ");
    let mut err = ApiError::new(
        StatusCode::BAD_GATEWAY,
        "pull_failed",
        format!("pull failed for {message}"),
    );
    let mut extra = Map::new();
    extra.insert("ok".into(), json!(false));
    extra.insert("note".into(), json!(PULL_NOTE));
    extra.insert("results".into(), json!(results));
    err.extra = Some(extra);
    Err(err)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<String>,
    since: Option<String>,
    format: Option<String>,
    action: Option<String>,
    resource: Option<String>,
    actor: Option<String>,
}

async fn audit_query(
    State(state): State<Shared>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = bounded_param("limit", q.limit.as_deref(), 50, MAX_AUDIT_LIMIT)?;
    let since = q
        .since
        .as_deref()
        .map(|s| {
            OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("since must be an RFC 3339 timestamp like 2026-01-02T03:04:05Z: {e}"),
                )
            })
        })
        .transpose()?;
    let jsonl = match q.format.as_deref() {
        None | Some("json") => false,
        Some("jsonl") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("format must be json or jsonl, not {other:?}"),
            ))
        }
    };
    let filter = AuditFilter {
        since,
        action: q.action,
        resource: q.resource,
        actor: q.actor,
    };
    let audit = state.audit.clone();
    let events = tokio::task::spawn_blocking(move || audit.query(&filter, limit))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "audit_read_failed",
                e.to_string(),
            )
        })?;
    if jsonl {
        let mut out = String::new();
        for (_, line) in &events {
            out.push_str(line);
            out.push('\n');
        }
        return Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response());
    }
    let list: Vec<&AuditEvent> = events.iter().map(|(e, _)| e).collect();
    Ok(Json(json!({"events": list, "count": list.len()})).into_response())
}

async fn audit_record(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: AuditRecord = parse_json(&body)?;
    let action_ok = !req.action.is_empty()
        && req.action.len() <= 64
        && req
            .action
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !action_ok {
        return Err(ApiError::bad_request(
            "invalid_body",
            "action must be 1-64 characters of [a-z0-9_]",
        ));
    }
    if req.resource.is_empty() || req.resource.len() > 256 {
        return Err(ApiError::bad_request(
            "invalid_body",
            "resource must be 1-256 characters",
        ));
    }
    if audited::OWN_ACTIONS.contains(&req.action.as_str()) || req.action == "audit_recovered" {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!(
                "action {:?} is recorded by the controller itself",
                req.action
            ),
        ));
    }
    let result = req.result.unwrap_or_else(|| "ok".into());
    if !matches!(result.as_str(), "ok" | "error" | INTENT) {
        return Err(ApiError::bad_request(
            "invalid_body",
            "result must be \"ok\", \"error\" or \"intent\"",
        ));
    }
    let mut caller = caller;
    if let Some(actor) = req.actor {
        if !valid_name(&actor) {
            return Err(ApiError::bad_request(
                "invalid_body",
                "actor must be 1-64 characters of [A-Za-z0-9_.-]",
            ));
        }
        caller.actor = actor;
    }
    if let Some(cid) = req.correlation_id {
        if cid.is_empty() || cid.len() > 128 {
            return Err(ApiError::bad_request(
                "invalid_body",
                "correlation_id must be 1-128 characters",
            ));
        }
        caller.correlation_id = cid;
    }
    let metadata = req.metadata.unwrap_or_default();
    if serde_json::to_vec(&metadata).map_or(0, |v| v.len()) > MAX_METADATA_BYTES {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("metadata must serialize to at most {MAX_METADATA_BYTES} bytes"),
        ));
    }
    let event = caller.event(&req.action, &req.resource, &result, metadata);
    let stored = append(&state, event).await.map_err(audit_refused)?;
    // The edge audits a registry change before writing it: the tool containers that change
    // because of it are recorded under the same correlation id.
    if let (Some(tools), true) = (&state.tools, req.action.starts_with("mcp_")) {
        tools.note_correlation(&stored.correlation_id);
    }
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}

async fn audit_verify(State(state): State<Shared>) -> Result<Json<Value>, ApiError> {
    let audit = state.audit.clone();
    let report = tokio::task::spawn_blocking(move || audit.verify())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "audit_read_failed",
                e.to_string(),
            )
        })?;
    Ok(Json(serde_json::to_value(report).map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    })?))
}
