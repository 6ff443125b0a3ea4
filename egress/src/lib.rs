//! Egress policy for the browser worker, and the forward proxy that enforces it (issue 6).
//!
//! CONTRACT with the edge (`edge/src/main.rs` wires it):
//! - `EgressConfig` is the `[egress]` table of the edge's TOML config (serde, unknown keys rejected).
//! - The edge binds the listener itself (`EGRESS_LISTEN` env, else `egress.listen`, default
//!   `0.0.0.0:3128`), prints `egress listening on <addr>`, and calls
//!   `EgressProxy::new(config, &registry)?.serve(listener)`.
//! - Metrics are registered into the edge's Prometheus registry so `/metrics` shows them.
use std::sync::Arc;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// Listener address; `EGRESS_LISTEN` overrides it.
    pub listen: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("egress config: {0}")]
    Config(String),
}

pub struct EgressProxy {
    _config: EgressConfig,
}

impl EgressProxy {
    pub fn new(config: EgressConfig, _registry: &prometheus::Registry) -> Result<Self, EgressError> {
        Ok(Self { _config: config })
    }

    /// Serve the forward proxy on `listener` until the process exits.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        }
    }
}
