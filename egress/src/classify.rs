//! The built-in address classifier: which resolved addresses are not "the public internet".
//!
//! It judges addresses, never host strings; host parsing turns every spelling of an address
//! (`0x7f.1`, `2130706433`, `[::ffff:127.0.0.1]`) into an `IpAddr` first. IPv4 addresses embedded
//! in IPv6 (mapped, compatible, NAT64, 6to4, Teredo) are decoded and judged as IPv4, so the reason
//! names what the address really reaches; the translation prefixes are denied even when the
//! embedded address is public, because the proxy never needs them to reach the web.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::reason::DenyReason;

/// Single addresses handed out by cloud providers for instance metadata. Checked before the
/// ranges so the reason says `metadata` rather than `link_local`.
const METADATA_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(169, 254, 169, 254), // AWS, GCP, Azure, OpenStack, DigitalOcean, ...
    Ipv4Addr::new(169, 254, 170, 2),   // AWS ECS task metadata
    Ipv4Addr::new(100, 100, 100, 200), // Alibaba Cloud
];
const METADATA_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)]; // AWS IMDS over IPv6

/// Denied IPv4 ranges, most specific first.
pub const DENIED_V4: &[(Ipv4Addr, u8, DenyReason)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 32, DenyReason::Loopback), // 0.0.0.0 connects to this host on Linux
    (Ipv4Addr::new(0, 0, 0, 0), 8, DenyReason::Reserved),
    (Ipv4Addr::new(10, 0, 0, 0), 8, DenyReason::PrivateRange),
    (Ipv4Addr::new(100, 64, 0, 0), 10, DenyReason::Tailnet),
    (Ipv4Addr::new(127, 0, 0, 0), 8, DenyReason::Loopback),
    (Ipv4Addr::new(169, 254, 0, 0), 16, DenyReason::LinkLocal),
    (Ipv4Addr::new(172, 16, 0, 0), 12, DenyReason::PrivateRange),
    (Ipv4Addr::new(192, 0, 0, 0), 24, DenyReason::Reserved),
    (Ipv4Addr::new(192, 0, 2, 0), 24, DenyReason::Documentation),
    (Ipv4Addr::new(192, 88, 99, 0), 24, DenyReason::Reserved),
    (Ipv4Addr::new(192, 168, 0, 0), 16, DenyReason::PrivateRange),
    (Ipv4Addr::new(198, 18, 0, 0), 15, DenyReason::Reserved),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        DenyReason::Documentation,
    ),
    (Ipv4Addr::new(203, 0, 113, 0), 24, DenyReason::Documentation),
    (Ipv4Addr::new(224, 0, 0, 0), 4, DenyReason::Multicast),
    (Ipv4Addr::new(240, 0, 0, 0), 4, DenyReason::Reserved),
];

/// How an IPv6 range carries an IPv4 address, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedded {
    None,
    /// The last 32 bits (mapped `::ffff:0:0/96`, compatible `::/96`, NAT64 `64:ff9b::/96`).
    Low32,
    /// 6to4 `2002:AABB:CCDD::/48`.
    SixToFour,
    /// Teredo `2001:0:SSSS:SSSS:flags:port:~CCCC:~CCCC`: server and (inverted) client address.
    Teredo,
}

