//! Name resolution through hickory-resolver with explicitly chosen upstream servers.
//!
//! One lookup per decision: the caller judges every address of the answer and connects to one of
//! those same addresses, so a DNS server that changes its answer between "check" and "connect"
//! (rebinding) has no second question to answer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::rdata::CNAME;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;

use crate::EgressError;

/// Tailscale's MagicDNS (IPv4 and IPv6) answers tailnet names with tailnet addresses; it is
/// used only when configured explicitly.
const TAILSCALE_DNS: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 100)),
    IpAddr::V6(Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0x53)),
];

pub struct DnsResolver {
    resolver: Option<TokioResolver>,
    servers: Vec<SocketAddr>,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("no DNS servers configured or found")]
    NoServers,
    #[error("DNS lookup timed out")]
    Timeout,
    #[error("DNS lookup failed: {0}")]
    Lookup(String),
    #[error("name has no addresses")]
    NoAddresses,
}

fn parse_server(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    SocketAddr::from_str(s)
        .ok()
        .or_else(|| IpAddr::from_str(s).ok().map(|ip| SocketAddr::new(ip, 53)))
        .or_else(|| {
            // `[v6]` without a port.
            let inner = s.strip_prefix('[')?.strip_suffix(']')?;
            IpAddr::from_str(inner)
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        })
}

/// The system's servers (resolv.conf), minus Tailscale's resolver.
fn system_servers() -> Vec<SocketAddr> {
    let Ok((config, _opts)) = hickory_resolver::system_conf::read_system_conf() else {
        return Vec::new();
    };
    let mut servers: Vec<SocketAddr> = Vec::new();
    for ns in config
        .name_servers()
        .iter()
        .filter(|ns| !TAILSCALE_DNS.contains(&ns.ip))
    {
        let addr = SocketAddr::new(ns.ip, ns.connections.first().map(|c| c.port).unwrap_or(53));
        if !servers.contains(&addr) {
            servers.push(addr);
        }
    }
    servers
}

impl DnsResolver {
    pub fn new(configured: &[String], timeout: Duration) -> Result<Self, EgressError> {
        let servers: Vec<SocketAddr> = if configured.is_empty() {
            let found = system_servers();
            if found.is_empty() {
                tracing::warn!(target: "egress", "no DNS servers configured or found in resolv.conf: every named target will be denied (dns_failure)");
            } else {
                tracing::info!(target: "egress", servers = ?found, "egress DNS from resolv.conf (set egress.dns_servers to choose)");
            }
            found
        } else {
            configured
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    parse_server(s).ok_or_else(|| {
                        EgressError::Config(format!(
                            "egress.dns_servers[{i}]: {s:?} is not ip or ip:port"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?
        };
        if timeout.is_zero() {
            return Err(EgressError::Config(
                "egress.dns_timeout_ms: must be more than 0".into(),
            ));
        }
        let resolver = if servers.is_empty() {
            None
        } else {
            let name_servers = servers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            // No search domains: every name is looked up as given (fully qualified).
            let config = ResolverConfig::from_parts(None, Vec::new(), name_servers);
            let mut opts = ResolverOpts::default();
            opts.timeout = timeout;
            opts.attempts = 1;
            opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
            opts.use_hosts_file = ResolveHosts::Never;
            opts.try_tcp_on_error = true;
            // The CNAME chain is judged too (deny_domains); hickory keeps it only when asked.
            opts.preserve_intermediates = true;
            let resolver =
                TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
                    .with_options(opts)
                    .build()
                    .map_err(|e| EgressError::Config(format!("egress.dns_servers: {e}")))?;
            Some(resolver)
        };
        Ok(Self {
            resolver,
            servers,
            timeout,
        })
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Every address the name resolves to, in answer order (IPv4 first), and every name the
    /// answer passed through on the way (the CNAME chain).
    pub async fn resolve(&self, name: &str) -> Result<Resolution, DnsError> {
        let resolver = self.resolver.as_ref().ok_or(DnsError::NoServers)?;
        let fqdn = format!("{name}.");
        let lookup = tokio::time::timeout(self.timeout, resolver.lookup_ip(fqdn.as_str()))
            .await
            .map_err(|_| DnsError::Timeout)?
            .map_err(|e| DnsError::Lookup(e.to_string()))?;
        let mut addrs: Vec<IpAddr> = Vec::new();
        for ip in lookup.iter() {
            if !addrs.contains(&ip) {
                addrs.push(ip);
            }
        }
        if addrs.is_empty() {
            return Err(DnsError::NoAddresses);
        }
        // Every CNAME in the answer, owner and target: more names can only mean more denials.
        let mut aliases: Vec<String> = Vec::new();
        for record in lookup.as_lookup().answers() {
            if let RData::CNAME(CNAME(target)) = &record.data {
                for alias in [&record.name, target] {
                    let alias = normalise_name(alias);
                    if alias != name && !aliases.contains(&alias) {
                        aliases.push(alias);
                    }
                }
            }
        }
        Ok(Resolution { addrs, aliases })
    }
}

/// What one lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub addrs: Vec<IpAddr>,
    /// Names other than the one asked that the answer's CNAME chain went through, lower-case
    /// ASCII without the trailing dot (the form domain patterns are matched in).
    pub aliases: Vec<String>,
}

fn normalise_name(name: &Name) -> String {
    let ascii = name.to_lowercase().to_ascii();
    ascii.strip_suffix('.').unwrap_or(&ascii).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_forms() {
        assert_eq!(
            parse_server("127.0.0.1:5353"),
            Some("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(parse_server("1.1.1.1"), Some("1.1.1.1:53".parse().unwrap()));
        assert_eq!(
            parse_server("[::1]:5353"),
            Some("[::1]:5353".parse().unwrap())
        );
        assert_eq!(parse_server("[::1]"), Some("[::1]:53".parse().unwrap()));
        assert_eq!(parse_server("dns.example"), None);
    }
}
