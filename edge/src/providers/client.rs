//! The edge's one HTTP client: one request/response exchange with an upstream over Pingora's
//! own connector, on the runtime of the request that makes it (no client runtime, no extra task
//! per connection), with pooled connections handed back once a body has been read to its end.
//!
//! Timeouts, all from the config: connecting (`PeerOptions::connection_timeout`), waiting for
//! the response headers (`PeerOptions::read_timeout`, and the whole exchange bounded by the same
//! first-byte budget), idle pooled connections (`PeerOptions::idle_timeout`). Silence inside a
//! body and the request's total are the body reader's (`api::stream::TimedBody`), so its
//! messages say which one broke a stream.
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use pingora_core::connectors::http::Connector;
use pingora_core::connectors::ConnectorOptions;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::ErrorType;
use pingora_http::RequestHeader;

/// Pooled connections idle this long are closed.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Connections kept for reuse, over all upstreams.
const POOL_SIZE: usize = 256;
/// A host name's address is looked up again after this long (compose services move on
/// recreate; a lookup per request would cost a blocking-pool hop each time).
const RESOLVE_TTL: Duration = Duration::from_secs(10);
/// A pooled connection the upstream closed meanwhile fails at once; try a fresh one.
const STALE_RETRIES: usize = 2;

/// Where an endpoint is: its URL taken apart once, and its address looked up lazily.
pub struct Target {
    tls: bool,
    host: String,
    port: u16,
    /// What the URL has after the authority (`/v1` for an OpenAI-compatible base URL).
    base_path: String,
    authority: String,
    resolved: Mutex<Option<(SocketAddr, Instant)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0:?} is not a URL")]
    NotAUrl(String),
    #[error("{0:?} must be http or https")]
    Scheme(String),
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, TargetError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| TargetError::NotAUrl(url.to_owned()))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(_) => return Err(TargetError::Scheme(url.to_owned())),
            None => return Err(TargetError::NotAUrl(url.to_owned())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| TargetError::NotAUrl(url.to_owned()))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(TargetError::NotAUrl(url.to_owned()));
        }
        Ok(Self {
            tls,
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            base_path: uri.path().trim_end_matches('/').to_owned(),
            authority: authority.as_str().to_owned(),
            host,
            resolved: Mutex::new(None),
        })
    }

    async fn address(&self) -> Result<SocketAddr, ExchangeError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let cached = *self.resolved.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((addr, at)) = cached {
            if at.elapsed() < RESOLVE_TTL {
                return Ok(addr);
            }
        }
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| ExchangeError::Connect(format!("cannot resolve {}", self.host)))?;
        *self.resolved.lock().unwrap_or_else(|p| p.into_inner()) = Some((addr, Instant::now()));
        Ok(addr)
    }

    fn forget_address(&self) {
        *self.resolved.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// One request to send: `path` (with its query) is appended to the endpoint's URL.
#[derive(Clone)]
pub struct UpstreamRequest {
    pub method: Method,
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl UpstreamRequest {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    /// A JSON body, already encoded.
    pub fn json(method: Method, path: impl Into<String>, body: Bytes) -> Self {
        Self::new(method, path)
            .header(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .body(body)
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// A header from text; a value that cannot be a header is left out.
    pub fn header_str(self, name: &'static str, value: &str) -> Self {
        match HeaderValue::from_str(value) {
            Ok(v) => self.header(HeaderName::from_static(name), v),
            Err(_) => self,
        }
    }

    pub fn body(mut self, body: Bytes) -> Self {
        self.body = body;
        self
    }
}

/// Why an exchange gave no response: the failover loop tells them apart.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("{0}")]
    Connect(String),
    #[error("no response headers within {0:?}")]
    Timeout(Duration),
}

/// Why a body broke off.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(String);

/// An upstream's answer whose headers arrived; the body is read as a stream or to the end.
pub struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Body,
}

impl Response {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body chunk by chunk, as it arrives.
    pub fn bytes_stream(self) -> Body {
        self.body
    }

    /// The whole body, unbounded in time (callers on the request path bound it themselves).
    pub async fn bytes(self) -> Result<Bytes, BodyError> {
        use futures::StreamExt;
        let mut body = self.body;
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.next().await {
            buf.extend_from_slice(&chunk?);
        }
        Ok(buf.freeze())
    }

    pub async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, BodyError> {
        let bytes = self.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| BodyError(format!("not JSON: {e}")))
    }

    pub async fn text(self) -> Result<String, BodyError> {
        Ok(String::from_utf8_lossy(&self.bytes().await?).into_owned())
    }

    /// The body keeps `in_flight` until it is read or dropped.
    pub fn holding(mut self, in_flight: super::InFlight) -> Self {
        self.body.held = Some(in_flight);
        self
    }
}

/// The body of a [`Response`]. Read to its end, the connection goes back to the pool; dropped
/// before that, the connection is closed (which is how an upstream learns the client left).
pub struct Body {
    stream: Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>,
    /// An in-flight count this body holds (admin calls, whose caller has no other place for it).
    held: Option<super::InFlight>,
}

impl Stream for Body {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

/// The connector and the settings every exchange shares.
pub struct Client {
    connector: Arc<Connector>,
    connect_timeout: Duration,
}

impl Client {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connector: Arc::new(Connector::new(Some(ConnectorOptions::new(POOL_SIZE)))),
            connect_timeout,
        }
    }

    fn peer(&self, target: &Target, addr: SocketAddr, first_byte: Duration) -> HttpPeer {
        let sni = if target.tls {
            target.host.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, target.tls, sni);
        let o = &mut peer.options;
        o.connection_timeout = Some(self.connect_timeout);
        o.total_connection_timeout = Some(self.connect_timeout.saturating_mul(2));
        o.read_timeout = Some(first_byte);
        o.write_timeout = Some(first_byte);
        o.idle_timeout = Some(POOL_IDLE);
        peer
    }

    /// Send `request` to `target` and wait up to `first_byte` for the response headers.
    pub async fn exchange(
        &self,
        target: &Target,
        request: &UpstreamRequest,
        bearer: Option<&str>,
        first_byte: Duration,
    ) -> Result<Response, ExchangeError> {
        match tokio::time::timeout(
            first_byte,
            self.exchange_within(target, request, bearer, first_byte),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(ExchangeError::Timeout(first_byte)),
        }
    }

    async fn exchange_within(
        &self,
        target: &Target,
        request: &UpstreamRequest,
        bearer: Option<&str>,
        first_byte: Duration,
    ) -> Result<Response, ExchangeError> {
        let addr = target.address().await?;
        let peer = self.peer(target, addr, first_byte);
        let mut attempt = 0;
        loop {
            let (mut session, reused) =
                self.connector.get_http_session(&peer).await.map_err(|e| {
                    target.forget_address();
                    ExchangeError::Connect(describe(&e))
                })?;
            session.set_read_timeout(peer.options.read_timeout);
            session.set_write_timeout(peer.options.write_timeout);
            let head = request_head(target, request, bearer)?;
            match send_and_read_head(&mut session, head, &request.body).await {
                Ok(()) => return Ok(self.response(session, peer)),
                // A pooled connection the upstream had closed: nothing reached it; try anew.
                Err(e) if reused && attempt < STALE_RETRIES && is_stale(&e) => attempt += 1,
                Err(e) if e.etype() == &ErrorType::ReadTimedout => {
                    return Err(ExchangeError::Timeout(first_byte))
                }
                Err(e) => return Err(ExchangeError::Connect(describe(&e))),
            }
        }
    }

    fn response(&self, session: HttpSession, peer: HttpPeer) -> Response {
        let (status, headers) = match session.response_header() {
            Some(h) => (h.status, h.headers.clone()),
            None => (StatusCode::BAD_GATEWAY, HeaderMap::new()),
        };
        let connector = self.connector.clone();
        let stream =
            futures::stream::unfold(Some((session, connector, peer)), |state| async move {
                let (mut session, connector, peer) = state?;
                match session.read_response_body().await {
                    Ok(Some(chunk)) => Some((Ok(chunk), Some((session, connector, peer)))),
                    Ok(None) => {
                        let idle = peer.options.idle_timeout;
                        connector.release_http_session(session, &peer, idle).await;
                        None
                    }
                    Err(e) => Some((Err(BodyError(describe(&e))), None)),
                }
            });
        Response {
            status,
            headers,
            body: Body {
                stream: Box::pin(stream),
                held: None,
            },
        }
    }
}

