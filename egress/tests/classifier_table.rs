//! Every denied range's first and last address, and the known bypass spellings, through the
//! host parser and the classifier. No sockets at all.

use std::net::IpAddr;

use egress::classify::classify;
use egress::host::{parse_host, Host};
use egress::request::parse_absolute_target;
use egress::DenyReason;
use ipnet::IpNet;

/// (range from issue 6, reason for its first address, reason for its last address).
const RANGES: &[(&str, &str, &str)] = &[
    ("0.0.0.0/8", "loopback", "reserved"),
    ("10.0.0.0/8", "private_range", "private_range"),
    ("100.64.0.0/10", "tailnet", "tailnet"),
    ("127.0.0.0/8", "loopback", "loopback"),
    ("169.254.0.0/16", "link_local", "link_local"),
    ("172.16.0.0/12", "private_range", "private_range"),
    ("192.0.0.0/24", "reserved", "reserved"),
    ("192.0.2.0/24", "documentation", "documentation"),
    ("192.88.99.0/24", "reserved", "reserved"),
    ("192.168.0.0/16", "private_range", "private_range"),
    ("198.18.0.0/15", "reserved", "reserved"),
    ("198.51.100.0/24", "documentation", "documentation"),
    ("203.0.113.0/24", "documentation", "documentation"),
    ("224.0.0.0/4", "multicast", "multicast"),
    ("240.0.0.0/4", "reserved", "reserved"),
    ("::/128", "loopback", "loopback"),
    ("::1/128", "loopback", "loopback"),
    // Embedded IPv4 is judged as IPv4: first = 0.0.0.0 (loopback), last = 255.255.255.255.
    ("::ffff:0:0/96", "loopback", "reserved"),
    ("::/96", "loopback", "reserved"),
    ("64:ff9b::/96", "loopback", "reserved"),
    ("64:ff9b:1::/48", "loopback", "reserved"),
    ("100::/64", "reserved", "reserved"),
    // 2001:: is Teredo with server 0.0.0.0 (and client 255.255.255.255): both are judged.
    ("2001::/23", "loopback", "reserved"),
    ("2001:db8::/32", "documentation", "documentation"),
    ("2002::/16", "loopback", "reserved"),
    ("3fff::/20", "documentation", "documentation"),
    ("5f00::/16", "reserved", "reserved"),
    ("fc00::/7", "private_range", "private_range"),
    ("fe80::/10", "link_local", "link_local"),
    ("fec0::/10", "private_range", "private_range"),
    ("ff00::/8", "multicast", "multicast"),
];

