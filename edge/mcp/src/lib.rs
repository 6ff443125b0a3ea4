//! The MCP hub behind the edge's `/mcp` (issue 4).
//!
//! CONTRACT with the edge (`edge/src/main.rs` and `edge/src/gateway.rs` wire it):
//! - `McpConfig` is the `[mcp]` table of the edge's TOML config (serde, unknown keys rejected).
//! - `McpHub::start(config, &registry, audit)` is called once at start-up inside the edge's tokio
//!   runtime; `hub.router()` is an axum Router that the edge calls for every request whose path is
//!   `/mcp`, `/mcp/...` or `/api/mcp/...`. The request carries a `Caller` extension that the edge
//!   resolved from the client's key (the edge strips spoofable headers first).
//! - `hub.shutdown()` is awaited when the edge stops: child process groups must be gone after it.
use std::sync::Arc;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// Path of `registry.json`; default `data/mcp/registry.json`.
    pub registry: Option<String>,
}

/// Who is calling, as resolved by the edge. `client` is `anonymous` when no key matched.
#[derive(Debug, Clone)]
pub struct Caller {
    pub client: String,
    pub admin: bool,
    pub request_id: String,
}

/// An admin action to record in the controller's audit log (the edge posts it to `POST /audit`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRecord {
    pub action: String,
    pub resource: String,
    pub actor: String,
    pub correlation_id: String,
    pub metadata: serde_json::Value,
}

#[async_trait::async_trait]
pub trait AuditSink: Send + Sync {
    /// Err means the record was not written; the caller refuses the action (fail closed).
    async fn record(&self, record: AuditRecord) -> Result<(), String>;
}

#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("mcp config: {0}")]
    Config(String),
}

pub struct McpHub {
    _config: McpConfig,
}

impl McpHub {
    pub async fn start(
        config: McpConfig,
        _registry: &prometheus::Registry,
        _audit: Option<Arc<dyn AuditSink>>,
    ) -> Result<Arc<Self>, McpError> {
        Ok(Arc::new(Self { _config: config }))
    }

    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
    }

    pub async fn shutdown(&self) {}
}
