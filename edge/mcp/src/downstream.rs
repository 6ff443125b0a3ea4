//! The MCP server clients talk to at `/mcp`: an rmcp `ServerHandler` whose tools are the
//! union of the healthy upstreams' tools that the calling client may use.
//!
//! rmcp's `StreamableHttpService` does the transport for both revisions (2026-07-28
//! sessionless requests with `server/discover` and `Mcp-Method`/`Mcp-Name` checks, and
//! 2025-11-25 sessions with `initialize`, GET stream and DELETE); this handler only sees
//! requests, with the edge's `Caller` in the HTTP request parts.
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CancelledNotificationParam,
    ClientRequest, ErrorData, GetPromptRequest, GetPromptRequestParams, GetPromptResponse,
    Implementation, ListPromptsRequest, ListPromptsResult, ListResourceTemplatesRequest,
    ListResourceTemplatesResult, ListResourcesRequest, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ReadResourceRequest, ReadResourceRequestParams, ReadResourceResponse,
    ResultType, ServerCapabilities, ServerConfig, ServerResult, SubscriptionFilter,
};
use rmcp::service::{
    NotificationContext, Peer, PeerRequestOptions, RequestContext, RoleClient, RoleServer,
    ServiceError, SubscriptionContext,
};
use rmcp::ServerHandler;

use crate::hub::HubCore;
use crate::naming::exposed_name;
use crate::rpc_error::{CallError, Unavailable};
use crate::upstream::Upstream;
use crate::Caller;

/// Marks a call whose rate-limit token the HTTP layer already took (so it answered 429 itself
/// when over the limit), so the handler does not take a second one.
#[derive(Clone, Copy, Debug)]
pub struct RateAdmitted;

#[derive(Clone)]
pub struct HubService {
    pub core: Arc<HubCore>,
}

pub fn caller_of(extensions: &rmcp::model::Extensions) -> Caller {
    extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.extensions.get::<Caller>().cloned())
        .unwrap_or_else(Caller::anonymous)
}

fn rate_admitted(extensions: &rmcp::model::Extensions) -> bool {
    extensions
        .get::<http::request::Parts>()
        .is_some_and(|p| p.extensions.get::<RateAdmitted>().is_some())
}

impl HubService {
    fn info() -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_prompts()
                .enable_resources()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("aibox-edge", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Tools of every MCP server registered with this aibox edge, named server__tool.",
        )
    }
}

impl ServerHandler for HubService {
    fn get_info(&self) -> ServerConfig {
        Self::info()
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        self.core.add_session(context.peer);
    }