fn request_head(
    target: &Target,
    request: &UpstreamRequest,
    bearer: Option<&str>,
) -> Result<Box<RequestHeader>, ExchangeError> {
    let bad = |e: pingora_core::BError| ExchangeError::Connect(format!("bad request head: {e}"));
    let path = format!("{}{}", target.base_path, request.path);
    let mut head = RequestHeader::build(
        request.method.clone(),
        path.as_bytes(),
        Some(8 + request.headers.len()),
    )
    .map_err(bad)?;
    head.insert_header(http::header::HOST, &target.authority)
        .map_err(bad)?;
    if !request.body.is_empty() || !matches!(request.method, Method::GET | Method::HEAD) {
        head.insert_header(http::header::CONTENT_LENGTH, request.body.len().to_string())
            .map_err(bad)?;
    }
    if let Some(key) = bearer {
        head.insert_header(http::header::AUTHORIZATION, format!("Bearer {key}"))
            .map_err(bad)?;
    }
    for (k, v) in &request.headers {
        head.append_header(k.clone(), v.clone()).map_err(bad)?;
    }
    Ok(Box::new(head))
}

async fn send_and_read_head(
    session: &mut HttpSession,
    head: Box<RequestHeader>,
    body: &Bytes,
) -> pingora_core::Result<()> {
    session.write_request_header(head).await?;
    if !body.is_empty() {
        session.write_request_body(body.clone(), true).await?;
    }
    session.finish_request_body().await?;
    // `100 Continue` and other informational heads come before the real one.
    loop {
        session.read_response_header().await?;
        match session.response_header() {
            Some(h) if h.status.is_informational() => continue,
            _ => return Ok(()),
        }
    }
}

