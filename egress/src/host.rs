//! Turning the host part of a request target into either an IP address or a normalised domain.
//!
//! The parser follows the WHATWG URL host parser, because that is what the browser (and an
//! attacker crafting URLs for it) uses: IDNA mapping first, then "ends in a number" means an IPv4
//! address in any of the legacy spellings (`127.1`, `0x7f.1`, `2130706433`, `0177.0.0.1`). Any
//! spelling therefore reaches the classifier as the address it denotes, never as a "domain".

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    /// Lower-case ASCII (IDNA-normalised), without a trailing dot.
    Domain(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Domain(d) => f.write_str(d),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid host: {0}")]
pub struct HostError(pub &'static str);

const MAX_DOMAIN_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Parse a host as it appears in a URL authority (`[v6]` bracketed, no port, no userinfo).
pub fn parse_host(raw: &str) -> Result<Host, HostError> {
    if raw.is_empty() {
        return Err(HostError("empty host"));
    }
    if let Some(inner) = raw.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or(HostError("unterminated IPv6 literal"))?;
        // Zone identifiers (`%25eth0`) name a local interface: never meaningful for the web.
        return inner
            .parse::<Ipv6Addr>()
            .map(|v6| Host::Ip(IpAddr::V6(v6)))
            .map_err(|_| HostError("bad IPv6 literal"));
    }
    if raw.bytes().any(|b| {
        matches!(
            b,
            b':' | b'[' | b']' | b'@' | b'/' | b'\\' | b'?' | b'#' | b'%'
        )
    }) {
        return Err(HostError("forbidden character in host"));
    }
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(HostError("forbidden character in host"));
    }
    let ascii = idna::domain_to_ascii(raw).map_err(|_| HostError("IDNA mapping failed"))?;
    let ascii = ascii.to_ascii_lowercase();
    if ascii.bytes().any(|b| {
        matches!(
            b,
            b':' | b'[' | b']' | b'@' | b'/' | b'\\' | b'?' | b'#' | b'%' | b' '
        )
    }) {
        return Err(HostError("forbidden character in host"));
    }
    if ends_in_a_number(&ascii) {
        return parse_ipv4(&ascii).map(|v4| Host::Ip(IpAddr::V4(v4)));
    }
    let name = ascii.strip_suffix('.').unwrap_or(&ascii);
    validate_domain(name)?;
    Ok(Host::Domain(name.to_string()))
}

fn validate_domain(name: &str) -> Result<(), HostError> {
    if name.is_empty() || name.len() > MAX_DOMAIN_LEN {
        return Err(HostError("bad domain length"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return Err(HostError("bad domain label"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(HostError("bad character in domain"));
        }
    }
    Ok(())
}

/// WHATWG "ends in a number": the last non-empty label is decimal digits or `0x` hex.
fn ends_in_a_number(host: &str) -> bool {
    let mut labels: Vec<&str> = host.split('.').collect();
    if labels.last() == Some(&"") {
        if labels.len() == 1 {
            return false;
        }
        labels.pop();
    }
    let Some(last) = labels.last() else {
        return false;
    };
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    parse_ipv4_number(last).is_some()
}

/// WHATWG IPv4 number: `0x` hex, leading-zero octal, or decimal.
fn parse_ipv4_number(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        return Some(0);
    }
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Longer than any valid part: refuse rather than overflow.
    if digits.len() > 32 {
        return Some(u64::MAX);
    }
    u64::from_str_radix(digits, radix).ok().or(Some(u64::MAX))
}

fn parse_ipv4(host: &str) -> Result<Ipv4Addr, HostError> {
    let mut parts: Vec<&str> = host.split('.').collect();
    if parts.last() == Some(&"") && parts.len() > 1 {
        parts.pop();
    }
    if parts.is_empty() || parts.len() > 4 {
        return Err(HostError("bad IPv4 address"));
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for part in &parts {
        numbers.push(parse_ipv4_number(part).ok_or(HostError("bad IPv4 address"))?);
    }
    let (last, init) = numbers.split_last().ok_or(HostError("bad IPv4 address"))?;
    if init.iter().any(|n| *n > 255) {
        return Err(HostError("bad IPv4 address"));
    }
    let last_limit = 256u64.pow(5 - numbers.len() as u32);
    if *last >= last_limit {
        return Err(HostError("bad IPv4 address"));
    }
    let mut value = *last;
    for (i, n) in init.iter().enumerate() {
        value += n << (8 * (3 - i));
    }
    Ok(Ipv4Addr::from(value as u32))
}

/// Whether `name` (a normalised domain) matches a pattern: exact, or `*.suffix` for any name
/// strictly below `suffix`.
pub fn domain_matches(name: &str, pattern: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len()
                && name.ends_with(suffix)
                && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
        }
        None => name == pattern,
    }
}

/// Normalise a configured domain pattern the same way hosts are normalised.
pub fn normalise_pattern(pattern: &str) -> Result<String, HostError> {
    let (wildcard, rest) = match pattern.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    match parse_host(rest)? {
        Host::Domain(d) if wildcard => Ok(format!("*.{d}")),
        Host::Domain(d) => Ok(d),
        Host::Ip(_) => Err(HostError(
            "an IP address is not a domain; use allow_cidrs/deny_cidrs",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Host {
        Host::Ip(s.parse().unwrap())
    }

    #[test]
    fn legacy_ipv4_spellings_are_addresses() {
        assert_eq!(parse_host("127.1"), Ok(ip("127.0.0.1")));
        assert_eq!(parse_host("0x7f.1"), Ok(ip("127.0.0.1")));
        assert_eq!(parse_host("2130706433"), Ok(ip("127.0.0.1")));
        assert_eq!(parse_host("0177.0.0.1"), Ok(ip("127.0.0.1")));
        assert_eq!(parse_host("0"), Ok(ip("0.0.0.0")));
        assert_eq!(parse_host("127.0.0.1."), Ok(ip("127.0.0.1")));
        assert_eq!(parse_host("0xA9FEA9FE"), Ok(ip("169.254.169.254")));
        assert_eq!(parse_host("１２７.０.０.１"), Ok(ip("127.0.0.1")));
        assert!(parse_host("1.2.3.256").is_err());
        assert!(parse_host("1.2.3.4.5").is_err());
        assert!(parse_host("09.1").is_err());
    }

    #[test]
    fn domains_are_normalised() {
        assert_eq!(
            parse_host("Example.COM."),
            Ok(Host::Domain("example.com".into()))
        );
        assert_eq!(
            parse_host("bücher.example"),
            Ok(Host::Domain("xn--bcher-kva.example".into()))
        );
        assert!(parse_host("a..b").is_err());
        assert!(parse_host("user@host").is_err());
        assert!(parse_host("example.com..").is_err());
        assert_eq!(parse_host("[::1]"), Ok(ip("::1")));
        assert!(parse_host("[fe80::1%25eth0]").is_err());
    }

    #[test]
    fn wildcard_patterns() {
        assert!(domain_matches("a.example.com", "*.example.com"));
        assert!(!domain_matches("example.com", "*.example.com"));
        assert!(!domain_matches("badexample.com", "*.example.com"));
        assert!(domain_matches("example.com", "example.com"));
    }
}
