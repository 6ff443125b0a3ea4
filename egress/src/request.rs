//! Parsing what a proxy client sends: the request head, the target (absolute-form URL or CONNECT
//! authority) and the Host header check. Pure functions over bytes and strings, so they can be
//! fuzzed; every failure is a typed `TargetError`, never a panic.

use crate::host::{parse_host, Host};
use crate::io::Framing;
use crate::reason::DenyReason;

/// Most headers a request may carry; more is a bad request, not an allocation.
pub const MAX_HEADERS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// Minor version of HTTP/1.x.
    pub version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl RequestHead {
    /// All values of a header, by case-insensitive name.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x, or too many headers: the connection cannot continue.
    Malformed,
}

/// Parse a complete request head (`buf` must end with the blank line). Returns the head and its
/// length in bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version)
            else {
                return Err(HeadError::Malformed);
            };
            let headers = req
                .headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect();
            Ok(Some((
                RequestHead {
                    method: method.to_string(),
                    target: target.to_string(),
                    version,
                    headers,
                },
                len,
            )))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(HeadError::Malformed),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `CONNECT host:port`.
    Connect { host: Host, port: u16 },
    /// `GET http://host[:port]/path?query`, forwarded as `GET /path?query`.
    Http {
        host: Host,
        port: u16,
        path_and_query: String,
    },
}

impl Target {
    pub fn host(&self) -> &Host {
        match self {
            Target::Connect { host, .. } | Target::Http { host, .. } => host,
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Target::Connect { port, .. } | Target::Http { port, .. } => *port,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct TargetError {
    pub reason: DenyReason,
    pub detail: &'static str,
}

fn bad(detail: &'static str) -> TargetError {
    TargetError {
        reason: DenyReason::BadRequest,
        detail,
    }
}

/// Characters allowed in an authority: RFC 3986 unreserved, sub-delims, `:`, `[`, `]`, `@`
/// (the last only so userinfo gets its own reason). Non-ASCII is let through for IDNA.
fn authority_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "-._~!$&'()*+,;=:[]@".contains(c)
        || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
}

/// Split `host[:port]` (host possibly `[v6]`) and parse both parts.
pub fn parse_authority(authority: &str) -> Result<(Host, Option<u16>), TargetError> {
    if authority.is_empty() {
        return Err(bad("empty authority"));
    }
    if authority.contains('@') {
        return Err(TargetError {
            reason: DenyReason::Userinfo,
            detail: "userinfo in authority",
        });
    }
    if !authority.chars().all(authority_char_ok) {
        return Err(bad("forbidden character in authority"));
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority
            .find(']')
            .ok_or(bad("unterminated IPv6 literal"))?;
        let (host, rest) = authority.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => match rest.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(bad("junk after IPv6 literal")),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(parse_port(p)?),
    };
    let host = parse_host(host).map_err(|e| bad(e.0))?;
    Ok((host, port))
}

fn parse_port(p: &str) -> Result<u16, TargetError> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("bad port"));
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad("bad port")),
        Ok(port) => Ok(port),
    }
}

/// The target of a `CONNECT`: authority-form with an explicit port.
pub fn parse_connect_target(target: &str) -> Result<Target, TargetError> {
    let (host, port) = parse_authority(target)?;
    let port = port.ok_or(bad("CONNECT needs host:port"))?;
    Ok(Target::Connect { host, port })
}

/// The target of any other method: an absolute-form `http://` URL.
pub fn parse_absolute_target(target: &str) -> Result<Target, TargetError> {
    let Some((scheme, rest)) = target.split_once("://") else {
        return Err(if target.starts_with('/') || target == "*" {
            bad("origin-form target: this is a proxy, send an absolute URL")
        } else if target.contains(':') && !target.contains('/') {
            TargetError {
                reason: DenyReason::SchemeNotAllowed,
                detail: "not an http URL",
            }
        } else {
            bad("not an absolute URL")
        });
    };
    let scheme_ok = !scheme.is_empty()
        && scheme.as_bytes()[0].is_ascii_alphabetic()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !scheme_ok {
        return Err(bad("bad scheme"));
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(TargetError {
            reason: DenyReason::SchemeNotAllowed,
            detail: "only http:// is forwarded; use CONNECT for https",
        });
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    // `\` is a path separator to a browser but not to the origin: refuse the ambiguity.
    if authority.contains('\\') {
        return Err(bad("backslash in authority"));
    }
    let (host, port) = parse_authority(authority)?;
    let tail = tail.split('#').next().unwrap_or("");
    if tail.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad("control character in path"));
    }
    let path_and_query = if tail.starts_with('/') {
        tail.to_string()
    } else {
        format!("/{tail}")
    };
    Ok(Target::Http {
        host,
        port: port.unwrap_or(80),
        path_and_query,
    })
}

/// Parse the target according to the method.
pub fn parse_target(method: &str, target: &str) -> Result<Target, TargetError> {
    if method.eq_ignore_ascii_case("CONNECT") {
        parse_connect_target(target)
    } else {
        parse_absolute_target(target)
    }
}