/// Denied IPv6 ranges, most specific first. Anything outside 2000::/3 that is not listed is
/// denied as `reserved` too (unallocated space is not the public internet).
pub const DENIED_V6: &[(Ipv6Addr, u8, DenyReason, Embedded)] = &[
    (
        Ipv6Addr::UNSPECIFIED,
        128,
        DenyReason::Loopback,
        Embedded::None,
    ),
    (
        Ipv6Addr::LOCALHOST,
        128,
        DenyReason::Loopback,
        Embedded::None,
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        DenyReason::Reserved,
        Embedded::Low32,
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        96,
        DenyReason::Reserved,
        Embedded::Low32,
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        96,
        DenyReason::Reserved,
        Embedded::Low32,
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        DenyReason::Reserved,
        Embedded::Low32,
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        DenyReason::Reserved,
        Embedded::None,
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        32,
        DenyReason::Reserved,
        Embedded::Teredo,
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        DenyReason::Documentation,
        Embedded::None,
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        DenyReason::Reserved,
        Embedded::None,
    ),
    (
        Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        16,
        DenyReason::Reserved,
        Embedded::SixToFour,
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        DenyReason::Documentation,
        Embedded::None,
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        DenyReason::Reserved,
        Embedded::None,
    ),
    // Tailscale's ULA prefix; inside fc00::/7 but worth its own reason.
    (
        Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0),
        48,
        DenyReason::Tailnet,
        Embedded::None,
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        DenyReason::PrivateRange,
        Embedded::None,
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        DenyReason::LinkLocal,
        Embedded::None,
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        DenyReason::PrivateRange,
        Embedded::None,
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        DenyReason::Multicast,
        Embedded::None,
    ),
];

fn v4_in(ip: Ipv4Addr, base: Ipv4Addr, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    u32::from(ip) & mask == u32::from(base) & mask
}

fn v6_in(ip: Ipv6Addr, base: Ipv6Addr, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    u128::from(ip) & mask == u128::from(base) & mask
}

/// The built-in verdict for an address: `None` means it is public internet space.
pub fn classify(ip: IpAddr) -> Option<DenyReason> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

pub fn classify_v4(ip: Ipv4Addr) -> Option<DenyReason> {
    if METADATA_V4.contains(&ip) {
        return Some(DenyReason::Metadata);
    }
    DENIED_V4
        .iter()
        .find(|(base, len, _)| v4_in(ip, *base, *len))
        .map(|(_, _, reason)| *reason)
}

pub fn classify_v6(ip: Ipv6Addr) -> Option<DenyReason> {
    if METADATA_V6.contains(&ip) {
        return Some(DenyReason::Metadata);
    }
    if let Some((_, _, reason, embedded)) = DENIED_V6
        .iter()
        .find(|(base, len, _, _)| v6_in(ip, *base, *len))
    {
        let inner = embedded_v4(ip, *embedded)
            .into_iter()
            .flatten()
            .find_map(classify_v4);
        return Some(inner.unwrap_or(*reason));
    }
    // Only 2000::/3 is allocated as global unicast.
    if ip.segments()[0] & 0xe000 != 0x2000 {
        return Some(DenyReason::Reserved);
    }
    None
}

/// The IPv4 addresses an IPv6 address carries under the given embedding.
fn embedded_v4(ip: Ipv6Addr, how: Embedded) -> [Option<Ipv4Addr>; 2] {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    match how {
        Embedded::None => [None, None],
        Embedded::Low32 => [Some(low32), None],
        Embedded::SixToFour => [
            Some(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32)),
            None,
        ],
        Embedded::Teredo => [
            Some(Ipv4Addr::from(!((bits & 0xffff_ffff) as u32))),
            Some(Ipv4Addr::from(((bits >> 64) & 0xffff_ffff) as u32)),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(s: &str) -> Option<&'static str> {
        classify(s.parse().unwrap()).map(DenyReason::as_str)
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "2606:4700::1111",
            "93.184.216.34",
            "2a00:1450::1",
        ] {
            assert_eq!(reason(ip), None, "{ip}");
        }
    }

    #[test]
    fn embedded_forms_are_judged_as_ipv4() {
        assert_eq!(reason("::ffff:127.0.0.1"), Some("loopback"));
        assert_eq!(reason("::ffff:a9fe:a9fe"), Some("metadata"));
        assert_eq!(reason("64:ff9b::a9fe:a9fe"), Some("metadata"));
        assert_eq!(reason("2002:a9fe:a9fe::1"), Some("metadata"));
        assert_eq!(reason("::ffff:8.8.8.8"), Some("reserved"));
        // Teredo client 10.0.0.1 is stored inverted.
        assert_eq!(
            reason("2001:0:4136:e378:8000:63bf:f5ff:fffe"),
            Some("private_range")
        );
    }
}
