//! The built-in address classifier: which resolved addresses are not "the public internet".
//!
//! It judges addresses, never host strings; host parsing turns every spelling of an address
//! (`0x7f.1`, `2130706433`, `[::ffff:127.0.0.1]`) into an `IpAddr` first. IPv4 addresses embedded
//! in IPv6 (mapped, compatible, NAT64, 6to4, Teredo, ISATAP) are decoded so they can be judged as
//! IPv4 too: `classify` names what the address really reaches, and the policy
//! (`EgressPolicy::check_ip`) puts every embedded address through all of its rules. The
//! translation prefixes themselves are `reserved` even when the embedded address is public,
//! because the proxy never needs them to reach the web.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::reason::DenyReason;

/// Addresses cloud providers hand out for instance metadata, credentials and host services.
/// Checked before the ranges, and never opened by `allow_cidrs`, so the reason says `metadata`
/// rather than `link_local` / `reserved` and holds whatever the rest of the config says.
/// Reviewed per provider; each entry names the page that documents it.
const METADATA_V4: [Ipv4Addr; 8] = [
    // AWS EC2 IMDS: https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html
    // GCP: https://cloud.google.com/compute/docs/metadata/querying-metadata (metadata.google.internal)
    // Azure IMDS: https://learn.microsoft.com/azure/virtual-machines/instance-metadata-service
    // Oracle OCI IMDS: https://docs.oracle.com/iaas/Content/Compute/Tasks/gettingmetadata.htm
    // DigitalOcean: https://docs.digitalocean.com/products/droplets/how-to/access-metadata/
    // OpenStack Nova: https://docs.openstack.org/nova/latest/admin/metadata-service.html
    Ipv4Addr::new(169, 254, 169, 254),
    // AWS ECS task metadata and task-role credentials:
    // https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-iam-roles.html
    Ipv4Addr::new(169, 254, 170, 2),
    // AWS EKS Pod Identity Agent (credentials):
    // https://docs.aws.amazon.com/eks/latest/userguide/pod-id-agent-setup.html
    Ipv4Addr::new(169, 254, 170, 23),
    // AWS Amazon Time Sync Service:
    // https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configure-ec2-ntp.html
    Ipv4Addr::new(169, 254, 169, 123),
    // AWS Route 53 Resolver at the link-local address:
    // https://docs.aws.amazon.com/vpc/latest/userguide/AmazonDNS-concepts.html
    Ipv4Addr::new(169, 254, 169, 253),
    // Azure WireServer / host endpoint (a public-space address, so no range catches it):
    // https://learn.microsoft.com/azure/virtual-network/what-is-ip-address-168-63-129-16
    Ipv4Addr::new(168, 63, 129, 16),
    // Oracle Cloud (Classic, Cloud@Customer) instance metadata:
    // https://docs.oracle.com/en/cloud/cloud-at-customer/occ-get-started/retrieve-predefined-instance-metadata.html
    Ipv4Addr::new(192, 0, 0, 192),
    // Alibaba Cloud ECS metadata:
    // https://www.alibabacloud.com/help/en/ecs/user-guide/overview-of-ecs-instance-metadata
    Ipv4Addr::new(100, 100, 100, 200),
];

const METADATA_V6: [Ipv6Addr; 6] = [
    // AWS EC2 IMDS over IPv6 (Nitro), same page as 169.254.169.254.
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254),
    // AWS EKS Pod Identity Agent over IPv6, same page as 169.254.170.23.
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0023),
    // AWS Time Sync over IPv6, same page as 169.254.169.123.
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0123),
    // AWS Route 53 Resolver over IPv6, same page as 169.254.169.253.
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0253),
    // GCP metadata server for IPv6-only instances, same page as metadata.google.internal.
    Ipv6Addr::new(0xfd20, 0x00ce, 0, 0, 0, 0, 0, 0x0254),
    // OpenStack metadata over IPv6 (since Victoria), same page as 169.254.169.254.
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xa9fe, 0xa9fe),
];

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

/// Where the 32 bits of an embedded IPv4 address sit in an IPv6 address. Bit positions count
/// from the most significant bit (0) of the IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// 32 contiguous bits from `offset`: 96 for mapped / compatible / NAT64 /96, 16 for 6to4,
    /// 32 for the Teredo server, 72 for an RFC 6052 /64 prefix.
    Bits { offset: u8 },
    /// RFC 6052 with a /40, /48 or /56 prefix: the address starts right after the prefix and
    /// skips the reserved "u" octet (bits 64..71).
    SplitAtU { prefix_len: u8 },
    /// Teredo client: the last 32 bits, inverted.
    InvertedLow32,
}

