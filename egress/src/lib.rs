//! Egress policy for the browser worker, and the forward proxy that enforces it (issue 6).
//!
//! CONTRACT with the edge (`edge/src/main.rs` wires it):
//! - `EgressConfig` is the `[egress]` table of the edge's TOML config (serde, unknown keys rejected).
//! - The edge binds the listener itself (`EGRESS_LISTEN` env, else `egress.listen`, default
//!   `0.0.0.0:3128`), prints `egress listening on <addr>`, and calls
//!   `EgressProxy::new(config, &registry)?.serve(listener)`.
//! - Metrics are registered into the edge's Prometheus registry so `/metrics` shows them.
//!
//! The policy judges the resolved address, never the host string, and the proxy connects only to
//! an address it judged. See `docs/egress.md`.

pub mod classify;
mod config;
pub mod host;
mod io;
mod local_addrs;
mod policy;
mod proxy;
mod reason;
pub mod request;
mod resolve;

pub use config::{EgressConfig, EgressMode};
pub use io::Framing;
pub use local_addrs::interface_addresses;
pub use policy::{parse_cidr, EgressPolicy};
pub use proxy::{client_name, EgressProxy};
pub use reason::DenyReason;
pub use resolve::{DnsError, DnsResolver};

/// Default listen address of the egress proxy (its own port, never the model port).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3128";

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("egress config: {0}")]
    Config(String),
    #[error("egress metrics: {0}")]
    Metrics(String),
}