    fn accepted_subscription_filter(
        &self,
        _requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let mut filter = SubscriptionFilter::new();
        filter.tools_list_changed = Some(true);
        Some(filter)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let mut rx = self.core.changes.subscribe();
        loop {
            tokio::select! {
                _ = context.cancelled() => return Ok(()),
                _ = self.core.cancel.cancelled() => return Ok(()),
                r = rx.recv() => match r {
                    Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Coalesce a burst of changes into one notification.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        while rx.try_recv().is_ok() {}
                        if context.sink().notify_tool_list_changed().await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                },
            }
        }
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let caller = caller_of(&context.extensions);
        let mut prompts = Vec::new();
        for up in self.served(&caller, |u| u.offers_prompts()) {
            let Some(peer) = up.peer() else { continue };
            let req = ClientRequest::ListPromptsRequest(ListPromptsRequest {
                method: Default::default(),
                params: None,
                extensions: Default::default(),
            });
            match raw(&peer, req, up.settings.timeout).await {
                Ok(ServerResult::ListPromptsResult(page)) => {
                    for mut p in page.prompts {
                        p.name = exposed_name(&up.name, &p.name);
                        prompts.push(p);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(server = %up.name, error = %e, "prompts/list failed"),
            }
        }
        Ok(ListPromptsResult::with_all_items(prompts)
            .with_cache_scope(rmcp::model::CacheScope::Private))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let caller = caller_of(&context.extensions);
        let exposed = request.name.clone();
        let Some(up) = self.core.server_of(&exposed) else {
            return Err(CallError::UnknownPrompt(exposed).into());
        };
        if !caller.may_use(&up.name, &up.spec().policy) {
            return Err(CallError::Forbidden {
                client: caller.client,
                tool: exposed,
            }
            .into());
        }
        let Some(peer) = up.peer() else {
            return Err(unavailable(&up, Unavailable::NotConnected).into());
        };
        // Find the server's own name for the exposed one (names may be shortened).
        let list = ClientRequest::ListPromptsRequest(ListPromptsRequest {
            method: Default::default(),
            params: None,
            extensions: Default::default(),
        });
        let original = match raw(&peer, list, up.settings.timeout).await? {
            ServerResult::ListPromptsResult(page) => page
                .prompts
                .into_iter()
                .map(|p| p.name)
                .find(|n| exposed_name(&up.name, n) == exposed),
            _ => None,
        };
        let Some(original) = original else {
            return Err(CallError::UnknownPrompt(exposed).into());
        };
        let mut params = GetPromptRequestParams::new(original);
        params.arguments = request.arguments;
        let req = ClientRequest::GetPromptRequest(GetPromptRequest::new(params));
        match raw(&peer, req, up.spec().policy.timeout).await? {
            ServerResult::GetPromptResult(mut r) => {
                r.result_type.get_or_insert(ResultType::COMPLETE);
                Ok(GetPromptResponse::Complete(r))
            }
            _ => Err(CallError::UnexpectedResult("unexpected prompts/get result").into()),
        }
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let caller = caller_of(&context.extensions);
        let mut resources = Vec::new();
        for up in self.served(&caller, |u| u.offers_resources()) {
            let Some(peer) = up.peer() else { continue };
            let req = ClientRequest::ListResourcesRequest(ListResourcesRequest {
                method: Default::default(),
                params: None,
                extensions: Default::default(),
            });
            match raw(&peer, req, up.settings.timeout).await {
                Ok(ServerResult::ListResourcesResult(page)) => resources.extend(page.resources),
                Ok(_) => {}
                Err(e) => tracing::warn!(server = %up.name, error = %e, "resources/list failed"),
            }
        }
        Ok(ListResourcesResult::with_all_items(resources)
            .with_cache_scope(rmcp::model::CacheScope::Private))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let caller = caller_of(&context.extensions);
        let mut templates = Vec::new();
        for up in self.served(&caller, |u| u.offers_resources()) {
            let Some(peer) = up.peer() else { continue };
            let req = ClientRequest::ListResourceTemplatesRequest(ListResourceTemplatesRequest {
                method: Default::default(),
                params: None,
                extensions: Default::default(),
            });
            if let Ok(ServerResult::ListResourceTemplatesResult(page)) =
                raw(&peer, req, up.settings.timeout).await
            {
                templates.extend(page.resource_templates);
            }
        }
        Ok(ListResourceTemplatesResult::with_all_items(templates)
            .with_cache_scope(rmcp::model::CacheScope::Private))
    }

    /// Resource URIs are the servers' own (renaming them would break clients that build
    /// URIs from templates), so a read goes to the first allowed server that can answer it.
    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let caller = caller_of(&context.extensions);
        let mut last = None;
        for up in self.served(&caller, |u| u.offers_resources()) {
            let Some(peer) = up.peer() else { continue };
            let req = ClientRequest::ReadResourceRequest(ReadResourceRequest::new(
                ReadResourceRequestParams::new(request.uri.clone()),
            ));
            match raw(&peer, req, up.spec().policy.timeout).await {
                Ok(ServerResult::ReadResourceResult(mut r)) => {
                    r.result_type.get_or_insert(ResultType::COMPLETE);
                    return Ok(ReadResourceResponse::Complete(r));
                }
                Ok(_) => {}
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .unwrap_or_else(|| CallError::NoResourceServer(request.uri.to_string()))
            .into())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let caller = caller_of(&context.extensions);
        let tools = self
            .core
            .visible_tools(&caller)
            .into_iter()
            .map(|t| {
                let mut tool = t.tool;
                tool.name = t.exposed.into();
                if tool.title.is_none() {
                    tool.title = Some(format!("{} ({})", t.original, t.upstream.name));
                }
                tool
            })
            .collect();
        // The list depends on who asks: never cacheable by shared intermediaries.
        Ok(ListToolsResult::with_all_items(tools)
            .with_cache_scope(rmcp::model::CacheScope::Private))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = caller_of(&context.extensions);
        let exposed = request.name.to_string();
        let client = caller.client.as_str();
        let m = &self.core.metrics;
        let Some((upstream, original)) = self.core.route(&exposed) else {
            return Err(self.unroutable(&caller, exposed).into());
        };
        let server = upstream.name.clone();
        let spec = upstream.spec();
        if !caller.may_use(&server, &spec.policy) {
            m.denials
                .with_label_values(&[&server, &exposed, client])
                .inc();
            tracing::warn!(client, tool = %exposed, request_id = %caller.request_id, "mcp call denied by policy");
            return Err(CallError::Forbidden {
                client: client.to_string(),
                tool: exposed,
            }
            .into());
        }
        if !rate_admitted(&context.extensions) {
            if let Err(wait) = self
                .core
                .check_rate(&server, spec.policy.rate_limit_rpm, client)
                .await
            {
                m.rate_limited
                    .with_label_values(&[&server, &exposed, client])
                    .inc();
                tracing::warn!(client, tool = %exposed, "mcp call rate limited");
                return Err(CallError::RateLimited { server, wait }.into());
            }
        }
        let timeout = spec.policy.timeout;
        let started = Instant::now();
        let outcome = self
            .forward(&upstream, &original, request, &context, timeout)
            .await;
        let label = match &outcome {
            Ok(CallToolResponse::Complete(r)) if r.is_error == Some(true) => "tool_error",
            Ok(_) => "ok",
            Err(e) if e.is_timeout() => "timeout",
            Err(_) => "error",
        };
        m.calls
            .with_label_values(&[&server, &exposed, client, label])
            .inc();
        m.latency
            .with_label_values(&[&server, &exposed, client])
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(client, tool = %exposed, outcome = label, ms = started.elapsed().as_millis() as u64, request_id = %caller.request_id, "mcp tool call");
        outcome.map_err(ErrorData::from)
    }
}

impl HubService {
    /// Served upstreams the caller may use that pass `offers`.
    fn served(&self, caller: &Caller, offers: impl Fn(&Upstream) -> bool) -> Vec<Arc<Upstream>> {
        self.core
            .upstreams()
            .into_iter()
            .filter(|u| u.health().state.serves_tools() && offers(u))
            .filter(|u| caller.may_use(&u.name, &u.spec().policy))
            .collect()
    }

    /// Why a name that is not a served tool cannot be called: its server is off-limits to the
    /// caller, or down, or the name is unknown.
    fn unroutable(&self, caller: &Caller, exposed: String) -> CallError {
        let Some(up) = self.core.server_of(&exposed) else {
            return CallError::UnknownTool(exposed);
        };
        let client = caller.client.as_str();
        if !caller.may_use(&up.name, &up.spec().policy) {
            // Not a listed tool: keep the caller's string out of the labels.
            self.core
                .metrics
                .denials
                .with_label_values(&[&up.name, "(unlisted)", client])
                .inc();
            tracing::warn!(client, tool = %exposed, request_id = %caller.request_id, "mcp call denied by policy");
            return CallError::Forbidden {
                client: client.to_string(),
                tool: exposed,
            };
        }
        let health = up.health();
        if !health.state.serves_tools() {
            return CallError::ServerDown {
                server: up.name.clone(),
                state: health.state,
                last_error: health.last_error,
            };
        }
        CallError::UnknownTool(exposed)
    }

    async fn forward(
        &self,
        upstream: &Arc<Upstream>,
        original: &str,
        request: CallToolRequestParams,
        context: &RequestContext<RoleServer>,
        timeout: Duration,
    ) -> Result<CallToolResponse, CallError> {
        let deadline = Instant::now() + timeout;
        let timed_out = || CallError::ToolTimeout {
            server: upstream.name.clone(),
            timeout,
        };
        let _permit = tokio::select! {
            p = tokio::time::timeout(timeout, upstream.permits.clone().acquire_owned()) => match p {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => return Err(unavailable(upstream, Unavailable::Stopped)),
                Err(_) => return Err(timed_out()),
            },
            _ = context.ct.cancelled() => return Err(CallError::Cancelled),
        };
        let Some(peer) = upstream.peer() else {
            return Err(unavailable(upstream, Unavailable::NotConnected));
        };
        let mut params = CallToolRequestParams::new(original.to_string());
        params.arguments = request.arguments;
        params.input_responses = request.input_responses;
        params.request_state = request.request_state;
        let call = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        let remaining = deadline.saturating_duration_since(Instant::now());
        let handle = peer
            .send_cancellable_request(call, PeerRequestOptions::with_timeout(remaining))
            .await
            .map_err(|e| unavailable(upstream, Unavailable::Session(e)))?;
        let upstream_id = handle.id.clone();
        let upstream_token = handle.progress_token.clone();
        let downstream_token = context.meta.get_progress_token();
        if let Some(token) = downstream_token {
            upstream.route_progress(upstream_token.clone(), (context.peer.clone(), token));
        }
        let result = tokio::select! {
            r = handle.await_response() => r,
            _ = context.ct.cancelled() => {
                let _ = peer.notify_cancelled(CancelledNotificationParam::new(
                    Some(upstream_id),
                    Some("cancelled by the client".into()),
                )).await;
                Err(ServiceError::Cancelled { reason: Some("cancelled by the client".into()) })
            }
        };
        upstream.forget_progress(&upstream_token);
        match result {
            Ok(ServerResult::CallToolResult(mut r)) => {
                // A 2025-11-25 server omits resultType; 2026-07-28 clients require it
                // (rmcp drops it again for older clients).
                r.result_type.get_or_insert(ResultType::COMPLETE);
                Ok(CallToolResponse::Complete(r))
            }
            Ok(ServerResult::InputRequiredResult(r)) => Ok(CallToolResponse::InputRequired(r)),
            Ok(ServerResult::CreateTaskResult(r)) => Ok(CallToolResponse::Task(r)),
            Ok(_) => Err(CallError::UnexpectedResult(
                "upstream answered tools/call with an unexpected result",
            )),
            Err(ServiceError::Timeout { .. }) => Err(timed_out()),
            Err(ServiceError::McpError(e)) => Err(CallError::Upstream(e)),
            Err(ServiceError::Cancelled { .. }) => Err(CallError::Cancelled),
            Err(e) => Err(unavailable(upstream, Unavailable::Session(e))),
        }
    }
}

/// One request to an upstream, bounded by `timeout`; upstream JSON-RPC errors pass through.
async fn raw(
    peer: &Peer<RoleClient>,
    request: ClientRequest,
    timeout: Duration,
) -> Result<ServerResult, CallError> {
    let handle = peer
        .send_cancellable_request(request, PeerRequestOptions::with_timeout(timeout))
        .await
        .map_err(CallError::Session)?;
    match handle.await_response().await {
        Ok(r) => Ok(r),
        Err(ServiceError::McpError(e)) => Err(CallError::Upstream(e)),
        Err(ServiceError::Timeout { .. }) => Err(CallError::UpstreamTimeout { timeout }),
        Err(e) => Err(CallError::Session(e)),
    }
}

fn unavailable(upstream: &Upstream, why: Unavailable) -> CallError {
    CallError::Unavailable {
        server: upstream.name.clone(),
        why,
    }
}
