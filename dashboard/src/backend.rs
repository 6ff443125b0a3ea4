//! The two services the dashboard reads and acts through: the controller (compose services, logs,
//! audit) and the edge (models, MCP tools, traffic). The dashboard never touches Docker itself.
//!
//! Responses are parsed leniently (unknown fields ignored, missing ones defaulted): these are
//! another process's APIs, and a newer field there must not blank a page here.
use std::time::Duration;

use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Why a call to the controller or the edge did not give an answer we can use.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("not configured")]
    Unconfigured,
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The service answered with an error; `message` is its own explanation.
    #[error("{message} (HTTP {status})")]
    Status {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer: {0}")]
    Invalid(String),
}

impl BackendError {
    /// Down or not set up, as opposed to "answered with an error".
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            BackendError::Unconfigured | BackendError::Unreachable(_)
        )
    }
}

/// Who is acting, sent with every controller call so the audit event names them.
#[derive(Debug, Clone)]
pub struct Actor {
    pub user: String,
    pub request_id: String,
}

impl Actor {
    pub fn new(user: &str) -> Self {
        Self {
            user: user.to_string(),
            request_id: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// With the request's `X-Request-ID` (set by the edge) when it is 1-128 visible ASCII characters.
    pub fn for_request(user: &str, headers: &axum::http::HeaderMap) -> Self {
        let mut actor = Self::new(user);
        if let Some(id) = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        {
            actor.request_id = id.to_string();
        }
        actor
    }
}

#[allow(
    clippy::expect_used,
    reason = "static settings: building fails only without a TLS backend, and one is compiled in"
)]
fn http_client() -> reqwest::Client {
    // No proxy from the environment: the controller and the edge are internal, and a proxy
    // would see their bearer tokens.
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(3))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client builds")
}

const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Pulls and image pulls take as long as the download does.
const LONG_TIMEOUT: Duration = Duration::from_secs(3600);

fn transport_error(e: reqwest::Error) -> BackendError {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    BackendError::Unreachable(msg)
}

/// Turn an error response into its message, whichever error shape the service uses
/// (`{"error": {"code","message"}}`, `{"error": "..."}`, problem+json, OpenAI error object).
fn error_from_body(status: u16, body: &str) -> BackendError {
    // The controller's own error type first; the edge's shapes below.
    if let Ok(aibox_wire::controller::ErrorBody { error }) = serde_json::from_str(body) {
        if !error.code.is_empty() {
            return BackendError::Status {
                status,
                code: error.code,
                message: if error.message.is_empty() {
                    format!("HTTP {status}")
                } else {
                    error.message
                },
            };
        }
    }
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let (code, message) = match &v {
        Value::Object(o) => match o.get("error") {
            Some(Value::Object(e)) => (
                e.get("code")
                    .or(e.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("error")
                    .to_string(),
                e.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            ),
            Some(Value::String(s)) => ("error".to_string(), s.clone()),
            _ => (
                o.get("title")
                    .and_then(Value::as_str)
                    .unwrap_or("error")
                    .to_string(),
                o.get("detail")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            ),
        },
        _ => ("error".to_string(), body.chars().take(300).collect()),
    };
    let message = if message.is_empty() {
        format!("HTTP {status}")
    } else {
        message
    };
    BackendError::Status {
        status,
        code,
        message,
    }
}

async fn json_or_error(resp: reqwest::Response) -> Result<Value, BackendError> {
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(transport_error)?;
    if !(200..300).contains(&status) {
        return Err(error_from_body(status, &text));
    }
    serde_json::from_str(&text).map_err(|e| BackendError::Invalid(format!("not JSON: {e}")))
}

fn parse<T: for<'de> Deserialize<'de>>(v: Value) -> Result<T, BackendError> {
    serde_json::from_value(v).map_err(|e| BackendError::Invalid(e.to_string()))
}

const MAX_LINE: usize = 1 << 20;

/// A stream of lines (NDJSON) from a long response, as it arrives.
pub type LineStream = std::pin::Pin<Box<dyn Stream<Item = Result<String, BackendError>> + Send>>;

fn lines_of(resp: reqwest::Response) -> LineStream {
    use futures::StreamExt;
    let bytes = resp.bytes_stream();
    let stream = futures::stream::unfold(
        (bytes, Vec::<u8>::new(), false),
        |(mut bytes, mut buf, mut done)| async move {
            loop {
                // A line longer than MAX_LINE is cut there rather than buffered without bound.
                let cut = buf
                    .iter()
                    .position(|b| *b == b'\n')
                    .or((buf.len() >= MAX_LINE).then_some(MAX_LINE - 1));
                if let Some(pos) = cut {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let s = String::from_utf8_lossy(&line).trim_end().to_string();
                    return Some((Ok(s), (bytes, buf, done)));
                }
                if done {
                    if buf.is_empty() {
                        return None;
                    }
                    let s = String::from_utf8_lossy(&std::mem::take(&mut buf))
                        .trim_end()
                        .to_string();
                    return Some((Ok(s), (bytes, buf, true)));
                }
                match bytes.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => return Some((Err(transport_error(e)), (bytes, buf, true))),
                    None => done = true,
                }
            }
        },
    );
    Box::pin(stream.filter(|l| futures::future::ready(!matches!(l, Ok(s) if s.is_empty()))))
}