/// The Host header, when present, must name the same host and port as the target. A second
/// Host header is a smuggling attempt and a bad request.
pub fn check_host_header(head: &RequestHead, target: &Target) -> Result<(), TargetError> {
    let mut values = head.header_values("host");
    let Some(value) = values.next() else {
        return Ok(());
    };
    if values.next().is_some() {
        return Err(bad("more than one Host header"));
    }
    let mismatch = TargetError {
        reason: DenyReason::HostMismatch,
        detail: "Host header disagrees with the target",
    };
    let value = std::str::from_utf8(value).map_err(|_| mismatch)?.trim();
    let (host, port) = match parse_authority(value) {
        Ok(parsed) => parsed,
        Err(e) if e.reason == DenyReason::Userinfo => return Err(e),
        Err(_) => return Err(mismatch),
    };
    let port_ok = match (port, target) {
        (Some(p), t) => p == t.port(),
        (None, Target::Http { port, .. }) => *port == 80,
        // Host without a port on CONNECT: accept if the host agrees (clients differ here).
        (None, Target::Connect { .. }) => true,
    };
    if &host != target.host() || !port_ok {
        return Err(mismatch);
    }
    Ok(())
}

/// The request body's framing. Both `Content-Length` and `Transfer-Encoding`, disagreeing
/// lengths, or a coding other than plain `chunked` are refused: each is a request-smuggling
/// shape that the origin might read differently from us.
pub fn request_framing(head: &RequestHead) -> Result<Framing, TargetError> {
    let te: Vec<&[u8]> = head.header_values("transfer-encoding").collect();
    let cl: Vec<&[u8]> = head.header_values("content-length").collect();
    if !te.is_empty() {
        if !cl.is_empty() {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
        if te.len() != 1 || !te[0].trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err(bad("unsupported Transfer-Encoding"));
        }
        return Ok(Framing::Chunked);
    }
    match parse_content_length(&cl) {
        Some(Some(0)) | Some(None) => Ok(Framing::None),
        Some(Some(n)) => Ok(Framing::Length(n)),
        None => Err(bad("bad Content-Length")),
    }
}

/// `None` if invalid, `Some(None)` if absent.
fn parse_content_length(values: &[&[u8]]) -> Option<Option<u64>> {
    let mut length = None;
    for value in values {
        for part in value.split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 18 || !part.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let n: u64 = std::str::from_utf8(part).ok()?.parse().ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        }
    }
    Some(length)
}

/// A response body's framing (RFC 9112 section 6.3), given the request method and status.
pub fn response_framing(method: &str, status: u16, headers: &[(String, Vec<u8>)]) -> Framing {
    if method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        return Framing::None;
    }
    let values = |name: &str| -> Vec<&[u8]> {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    };
    let te = values("transfer-encoding");
    if let Some(last) = te.last() {
        let is_chunked = last
            .split(|b| *b == b',')
            .next_back()
            .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return if is_chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        };
    }
    match parse_content_length(&values("content-length")) {
        Some(Some(n)) => Framing::Length(n),
        _ => Framing::UntilClose,
    }
}

/// Headers that describe one connection, not the message, and are never forwarded; plus every
/// `Proxy-*` header (credentials for us, not for the origin).
pub fn is_hop_by_hop(name: &str, connection_tokens: &[String]) -> bool {
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "host",
    ];
    let lower = name.to_ascii_lowercase();
    HOP.contains(&lower.as_str())
        || lower.starts_with("proxy-")
        || connection_tokens.contains(&lower)
}

/// Header names listed in `Connection` headers (lower-cased), which are hop-by-hop too.
pub fn connection_tokens(headers: &[(String, Vec<u8>)]) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(|b| *b == b','))
        .filter_map(|t| std::str::from_utf8(t.trim_ascii()).ok())
        .map(str::to_ascii_lowercase)
        // Framing headers stay: dropping them while we still frame by them would smuggle.
        .filter(|t| {
            !t.is_empty() && t != "close" && t != "content-length" && t != "transfer-encoding"
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_form() {
        let t = parse_absolute_target("http://Example.com:8080/a/b?c=d#frag").unwrap();
        assert_eq!(
            t,
            Target::Http {
                host: Host::Domain("example.com".into()),
                port: 8080,
                path_and_query: "/a/b?c=d".into()
            }
        );
        let t = parse_absolute_target("http://example.com?x").unwrap();
        assert_eq!(t.port(), 80);
        assert_eq!(
            parse_absolute_target("https://example.com/")
                .unwrap_err()
                .reason,
            DenyReason::SchemeNotAllowed
        );
        assert_eq!(
            parse_absolute_target("ftp://example.com/")
                .unwrap_err()
                .reason,
            DenyReason::SchemeNotAllowed
        );
        assert_eq!(
            parse_absolute_target("file:///etc/passwd")
                .unwrap_err()
                .reason,
            DenyReason::SchemeNotAllowed
        );
        assert_eq!(
            parse_absolute_target("/index.html").unwrap_err().reason,
            DenyReason::BadRequest
        );
        assert_eq!(
            parse_absolute_target("http://user@example.com/")
                .unwrap_err()
                .reason,
            DenyReason::Userinfo
        );
        assert_eq!(
            parse_absolute_target("http://example.com:99999/")
                .unwrap_err()
                .reason,
            DenyReason::BadRequest
        );
    }

    #[test]
    fn connect_form() {
        assert_eq!(
            parse_connect_target("[::1]:443").unwrap(),
            Target::Connect {
                host: Host::Ip("::1".parse().unwrap()),
                port: 443
            }
        );
        assert_eq!(
            parse_connect_target("example.com").unwrap_err().reason,
            DenyReason::BadRequest
        );
        assert_eq!(
            parse_connect_target("a@example.com:443")
                .unwrap_err()
                .reason,
            DenyReason::Userinfo
        );
    }
}
