//! The Pingora request path. Every request on the edge's port goes through here:
//!
//! ```text
//! request_filter ──┬─ edge path (/v1, /api, /mcp, /health, /ready, /metrics)
//!                  │     identify client → read body (limit) → axum router in-process
//!                  │     → write headers (X-Request-ID, Server-Timing) → stream body → log
//!                  └─ anything else → upstream_peer = dashboard → upstream_request_filter
//!                        (X-Request-ID, X-Forwarded-For) → response_filter → logging
//! ```
//!
//! Architecture Invariant: the edge's own routes never reach the dashboard, and the dashboard
//! never sees a client's `Authorization` header for the model or MCP routes.
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};
use tower::ServiceExt;

use crate::metrics::RequestRecord;
use crate::outcome::Outcome;
use crate::surface::{self, EdgeState, RequestContext};

pub struct EdgeGateway {
    state: Arc<EdgeState>,
    router: axum::Router,
}

const TAILSCALE_IDENTITY: &[&str] = &[
    "tailscale-user-login",
    "tailscale-user-name",
    "tailscale-user-profile-pic",
];

pub struct EdgeCtx {
    request_id: String,
    started: Instant,
}

/// Paths the edge answers itself; everything else belongs to the dashboard.
fn is_edge_path(path: &str) -> bool {
    path.starts_with("/v1/")
        || path == "/v1"
        || path.starts_with("/api/")
        || path == "/mcp"
        || path.starts_with("/mcp/")
        || matches!(path, "/health" | "/ready" | "/metrics")
}

/// A health check, a readiness probe (503 "not ready" is an answer, not a failure) or a metrics
/// scrape that was let in: logged at DEBUG, not INFO.
fn is_probe(path: &str, status: u16) -> bool {
    matches!(path, "/health" | "/ready") || (path == "/metrics" && status < 400)
}

