//! Prometheus metrics of the hub, registered into the edge's registry.
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct HubMetrics {
    /// Tool calls by server, tool, client and outcome (`ok`, `tool_error`, `error`, `timeout`).
    pub calls: IntCounterVec,
    /// Calls refused by policy (`deny_clients` / `allow_clients`).
    pub denials: IntCounterVec,
    /// Calls refused by `rate_limit_rpm`.
    pub rate_limited: IntCounterVec,
    pub latency: HistogramVec,
    /// 1 when the server's tools are listed (healthy or degraded), else 0.
    pub server_up: IntGaugeVec,
}

impl HubMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let calls = IntCounterVec::new(
            Opts::new("aibox_mcp_calls_total", "MCP tool calls through the edge"),
            &["server", "tool", "client", "outcome"],
        )?;
        let denials = IntCounterVec::new(
            Opts::new(
                "aibox_mcp_denials_total",
                "MCP tool calls refused by per-client policy",
            ),
            &["server", "tool", "client"],
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "aibox_mcp_rate_limited_total",
                "MCP tool calls refused by rate_limit_rpm",
            ),
            &["server", "tool", "client"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "aibox_mcp_call_duration_seconds",
                "Latency of MCP tool calls through the edge",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["server", "tool", "client"],
        )?;
        let server_up = IntGaugeVec::new(
            Opts::new(
                "aibox_mcp_server_up",
                "1 when an MCP server's tools are served",
            ),
            &["server"],
        )?;
        registry.register(Box::new(calls.clone()))?;
        registry.register(Box::new(denials.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(server_up.clone()))?;
        Ok(Self {
            calls,
            denials,
            rate_limited,
            latency,
            server_up,
        })
    }
}
