//! Request heads: the `Host` rewrite and what follows the head (a body, or a WebSocket).
use std::net::SocketAddr;

/// A rewritten request head and what comes after it on the connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub head: Vec<u8>,
    /// `Upgrade: websocket`: after the head the connection is a byte stream.
    pub upgrade: bool,
    /// `Content-Length` of the body that follows (DevTools requests have none, or a small one).
    pub body_len: u64,
}

/// `ip:port` of the address the client reached; IPv6 in brackets.
pub fn host_value(local: SocketAddr) -> String {
    match local {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("request head is not UTF-8")]
    NotUtf8,
    #[error("malformed header line {0:?}")]
    BadHeader(String),
    #[error("chunked request bodies are not forwarded")]
    Chunked,
}

/// Replace (or add) `Host` with `host`; read the framing the forwarder needs.
pub fn rewrite(raw: &[u8], host: &str) -> Result<Request, HeadError> {
    let text = std::str::from_utf8(raw).map_err(|_| HeadError::NotUtf8)?;
    let mut lines = text.split("\r\n").flat_map(|l| l.split('\n'));
    let request_line = lines.next().unwrap_or_default();
    let mut out = format!("{request_line}\r\nHost: {host}\r\n");
    let mut upgrade = false;
    let mut body_len = 0;
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| HeadError::BadHeader(line.to_owned()))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("host") {
            continue;
        }
        if name.eq_ignore_ascii_case("upgrade") && value.eq_ignore_ascii_case("websocket") {
            upgrade = true;
        }
        if name.eq_ignore_ascii_case("content-length") {
            body_len = value
                .parse()
                .map_err(|_| HeadError::BadHeader(line.to_owned()))?;
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HeadError::Chunked);
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    Ok(Request {
        head: out.into_bytes(),
        upgrade,
        body_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_becomes_the_address_the_client_reached() {
        let r = rewrite(
            b"GET /json/version HTTP/1.1\r\nHost: browser:9222\r\nAccept: */*\r\n\r\n",
            "172.20.0.3:9222",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(r.head).unwrap(),
            "GET /json/version HTTP/1.1\r\nHost: 172.20.0.3:9222\r\nAccept: */*\r\n\r\n"
        );
        assert!(!r.upgrade);
        assert_eq!(r.body_len, 0);
    }

    #[test]
    fn a_missing_host_is_added_and_upgrades_are_seen() {
        let r = rewrite(
            b"GET /devtools/browser/x HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "[fd00::3]:9222",
        )
        .unwrap();
        let head = String::from_utf8(r.head).unwrap();
        assert!(head.starts_with("GET /devtools/browser/x HTTP/1.1\r\nHost: [fd00::3]:9222\r\n"));
        assert!(r.upgrade);
    }

    #[test]
    fn bodies_are_framed_by_length_and_chunked_is_refused() {
        let r = rewrite(
            b"PUT /json/new?about:blank HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            "h:1",
        )
        .unwrap();
        assert_eq!(r.body_len, 5);
        assert!(matches!(
            rewrite(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "h:1"
            ),
            Err(HeadError::Chunked)
        ));
        assert!(rewrite(b"GET / HTTP/1.1\r\nnocolon\r\n\r\n", "h:1").is_err());
    }

    #[test]
    fn host_values_bracket_ipv6() {
        assert_eq!(
            host_value("10.0.0.2:9222".parse().unwrap()),
            "10.0.0.2:9222"
        );
        assert_eq!(host_value("[::1]:9222".parse().unwrap()), "[::1]:9222");
    }
}