impl Layout {
    /// The IPv6 bit position of IPv4 bit `i`.
    fn position(self, i: u8) -> u8 {
        match self {
            Layout::Bits { offset } => offset + i,
            Layout::SplitAtU { prefix_len } => {
                let before_u = 64 - prefix_len;
                if i < before_u {
                    prefix_len + i
                } else {
                    72 + (i - before_u)
                }
            }
            Layout::InvertedLow32 => 96 + i,
        }
    }

    pub fn extract(self, ip: Ipv6Addr) -> Ipv4Addr {
        let bits = u128::from(ip);
        let mut v4 = 0u32;
        for i in 0..32u8 {
            let bit = (bits >> (127 - u32::from(self.position(i)))) & 1;
            v4 |= (bit as u32) << (31 - u32::from(i));
        }
        if self == Layout::InvertedLow32 {
            v4 = !v4;
        }
        Ipv4Addr::from(v4)
    }

    /// The IPv4 range every address of `net` carries under this layout: the IPv4 bits that sit
    /// inside the network's prefix are fixed, the rest are free.
    /// (Always `Some`: at most 32 bits can be known.)
    pub fn range(self, net: Ipv6Net) -> Option<Ipv4Net> {
        let known = (0..32u8)
            .take_while(|i| self.position(*i) < net.prefix_len())
            .count() as u8;
        Ipv4Net::new(self.extract(net.network()), known)
            .ok()
            .map(|n| n.trunc())
    }
}

const LOW32: Layout = Layout::Bits { offset: 96 };

/// A range of IPv6 space that carries IPv4 addresses, and how.
pub struct Translation {
    pub prefix: Ipv6Addr,
    pub len: u8,
    pub layouts: &'static [Layout],
}

impl Translation {
    /// (Always `Some` for the built-in table, whose lengths are at most 128.)
    pub fn net(&self) -> Option<Ipv6Net> {
        Ipv6Net::new(self.prefix, self.len).ok()
    }
}

/// The layout RFC 6052 gives a NAT64 prefix of this length.
pub fn rfc6052_layout(prefix_len: u8) -> Option<Layout> {
    match prefix_len {
        32 => Some(Layout::Bits { offset: 32 }),
        40 | 48 | 56 => Some(Layout::SplitAtU { prefix_len }),
        64 => Some(Layout::Bits { offset: 72 }),
        96 => Some(LOW32),
        _ => None,
    }
}

/// The NAT64 local-use prefix (RFC 8215); operators carve their own NAT64 prefix out of it.
pub const LOCAL_USE_NAT64: (Ipv6Addr, u8) = (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48);

/// Every IPv6 range that carries an IPv4 address at a known position. The local-use NAT64
/// prefix is carved up by each operator with a prefix length of their choosing, so unless that
/// length is known (`embedded_ipv4_at`), every RFC 6052 position inside it is decoded: any of
/// them may be the real one.
pub const TRANSLATIONS: &[Translation] = &[
    // IPv4-mapped ::ffff:0:0/96 (RFC 4291): a dual-stack socket connects to the IPv4 address.
    Translation {
        prefix: Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        len: 96,
        layouts: &[LOW32],
    },
    // IPv4-compatible ::/96 (deprecated, RFC 4291).
    Translation {
        prefix: Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        len: 96,
        layouts: &[LOW32],
    },
    // NAT64 well-known prefix (RFC 6052): always /96.
    Translation {
        prefix: Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        len: 96,
        layouts: &[LOW32],
    },
    // NAT64 local-use prefix (RFC 8215).
    Translation {
        prefix: Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        len: 48,
        layouts: &[
            Layout::SplitAtU { prefix_len: 48 },
            Layout::SplitAtU { prefix_len: 56 },
            Layout::Bits { offset: 72 },
            LOW32,
        ],
    },
    // Teredo (RFC 4380): server address, then the client address inverted.
    Translation {
        prefix: Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        len: 32,
        layouts: &[Layout::Bits { offset: 32 }, Layout::InvertedLow32],
    },
    // 6to4 (RFC 3056).
    Translation {
        prefix: Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        len: 16,
        layouts: &[Layout::Bits { offset: 16 }],
    },
];