// ---------------------------------------------------------------------------------------------
// Controller

/// `GET /services`, the controller's own types.
pub use aibox_wire::controller::{PortBinding, PullAnswer, ServiceList, ServiceStatus};

/// The controller's MCP tool containers (`GET /mcp/containers`) and the edge's secret names
/// (`/api/mcp/secrets`): the producers' own types.
pub use aibox_wire::mcp::{McpSecretNames, McpSecretsUpdate, ToolContainer, ToolContainerList};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LogPage {
    pub service: String,
    pub container: String,
    pub tty: bool,
    pub lines: Vec<LogLine>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct LogLine {
    pub stream: String,
    pub line: String,
    pub ts: Option<String>,
}

/// An audit event as the controller stores and answers it (the controller's own type).
pub use aibox_wire::audit::{AuditEvent, AuditHeadReport};

/// Filters of the audit page, passed through to the controller's `GET /audit`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct AuditQuery {
    pub action: String,
    pub resource: String,
    pub actor: String,
    /// RFC 3339, or the `YYYY-MM-DDTHH:MM` of a `datetime-local` input (taken as UTC).
    pub since: String,
    pub until: String,
    pub limit: Option<u32>,
}

impl AuditQuery {
    pub fn controller_params(&self, format: &str) -> Vec<(&'static str, String)> {
        let mut p = vec![
            (
                "limit",
                self.limit.unwrap_or(100).clamp(1, 1000).to_string(),
            ),
            ("format", format.to_string()),
        ];
        for (k, v) in [
            ("action", &self.action),
            ("resource", &self.resource),
            ("actor", &self.actor),
        ] {
            if !v.trim().is_empty() {
                p.push((k, v.trim().to_string()));
            }
        }
        if let Some(since) = normalize_time(&self.since) {
            p.push(("since", since));
        }
        p
    }
}

/// `2026-11-26T05:00` (datetime-local) -> `2026-11-26T05:00:00Z`; RFC 3339 passes through.
pub fn normalize_time(s: &str) -> Option<String> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok() {
        return Some(s.to_string());
    }
    let with_secs = if s.len() == 16 {
        format!("{s}:00Z")
    } else {
        format!("{s}Z")
    };
    time::OffsetDateTime::parse(&with_secs, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|_| with_secs)
}

#[derive(Clone)]
pub struct ControllerClient {
    base: Option<String>,
    token: Option<String>,
    http: reqwest::Client,
}

impl ControllerClient {
    pub fn new(base: Option<String>, token: Option<String>) -> Self {
        Self {
            base,
            token,
            http: http_client(),
        }
    }

