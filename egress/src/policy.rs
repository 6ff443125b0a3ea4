//! `EgressPolicy`: the configured rules plus the built-in classifier, as pure functions of a
//! port, a host and an address. The proxy asks it three questions in order (port, name, every
//! resolved address) and connects only if all answers are "allowed".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;

use ipnet::Ipv6Net;

use crate::classify::{
    classify_own, embedded_ipv4_at, embedded_ipv4_ranges, most_telling, rfc6052_layout,
    LOCAL_USE_NAT64,
};
use crate::config::{EgressConfig, EgressMode};
use crate::host::{domain_matches, normalise_pattern, Host};
use crate::reason::DenyReason;
use crate::EgressError;

#[derive(Debug, Clone)]
pub struct EgressPolicy {
    mode: EgressMode,
    client_modes: Vec<(String, EgressMode)>,
    allow_cidrs: Vec<IpNet>,
    deny_cidrs: Vec<IpNet>,
    /// The operator's own NAT64 prefixes (`nat64_prefixes`), decoded like 64:ff9b::/96.
    nat64_prefixes: Vec<Ipv6Net>,
    allow_domains: Vec<String>,
    deny_domains: Vec<String>,
    ports: Vec<u16>,
    edge_addresses: Vec<IpAddr>,
}

/// Networks that reach this host; `allow_cidrs` may only cover them in tests.
fn loopback_nets() -> [IpNet; 4] {
    // Constants, so a bad prefix length fails the build, not the proxy.
    const NETS: [IpNet; 4] = [
        IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
        IpNet::new_assert(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 32),
        IpNet::new_assert(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
        IpNet::new_assert(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 128),
    ];
    NETS
}

/// The loopback range an allow entry touches, directly or through an IPv4 embedding
/// (`64:ff9b::7f00:0/104`, `2002:7f00::/24`, `::ffff:127.0.0.1`, or inside a configured NAT64
/// prefix).
fn loopback_covered(net: &IpNet, nat64: &[Ipv6Net]) -> Option<IpNet> {
    let mut seen = vec![*net];
    if let IpNet::V6(v6) = net {
        seen.extend(embedded_ipv4_ranges(*v6).into_iter().map(IpNet::V4));
        for prefix in nat64
            .iter()
            .filter(|p| p.contains(v6) && v6.prefix_len() > p.prefix_len())
        {
            if let Some(layout) = rfc6052_layout(prefix.prefix_len()) {
                seen.extend(layout.range(*v6).map(IpNet::V4));
            }
        }
    }
    seen.into_iter()
        .find(|n| loopback_nets().iter().any(|lo| overlaps(n, lo)))
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// `10.0.0.0/8`, or a single address meaning /32 (/128).
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    IpNet::from_str(s)
        .map(|n| n.trunc())
        .ok()
        .or_else(|| IpAddr::from_str(s).ok().map(IpNet::from))
}

fn parse_cidrs(key: &str, values: &[String]) -> Result<Vec<IpNet>, EgressError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            parse_cidr(v).ok_or_else(|| {
                EgressError::Config(format!(
                    "egress.{key}[{i}]: {v:?} is not a CIDR or IP address"
                ))
            })
        })
        .collect()
}

fn parse_domains(key: &str, values: &[String]) -> Result<Vec<String>, EgressError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            normalise_pattern(v)
                .map_err(|e| EgressError::Config(format!("egress.{key}[{i}]: {v:?}: {e}")))
        })
        .collect()
}

