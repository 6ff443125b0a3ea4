//! Where the API listener binds when some of the edge's own networks must not reach it.
//!
//! The edge sits on the browser worker's `egress` network so the browser can reach the egress
//! proxy (:3128). Code running in the browser must not reach the model API, `/mcp` or the
//! dashboard on the same address. Instead of answering such requests, the API listener is never
//! bound there: with `EDGE_LISTEN=0.0.0.0:11435` and `EDGE_API_EXCLUDE=egress-proxy` the edge
//! binds 11435 on each of its interface addresses except the one `egress-proxy` resolves to, so
//! a connection from the egress network is refused by the kernel before any byte is parsed.
//!
//! Host names are resolved once at start. In compose, `egress-proxy` is an alias the edge has
//! only on the `egress` network, and Docker's DNS answers a network-scoped alias with the
//! address on that network: the edge learns its egress address without a fixed subnet. A name
//! that does not resolve fails the start (fail closed), and compose restarts the edge.
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// One `EDGE_API_EXCLUDE` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExcludeEntry {
    Net(IpNet),
    Host(String),
}

impl ExcludeEntry {
    pub fn parse(entry: &str) -> Result<Self, String> {
        if let Ok(net) = entry.parse::<IpNet>() {
            return Ok(Self::Net(net));
        }
        if let Ok(ip) = entry.parse::<IpAddr>() {
            return Ok(Self::Net(IpNet::from(ip)));
        }
        let is_name = !entry.is_empty()
            && entry.len() <= 253
            && entry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if is_name {
            Ok(Self::Host(entry.to_owned()))
        } else {
            Err(format!(
                "{entry:?} is neither an IP address, a CIDR nor a host name"
            ))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("EDGE_API_EXCLUDE: {0:?} did not resolve within {1:?}; refusing to start without knowing which address to leave out")]
    Unresolved(String, Duration),
    #[error("EDGE_LISTEN {0} is itself excluded by EDGE_API_EXCLUDE")]
    ListenExcluded(SocketAddr),
    #[error("EDGE_API_EXCLUDE leaves no interface address to bind the API listener to")]
    Nothing,
}

/// The excluded networks, host names resolved (retrying until `wait` has passed: at container
/// start Docker's DNS may need a moment).
pub fn resolve(entries: &[ExcludeEntry], wait: Duration) -> Result<Vec<IpNet>, BindError> {
    let mut out = Vec::new();
    for entry in entries {
        match entry {
            ExcludeEntry::Net(net) => out.push(*net),
            ExcludeEntry::Host(name) => {
                let deadline = Instant::now() + wait;
                let addrs = loop {
                    let found: Vec<IpAddr> = (name.as_str(), 0)
                        .to_socket_addrs()
                        .map(|a| a.map(|s| s.ip()).collect())
                        .unwrap_or_default();
                    if !found.is_empty() {
                        break found;
                    }
                    if Instant::now() >= deadline {
                        return Err(BindError::Unresolved(name.clone(), wait));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                };
                out.extend(addrs.into_iter().map(IpNet::from));
            }
        }
    }
    Ok(out)
}

/// The addresses the API listener binds to: `listen` itself when nothing is excluded or it
/// names one address; for a wildcard, every local address of its family outside `excluded`.
pub fn bind_addrs(
    listen: SocketAddr,
    excluded: &[IpNet],
    local: &[IpAddr],
) -> Result<Vec<SocketAddr>, BindError> {
    let is_excluded = |ip: &IpAddr| excluded.iter().any(|n| n.contains(ip));
    if excluded.is_empty() {
        return Ok(vec![listen]);
    }
    if !listen.ip().is_unspecified() {
        if is_excluded(&listen.ip()) {
            return Err(BindError::ListenExcluded(listen));
        }
        return Ok(vec![listen]);
    }
    let mut out: Vec<SocketAddr> = local
        .iter()
        // IPv6 link-local addresses need a scope id to bind; the bundle's networks are IPv4.
        .filter(|ip| ip.is_ipv4() == listen.is_ipv4() && !is_link_local_v6(ip))
        .filter(|ip| !is_excluded(ip))
        .map(|ip| SocketAddr::new(*ip, listen.port()))
        .collect();
    out.sort();
    out.dedup();
    // Loopback first: the healthcheck and the start-up announcement use it.
    out.sort_by_key(|a| !a.ip().is_loopback());
    if out.is_empty() {
        return Err(BindError::Nothing);
    }
    Ok(out)
}

fn is_link_local_v6(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn entries_are_nets_ips_or_names() {
        assert_eq!(
            ExcludeEntry::parse("172.30.0.0/16").unwrap(),
            ExcludeEntry::Net("172.30.0.0/16".parse().unwrap())
        );
        assert_eq!(
            ExcludeEntry::parse("10.1.2.3").unwrap(),
            ExcludeEntry::Net("10.1.2.3/32".parse().unwrap())
        );
        assert_eq!(
            ExcludeEntry::parse("egress-proxy").unwrap(),
            ExcludeEntry::Host("egress-proxy".into())
        );
        assert!(ExcludeEntry::parse("http://x").is_err());
        assert!(ExcludeEntry::parse("").is_err());
    }

    #[test]
    fn a_wildcard_binds_every_local_address_but_the_excluded_one() {
        let local = ips(&["10.0.1.5", "127.0.0.1", "172.30.0.3", "10.0.2.7", "::1"]);
        let got = bind_addrs(
            "0.0.0.0:11435".parse().unwrap(),
            &["172.30.0.3/32".parse().unwrap()],
            &local,
        )
        .unwrap();
        let want: Vec<SocketAddr> = ["127.0.0.1:11435", "10.0.1.5:11435", "10.0.2.7:11435"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn nothing_excluded_keeps_the_wildcard() {
        let got = bind_addrs("0.0.0.0:1".parse().unwrap(), &[], &ips(&["10.0.0.1"])).unwrap();
        assert_eq!(got, vec!["0.0.0.0:1".parse().unwrap()]);
    }

    #[test]
    fn a_named_listen_address_inside_the_exclusion_is_an_error() {
        let err = bind_addrs(
            "172.30.0.3:11435".parse().unwrap(),
            &["172.30.0.0/16".parse().unwrap()],
            &[],
        )
        .unwrap_err();
        assert!(matches!(err, BindError::ListenExcluded(_)));
    }

    #[test]
    fn names_resolve_and_unknown_names_fail_closed() {
        let nets = resolve(
            &[ExcludeEntry::Host("localhost".into())],
            Duration::from_millis(0),
        )
        .unwrap();
        assert!(nets
            .iter()
            .any(|n| n.contains(&"127.0.0.1".parse::<IpAddr>().unwrap())));
        let err = resolve(
            &[ExcludeEntry::Host("no-such-host.invalid".into())],
            Duration::from_millis(0),
        )
        .unwrap_err();
        assert!(matches!(err, BindError::Unresolved(..)));
    }
}
