//! The MCP hub behind the edge's `/mcp` (issue 4).
//!
//! CONTRACT with the edge (`edge/src/main.rs` and `edge/src/gateway.rs` wire it):
//! - `McpConfig` is the `[mcp]` table of the edge's TOML config (serde, unknown keys rejected).
//! - `McpHub::start(config, &registry, audit)` is called once at start-up inside the edge's tokio
//!   runtime; `hub.router()` is an axum Router that the edge calls for every request whose path is
//!   `/mcp`, `/mcp/...` or `/api/mcp/...`. The request carries a `Caller` extension that the edge
//!   resolved from the client's key (the edge strips spoofable headers first).
//! - `hub.shutdown()` is awaited when the edge stops: child process groups must be gone after it.
//!
//! Inside: `registry` loads registry.json/servers.txt/secrets, `upstream` supervises one rmcp
//! client per server, `downstream` is the rmcp server handler clients talk to, `hub` holds the
//! shared state, `admin` is the admin API, `rpc_error` renders every refusal as JSON-RPC.
//! See docs/mcp.md.
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

mod admin;
pub mod audited;
mod config;
mod downstream;
mod envelope;
mod hub;
mod metrics;
pub mod naming;
mod rpc_error;
mod sse_client;
mod upstream;

pub use aibox_mcp_registry as registry;
pub use config::{ConfigError, McpConfig};
pub use upstream::HealthState;

use downstream::{HubService, RateAdmitted};
use hub::HubCore;
use rpc_error::CallError;

/// Largest JSON-RPC body accepted on `/mcp`.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// The MCP servers a client may use under its own policy (the edge's per-client
/// `mcp_servers`); each server's `allow_clients` / `deny_clients` apply as well.
pub trait ServerGrant: Send + Sync {
    fn allows_server(&self, server: &str) -> bool;
}

/// Who is calling, as resolved by the edge. `client` is `anonymous` when no key matched.
#[derive(Clone)]
pub struct Caller {
    pub client: String,
    pub admin: bool,
    pub request_id: String,
    /// `None`: the client's policy does not restrict servers.
    pub servers: Option<Arc<dyn ServerGrant>>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("client", &self.client)
            .field("admin", &self.admin)
            .field("request_id", &self.request_id)
            .finish()
    }
}

impl Caller {
    pub fn anonymous() -> Self {
        Self {
            client: "anonymous".into(),
            admin: false,
            request_id: String::new(),
            servers: None,
        }
    }

    /// The client's policy and the server's own lists both allow `server`.
    pub fn may_use(&self, server: &str, policy: &registry::ServerPolicy) -> bool {
        self.servers
            .as_ref()
            .is_none_or(|g| g.allows_server(server))
            && policy.allows(&self.client)
    }
}

/// An admin action to record in the controller's audit log (the edge posts it to `POST /audit`).
pub use aibox_wire::audit::AuditRecord;

#[async_trait::async_trait]
pub trait AuditSink: Send + Sync {
    /// Writes one event and returns its `seq`. Err means the record was not written; the caller
    /// refuses the action (fail closed). Use [`audited::begin`] for an action's intent and outcome.
    /// The error is the sink's own description (the edge's sink talks HTTP to the controller);
    /// [`audited::AuditError`] carries it on.
    async fn record(&self, record: AuditRecord) -> Result<u64, String>;
}