fn is_stale(e: &pingora_core::Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectionClosed
            | ErrorType::ReadError
            | ErrorType::WriteError
            | ErrorType::H1Error
    )
}

/// A Pingora error for a log line or an error message: what failed and why, without internals.
pub fn describe(e: &pingora_core::Error) -> String {
    match e.etype() {
        ErrorType::ConnectRefused | ErrorType::ConnectNoRoute => {
            "connection refused or unreachable".into()
        }
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            "timed out".into()
        }
        ErrorType::ConnectionClosed => "connection closed by the upstream".into(),
        _ => {
            let mut msg = e.etype().as_str().to_owned();
            if let Some(c) = e.context.as_ref() {
                msg = format!("{msg}: {c}");
            }
            if let Some(cause) = e.cause.as_ref() {
                msg = format!("{msg}: {cause}");
            }
            msg
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_taken_apart_once() {
        let t = Target::parse("http://b:8000/v1").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.base_path.as_str()),
            (false, "b", 8000, "/v1")
        );
        assert_eq!(t.authority, "b:8000");
        let t = Target::parse("https://api.example.com").unwrap();
        assert_eq!((t.tls, t.port, t.base_path.as_str()), (true, 443, ""));
        let t = Target::parse("http://[::1]:11434/").unwrap();
        assert_eq!((t.host.as_str(), t.base_path.as_str()), ("::1", ""));
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("not a url").is_err());
    }
}
