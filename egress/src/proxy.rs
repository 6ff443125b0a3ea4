//! The forward proxy: one request per client connection, judged top to bottom
//! (parse -> port and name rules -> one DNS lookup -> every address -> connect to a checked
//! address), then either a CONNECT tunnel or one forwarded HTTP exchange.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;

use crate::config::{EgressConfig, EgressMode};
use crate::host::Host;
use crate::io::{Framing, HeadReadError, Inbound};
use crate::local_addrs::interface_addresses;
use crate::policy::EgressPolicy;
use crate::reason::DenyReason;
use crate::request::{
    check_host_header, connection_tokens, is_hop_by_hop, parse_head, parse_target, request_framing,
    response_framing, RequestHead, Target, MAX_HEADERS,
};
use crate::resolve::DnsResolver;
use crate::EgressError;

pub struct EgressProxy {
    policy: RwLock<Arc<EgressPolicy>>,
    dns: DnsResolver,
    tunnels: Arc<Semaphore>,
    metrics: EgressMetrics,
    idle: Duration,
    header_timeout: Duration,
    connect_timeout: Duration,
}

#[derive(Clone)]
struct EgressMetrics {
    decisions: IntCounterVec,
    open_tunnels: IntGauge,
    /// Every outbound TCP connect the proxy starts; tests assert denials leave it untouched.
    connect_attempts: IntCounter,
}

impl EgressMetrics {
    fn register(registry: &Registry) -> Result<Self, EgressError> {
        let decisions = IntCounterVec::new(
            Opts::new(
                "aibox_egress_decisions_total",
                "Egress proxy decisions by outcome and reason",
            ),
            &["decision", "reason"],
        )
        .map_err(|e| EgressError::Metrics(e.to_string()))?;
        let open_tunnels = IntGauge::new(
            "aibox_egress_open_tunnels",
            "CONNECT tunnels open right now",
        )
        .map_err(|e| EgressError::Metrics(e.to_string()))?;
        let connect_attempts = IntCounter::new(
            "aibox_egress_connect_attempts_total",
            "Outbound connections the egress proxy started (only ever to checked addresses)",
        )
        .map_err(|e| EgressError::Metrics(e.to_string()))?;
        registry
            .register(Box::new(decisions.clone()))
            .map_err(|e| EgressError::Metrics(e.to_string()))?;
        registry
            .register(Box::new(open_tunnels.clone()))
            .map_err(|e| EgressError::Metrics(e.to_string()))?;
        registry
            .register(Box::new(connect_attempts.clone()))
            .map_err(|e| EgressError::Metrics(e.to_string()))?;
        Ok(Self {
            decisions,
            open_tunnels,
            connect_attempts,
        })
    }
}

/// What one decision looked like, for the log line and the counters.
struct DecisionRecord {
    id: String,
    client: String,
    host: String,
    port: u16,
    resolved_ip: Option<IpAddr>,
    dns_ms: Option<u64>,
    connect_ms: Option<u64>,
}

impl DecisionRecord {
    fn emit(
        &self,
        metrics: &EgressMetrics,
        decision: &'static str,
        reason: &'static str,
        error: Option<&str>,
    ) {
        metrics
            .decisions
            .with_label_values(&[decision, reason])
            .inc();
        tracing::info!(
            target: "egress",
            id = %self.id,
            client = %self.client,
            host = %self.host,
            port = self.port,
            resolved_ip = self.resolved_ip.as_ref().map(tracing::field::display),
            decision,
            reason,
            dns_ms = self.dns_ms,
            connect_ms = self.connect_ms,
            error,
            "egress decision"
        );
    }
}

/// Decrements the open-tunnel gauge and frees the slot however the tunnel ends.
struct TunnelSlot {
    _permit: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

fn ms_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The proxy client's name for per-client modes: the `Proxy-Authorization: Basic` user, else
/// `anonymous`. This labels a client; it does not authenticate one.
pub fn client_name(head: &RequestHead) -> String {
    const ANONYMOUS: &str = "anonymous";
    let Some(value) = head.header_values("proxy-authorization").next() else {
        return ANONYMOUS.into();
    };
    let Ok(value) = std::str::from_utf8(value) else {
        return ANONYMOUS.into();
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return ANONYMOUS.into();
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return ANONYMOUS.into();
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return ANONYMOUS.into();
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return ANONYMOUS.into();
    };
    let user = decoded.split(':').next().unwrap_or("");
    let ok = !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if ok {
        user.to_string()
    } else {
        ANONYMOUS.into()
    }
}

/// What of an unparsable target may be logged: no query (tokens live there), no userinfo
/// (passwords), no control characters, bounded length.
pub fn loggable_target(target: &str) -> String {
    let without_query = target.split(['?', '#']).next().unwrap_or("");
    let (scheme, rest) = match without_query.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, without_query),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("***@{}", &authority[at + 1..]),
        None => authority.to_string(),
    };
    let joined = match scheme {
        Some(scheme) => format!("{scheme}://{authority}{path}"),
        None => format!("{authority}{path}"),
    };
    joined
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(200)
        .collect()
}

