//! The `[mcp]` table of the edge's TOML config.
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Hosts accepted in `Host` when the config names none: loopback plus the compose service name
/// and its aliases, because rmcp's loopback-only default breaks every client on the compose
/// network.
const DEFAULT_ALLOWED_HOSTS: &[&str] = &[
    "localhost",
    "127.0.0.1",
    "::1",
    "edge",
    "mcp-gateway",
    "model-gateway",
];
/// Browser origins accepted when the config names none. Requests without `Origin` (every
/// non-browser client) always pass; a page on another site never does.
const DEFAULT_ALLOWED_ORIGINS: &[&str] = &["http://localhost:*", "http://127.0.0.1:*"];

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// Path of `registry.json`; default `data/mcp/registry.json`.
    pub registry: Option<String>,
    /// Path of `servers.txt` (enabled servers; the whole registry when registry.json is absent);
    /// default `data/mcp/servers.txt`.
    pub servers_txt: Option<String>,
    /// Secrets file (`KEY=value` lines) checked against `env_schema` and passed to stdio servers;
    /// default `data/mcp/.env`.
    pub env_file: Option<String>,
    /// How often every server is probed, in milliseconds (default 10000).
    pub probe_interval_ms: Option<u64>,
    /// How long one probe may take, in milliseconds (default 5000).
    pub probe_timeout_ms: Option<u64>,
    /// Consecutive failed probes that make a server `unhealthy` (default 3).
    pub unhealthy_after: Option<u32>,
    /// A probe slower than this marks the server `degraded`, in milliseconds (default 2000).
    pub degraded_latency_ms: Option<u64>,
    /// Upper bound of the reconnect back-off after failures, in milliseconds (default 30000).
    pub max_backoff_ms: Option<u64>,
    /// How often registry.json, servers.txt and the secrets file are checked for edits (ms, default 1000).
    pub reload_interval_ms: Option<u64>,
    /// Per-call timeout for servers without `timeout_sec`, in seconds (default 30).
    pub default_timeout_sec: Option<f64>,
    /// Calls in flight to one upstream server at once (default 16); more wait their turn.
    pub max_concurrency_per_server: Option<usize>,
    /// In the box: `image` and `command` servers run in tool containers that the controller
    /// starts on the `tools` network, reached at `http://mcp-<name>:<port>/mcp` (env
    /// `AIBOX_MCP_CONTAINERS=1` sets it). Off (the default): `command` servers are child
    /// processes of the edge and `image` servers are `not_served`.
    pub containers: Option<bool>,
    /// Accepted `Host` values (hostname or host:port); `["*"]` accepts any.
    pub allowed_hosts: Option<Vec<String>>,
    /// Accepted `Origin` values (scheme://host[:port|:*]); requests without `Origin` always pass.
    pub allowed_origins: Option<Vec<String>>,
    /// Per-server `rate_limit_rpm` windows shared by every edge replica (`AIBOX_REDIS_URL`, set
    /// by the edge); the in-process limiter is then the fallback while Redis cannot answer.
    #[serde(skip)]
    pub shared_limits: Option<std::sync::Arc<aibox_limits::SharedLimits>>,
}

impl McpConfig {
    pub fn registry_path(&self) -> PathBuf {
        PathBuf::from(self.registry.as_deref().unwrap_or("data/mcp/registry.json"))
    }
    pub fn servers_txt_path(&self) -> PathBuf {
        PathBuf::from(
            self.servers_txt
                .as_deref()
                .unwrap_or("data/mcp/servers.txt"),
        )
    }
    pub fn env_file_path(&self) -> PathBuf {
        PathBuf::from(self.env_file.as_deref().unwrap_or("data/mcp/.env"))
    }
    pub fn containers(&self) -> bool {
        self.containers.unwrap_or(false)
    }
    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms.unwrap_or(10_000).max(50))
    }
    pub fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.probe_timeout_ms.unwrap_or(5_000).max(50))
    }
    pub fn unhealthy_after(&self) -> u32 {
        self.unhealthy_after.unwrap_or(3).max(1)
    }
    pub fn degraded_latency(&self) -> Duration {
        Duration::from_millis(self.degraded_latency_ms.unwrap_or(2_000))
    }
    pub fn max_backoff(&self) -> Duration {
        Duration::from_millis(self.max_backoff_ms.unwrap_or(30_000).max(50))
    }
    pub fn reload_interval(&self) -> Duration {
        Duration::from_millis(self.reload_interval_ms.unwrap_or(1_000).max(50))
    }
    pub fn default_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.default_timeout_sec.unwrap_or(30.0))
    }
    pub fn max_concurrency(&self) -> usize {
        self.max_concurrency_per_server.unwrap_or(16).max(1)
    }
    pub fn allowed_hosts(&self) -> Vec<String> {
        match &self.allowed_hosts {
            Some(hosts) => hosts.clone(),
            None => DEFAULT_ALLOWED_HOSTS
                .iter()
                .map(|h| h.to_string())
                .collect(),
        }
    }
    pub fn allowed_origins(&self) -> Vec<String> {
        match &self.allowed_origins {
            Some(origins) => origins.clone(),
            None => DEFAULT_ALLOWED_ORIGINS
                .iter()
                .map(|h| h.to_string())
                .collect(),
        }
    }

    /// Checks values serde cannot (called by `McpHub::start`); errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(t) = self.default_timeout_sec {
            if !(t.is_finite() && t > 0.0 && t <= 3600.0) {
                return Err(ConfigError::DefaultTimeout);
            }
        }
        if self.max_concurrency_per_server == Some(0) {
            return Err(ConfigError::MaxConcurrency);
        }
        if self.unhealthy_after == Some(0) {
            return Err(ConfigError::UnhealthyAfter);
        }
        for origin in self.allowed_origins.iter().flatten() {
            if origin != "null" && !origin.contains("://") {
                return Err(ConfigError::OriginWithoutScheme(origin.clone()));
            }
        }
        Ok(())
    }
}

/// A value in `[mcp]` that serde accepts but the hub cannot run with; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("mcp.default_timeout_sec: must be > 0 and <= 3600")]
    DefaultTimeout,
    #[error("mcp.max_concurrency_per_server: must be >= 1")]
    MaxConcurrency,
    #[error("mcp.unhealthy_after: must be >= 1")]
    UnhealthyAfter,
    #[error("mcp.allowed_origins: {0:?} must include a scheme (http://host:port)")]
    OriginWithoutScheme(String),
}