/// Spellings a page might use to smuggle a denied address past a string check.
pub const BYPASS_FORMS: &[(&str, &str)] = &[
    ("127.1", "loopback"),
    ("0x7f.1", "loopback"),
    ("2130706433", "loopback"),
    ("0177.0.0.1", "loopback"),
    ("0", "loopback"),
    ("127.0.0.1.", "loopback"),
    ("0x7F000001", "loopback"),
    ("017700000001", "loopback"),
    ("１２７.０.０.１", "loopback"),
    ("127。0。0。1", "loopback"),
    ("[::]", "loopback"),
    ("[::1]", "loopback"),
    ("[0:0:0:0:0:0:0:1]", "loopback"),
    ("[::ffff:127.0.0.1]", "loopback"),
    ("[::ffff:7f00:1]", "loopback"),
    ("[::127.0.0.1]", "loopback"),
    ("[::ffff:a9fe:a9fe]", "metadata"),
    ("[64:ff9b::a9fe:a9fe]", "metadata"),
    ("[64:ff9b::169.254.169.254]", "metadata"),
    ("[2002:a9fe:a9fe::1]", "metadata"),
    ("169.254.169.254", "metadata"),
    ("169.254.169.254.", "metadata"),
    ("0xa9.0xfe.0xa9.0xfe", "metadata"),
    ("2852039166", "metadata"),
    ("0251.0376.0251.0376", "metadata"),
    ("169.254.43518", "metadata"),
    ("[fd00:ec2::254]", "metadata"),
    ("[fd00:ec2::23]", "metadata"),
    ("[fd00:ec2::123]", "metadata"),
    ("[fd20:ce::254]", "metadata"),
    ("100.100.100.200", "metadata"),
    ("168.63.129.16", "metadata"),
    ("[::ffff:168.63.129.16]", "metadata"),
    ("[64:ff9b::a83f:8110]", "metadata"),
    ("192.0.0.192", "metadata"),
    ("169.254.170.2", "metadata"),
    ("169.254.170.23", "metadata"),
    ("169.254.169.123", "metadata"),
    ("169.254.169.253", "metadata"),
    ("[64:ff9b::7f00:1]", "loopback"),
    ("[64:ff9b::a00:1]", "private_range"),
    ("[2002:7f00:1::]", "loopback"),
    ("100.100.100.100", "tailnet"),
    ("[fd7a:115c:a1e0::1]", "tailnet"),
    ("10.0.0.1", "private_range"),
    ("[::ffff:10.0.0.1]", "private_range"),
    ("192.168.1.1", "private_range"),
    ("[fe80::1]", "link_local"),
    ("[2001:0:4136:e378:8000:63bf:f5ff:fffe]", "private_range"), // Teredo client 10.0.0.1
    ("255.255.255.255", "reserved"),
    ("[ff02::1]", "multicast"),
];

fn last(net: IpNet) -> IpAddr {
    net.broadcast()
}

#[test]
fn first_and_last_address_of_every_range_is_denied() {
    let mut failures = Vec::new();
    for (cidr, first_reason, last_reason) in RANGES {
        let net: IpNet = cidr.parse().unwrap();
        for (ip, want) in [(net.network(), first_reason), (last(net), last_reason)] {
            let got = classify(ip).map(DenyReason::as_str);
            if got != Some(*want) {
                failures.push(format!("{cidr}: {ip} -> {got:?}, want {want}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn neighbours_of_denied_ranges_are_public() {
    for ip in [
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "126.255.255.255",
        "128.0.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.167.255.255",
        "192.169.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "2001:200::",
        "2003::",
        "2606:4700:4700::1111",
    ] {
        assert_eq!(classify(ip.parse().unwrap()), None, "{ip}");
    }
}

#[test]
fn bypass_spellings_parse_to_the_denied_address() {
    let mut failures = Vec::new();
    for (form, want) in BYPASS_FORMS {
        match parse_host(form) {
            Ok(Host::Ip(ip)) => {
                let got = classify(ip).map(DenyReason::as_str);
                if got != Some(*want) {
                    failures.push(format!("{form} -> {ip} -> {got:?}, want {want}"));
                }
            }
            other => failures.push(format!("{form} did not parse to an address: {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn userinfo_and_confusable_authorities_are_refused() {
    for url in [
        "http://user@127.0.0.1/",
        "http://user:pass@example.com/",
        "http://example.com@169.254.169.254/",
        "http://169.254.169.254%2f@example.com/",
        "http://@example.com/",
    ] {
        let err = parse_absolute_target(url).unwrap_err();
        assert!(
            matches!(err.reason, DenyReason::Userinfo | DenyReason::BadRequest),
            "{url}: {err:?}"
        );
    }
    assert_eq!(
        parse_absolute_target("http://user@example.com/")
            .unwrap_err()
            .reason,
        DenyReason::Userinfo
    );
    // A fragment can't smuggle a second authority: the host is what precedes it.
    let t = parse_absolute_target("http://127.0.0.1#@example.com/").unwrap();
    assert_eq!(t.host(), &Host::Ip("127.0.0.1".parse().unwrap()));
    assert_eq!(
        parse_absolute_target("http://example.com\\@127.0.0.1/")
            .unwrap_err()
            .reason,
        DenyReason::BadRequest
    );
}