/// The client's `X-Request-ID` when it is sane, else a new one.
fn request_id(session: &Session) -> String {
    session
        .get_header("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

impl EdgeGateway {
    pub fn new(state: Arc<EdgeState>, router: axum::Router) -> Self {
        Self { state, router }
    }

    async fn serve_local(&self, session: &mut Session, ctx: &EdgeCtx) -> pingora_core::Result<()> {
        // One copy of the request head, made before the body is read (which needs `&mut`).
        let (mut parts, ()) = {
            let head = session.req_header();
            let mut request = http::Request::new(());
            *request.method_mut() = head.method.clone();
            *request.uri_mut() = head.uri.clone();
            *request.headers_mut() = head.headers.clone();
            request.into_parts()
        };
        let path = parts.uri.path().to_owned();
        let client = self.state.clients.identify(&parts.headers);
        let trace = crate::trace::TraceContext::from_headers(&parts.headers);
        let limit = self.state.config.max_body_bytes;

        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let body = if declared.is_some_and(|n| n > limit) {
            None
        } else {
            let mut buf = BytesMut::with_capacity(declared.unwrap_or(0));
            let mut over = false;
            while let Some(chunk) = session.read_request_body().await? {
                if buf.len() + chunk.len() > limit {
                    over = true;
                    break;
                }
                buf.extend_from_slice(&chunk);
            }
            (!over).then(|| buf.freeze())
        };

        let mut _admission = None;
        let rc = RequestContext {
            id: ctx.request_id.clone(),
            client: client.clone(),
            started: ctx.started,
            trace,
        };
        // The caller's policy: 401 when keys are required, then its limits. The admission (a
        // concurrency slot) is held until the response is written.
        let governed = surface::governed(&path);
        let mcp_stream = path.starts_with("/mcp") && parts.method != http::Method::POST;
        let mut admitted = false;
        let mut watching = true;
        let admission = if !governed {
            Ok(None)
        } else if mcp_stream {
            // MCP's GET streams live as long as the session: they need a key, not a slot.
            client.authenticate().map(|()| None)
        } else {
            client.admit().await
        };
        let response = match (body, admission) {
            (None, _) => {
                // The rest of the body is not read, so the connection cannot be reused.
                session.set_keepalive(None);
                surface::too_large(&path, limit)
            }
            (Some(body), Err(refusal)) => {
                let kind = refusal.kind();
                tracing::warn!(request_id = %ctx.request_id, client = %client.name, path, refusal = kind, "request refused by policy");
                let resp = surface::refused(&path, &client.name, &refusal, &body);
                Outcome {
                    surface: surface_of(&path),
                    ..Outcome::default()
                }
                .attach(resp)
            }
            (Some(body), Ok(slot)) => {
                admitted = governed && !mcp_stream;
                _admission = slot;
                parts.extensions.insert(rc.clone());
                parts.extensions.insert(surface::ops::Peer(
                    session
                        .client_addr()
                        .and_then(|a| a.as_inet())
                        .map(|a| a.ip()),
                ));
                parts.extensions.insert(aibox_mcp::Caller {
                    client: client.name.clone(),
                    admin: client.admin,
                    request_id: ctx.request_id.clone(),
                    servers: client.server_grant(),
                });
                let request = http::Request::from_parts(parts, axum::body::Body::from(body));
                let routed = self.router.clone().oneshot(request);
                match unless_client_leaves(session, &mut watching, routed).await {
                    Some(Ok(r)) => r,
                    Some(Err(never)) => match never {},
                    None => {
                        // Gone while the handler waited (a model load, a slow upstream): the
                        // handler and its upstream request were dropped at once.
                        session.set_keepalive(None);
                        let outcome = Outcome::on(surface_of(&path));
                        if admitted {
                            rc.client.finished(0).await;
                        }
                        self.finish(&rc, &path, CLIENT_CLOSED, &outcome, true, None);
                        return Ok(());
                    }
                }
            }
        };

        let (parts, mut body) = response.into_parts();
        let mut outcome = parts
            .extensions
            .get::<Outcome>()
            .cloned()
            .unwrap_or_default();
        let mut header = ResponseHeader::build(parts.status, Some(parts.headers.len() + 4))?;
        for (k, v) in parts.headers.iter() {
            header.append_header(k.clone(), v.clone())?;
        }
        header.insert_header("x-request-id", &ctx.request_id)?;
        let until_headers = ctx.started.elapsed();
        let upstream = outcome.upstream_time;
        header.insert_header("server-timing", server_timing(until_headers, upstream))?;
        match http_body::Body::size_hint(&body).exact() {
            Some(n) => header.insert_header(http::header::CONTENT_LENGTH, n.to_string())?,
            None if !session.is_http2() => {
                header.insert_header(http::header::TRANSFER_ENCODING, "chunked")?
            }
            None => {}
        }
        let status = parts.status.as_u16();
        // Streams (SSE, NDJSON) have no length: their first frame is the first token's way out.
        let streamed = http_body::Body::size_hint(&body).exact().is_none();
        let mut first_frame: Option<Duration> = None;
        session
            .write_response_header(Box::new(header), false)
            .await?;

        let mut client_gone = false;
        loop {
            // A stream that is silent for a while (a model thinking) still notices a gone client.
            let Some(frame) = unless_client_leaves(session, &mut watching, body.frame()).await
            else {
                client_gone = true;
                break;
            };
            let Some(Ok(frame)) = frame else { break };
            if let Ok(data) = frame.into_data() {
                if streamed && first_frame.is_none() && !data.is_empty() {
                    first_frame = Some(ctx.started.elapsed());
                }
                if session
                    .write_response_body(Some(data), false)
                    .await
                    .is_err()
                {
                    // Dropping the body drops the upstream request: the client left, so do we.
                    client_gone = true;
                    break;
                }
            }
        }
        drop(body);
        if !client_gone {
            session.write_response_body(None, true).await?;
        }
        // The body is done (or dropped): its relays have handed over their tallies.
        outcome.settle();
        if admitted {
            rc.client
                .finished(outcome.tokens_in + outcome.tokens_out)
                .await;
        }
        self.finish(&rc, &path, status, &outcome, client_gone, first_frame);
        Ok(())
    }

    /// One log line and the metrics for a request the edge answered itself.
    fn finish(
        &self,
        rc: &RequestContext,
        path: &str,
        status: u16,
        outcome: &Outcome,
        client_gone: bool,
        first_frame: Option<Duration>,
    ) {
        let total = rc.started.elapsed();
        let upstream_ms = outcome.upstream_time.map(|u| u.as_secs_f64() * 1000.0);
        if is_probe(path, status) {
            // Docker's health check every 5 s, readiness probes and scrapes are not traffic (and
            // carry no surface, so there are no request metrics to record either).
            tracing::debug!(request_id = %rc.id, trace_id = %rc.trace.trace_id, path, status, "request");
            return;
        }
        tracing::info!(
            request_id = %rc.id,
            trace_id = %rc.trace.trace_id,
            client = %rc.client.name,
            path,
            status,
            provider = outcome.provider.as_deref().unwrap_or("-"),
            endpoint = outcome.endpoint.as_deref().unwrap_or("-"),
            model = outcome.model.as_deref().unwrap_or("-"),
            tokens_in = outcome.tokens_in,
            tokens_out = outcome.tokens_out,
            error = outcome.error.unwrap_or("-"),
            client_gone,
            total_ms = total.as_secs_f64() * 1000.0,
            upstream_ms = upstream_ms.unwrap_or(0.0),
            "request"
        );
        if !outcome.surface.is_empty() {
            self.state.metrics.record(&RequestRecord {
                surface: outcome.surface,
                route: outcome.route.as_deref().unwrap_or("other"),
                provider: outcome.provider.as_deref().unwrap_or("none"),
                model: outcome.model.as_deref().unwrap_or("none"),
                client: &rc.client.label,
                status,
                error: outcome.error.or(client_gone.then_some("client_gone")),
                total,
                upstream: outcome.upstream_time,
                tokens_in: outcome.tokens_in,
                tokens_out: outcome.tokens_out,
                first_token: first_frame.filter(|_| status < 400 && outcome.provider.is_some()),
            });
        }
    }
}

/// nginx's status for a request whose client closed the connection before the answer.
const CLIENT_CLOSED: u16 = 499;

/// `work`, unless the client leaves first (closes or resets its connection, as Pingora's own
/// proxy loop notices with `read_body_or_idle`): then `work` is dropped, and with it any
/// upstream request it holds open, and the answer is `None`. The request body is read by now,
/// so anything the client sends is not this request's: `watching` turns off, for good, when the
/// client sends bytes (a pipelined request) rather than leaving.
async fn unless_client_leaves<T>(
    session: &mut Session,
    watching: &mut bool,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    use pingora_core::ErrorType;
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return Some(out),
            read = session.downstream_session.read_body_or_idle(true), if *watching => {
                match read {
                    Err(e) if matches!(
                        e.etype(),
                        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::H2Error
                    ) => return None,
                    _ => {
                        *watching = false;
                        session.set_keepalive(None);
                    }
                }
            }
        }
    }
}

