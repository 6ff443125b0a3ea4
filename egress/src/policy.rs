//! `EgressPolicy`: the configured rules plus the built-in classifier, as pure functions of a
//! port, a host and an address. The proxy asks it three questions in order (port, name, every
//! resolved address) and connects only if all answers are "allowed".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;

use crate::classify::classify;
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
    allow_domains: Vec<String>,
    deny_domains: Vec<String>,
    ports: Vec<u16>,
    edge_addresses: Vec<IpAddr>,
}

/// Networks that reach this host; `allow_cidrs` may only cover them in tests.
fn loopback_nets() -> [IpNet; 5] {
    [
        IpNet::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8).expect("static prefix"),
        IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 32).expect("static prefix"),
        IpNet::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128).expect("static prefix"),
        IpNet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 128).expect("static prefix"),
        IpNet::new(
            IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x7f00, 0)),
            104,
        )
        .expect("static prefix"),
    ]
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
        let allow_cidrs = parse_cidrs("allow_cidrs", &config.allow_cidrs)?;
        if !config.allow_loopback_for_tests {
            for (i, net) in allow_cidrs.iter().enumerate() {
                if loopback_nets().iter().any(|lo| overlaps(net, lo)) {
                    return Err(EgressError::Config(format!(
                        "egress.allow_cidrs[{i}]: {net} covers loopback, which is never allowed outside tests"
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

    /// Address rules: the verdict on the exact address the proxy would connect to.
    pub fn check_ip(&self, ip: IpAddr) -> Option<DenyReason> {
        let canonical = ip.to_canonical();
        if self
            .deny_cidrs
            .iter()
            .any(|n| n.contains(&ip) || n.contains(&canonical))
        {
            return Some(DenyReason::DeniedCidr);
        }
        let builtin = classify(ip);
        if builtin == Some(DenyReason::Metadata) {
            return Some(DenyReason::Metadata);
        }
        if builtin.is_some() && !self.allow_cidrs.iter().any(|n| n.contains(&ip)) {
            return builtin;
        }
        // Public, or let through by allow_cidrs: still never the edge itself.
        if self.edge_addresses.contains(&canonical) {
            return Some(DenyReason::EdgeAddress);
        }
        None
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
        assert_eq!(
            p.check_ip("::ffff:10.1.2.3".parse().unwrap()),
            Some(DenyReason::PrivateRange)
        );
        assert_eq!(p.check_ip("10.1.2.4".parse().unwrap()), None);
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