fn denial_response(reason: DenyReason, id: &str) -> Vec<u8> {
    let status = match reason {
        DenyReason::BadRequest => "400 Bad Request",
        DenyReason::HeadTooLarge => "431 Request Header Fields Too Large",
        _ => "403 Forbidden",
    };
    let body = format!(
        "aibox egress denied this request: {reason} ({}).\nrequest id: {id}\n",
        reason.explain()
    );
    format!(
        "HTTP/1.1 {status}\r\nX-Aibox-Egress-Deny: {reason}\r\nX-Aibox-Egress-Id: {id}\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn gateway_error(id: &str, what: &str) -> Vec<u8> {
    let body = format!("aibox egress: {what}.\nrequest id: {id}\n");
    format!(
        "HTTP/1.1 502 Bad Gateway\r\nX-Aibox-Egress-Error: {what}\r\nX-Aibox-Egress-Id: {id}\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn parse_request_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, ()> {
    parse_head(buf).map_err(|_| ())
}

struct ResponseHead {
    status: u16,
    reason: String,
    headers: Vec<(String, Vec<u8>)>,
}

fn parse_response_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let status = resp.code.ok_or(())?;
            let reason = resp.reason.unwrap_or("").to_string();
            let headers = resp
                .headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect();
            Ok(Some((
                ResponseHead {
                    status,
                    reason,
                    headers,
                },
                len,
            )))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(()),
    }
}

/// The request half of one forwarded HTTP exchange.
struct Exchange<'a> {
    head: &'a RequestHead,
    target: &'a Target,
    body_framing: Framing,
    id: &'a str,
}

/// How the judging ended when it did not end in a connection.
enum Refusal {
    Deny(DenyReason),
    /// Allowed (or let through by report mode, with the rule it relaxed), but no checked
    /// address accepted the connection.
    ConnectFailed(Option<DenyReason>),
}

impl EgressProxy {
    pub fn new(config: EgressConfig, registry: &Registry) -> Result<Self, EgressError> {
        let mut policy = EgressPolicy::from_config(&config)?;
        policy.add_edge_addresses(interface_addresses());
        if config.max_tunnels == 0 {
            return Err(EgressError::Config(
                "egress.max_tunnels: must be at least 1".into(),
            ));
        }
        if config.idle_timeout_secs == 0
            || config.header_timeout_secs == 0
            || config.connect_timeout_ms == 0
        {
            return Err(EgressError::Config(
                "egress.idle_timeout_secs, header_timeout_secs and connect_timeout_ms must be more than 0".into(),
            ));
        }
        let dns = DnsResolver::new(
            &config.dns_servers,
            Duration::from_millis(config.dns_timeout_ms),
        )?;
        if config.allow_loopback_for_tests {
            tracing::warn!(target: "egress", "egress.allow_loopback_for_tests is set: loopback may be allowed; never use this outside tests");
        }
        Ok(Self {
            policy: RwLock::new(Arc::new(policy)),
            dns,
            tunnels: Arc::new(Semaphore::new(config.max_tunnels)),
            metrics: EgressMetrics::register(registry)?,
            idle: Duration::from_secs(config.idle_timeout_secs),
            header_timeout: Duration::from_secs(config.header_timeout_secs),
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
        })
    }