/// Denied IPv6 ranges, most specific first. Anything outside 2000::/3 that is not listed is
/// denied as `reserved` too (unallocated space is not the public internet). The translation
/// prefixes are here with their own reason, `reserved`.
pub const DENIED_V6: &[(Ipv6Addr, u8, DenyReason)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, DenyReason::Loopback),
    (Ipv6Addr::LOCALHOST, 128, DenyReason::Loopback),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        DenyReason::Reserved,
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        96,
        DenyReason::Reserved,
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        96,
        DenyReason::Reserved,
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        DenyReason::Reserved,
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        DenyReason::Reserved,
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        DenyReason::Documentation,
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        DenyReason::Reserved,
    ),
    (
        Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        16,
        DenyReason::Reserved,
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        DenyReason::Documentation,
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        DenyReason::Reserved,
    ),
    // Tailscale's ULA prefix; inside fc00::/7 but worth its own reason.
    (
        Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0),
        48,
        DenyReason::Tailnet,
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        DenyReason::PrivateRange,
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        DenyReason::LinkLocal,
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        DenyReason::PrivateRange,
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        DenyReason::Multicast,
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

/// ISATAP (RFC 5214) puts an IPv4 address in the interface identifier of any prefix:
/// `::0000:5efe:a.b.c.d` or `::0200:5efe:a.b.c.d` (the u and g bits may vary).
fn isatap(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    (((bits >> 32) as u32) & 0xfcff_ffff == 0x0000_5efe)
        .then(|| Ipv4Addr::from((bits & 0xffff_ffff) as u32))
}

/// Every IPv4 address an IPv6 address may carry, in every embedding form it matches.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    embedded_ipv4_at(ip, None)
}

/// Like `embedded_ipv4`, with the length of the operator's NAT64 prefix inside the local-use
/// prefix when it is known (an `allow_cidrs` entry that opens it says it): then only that
/// RFC 6052 position is decoded there.
pub fn embedded_ipv4_at(ip: Ipv6Addr, local_nat64_len: Option<u8>) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    // `::` and `::1` sit inside the compatible prefix but reach this host, not 0.0.0.x.
    if ip.is_unspecified() || ip.is_loopback() {
        return out;
    }
    for t in TRANSLATIONS.iter().filter(|t| v6_in(ip, t.prefix, t.len)) {
        let known = (t.prefix, t.len) == LOCAL_USE_NAT64;
        match local_nat64_len.and_then(rfc6052_layout).filter(|_| known) {
            Some(layout) => out.push(layout.extract(ip)),
            None => out.extend(t.layouts.iter().map(|l| l.extract(ip))),
        }
    }
    out.extend(isatap(ip));
    out.dedup();
    out
}

/// Whether a network is itself a translation prefix (or covers one): an operator's NAT64
/// prefix inside the local-use prefix counts when its length is one RFC 6052 allows.
pub fn is_translation_prefix(net: Ipv6Net) -> bool {
    const LOCAL: Ipv6Net = Ipv6Net::new_assert(LOCAL_USE_NAT64.0, LOCAL_USE_NAT64.1);
    TRANSLATIONS
        .iter()
        .any(|t| t.net().is_some_and(|t| net.contains(&t)))
        || (LOCAL.contains(&net) && rfc6052_layout(net.prefix_len()).is_some())
}

/// The IPv4 ranges the addresses of an IPv6 network carry, for networks strictly inside a
/// translation prefix and not translation prefixes themselves (those carry all of IPv4 and say
/// nothing about which address was meant). Used to read configured CIDRs "through" their
/// embedding.
pub fn embedded_ipv4_ranges(net: Ipv6Net) -> Vec<Ipv4Net> {
    let mut out = Vec::new();
    if is_translation_prefix(net) {
        return out;
    }
    for t in TRANSLATIONS {
        if t.net().is_some_and(|t| t.contains(&net)) {
            out.extend(t.layouts.iter().filter_map(|l| l.range(net)));
        }
    }
    // ISATAP: only when the network fixes the interface identifier's marker bits.
    if net.prefix_len() >= 96 && isatap(net.network()).is_some() {
        out.extend(LOW32.range(net));
    }
    out
}