    pub fn configured(&self) -> bool {
        self.base.is_some() && self.token.is_some()
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        actor: &Actor,
    ) -> Result<reqwest::RequestBuilder, BackendError> {
        let (Some(base), Some(token)) = (&self.base, &self.token) else {
            return Err(BackendError::Unconfigured);
        };
        Ok(self
            .http
            .request(method, format!("{base}{path}"))
            .bearer_auth(token)
            .header("X-Actor", "dashboard")
            .header("X-Actor-User", &actor.user)
            .header("X-Request-ID", &actor.request_id))
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<Value, BackendError> {
        json_or_error(rb.send().await.map_err(transport_error)?).await
    }

    /// The tool containers; with `tail > 0` each carries its last log lines (an audited read).
    pub async fn tool_containers(
        &self,
        actor: &Actor,
        tail: u32,
    ) -> Result<ToolContainerList, BackendError> {
        let rb = self
            .request(
                reqwest::Method::GET,
                &format!("/mcp/containers?tail={tail}"),
                actor,
            )?
            .timeout(CALL_TIMEOUT);
        parse(self.send(rb).await?)
    }

    pub async fn services(&self, actor: &Actor) -> Result<ServiceList, BackendError> {
        let rb = self
            .request(reqwest::Method::GET, "/services", actor)?
            .timeout(CALL_TIMEOUT);
        parse(self.send(rb).await?)
    }

    /// `start`, `stop`, `restart` or `up`; with `dry_run` the controller only says what it would
    /// do. `confirm_service` is the name the user typed (needed to stop a lock-out service).
    pub async fn act(
        &self,
        actor: &Actor,
        service: &str,
        action: &str,
        dry_run: bool,
        confirm_service: Option<&str>,
    ) -> Result<Value, BackendError> {
        let body = match (dry_run, confirm_service) {
            (true, _) => json!({"dry_run": true}),
            (false, None) => json!({"confirm": true}),
            (false, Some(typed)) => json!({"confirm": true, "confirm_service": typed}),
        };
        let path = format!(
            "/services/{}/{}",
            path_segment(service),
            path_segment(action)
        );
        let rb = self
            .request(reqwest::Method::POST, &path, actor)?
            .timeout(Duration::from_secs(120))
            .json(&body);
        self.send(rb).await
    }

    pub async fn logs(
        &self,
        actor: &Actor,
        service: &str,
        tail: u32,
    ) -> Result<LogPage, BackendError> {
        let path = format!(
            "/services/{}/logs?tail={tail}&follow=false&timestamps=true",
            path_segment(service)
        );
        let rb = self
            .request(reqwest::Method::GET, &path, actor)?
            .timeout(CALL_TIMEOUT);
        parse(self.send(rb).await?)
    }

    /// The controller's NDJSON follow stream, one log-line object per line.
    pub async fn follow_logs(
        &self,
        actor: &Actor,
        service: &str,
        tail: u32,
    ) -> Result<LineStream, BackendError> {
        let path = format!(
            "/services/{}/logs?tail={tail}&follow=true&timestamps=true",
            path_segment(service)
        );
        let rb = self.request(reqwest::Method::GET, &path, actor)?;
        let resp = rb.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let text = resp.text().await.unwrap_or_default();
            return Err(error_from_body(status, &text));
        }
        Ok(lines_of(resp))
    }

    pub async fn pull_images(
        &self,
        actor: &Actor,
        services: &[String],
    ) -> Result<PullAnswer, BackendError> {
        let rb = self
            .request(reqwest::Method::POST, "/images/pull", actor)?
            .timeout(LONG_TIMEOUT)
            .json(&json!({"services": services, "confirm": true}));
        let resp = rb.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(transport_error)?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        // A failed pull still carries per-service results worth showing.
        if (200..300).contains(&status) || v.get("results").is_some() {
            parse(v)
        } else {
            Err(error_from_body(status, &text))
        }
    }