/// The surface a refused request is counted under in the metrics (MCP counts its own).
fn surface_of(path: &str) -> &'static str {
    if surface::is_anthropic(path) {
        "anthropic"
    } else if path.starts_with("/v1") {
        "openai"
    } else if path.starts_with("/mcp") {
        ""
    } else {
        "ollama"
    }
}

fn server_timing(until_headers: Duration, upstream: Option<Duration>) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match upstream {
        Some(u) => format!(
            "edge;dur={:.3}, upstream;dur={:.3}",
            ms(until_headers.saturating_sub(u)),
            ms(u)
        ),
        None => format!("edge;dur={:.3}", ms(until_headers)),
    }
}

#[async_trait]
impl ProxyHttp for EdgeGateway {
    type CTX = EdgeCtx;

    fn new_ctx(&self) -> EdgeCtx {
        EdgeCtx {
            request_id: String::new(),
            started: Instant::now(),
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut EdgeCtx,
    ) -> pingora_core::Result<bool> {
        ctx.started = Instant::now();
        ctx.request_id = request_id(session);
        if is_edge_path(session.req_header().uri.path()) {
            self.serve_local(session, ctx).await?;
            return Ok(true);
        }
        if self.state.config.dashboard_url.is_none() {
            let body = Bytes::from_static(
                b"<!doctype html><title>aibox</title><p>The dashboard is not configured (DASHBOARD_URL).</p>",
            );
            let mut h = ResponseHeader::build(404, Some(3))?;
            h.insert_header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")?;
            h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
            h.insert_header("x-request-id", &ctx.request_id)?;
            session.write_response_header(Box::new(h), false).await?;
            session.write_response_body(Some(body), true).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut EdgeCtx,
    ) -> pingora_core::Result<Box<HttpPeer>> {
        let url = self
            .state
            .config
            .dashboard_url
            .as_deref()
            .unwrap_or_default();
        let authority = url
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or(url)
            .split('/')
            .next()
            .unwrap_or_default();
        // Resolve here, asynchronously: compose service names change address on recreate.
        let addr = tokio::net::lookup_host(authority)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                pingora_core::Error::explain(
                    pingora_core::ErrorType::ConnectNoRoute,
                    format!("cannot resolve the dashboard at {authority}"),
                )
            })?;
        Ok(Box::new(HttpPeer::new(addr, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut EdgeCtx,
    ) -> pingora_core::Result<()> {
        upstream_request.insert_header("x-request-id", &ctx.request_id)?;
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        if let Some(ip) = peer {
            upstream_request.insert_header("x-forwarded-for", ip.to_string())?;
        }
        // Identity headers count only from the proxy that is allowed to set them; anyone else
        // reaching the edge directly could forge them.
        let trusted = peer.is_some_and(|ip| {
            self.state
                .config
                .trusted_proxies
                .iter()
                .any(|net| net.contains(&ip))
        });
        if !trusted {
            for h in TAILSCALE_IDENTITY {
                upstream_request.remove_header(*h);
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut EdgeCtx,
    ) -> pingora_core::Result<()> {
        upstream_response.insert_header("x-request-id", &ctx.request_id)?;
        Ok(())
    }

    async fn logging(
        &self,
        session: &mut Session,
        e: Option<&pingora_core::Error>,
        ctx: &mut EdgeCtx,
    ) {
        // Requests the edge answered itself were logged in `finish`.
        if ctx.request_id.is_empty() || is_edge_path(session.req_header().uri.path()) {
            return;
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        tracing::info!(
            request_id = %ctx.request_id,
            path = session.req_header().uri.path(),
            status,
            upstream = "dashboard",
            error = e.map(|e| e.to_string()).unwrap_or_default(),
            total_ms = ctx.started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
    }
}