/// The built-in verdict for an address, looking inside IPv6 embeddings: `None` means it is
/// public internet space. An embedded IPv4 address's reason wins over the translation prefix's
/// own `reserved`, so the reason names what the address really reaches.
pub fn classify(ip: IpAddr) -> Option<DenyReason> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if METADATA_V6.contains(&v6) {
                return Some(DenyReason::Metadata);
            }
            let inner: Vec<DenyReason> = embedded_ipv4(v6)
                .into_iter()
                .filter_map(classify_v4)
                .collect();
            if inner.contains(&DenyReason::Metadata) {
                return Some(DenyReason::Metadata);
            }
            most_telling(inner).or_else(|| classify_own_v6(v6))
        }
    }
}

/// Of several reasons (the candidate decodings of one address), the one that says most: the
/// first that is not the catch-all `reserved`.
pub fn most_telling(reasons: impl IntoIterator<Item = DenyReason>) -> Option<DenyReason> {
    let mut first = None;
    for reason in reasons {
        if reason != DenyReason::Reserved {
            return Some(reason);
        }
        first.get_or_insert(reason);
    }
    first
}

/// The verdict on the address itself, without looking inside embeddings: for a translated
/// address that is the translation prefix's own reason.
pub fn classify_own(ip: IpAddr) -> Option<DenyReason> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) if METADATA_V6.contains(&v6) => Some(DenyReason::Metadata),
        IpAddr::V6(v6) => classify_own_v6(v6),
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

fn classify_own_v6(ip: Ipv6Addr) -> Option<DenyReason> {
    if let Some((_, _, reason)) = DENIED_V6
        .iter()
        .find(|(base, len, _)| v6_in(ip, *base, *len))
    {
        return Some(*reason);
    }
    // Only 2000::/3 is allocated as global unicast.
    if ip.segments()[0] & 0xe000 != 0x2000 {
        return Some(DenyReason::Reserved);
    }
    None
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
        // ISATAP in a public prefix.
        assert_eq!(reason("2a00:1450::5efe:a00:1"), Some("private_range"));
        assert_eq!(reason("2a00:1450::200:5efe:7f00:1"), Some("loopback"));
    }

    #[test]
    fn rfc6052_positions_in_the_local_use_prefix() {
        // 10.0.0.1 placed for a /48 prefix: 0a00 in bits 48..63, 0001 after the u octet.
        let at48: Ipv6Addr = "64:ff9b:1:a00:0:100::".parse().unwrap();
        assert!(embedded_ipv4(at48).contains(&"10.0.0.1".parse().unwrap()));
        // For a /64 prefix the address follows the u octet.
        let at64: Ipv6Addr = "64:ff9b:1:0:a:0:100::".parse().unwrap();
        assert!(embedded_ipv4(at64).contains(&"10.0.0.1".parse().unwrap()));
        assert_eq!(classify(IpAddr::V6(at64)), Some(DenyReason::PrivateRange));
        // With the operator's prefix length known, only its position is read: 8.8.8.8 at /96
        // is not also 0.0.0.0 at /48.
        let public96: Ipv6Addr = "64:ff9b:1::808:808".parse().unwrap();
        assert_eq!(
            embedded_ipv4_at(public96, Some(96)),
            vec!["8.8.8.8".parse::<Ipv4Addr>().unwrap()]
        );
        assert!(embedded_ipv4(public96).contains(&Ipv4Addr::UNSPECIFIED));
    }

    #[test]
    fn ranges_read_through_the_embedding() {
        let net: Ipv6Net = "64:ff9b::7f00:0/104".parse().unwrap();
        assert_eq!(
            embedded_ipv4_ranges(net),
            vec!["127.0.0.0/8".parse::<Ipv4Net>().unwrap()]
        );
        let net: Ipv6Net = "2002:7f00::/24".parse().unwrap();
        assert_eq!(
            embedded_ipv4_ranges(net),
            vec!["127.0.0.0/8".parse::<Ipv4Net>().unwrap()]
        );
        // A whole translation prefix names no particular IPv4 range.
        assert!(embedded_ipv4_ranges("64:ff9b::/96".parse().unwrap()).is_empty());
        assert!(embedded_ipv4_ranges("2000::/3".parse().unwrap()).is_empty());
        // An operator's NAT64 prefix inside the local-use prefix is a translation prefix too.
        assert!(embedded_ipv4_ranges("64:ff9b:1:abcd::/64".parse().unwrap()).is_empty());
        assert!(!embedded_ipv4_ranges("64:ff9b:1::7f00:0/104".parse().unwrap()).is_empty());
    }
}