    fn policy(&self) -> Arc<EgressPolicy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Serve the forward proxy on `listener` until this future is dropped. Each connection is a
    /// task of this future's own `JoinSet`: dropping the future (the edge's shutdown) ends them
    /// all, and a connection that panics is logged rather than lost.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        if let Ok(local) = listener.local_addr() {
            let mut guard = self.policy.write().unwrap_or_else(|e| e.into_inner());
            let mut policy = EgressPolicy::clone(&guard);
            policy.add_edge_addresses([local.ip()]);
            *guard = Arc::new(policy);
        }
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        connections.spawn(self.clone().handle(stream, peer));
                    }
                    Err(e) => {
                        // Out of file descriptors and friends: back off instead of spinning.
                        tracing::warn!(target: "egress", error = %e, "egress accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(e) = done {
                        if e.is_panic() {
                            tracing::error!(target: "egress", error = %e, "egress connection failed with a panic");
                        }
                    }
                }
            }
        }
    }

    async fn handle(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (read_half, mut client_w) = stream.into_split();
        let mut inbound = Inbound::new(read_half, self.idle);
        let mut record = DecisionRecord {
            id,
            client: "anonymous".into(),
            host: String::new(),
            port: 0,
            resolved_ip: None,
            dns_ms: None,
            connect_ms: None,
        };
        let head = match timeout(self.header_timeout, inbound.read_head(parse_request_head)).await {
            Ok(Ok(head)) => head,
            Ok(Err(HeadReadError::Closed)) | Err(_) => {
                tracing::debug!(target: "egress", %peer, "client left before sending a request");
                return;
            }
            Ok(Err(HeadReadError::Io(e))) => {
                tracing::debug!(target: "egress", %peer, error = %e, "client connection failed before a request");
                return;
            }
            Ok(Err(HeadReadError::Malformed)) => {
                self.refuse(&record, &mut inbound, &mut client_w, DenyReason::BadRequest)
                    .await;
                return;
            }
            Ok(Err(HeadReadError::TooLarge)) => {
                self.refuse(
                    &record,
                    &mut inbound,
                    &mut client_w,
                    DenyReason::HeadTooLarge,
                )
                .await;
                return;
            }
        };
        record.client = client_name(&head);
        let policy = self.policy();
        let mode = policy.mode_for(&record.client);

        let target = match parse_target(&head.method, &head.target)
            .and_then(|t| check_host_header(&head, &t).map(|()| t))
        {
            Ok(t) => t,
            Err(e) => {
                record.host = loggable_target(&head.target);
                self.refuse(&record, &mut inbound, &mut client_w, e.reason)
                    .await;
                return;
            }
        };
        record.host = target.host().to_string();
        record.port = target.port();
        let body_framing = match &target {
            Target::Connect { .. } => Framing::None,
            Target::Http { .. } => match request_framing(&head) {
                Ok(f) => f,
                Err(e) => {
                    self.refuse(&record, &mut inbound, &mut client_w, e.reason)
                        .await;
                    return;
                }
            },
        };
        let slot = if matches!(target, Target::Connect { .. }) {
            match self.tunnels.clone().try_acquire_owned() {
                Ok(permit) => {
                    self.metrics.open_tunnels.inc();
                    Some(TunnelSlot {
                        _permit: permit,
                        gauge: self.metrics.open_tunnels.clone(),
                    })
                }
                Err(_) => {
                    self.refuse(
                        &record,
                        &mut inbound,
                        &mut client_w,
                        DenyReason::TooManyTunnels,
                    )
                    .await;
                    return;
                }
            }
        } else {
            None
        };

        let (upstream, would_deny) = match self
            .judge_and_connect(&policy, mode, &target, &mut record)
            .await
        {
            Ok(connected) => connected,
            Err(Refusal::Deny(reason)) => {
                self.refuse(&record, &mut inbound, &mut client_w, reason)
                    .await;
                return;
            }
            Err(Refusal::ConnectFailed(would_deny)) => {
                let (decision, reason) = match would_deny {
                    Some(reason) => ("would_deny", reason.as_str()),
                    None => ("allow", "none"),
                };
                record.emit(&self.metrics, decision, reason, Some("connect_failed"));
                let _ = client_w
                    .write_all(&gateway_error(&record.id, "connect_failed"))
                    .await;
                let _ = client_w.shutdown().await;
                return;
            }
        };
        match would_deny {
            Some(reason) => record.emit(&self.metrics, "would_deny", reason.as_str(), None),
            None => record.emit(&self.metrics, "allow", "none", None),
        }

        match target {
            Target::Connect { .. } => {
                if client_w
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_ok()
                {
                    tunnel(inbound, client_w, upstream, self.idle).await;
                }
                drop(slot);
            }
            Target::Http { .. } => {
                let result = self
                    .forward(
                        Exchange {
                            head: &head,
                            target: &target,
                            body_framing,
                            id: &record.id,
                        },
                        &mut inbound,
                        &mut client_w,
                        upstream,
                    )
                    .await;
                if let Err(e) = result {
                    tracing::debug!(target: "egress", id = %record.id, error = %e, "forwarding ended early");
                }
                let _ = client_w.shutdown().await;
            }
        }
    }

    /// Port and name rules, one DNS lookup, every answer judged, then a connection to a checked
    /// address. Returns the connection and the rule report mode let through, if any.
    async fn judge_and_connect(
        &self,
        policy: &EgressPolicy,
        mode: EgressMode,
        target: &Target,
        record: &mut DecisionRecord,
    ) -> Result<(TcpStream, Option<DenyReason>), Refusal> {
        let mut would_deny = None;
        for reason in [
            policy.check_port(target.port()),
            policy.check_host(target.host()),
        ]
        .into_iter()
        .flatten()
        {
            if mode == EgressMode::Report && reason.relaxed_by_report_mode() {
                would_deny.get_or_insert(reason);
            } else {
                return Err(Refusal::Deny(reason));
            }
        }
        let addrs = match target.host() {
            Host::Ip(ip) => vec![*ip],
            Host::Domain(name) => {
                let started = Instant::now();
                let answer = self.dns.resolve(name).await;
                record.dns_ms = Some(ms_since(started));
                let resolution = answer.map_err(|e| {
                    tracing::debug!(target: "egress", id = %record.id, error = %e, "DNS failed");
                    Refusal::Deny(DenyReason::DnsFailure)
                })?;
                // A name that CNAMEs into a denied domain is that domain.
                for alias in &resolution.aliases {
                    if let Some(reason) = policy.check_alias(alias) {
                        tracing::debug!(target: "egress", id = %record.id, %alias, "CNAME chain reaches a denied domain");
                        if mode == EgressMode::Report && reason.relaxed_by_report_mode() {
                            would_deny.get_or_insert(reason);
                        } else {
                            return Err(Refusal::Deny(reason));
                        }
                    }
                }
                resolution.addrs
            }
        };
        // Every answer must pass: a name that also points somewhere private is not trusted for
        // any of its addresses.
        for ip in &addrs {
            if let Some(reason) = policy.check_ip(*ip) {
                record.resolved_ip = Some(*ip);
                return Err(Refusal::Deny(reason));
            }
        }
        let started = Instant::now();
        for ip in &addrs {
            record.resolved_ip = Some(*ip);
            self.metrics.connect_attempts.inc();
            let attempt = timeout(
                self.connect_timeout,
                TcpStream::connect(SocketAddr::new(*ip, target.port())),
            )
            .await;
            if let Ok(Ok(stream)) = attempt {
                record.connect_ms = Some(ms_since(started));
                let _ = stream.set_nodelay(true);
                return Ok((stream, would_deny));
            }
        }
        record.connect_ms = Some(ms_since(started));
        Err(Refusal::ConnectFailed(would_deny))
    }

    async fn refuse(
        &self,
        record: &DecisionRecord,
        inbound: &mut Inbound<OwnedReadHalf>,
        client_w: &mut OwnedWriteHalf,
        reason: DenyReason,
    ) {
        record.emit(&self.metrics, "deny", reason.as_str(), None);
        let _ = client_w
            .write_all(&denial_response(reason, &record.id))
            .await;
        let _ = client_w.shutdown().await;
        // Read (and drop) what the client still sends for a moment, so closing does not reset
        // the connection before it has read the refusal.
        let _ = timeout(Duration::from_secs(1), async {
            let mut sink = [0u8; 4096];
            let mut total = 0usize;
            while total < 256 * 1024 {
                match inbound.reader.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
    }

    /// One HTTP exchange: the request rewritten to origin-form without hop-by-hop and `Proxy-*`
    /// headers, its body copied by its framing, and the response passed back the same way.
    async fn forward(
        &self,
        exchange: Exchange<'_>,
        inbound: &mut Inbound<OwnedReadHalf>,
        client_w: &mut OwnedWriteHalf,
        upstream: TcpStream,
    ) -> std::io::Result<()> {
        let Exchange {
            head,
            target,
            body_framing,
            id,
        } = exchange;
        let Target::Http {
            host,
            port,
            path_and_query,
        } = target
        else {
            return Ok(());
        };
        let (up_r, mut up_w) = upstream.into_split();
        let host_header = if *port == 80 {
            host.to_string()
        } else {
            format!("{host}:{port}")
        };
        let tokens = connection_tokens(&head.headers);
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(
            format!(
                "{} {} HTTP/1.{}\r\nHost: {}\r\n",
                head.method, path_and_query, head.version, host_header
            )
            .as_bytes(),
        );
        let mut expects_continue = false;
        for (name, value) in &head.headers {
            if name.eq_ignore_ascii_case("expect")
                && value.trim_ascii().eq_ignore_ascii_case(b"100-continue")
            {
                expects_continue = true;
            }
            if is_hop_by_hop(name, &tokens) {
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        up_w.write_all(&out).await?;
        // We answered the expectation on the origin's behalf so the client sends its body now.
        if expects_continue && body_framing != Framing::None {
            client_w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        inbound.copy_body(body_framing, &mut up_w).await?;

        let mut from_origin = Inbound::new(up_r, self.idle);
        let response = loop {
            match from_origin.read_head(parse_response_head).await {
                // Interim responses (103 Early Hints, stray 100s) are dropped; the final one follows.
                Ok(r) if (100..200).contains(&r.status) && r.status != 101 => continue,
                Ok(r) if r.status == 101 => {
                    client_w
                        .write_all(&gateway_error(id, "unexpected_upgrade"))
                        .await?;
                    return Ok(());
                }
                Ok(r) => break r,
                Err(_) => {
                    client_w
                        .write_all(&gateway_error(id, "bad_response"))
                        .await?;
                    return Ok(());
                }
            }
        };
        let tokens = connection_tokens(&response.headers);
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(
            format!("HTTP/1.1 {} {}\r\n", response.status, response.reason).as_bytes(),
        );
        for (name, value) in &response.headers {
            if is_hop_by_hop(name, &tokens) {
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        client_w.write_all(&out).await?;
        let framing = response_framing(&head.method, response.status, &response.headers);
        from_origin.copy_body(framing, client_w).await?;
        Ok(())
    }
}

/// Copy bytes both ways until both sides finish or nothing moves for `idle`.
async fn tunnel(
    inbound: Inbound<OwnedReadHalf>,
    mut client_w: OwnedWriteHalf,
    upstream: TcpStream,
    idle: Duration,
) {
    let (mut up_r, mut up_w) = upstream.into_split();
    // Bytes the client sent right after CONNECT (e.g. a TLS ClientHello) belong to the tunnel.
    let early = inbound.buffered().to_vec();
    let mut client_r = inbound.reader;
    if !early.is_empty() && up_w.write_all(&early).await.is_err() {
        return;
    }
    let mut from_client = vec![0u8; 16 * 1024];
    let mut from_origin = vec![0u8; 16 * 1024];
    let (mut client_open, mut origin_open) = (true, true);
    while client_open || origin_open {
        let step = timeout(idle, async {
            tokio::select! {
                r = client_r.read(&mut from_client), if client_open => (true, r),
                r = up_r.read(&mut from_origin), if origin_open => (false, r),
            }
        })
        .await;
        let Ok((is_client, result)) = step else {
            break;
        };
        match (is_client, result) {
            (true, Ok(0)) => {
                client_open = false;
                let _ = up_w.shutdown().await;
            }
            (false, Ok(0)) => {
                origin_open = false;
                let _ = client_w.shutdown().await;
            }
            (true, Ok(n)) => {
                if !matches!(
                    timeout(idle, up_w.write_all(&from_client[..n])).await,
                    Ok(Ok(()))
                ) {
                    break;
                }
            }
            (false, Ok(n)) => {
                if !matches!(
                    timeout(idle, client_w.write_all(&from_origin[..n])).await,
                    Ok(Ok(()))
                ) {
                    break;
                }
            }
            (_, Err(_)) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_targets_carry_no_credentials_or_queries() {
        assert_eq!(
            loggable_target("http://user:hunter2@example.com/a?token=s3cret"),
            "http://***@example.com/a"
        );
        assert_eq!(loggable_target("u:p@host:443"), "***@host:443");
        assert_eq!(loggable_target("/x\r\n?q"), "/x??");
    }

    /// The edge builds the proxy before entering any runtime.
    #[test]
    fn new_works_outside_a_runtime() {
        let config = EgressConfig {
            dns_servers: vec!["127.0.0.1:5353".into()],
            ..EgressConfig::default()
        };
        EgressProxy::new(config, &Registry::new()).unwrap();
        EgressProxy::new(EgressConfig::default(), &Registry::new()).unwrap();
    }
}