/// Why the hub did not start.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("mcp config: {0}")]
    Config(#[from] ConfigError),
    #[error("mcp config: metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

pub struct McpHub {
    core: Arc<HubCore>,
}

impl McpHub {
    pub async fn start(
        config: McpConfig,
        registry: &prometheus::Registry,
        audit: Option<Arc<dyn AuditSink>>,
    ) -> Result<Arc<Self>, McpError> {
        config.validate()?;
        let metrics = metrics::HubMetrics::register(registry)?;
        let core = HubCore::new(config, metrics, audit);
        // A bad registry at start-up is reported (health, admin API, log), not fatal:
        // the edge still serves models while the operator fixes the file.
        let _ = core.reload_from_disk().await;
        core.remember_stamps();
        core.tasks.spawn(core.clone().run_file_watch());
        core.tasks.spawn(core.clone().run_change_fanout());
        Ok(Arc::new(Self { core }))
    }

    pub fn router(self: &Arc<Self>) -> axum::Router {
        let core = self.core.clone();
        // 2026-07-28 requests are answered as `application/json` when the result is the first
        // message (rmcp falls back to an event stream when a notification, such as progress,
        // comes first): the SDKs' SSE path costs about a millisecond more per call.
        let config = StreamableHttpServerConfig::default()
            .with_json_response(true)
            .with_legacy_session_mode(true)
            .with_allowed_hosts(self.core.config.allowed_hosts())
            .with_allowed_origins(self.core.config.allowed_origins())
            .with_cancellation_token(self.core.cancel.child_token());
        let config = if self.core.config.allowed_hosts().iter().any(|h| h == "*") {
            config.disable_allowed_hosts()
        } else {
            config
        };
        let config = if self.core.config.allowed_origins().is_empty() {
            config.enforce_origin_validation()
        } else {
            config
        };
        let factory_core = core.clone();
        let service: StreamableHttpService<HubService, LocalSessionManager> =
            StreamableHttpService::new(
                move || {
                    Ok(HubService {
                        core: factory_core.clone(),
                    })
                },
                Arc::new(LocalSessionManager::default()),
                config,
            );
        let mcp = axum::Router::new()
            .route_service("/mcp", service.clone())
            .route_service("/mcp/{*rest}", service)
            .route_layer(axum::middleware::from_fn_with_state(core.clone(), precheck));
        let admin = axum::Router::new()
            .route(
                "/api/mcp/registry",
                get(admin::get_registry).put(admin::put_registry),
            )
            .route("/api/mcp/health", get(admin::get_health))
            .route(
                "/api/mcp/secrets",
                get(admin::get_secrets).put(admin::put_secrets),
            )
            .with_state(core);
        mcp.merge(admin)
    }

    /// Stops supervisors, kills every stdio child's process group, and waits for the hub's
    /// tasks and for audit outcomes still being written.
    pub async fn shutdown(&self) {
        self.core.shutdown().await;
        audited::outcomes_written().await;
    }

    /// Health of every configured server (for the dashboard).
    pub fn health(&self) -> Vec<(String, HealthState)> {
        self.core
            .upstreams()
            .iter()
            .map(|u| (u.name.clone(), u.health().state))
            .collect()
    }
}

/// 2026-07-28 requests (self-contained, no session): their clients read a JSON-RPC error from
/// a non-2xx body. 2025-11-25 clients (e.g. the v1 Python SDK) treat any 4xx on a session as a
/// broken transport, so they get the error in a 200 answer instead.
fn is_sessionless_revision(headers: &http::HeaderMap, msg: &serde_json::Value) -> bool {
    const MODERN: &str = "2026-07-28";
    if headers.contains_key("mcp-session-id") {
        return false;
    }
    let header = headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok());
    let meta = msg
        .pointer("/params/_meta/io.modelcontextprotocol~1protocolVersion")
        .and_then(|v| v.as_str());
    header.or(meta).is_some_and(|v| v >= MODERN)
}

/// Answers a body that is not one JSON-RPC message (400, -32700/-32600) and takes the
/// rate-limit token of a single 2026-07-28 `tools/call` POST before rmcp sees it,
/// so an over-limit call is answered with HTTP 429 + `Retry-After` and a JSON-RPC error body
/// (the handler alone could only answer 200).
async fn precheck(State(core): State<Arc<HubCore>>, req: Request, next: Next) -> Response {
    if req.method() != http::Method::POST {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return rpc_error::http_answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::Value::Null,
                CallError::BodyTooLarge { limit: MAX_BODY },
                &[],
            )
        }
    };
    // Every body is parsed here anyway; one that is not a JSON-RPC message is answered here.
    let msg = match envelope::check(&bytes) {
        Ok(msg) => msg,
        Err(rejection) => return rejection.into_response(),
    };
    if msg.get("method").and_then(|m| m.as_str()) == Some("tools/call")
        && is_sessionless_revision(&parts.headers, &msg)
    {
        let name = msg
            .pointer("/params/name")
            .and_then(|n| n.as_str())
            .unwrap_or_default();
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(Caller::anonymous);
        if let Some((up, _)) = core.route(name) {
            let spec = up.spec();
            if caller.may_use(&up.name, &spec.policy) {
                match core
                    .check_rate(&up.name, spec.policy.rate_limit_rpm, &caller.client)
                    .await
                {
                    Ok(()) => {
                        parts.extensions.insert(RateAdmitted);
                    }
                    Err(wait) => {
                        core.metrics
                            .rate_limited
                            .with_label_values(&[&up.name, name, &caller.client])
                            .inc();
                        tracing::warn!(client = %caller.client, tool = %name, "mcp call rate limited");
                        let retry_after = (wait.as_secs() + 1).to_string();
                        return rpc_error::http_answer(
                            StatusCode::TOO_MANY_REQUESTS,
                            msg.get("id").cloned().unwrap_or(serde_json::Value::Null),
                            CallError::RateLimited {
                                server: up.name.clone(),
                                wait,
                            },
                            &[(header::RETRY_AFTER, retry_after)],
                        );
                    }
                }
            }
        }
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}