    pub async fn audit(
        &self,
        actor: &Actor,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEvent>, BackendError> {
        let rb = self
            .request(
                reqwest::Method::GET,
                &query_path("/audit", &query.controller_params("json")),
                actor,
            )?
            .timeout(CALL_TIMEOUT);
        let v = self.send(rb).await?;
        parse(v.get("events").cloned().unwrap_or(Value::Array(vec![])))
    }

    /// The head anchor and the last self-check of the log against it (`GET /audit/head`).
    pub async fn audit_head(&self, actor: &Actor) -> Result<AuditHeadReport, BackendError> {
        let rb = self
            .request(reqwest::Method::GET, "/audit/head", actor)?
            .timeout(CALL_TIMEOUT);
        parse(self.send(rb).await?)
    }

    /// The controller's own JSON export (`format=json`), passed through unchanged.
    pub async fn audit_export(
        &self,
        actor: &Actor,
        query: &AuditQuery,
    ) -> Result<Value, BackendError> {
        let rb = self
            .request(
                reqwest::Method::GET,
                &query_path("/audit", &query.controller_params("json")),
                actor,
            )?
            .timeout(CALL_TIMEOUT);
        self.send(rb).await
    }

    /// Record an admin action done elsewhere (through the edge) in the controller's audit log.
    pub async fn record(
        &self,
        actor: &Actor,
        action: &str,
        resource: &str,
        ok: bool,
        metadata: Value,
    ) -> Result<(), BackendError> {
        let rb = self
            .request(reqwest::Method::POST, "/audit", actor)?
            .timeout(CALL_TIMEOUT)
            .json(&json!({
                "action": action,
                "resource": resource,
                "actor": "dashboard",
                "result": if ok { "ok" } else { "error" },
                "correlation_id": actor.request_id,
                "metadata": metadata,
            }));
        self.send(rb).await.map(|_| ())
    }
}

/// `path?k=v&...` with the values percent-encoded.
pub fn query_path(path: &str, params: &[(&str, String)]) -> String {
    let q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", crate::pages::encode_query_value(v)))
        .collect();
    if q.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", q.join("&"))
    }
}

/// Service names and actions go into a URL path; keep them to what compose allows.
pub fn path_segment(s: &str) -> String {
    let kept: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    // Never `.` or `..`, which a URL parser would resolve.
    kept.trim_start_matches('.').to_string()
}

/// Compose service names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn valid_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

