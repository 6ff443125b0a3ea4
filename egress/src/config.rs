//! The `[egress]` table of the edge's TOML config.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What happens to a request the policy would refuse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressMode {
    /// Refuse it (the default).
    #[default]
    Enforce,
    /// Let it through and log `would_deny`. Only domain and port rules relax: address denials
    /// (private, metadata, tailnet, loopback, ...) hold in every mode.
    Report,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// Listener address; `EGRESS_LISTEN` overrides it. Default `0.0.0.0:3128`.
    pub listen: Option<String>,
    /// Mode for clients not listed in `client_modes`.
    pub mode: EgressMode,
    /// Per-client modes, keyed by the `Proxy-Authorization: Basic` user name (`anonymous` when
    /// the client sends none).
    pub client_modes: BTreeMap<String, EgressMode>,
    /// Networks (CIDR or single address) let through although the built-in classifier denies
    /// them, e.g. an internal mirror. Metadata and the edge's own addresses stay denied; loopback
    /// is accepted here only with `allow_loopback_for_tests`.
    pub allow_cidrs: Vec<String>,
    /// Networks always refused (`denied_cidr`), checked before everything else.
    pub deny_cidrs: Vec<String>,
    /// Network-specific NAT64 prefixes (RFC 6052) of this host's network, e.g.
    /// `"2001:db8:64::/96"`: addresses inside are judged as the IPv4 address they carry, like the
    /// well-known `64:ff9b::/96`. Lengths 32, 40, 48, 56, 64 or 96. Only the operator knows these.
    pub nat64_prefixes: Vec<String>,
    /// When non-empty, only these domains (exact or `*.suffix`) may be reached, and IP-literal
    /// targets are refused.
    pub allow_domains: Vec<String>,
    /// Domains refused (`denied_domain`), exact or `*.suffix`.
    pub deny_domains: Vec<String>,
    /// Destination ports allowed for both plain HTTP and CONNECT.
    pub ports: Vec<u16>,
    /// DNS servers, `ip` or `ip:port` (UDP, then TCP on truncation). Empty: the system's
    /// resolv.conf servers minus Tailscale's 100.100.100.100, which is used only when listed here.
    pub dns_servers: Vec<String>,
    pub dns_timeout_ms: u64,
    /// Extra addresses of the edge (e.g. its public or Docker-host addresses). The listener's own
    /// address and the host's interface addresses are always included.
    pub edge_addresses: Vec<String>,
    /// Concurrent CONNECT tunnels; the next one is refused with `too_many_tunnels`.
    pub max_tunnels: usize,
    /// A tunnel or forwarded exchange with no bytes either way for this long is closed.
    pub idle_timeout_secs: u64,
    /// How long a client may take to send its request head.
    pub header_timeout_secs: u64,
    pub connect_timeout_ms: u64,
    /// TEST ONLY: lets `allow_cidrs` include loopback so tests can reach servers on 127.0.0.x.
    /// Never set this in a deployment.
    pub allow_loopback_for_tests: bool,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            listen: None,
            mode: EgressMode::Enforce,
            client_modes: BTreeMap::new(),
            allow_cidrs: Vec::new(),
            deny_cidrs: Vec::new(),
            nat64_prefixes: Vec::new(),
            allow_domains: Vec::new(),
            deny_domains: Vec::new(),
            ports: vec![80, 443],
            dns_servers: Vec::new(),
            dns_timeout_ms: 3000,
            edge_addresses: Vec::new(),
            max_tunnels: 256,
            idle_timeout_secs: 300,
            header_timeout_secs: 30,
            connect_timeout_ms: 10_000,
            allow_loopback_for_tests: false,
        }
    }
}
