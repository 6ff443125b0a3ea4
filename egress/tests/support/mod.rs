//! Loopback-only test fixtures: a DNS server that answers test names with 127.0.0.x, an origin
//! server, a recorder that must stay empty, and a proxy started in-process on port 0.
//!
//! NETWORK RULE: everything here binds and connects to 127.0.0.0/8 or ::1 only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "test fixtures: a failed unwrap is a failed test, and their tasks end with the test's runtime"
)]
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use egress::{EgressConfig, EgressProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Answers for one name: called with how many A queries for it came before.
pub type Answer = Box<dyn Fn(usize) -> Vec<Ipv4Addr> + Send + Sync>;

/// A tiny authoritative-for-everything DNS server on 127.0.0.1 (UDP). Unknown names get
/// NXDOMAIN, AAAA queries an empty answer, all records TTL 0 so nothing is cached. Aliases
/// (CNAMEs) are answered the way a recursive resolver does: the whole chain, then the final
/// name's addresses, in one answer section.
pub struct TestDns {
    pub addr: SocketAddr,
    queries: Arc<Mutex<HashMap<String, usize>>>,
}

impl TestDns {
    pub async fn start(zone: Vec<(&str, Answer)>) -> Self {
        Self::start_with_cnames(zone, Vec::new()).await
    }

    /// `cnames` maps an alias to its target (`www.test` -> `cdn.test`).
    pub async fn start_with_cnames(zone: Vec<(&str, Answer)>, cnames: Vec<(&str, &str)>) -> Self {
        let cnames: HashMap<String, String> = cnames
            .into_iter()
            .map(|(a, t)| (a.to_ascii_lowercase(), t.to_ascii_lowercase()))
            .collect();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone: HashMap<String, Answer> = zone
            .into_iter()
            .map(|(n, a)| (n.to_ascii_lowercase(), a))
            .collect();
        let queries: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counts = queries.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                if let Some(reply) = answer(&buf[..n], &zone, &cnames, &counts) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        Self { addr, queries }
    }

    /// A queries seen for `name`.
    pub fn a_queries(&self, name: &str) -> usize {
        self.queries.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

pub fn fixed(ips: &[&str]) -> Answer {
    let ips: Vec<Ipv4Addr> = ips.iter().map(|s| s.parse().unwrap()).collect();
    Box::new(move |_| ips.clone())
}

fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

fn answer(
    query: &[u8],
    zone: &HashMap<String, Answer>,
    cnames: &HashMap<String, String>,
    counts: &Mutex<HashMap<String, usize>>,
) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // Question: labels, then QTYPE and QCLASS.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*query.get(i)?, *query.get(i + 1)?]);
    let question_end = i + 4;
    // Follow the alias chain (bounded, in case a test builds a loop).
    let mut name = labels.join(".");
    let mut chain: Vec<(String, String)> = Vec::new();
    while let Some(target) = cnames.get(&name) {
        if chain.len() >= 8 {
            break;
        }
        chain.push((name.clone(), target.clone()));
        name = target.clone();
    }
    let entry = zone.get(&name);
    let ips = match (entry, qtype) {
        (Some(answer), 1) => {
            let mut counts = counts.lock().unwrap();
            let seen = counts.entry(name.clone()).or_insert(0);
            let ips = answer(*seen);
            *seen += 1;
            ips
        }
        _ => Vec::new(),
    };
    let mut reply = Vec::with_capacity(512);
    reply.extend_from_slice(&query[0..2]);
    let rcode = if entry.is_some() || !chain.is_empty() {
        0
    } else {
        3
    };
    reply.extend_from_slice(&[0x81, 0x80 | rcode]);
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&((chain.len() + ips.len()) as u16).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(query.get(12..question_end)?);
    for (owner, target) in &chain {
        let target = encode_name(target);
        reply.extend_from_slice(&encode_name(owner));
        reply.extend_from_slice(&[0, 5, 0, 1, 0, 0, 0, 0]);
        reply.extend_from_slice(&(target.len() as u16).to_be_bytes());
        reply.extend_from_slice(&target);
    }
    for ip in ips {
        reply.extend_from_slice(&encode_name(&name));
        reply.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
        reply.extend_from_slice(&ip.octets());
    }
    Some(reply)
}

/// Accepts connections and counts them; a denial test asserts the count stays 0.
pub struct Recorder {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Recorder {
    pub async fn start(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Self { addr, accepted }
    }

    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// An HTTP/1.1 origin: answers every request with 200 and a body naming what it saw, except
/// `/redirect?to=URL` (302 to URL). `/echo` on a CONNECT tunnel is a plain echo of bytes.
pub struct Origin {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl Origin {
    pub async fn start(ip: &str) -> Self {
        let listener = TcpListener::bind((ip.parse::<IpAddr>().unwrap(), 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_origin(stream, seen.clone()));
            }
        });
        Self { addr, requests }
    }
}

async fn serve_origin(mut stream: TcpStream, seen: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    if head.starts_with("ECHO") {
        // Raw echo mode for tunnel tests: reply with everything after the first line.
        let _ = stream.write_all(&buf).await;
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if stream.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
    let mut body = buf[head_end..].to_vec();
    let lower = head.to_ascii_lowercase();
    if let Some(len) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        while body.len() < len {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
    } else if lower.contains("transfer-encoding: chunked") {
        while find(&body, b"0\r\n\r\n").is_none() {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
    }
    seen.lock().unwrap().push(head.clone());
    let request_line = head.lines().next().unwrap_or("").to_string();
    let path = request_line.split(' ').nth(1).unwrap_or("");
    let response = if let Some(to) = path.strip_prefix("/redirect?to=") {
        format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n")
    } else {
        let text = format!(
            "origin saw: {request_line}\nbody: {}\n",
            String::from_utf8_lossy(&body)
        );
        // Keep-alive on purpose: the proxy must still end the exchange by framing.
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: keep-alive\r\nKeep-Alive: timeout=60\r\n\r\n{text}",
            text.len()
        )
    };
    let _ = stream.write_all(response.as_bytes()).await;
    // Hold the connection open like a keep-alive server would.
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await;
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub struct RunningProxy {
    pub addr: SocketAddr,
    pub registry: prometheus::Registry,
}

impl RunningProxy {
    pub async fn start(config_toml: &str) -> Self {
        let config: EgressConfig = toml::from_str(config_toml).expect("test config parses");
        let registry = prometheus::Registry::new();
        let proxy = Arc::new(EgressProxy::new(config, &registry).expect("proxy config valid"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(proxy.serve(listener));
        Self { addr, registry }
    }

    /// Current value of a metric sample, by name and label values (0 when absent).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                continue;
            }
            if labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            {
                return rest.rsplit(' ').next().unwrap().parse().unwrap();
            }
        }
        0.0
    }

    pub fn connect_attempts(&self) -> f64 {
        self.metric("aibox_egress_connect_attempts_total", &[])
    }

    /// Send raw bytes, read until the proxy closes; the whole response as text.
    pub async fn exchange(&self, raw: &str) -> Response {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(raw.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
            .await
            .expect("proxy answered within 10s")
            .unwrap();
        Response::parse(&out)
    }

    pub async fn get(&self, url: &str) -> Response {
        let host = url
            .split("://")
            .nth(1)
            .and_then(|r| r.split(['/', '?']).next())
            .unwrap_or("");
        self.exchange(&format!("GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n"))
            .await
    }

    pub async fn connect(&self, authority: &str) -> Response {
        self.exchange(&format!(
            "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
        ))
        .await
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Response {
    pub fn parse(raw: &[u8]) -> Self {
        let text = String::from_utf8_lossy(raw).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Self {
            status,
            head: head.to_string(),
            body: body.to_string(),
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    pub fn deny_reason(&self) -> Option<String> {
        self.header("X-Aibox-Egress-Deny")
    }
}