// ---------------------------------------------------------------------------------------------
// Edge

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ModelList {
    pub data: Vec<ModelEntry>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ModelEntry {
    pub id: String,
    pub owned_by: String,
}

/// The edge's `/ready` body, the type the edge itself answers with.
pub use aibox_wire::edge::Readiness;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LoadedModels {
    pub models: Vec<LoadedModel>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LoadedModel {
    pub name: String,
    pub model: String,
    pub size: u64,
    pub size_vram: u64,
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TrafficStats {
    pub window_minutes: u32,
    pub series: Vec<TrafficSeries>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TrafficSeries {
    pub client: String,
    pub model: String,
    pub minutes: Vec<TrafficMinute>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TrafficMinute {
    pub t: String,
    pub requests: u64,
    pub errors: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct McpHealth {
    pub registry_error: Option<String>,
    pub servers: Vec<McpServerHealth>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct McpServerHealth {
    pub name: String,
    pub transport: String,
    pub target: String,
    pub state: String,
    pub last_error: Option<String>,
    pub latency_ms: Option<u64>,
    pub consecutive_failures: u64,
    pub tools: Vec<String>,
    pub missing_secrets: Vec<String>,
    pub policy: McpPolicy,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct McpPolicy {
    pub allow_clients: Vec<String>,
    pub deny_clients: Vec<String>,
    pub rate_limit_rpm: Option<u64>,
    pub timeout_sec: Option<f64>,
}

/// `GET /api/mcp/registry`: the registry file as loaded (edited and written back with `PUT`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct McpRegistry {
    pub path: Option<String>,
    /// `{"servers": {...}}` as in `registry.json`, or null when there is none yet.
    pub registry: Value,
    pub servers: Vec<McpRegistryServer>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct McpRegistryServer {
    pub name: String,
    pub transport: String,
    pub status: String,
}

#[derive(Clone)]
pub struct EdgeClient {
    base: Option<String>,
    admin_token: Option<String>,
    http: reqwest::Client,
}

impl EdgeClient {
    pub fn new(base: Option<String>, admin_token: Option<String>) -> Self {
        Self {
            base,
            admin_token,
            http: http_client(),
        }
    }

    pub fn has_admin_token(&self) -> bool {
        self.admin_token.is_some()
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        actor: &Actor,
    ) -> Result<reqwest::RequestBuilder, BackendError> {
        let Some(base) = &self.base else {
            return Err(BackendError::Unconfigured);
        };
        let mut rb = self
            .http
            .request(method, format!("{base}{path}"))
            .header("X-Request-ID", &actor.request_id);
        if let Some(token) = &self.admin_token {
            rb = rb.bearer_auth(token);
        }
        Ok(rb)
    }

    async fn get(&self, path: &str, actor: &Actor) -> Result<Value, BackendError> {
        let rb = self
            .request(reqwest::Method::GET, path, actor)?
            .timeout(CALL_TIMEOUT);
        json_or_error(rb.send().await.map_err(transport_error)?).await
    }

    pub async fn models(&self, actor: &Actor) -> Result<ModelList, BackendError> {
        parse(self.get("/v1/models", actor).await?)
    }

    /// `/ready` answers 503 with the same body when not ready: that is an answer, not an error.
    pub async fn readiness(&self, actor: &Actor) -> Result<Readiness, BackendError> {
        let rb = self
            .request(reqwest::Method::GET, "/ready", actor)?
            .timeout(CALL_TIMEOUT);
        let resp = rb.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(transport_error)?;
        match serde_json::from_str::<Readiness>(&text) {
            Ok(r) if status == 200 || status == 503 => Ok(r),
            _ => Err(error_from_body(status, &text)),
        }
    }

    pub async fn loaded(&self, actor: &Actor) -> Result<LoadedModels, BackendError> {
        parse(self.get("/api/ps", actor).await?)
    }

    /// The edge's Prometheus text (`/metrics`), for the egress decision counters.
    pub async fn metrics_text(&self, actor: &Actor) -> Result<String, BackendError> {
        let rb = self
            .request(reqwest::Method::GET, "/metrics", actor)?
            .timeout(CALL_TIMEOUT);
        let resp = rb.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(transport_error)?;
        if status != 200 {
            return Err(error_from_body(status, &text));
        }
        Ok(text)
    }

    pub async fn traffic(&self, actor: &Actor) -> Result<TrafficStats, BackendError> {
        parse(self.get("/api/edge/stats", actor).await?)
    }

    pub async fn mcp_health(&self, actor: &Actor) -> Result<McpHealth, BackendError> {
        parse(self.get("/api/mcp/health", actor).await?)
    }

    pub async fn mcp_registry(&self, actor: &Actor) -> Result<McpRegistry, BackendError> {
        parse(self.get("/api/mcp/registry", actor).await?)
    }

    /// Replace the registry; the edge validates it as a whole and answers with what changed.
    pub async fn put_mcp_registry(
        &self,
        actor: &Actor,
        registry: &Value,
    ) -> Result<Value, BackendError> {
        let rb = self
            .request(reqwest::Method::PUT, "/api/mcp/registry", actor)?
            .timeout(CALL_TIMEOUT)
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec_pretty(registry).unwrap_or_default());
        json_or_error(rb.send().await.map_err(transport_error)?).await
    }

    /// The variables the MCP secrets file sets (names only; the edge never gives out a value).
    pub async fn mcp_secrets(&self, actor: &Actor) -> Result<McpSecretNames, BackendError> {
        parse(self.get("/api/mcp/secrets", actor).await?)
    }

    /// Adds or replaces variables in the MCP secrets file (`data/mcp/.env`), through the edge
    /// that owns it.
    pub async fn put_mcp_secrets(
        &self,
        actor: &Actor,
        update: &McpSecretsUpdate,
    ) -> Result<McpSecretNames, BackendError> {
        let rb = self
            .request(reqwest::Method::PUT, "/api/mcp/secrets", actor)?
            .timeout(CALL_TIMEOUT)
            .json(update);
        parse(json_or_error(rb.send().await.map_err(transport_error)?).await?)
    }

    /// Every client with its policy and use (the edge's `GET /api/edge/keys`).
    pub async fn keys(&self, actor: &Actor) -> Result<Value, BackendError> {
        self.get("/api/edge/keys", actor).await
    }

    /// A new key (`201 {"name", "key"}`): the edge writes the keys file and audits the change.
    pub async fn create_key(&self, actor: &Actor, new: &Value) -> Result<Value, BackendError> {
        let rb = self
            .request(reqwest::Method::POST, "/api/edge/keys", actor)?
            .header("X-Actor-User", &actor.user)
            .timeout(CALL_TIMEOUT)
            .json(new);
        json_or_error(rb.send().await.map_err(transport_error)?).await
    }

    pub async fn revoke_key(&self, actor: &Actor, name: &str) -> Result<Value, BackendError> {
        let path = format!("/api/edge/keys/{}", path_segment(name));
        let rb = self
            .request(reqwest::Method::DELETE, &path, actor)?
            .header("X-Actor-User", &actor.user)
            .timeout(CALL_TIMEOUT);
        json_or_error(rb.send().await.map_err(transport_error)?).await
    }

    /// Ollama's pull progress stream (NDJSON).
    pub async fn pull_model(&self, actor: &Actor, model: &str) -> Result<LineStream, BackendError> {
        let rb = self
            .request(reqwest::Method::POST, "/api/pull", actor)?
            .timeout(LONG_TIMEOUT)
            .json(&json!({"model": model, "stream": true}));
        let resp = rb.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let text = resp.text().await.unwrap_or_default();
            return Err(error_from_body(status, &text));
        }
        Ok(lines_of(resp))
    }

    pub async fn delete_model(&self, actor: &Actor, model: &str) -> Result<(), BackendError> {
        let rb = self
            .request(reqwest::Method::DELETE, "/api/delete", actor)?
            .timeout(CALL_TIMEOUT)
            .json(&json!({"model": model}));
        let resp = rb.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            Ok(())
        } else {
            let text = resp.text().await.unwrap_or_default();
            Err(error_from_body(status, &text))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shapes() {
        let e = error_from_body(
            404,
            r#"{"error":{"code":"unknown_service","message":"no service x"}}"#,
        );
        assert!(
            matches!(e, BackendError::Status { status: 404, ref code, ref message } if code == "unknown_service" && message == "no service x")
        );
        let e = error_from_body(400, r#"{"error":"model not found"}"#);
        assert_eq!(e.to_string(), "model not found (HTTP 400)");
        let e = error_from_body(400, r#"{"title":"Invalid registry","detail":"bad name"}"#);
        assert_eq!(e.to_string(), "bad name (HTTP 400)");
        let e = error_from_body(502, "");
        assert_eq!(e.to_string(), "HTTP 502 (HTTP 502)");
    }

    #[test]
    fn audit_params() {
        let q = AuditQuery {
            action: "restart".into(),
            since: "2026-11-26T05:00".into(),
            limit: Some(5000),
            ..Default::default()
        };
        let p = q.controller_params("json");
        assert!(p.contains(&("limit", "1000".into())));
        assert!(p.contains(&("action", "restart".into())));
        assert!(p.contains(&("since", "2026-11-26T05:00:00Z".into())));
        assert_eq!(normalize_time("yesterday"), None);
    }

    #[test]
    fn path_segments_cannot_escape() {
        assert_eq!(path_segment("../audit?x=1"), "auditx1");
        assert!(!valid_service_name(".."));
        assert!(valid_service_name("web"));
        assert_eq!(path_segment("open-webui_1"), "open-webui_1");
    }
}
