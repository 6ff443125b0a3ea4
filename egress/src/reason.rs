//! Why a request was refused. The names are a public interface: they appear in the
//! `X-Aibox-Egress-Deny` header, the response body, the decision log line and the metric labels.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// RFC 1918 and the IPv6 unique-local / site-local ranges.
    PrivateRange,
    /// Cloud instance metadata endpoints (169.254.169.254 and friends).
    Metadata,
    /// 100.64.0.0/10 (carrier-grade NAT, used by Tailscale) and Tailscale's IPv6 prefix.
    Tailnet,
    /// 127.0.0.0/8, ::1 and the unspecified addresses, which reach this host.
    Loopback,
    LinkLocal,
    Multicast,
    /// Special-purpose space that is not the public internet (RFC 6890 and successors).
    Reserved,
    /// Documentation prefixes (RFC 5737, RFC 3849, RFC 9637).
    Documentation,
    DeniedDomain,
    DeniedCidr,
    DnsFailure,
    PortNotAllowed,
    BadRequest,
    /// The request head (request line and headers) is longer than 64 KiB.
    HeadTooLarge,
    HostMismatch,
    Userinfo,
    SchemeNotAllowed,
    /// One of the edge's own addresses: the proxy must not be a way back into the platform.
    EdgeAddress,
    TooManyTunnels,
}

impl DenyReason {
    pub const ALL: [DenyReason; 19] = [
        DenyReason::PrivateRange,
        DenyReason::Metadata,
        DenyReason::Tailnet,
        DenyReason::Loopback,
        DenyReason::LinkLocal,
        DenyReason::Multicast,
        DenyReason::Reserved,
        DenyReason::Documentation,
        DenyReason::DeniedDomain,
        DenyReason::DeniedCidr,
        DenyReason::DnsFailure,
        DenyReason::PortNotAllowed,
        DenyReason::BadRequest,
        DenyReason::HeadTooLarge,
        DenyReason::HostMismatch,
        DenyReason::Userinfo,
        DenyReason::SchemeNotAllowed,
        DenyReason::EdgeAddress,
        DenyReason::TooManyTunnels,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::PrivateRange => "private_range",
            DenyReason::Metadata => "metadata",
            DenyReason::Tailnet => "tailnet",
            DenyReason::Loopback => "loopback",
            DenyReason::LinkLocal => "link_local",
            DenyReason::Multicast => "multicast",
            DenyReason::Reserved => "reserved",
            DenyReason::Documentation => "documentation",
            DenyReason::DeniedDomain => "denied_domain",
            DenyReason::DeniedCidr => "denied_cidr",
            DenyReason::DnsFailure => "dns_failure",
            DenyReason::PortNotAllowed => "port_not_allowed",
            DenyReason::BadRequest => "bad_request",
            DenyReason::HeadTooLarge => "head_too_large",
            DenyReason::HostMismatch => "host_mismatch",
            DenyReason::Userinfo => "userinfo",
            DenyReason::SchemeNotAllowed => "scheme_not_allowed",
            DenyReason::EdgeAddress => "edge_address",
            DenyReason::TooManyTunnels => "too_many_tunnels",
        }
    }

    /// A sentence for the response body, so a person reading the browser's error page knows why.
    pub fn explain(self) -> &'static str {
        match self {
            DenyReason::PrivateRange => "the address is in a private network range",
            DenyReason::Metadata => "the address is a cloud metadata endpoint",
            DenyReason::Tailnet => "the address is in the tailnet / carrier-grade NAT range",
            DenyReason::Loopback => "the address is this host (loopback or unspecified)",
            DenyReason::LinkLocal => "the address is link-local",
            DenyReason::Multicast => "the address is multicast",
            DenyReason::Reserved => "the address is special-purpose, not the public internet",
            DenyReason::Documentation => "the address is reserved for documentation",
            DenyReason::DeniedDomain => "the domain is not allowed by the egress policy",
            DenyReason::DeniedCidr => "the address is in a denied network",
            DenyReason::DnsFailure => "the name could not be resolved",
            DenyReason::PortNotAllowed => "the port is not allowed",
            DenyReason::BadRequest => "the request could not be understood as a proxy request",
            DenyReason::HeadTooLarge => "the request line and headers are longer than 64 KiB",
            DenyReason::HostMismatch => "the Host header disagrees with the request target",
            DenyReason::Userinfo => "credentials in the URL authority are not allowed",
            DenyReason::SchemeNotAllowed => "only http:// (and CONNECT for https) is proxied",
            DenyReason::EdgeAddress => "the address belongs to the aibox edge itself",
            DenyReason::TooManyTunnels => "too many tunnels are open",
        }
    }

    /// Whether `report` mode may turn this denial into `would_deny`. Address-based denials and
    /// malformed requests hold in every mode.
    pub fn relaxed_by_report_mode(self) -> bool {
        matches!(self, DenyReason::DeniedDomain | DenyReason::PortNotAllowed)
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