impl EgressPolicy {
    pub fn from_config(config: &EgressConfig) -> Result<Self, EgressError> {
        let nat64_prefixes = parse_cidrs("nat64_prefixes", &config.nat64_prefixes)?
            .into_iter()
            .enumerate()
            .map(|(i, net)| match net {
                IpNet::V6(v6) if rfc6052_layout(v6.prefix_len()).is_some() => Ok(v6),
                other => Err(EgressError::Config(format!(
                    "egress.nat64_prefixes[{i}]: {other} is not an IPv6 prefix of length 32, 40, 48, 56, 64 or 96 (RFC 6052)"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let allow_cidrs = parse_cidrs("allow_cidrs", &config.allow_cidrs)?;
        if !config.allow_loopback_for_tests {
            for (i, net) in allow_cidrs.iter().enumerate() {
                if let Some(through) = loopback_covered(net, &nat64_prefixes) {
                    let how = if through == *net {
                        String::new()
                    } else {
                        format!(" (it embeds {through})")
                    };
                    return Err(EgressError::Config(format!(
                        "egress.allow_cidrs[{i}]: {net} covers loopback{how}, which is never allowed outside tests"
                    )));
                }
            }
        }
        let edge_addresses = config
            .edge_addresses
            .iter()
            .enumerate()
            .map(|(i, v)| {
                IpAddr::from_str(v.trim())
                    .map(|ip| ip.to_canonical())
                    .map_err(|_| {
                        EgressError::Config(format!(
                            "egress.edge_addresses[{i}]: {v:?} is not an IP address"
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        if config.ports.is_empty() {
            return Err(EgressError::Config(
                "egress.ports: must list at least one port".into(),
            ));
        }
        if let Some(i) = config.ports.iter().position(|p| *p == 0) {
            return Err(EgressError::Config(format!(
                "egress.ports[{i}]: 0 is not a port"
            )));
        }
        Ok(Self {
            mode: config.mode,
            client_modes: config
                .client_modes
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            allow_cidrs,
            deny_cidrs: parse_cidrs("deny_cidrs", &config.deny_cidrs)?,
            nat64_prefixes,
            allow_domains: parse_domains("allow_domains", &config.allow_domains)?,
            deny_domains: parse_domains("deny_domains", &config.deny_domains)?,
            ports: config.ports.clone(),
            edge_addresses,
        })
    }

    /// Add addresses that belong to the edge (listener address, interface addresses).
    pub fn add_edge_addresses(&mut self, addrs: impl IntoIterator<Item = IpAddr>) {
        for ip in addrs {
            let ip = ip.to_canonical();
            if !ip.is_unspecified() && !self.edge_addresses.contains(&ip) {
                self.edge_addresses.push(ip);
            }
        }
    }

    pub fn edge_addresses(&self) -> &[IpAddr] {
        &self.edge_addresses
    }

    pub fn mode_for(&self, client: &str) -> EgressMode {
        self.client_modes
            .iter()
            .find(|(name, _)| name == client)
            .map(|(_, mode)| *mode)
            .unwrap_or(self.mode)
    }

    pub fn check_port(&self, port: u16) -> Option<DenyReason> {
        (!self.ports.contains(&port)).then_some(DenyReason::PortNotAllowed)
    }

    /// Name rules. An IP-literal target passes unless an allow list of domains is configured.
    pub fn check_host(&self, host: &Host) -> Option<DenyReason> {
        match host {
            Host::Domain(name) => {
                if self.deny_domains.iter().any(|p| domain_matches(name, p)) {
                    return Some(DenyReason::DeniedDomain);
                }
                if !self.allow_domains.is_empty()
                    && !self.allow_domains.iter().any(|p| domain_matches(name, p))
                {
                    return Some(DenyReason::DeniedDomain);
                }
                None
            }
            Host::Ip(_) => (!self.allow_domains.is_empty()).then_some(DenyReason::DeniedDomain),
        }
    }

    /// Names met on the way to the address (the CNAME chain): a name that leads into a denied
    /// domain is denied. `allow_domains` applies to the requested name only, because CNAME
    /// targets are the site's hosting provider's names, not the ones a person allowed.
    pub fn check_alias(&self, name: &str) -> Option<DenyReason> {
        self.deny_domains
            .iter()
            .any(|p| domain_matches(name, p))
            .then_some(DenyReason::DeniedDomain)
    }

    /// Address rules: the verdict on the exact address the proxy would connect to.
    ///
    /// An IPv6 address that carries IPv4 addresses (mapped, NAT64, 6to4, Teredo, ISATAP) is
    /// judged as each of them too, through every rule: the deny list, metadata, the built-in
    /// ranges with `allow_cidrs`, and the edge's own addresses. An `allow_cidrs` entry for the
    /// translation prefix clears only the prefix's own `reserved`; the embedded address needs
    /// its own allowance like any IPv4 address.
    pub fn check_ip(&self, ip: IpAddr) -> Option<DenyReason> {
        let embedded: Vec<IpAddr> = match ip {
            IpAddr::V4(_) => Vec::new(),
            IpAddr::V6(v6) => embedded_ipv4_at(v6, self.local_nat64_len(v6))
                .into_iter()
                .chain(
                    self.nat64_prefixes
                        .iter()
                        .filter(|p| p.contains(&v6))
                        .filter_map(|p| rfc6052_layout(p.prefix_len()))
                        .map(|layout| layout.extract(v6)),
                )
                .map(IpAddr::V4)
                .collect(),
        };
        let views = || std::iter::once(ip).chain(embedded.iter().copied());
        if views().any(|v| self.deny_cidrs.iter().any(|n| n.contains(&v))) {
            return Some(DenyReason::DeniedCidr);
        }
        if views().any(|v| classify_own(v) == Some(DenyReason::Metadata)) {
            return Some(DenyReason::Metadata);
        }
        // The embedded addresses first, so the reason names what the address really reaches.
        most_telling(embedded.iter().filter_map(|v| self.check_own(*v)))
            .or_else(|| self.check_own(ip))
    }

    /// The length of the operator's NAT64 prefix inside the local-use prefix, as the most
    /// specific `allow_cidrs` entry there that contains the address says.
    fn local_nat64_len(&self, ip: Ipv6Addr) -> Option<u8> {
        self.allow_cidrs
            .iter()
            .filter_map(|n| match n {
                IpNet::V6(n) if n.contains(&ip) => Some(n),
                _ => None,
            })
            .filter(|n| {
                n.prefix_len() >= LOCAL_USE_NAT64.1
                    && n.network().segments()[..3] == [0x64, 0xff9b, 1]
            })
            .map(|n| n.prefix_len())
            .max()
    }

    /// One address on its own: its built-in range unless `allow_cidrs` opens it, then the
    /// edge's own addresses, which nothing opens.
    fn check_own(&self, ip: IpAddr) -> Option<DenyReason> {
        if let Some(reason) = classify_own(ip) {
            if !self.allow_cidrs.iter().any(|n| n.contains(&ip)) {
                return Some(reason);
            }
        }
        self.edge_addresses
            .contains(&ip)
            .then_some(DenyReason::EdgeAddress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_src: &str) -> Result<EgressPolicy, EgressError> {
        let config: EgressConfig = toml::from_str(toml_src).expect("config parses");
        EgressPolicy::from_config(&config)
    }

    #[test]
    fn allow_cidrs_cannot_cover_loopback_outside_tests() {
        let err = policy("allow_cidrs = [\"127.0.0.2\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("egress.allow_cidrs[0]"), "{err}");
        assert!(policy("allow_cidrs = [\"0.0.0.0/0\"]").is_err());
        assert!(policy("allow_cidrs = [\"127.0.0.2\"]\nallow_loopback_for_tests = true").is_ok());
    }

    #[test]
    fn metadata_and_edge_hold_against_allow_cidrs() {
        let mut p = policy("allow_cidrs = [\"169.254.0.0/16\", \"10.0.0.0/8\"]").unwrap();
        p.add_edge_addresses(["10.1.2.3".parse().unwrap()]);
        assert_eq!(
            p.check_ip("169.254.169.254".parse().unwrap()),
            Some(DenyReason::Metadata)
        );
        assert_eq!(p.check_ip("169.254.1.1".parse().unwrap()), None);
        assert_eq!(
            p.check_ip("10.1.2.3".parse().unwrap()),
            Some(DenyReason::EdgeAddress)
        );
        // The mapped form reaches the same edge address.
        assert_eq!(
            p.check_ip("::ffff:10.1.2.3".parse().unwrap()),
            Some(DenyReason::EdgeAddress)
        );
        // Allowed as IPv4, but the mapped prefix itself is not opened.
        assert_eq!(
            p.check_ip("::ffff:10.1.2.4".parse().unwrap()),
            Some(DenyReason::Reserved)
        );
        assert_eq!(p.check_ip("10.1.2.4".parse().unwrap()), None);
    }

    #[test]
    fn an_opened_translation_prefix_passes_public_ipv4_only() {
        let p = policy(
            "allow_cidrs = [\"64:ff9b::/96\", \"2002::/16\", \"64:ff9b:1::/96\"]\n\
             deny_cidrs = [\"9.9.9.0/24\"]",
        )
        .unwrap();
        let check = |s: &str| p.check_ip(s.parse().unwrap());
        assert_eq!(check("64:ff9b::808:808"), None);
        assert_eq!(check("2002:808:808::1"), None);
        assert_eq!(check("64:ff9b:1::808:808"), None);
        assert_eq!(check("64:ff9b::a00:1"), Some(DenyReason::PrivateRange));
        assert_eq!(check("64:ff9b::909:909"), Some(DenyReason::DeniedCidr));
        assert_eq!(check("64:ff9b:1::7f00:1"), Some(DenyReason::Loopback));
        // Not opened: the prefix's own reason around a public address.
        assert_eq!(check("::ffff:808:808"), Some(DenyReason::Reserved));
    }

    #[test]
    fn configured_nat64_prefixes_are_decoded_too() {
        let p = policy("nat64_prefixes = [\"2a00:1450:64::/96\"]").unwrap();
        let check = |s: &str| p.check_ip(s.parse().unwrap());
        assert_eq!(check("2a00:1450:64::a00:1"), Some(DenyReason::PrivateRange));
        assert_eq!(check("2a00:1450:64::a9fe:a9fe"), Some(DenyReason::Metadata));
        assert_eq!(check("2a00:1450:64::808:808"), None);
        let err = policy("nat64_prefixes = [\"2a00:1450:64::/80\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("egress.nat64_prefixes[0]"), "{err}");
        let err = policy(
            "nat64_prefixes = [\"2a00:1450:64::/96\"]\nallow_cidrs = [\"2a00:1450:64::7f00:0/104\"]",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("egress.allow_cidrs[0]"), "{err}");
    }

    #[test]
    fn domain_rules() {
        let p = policy("deny_domains = [\"*.Evil.example\", \"BAD.example.\"]").unwrap();
        assert_eq!(
            p.check_host(&Host::Domain("a.evil.example".into())),
            Some(DenyReason::DeniedDomain)
        );
        assert_eq!(
            p.check_host(&Host::Domain("bad.example".into())),
            Some(DenyReason::DeniedDomain)
        );
        assert_eq!(p.check_host(&Host::Domain("evil.example".into())), None);
        let p = policy("allow_domains = [\"*.good.example\"]").unwrap();
        assert_eq!(p.check_host(&Host::Domain("www.good.example".into())), None);
        assert_eq!(
            p.check_host(&Host::Domain("other.example".into())),
            Some(DenyReason::DeniedDomain)
        );
        assert_eq!(
            p.check_host(&Host::Ip("1.1.1.1".parse().unwrap())),
            Some(DenyReason::DeniedDomain)
        );
        assert!(policy("deny_domains = [\"1.2.3.4\"]").is_err());
    }

    #[test]
    fn bad_config_names_the_key() {
        let err = policy("deny_cidrs = [\"10.0.0.0/33\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("egress.deny_cidrs[0]"), "{err}");
        let err = policy("ports = []").unwrap_err().to_string();
        assert!(err.contains("egress.ports"), "{err}");
    }
}
