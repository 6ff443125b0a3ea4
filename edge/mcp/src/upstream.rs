//! One supervised connection per configured server, shared by every client.
//!
//! A supervisor task connects (spawning the stdio child in its own process group, or opening a
//! streamable HTTP client), probes on an interval with what the negotiated revision offers
//! (`tools/list` on 2026-07-28, `ping` before), counts failures, drops and re-opens the
//! connection with back-off, and publishes health plus the server's tool list.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use process_wrap::tokio::{CommandWrap, ProcessGroup};
use rmcp::model::{
    ClientCapabilities, ClientRequest, Implementation, InitializeRequestParams, ListToolsRequest,
    PaginatedRequestParams, PingRequest, ProgressNotificationParam, ProgressToken, ProtocolVersion,
    ServerResult, Tool,
};
use rmcp::service::{
    ClientInitializeError, ClientLifecycleMode, ClientServiceExt, NotificationContext, Peer,
    RoleClient, RoleServer, RunningService, ServiceError,
};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::ClientHandler;
use serde::Serialize;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::registry::{ServerSpec, SpecStatus, Transport};
use crate::sse_client::{SseClientTransport, SseOpenError};

/// Why a probe failed; its message becomes the server's `last_error` in the health API.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("stdio server exited")]
    StdioExited,
    #[error("connection closed")]
    ConnectionClosed,
    #[error("ping failed: {0}")]
    Ping(#[source] ServiceError),
    #[error("ping timed out after {0:?}")]
    PingTimeout(Duration),
    #[error("connecting timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("tools/list failed: {0}")]
    ListTools(#[source] ServiceError),
    #[error("tools/list timed out after {0:?}")]
    ListToolsTimeout(Duration),
    #[error("tools/list: unexpected response")]
    ListToolsUnexpected,
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

/// Why opening a connection to a server failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("starting {command:?} failed: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("handshake failed: {0}")]
    Handshake(#[source] Box<ClientInitializeError>),
    #[error("header {name:?}: {source}")]
    HeaderName {
        name: String,
        #[source]
        source: http::header::InvalidHeaderName,
    },
    #[error("header {name:?}: invalid value")]
    HeaderValue { name: String },
    #[error("http client: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error(transparent)]
    SseOpen(#[from] SseOpenError),
    #[error("connecting to {url} (sse) failed: {source}")]
    SseHandshake {
        url: String,
        #[source]
        source: Box<ClientInitializeError>,
    },
    #[error("connecting to {url} failed: {source}")]
    HttpHandshake {
        url: String,
        #[source]
        source: Box<ClientInitializeError>,
    },
    #[error("image servers are not served yet")]
    ImageNotServed,
}

/// Probe timings and thresholds shared by all supervisors.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub degraded_latency: Duration,
    pub max_backoff: Duration,
    pub max_concurrency: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Not yet connected since (re)configuration.
    Starting,
    Healthy,
    /// Slow probes or some recent failures; tools stay listed.
    Degraded,
    /// `unhealthy_after` consecutive failures; tools are out of `tools/list`.
    Unhealthy,
    Disabled,
    MissingSecrets,
    NotServed,
}

impl HealthState {
    pub fn serves_tools(self) -> bool {
        matches!(self, HealthState::Healthy | HealthState::Degraded)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub state: HealthState,
    pub last_error: Option<String>,
    pub latency_ms: Option<u64>,
    pub consecutive_failures: u32,
    pub last_probe_unix_ms: Option<u64>,
    pub protocol_version: Option<String>,
    pub restarts: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_secrets: Vec<String>,
}

/// Notifies the hub that some server's visible tools changed (health or `list_changed`).
pub type ChangeSignal = Arc<dyn Fn() + Send + Sync>;

/// Where to send an upstream progress notification: the downstream peer and its token.
type ProgressRoute = (Peer<RoleServer>, ProgressToken);

pub struct Upstream {
    pub name: String,
    spec: RwLock<Arc<ServerSpec>>,
    health: RwLock<Health>,
    tools: RwLock<Arc<Vec<Tool>>>,
    peer: RwLock<Option<Peer<RoleClient>>>,
    /// Bounds calls in flight to this server; never a process per client.
    pub permits: Arc<Semaphore>,
    cancel: CancellationToken,
    /// Process group of the running stdio child (0 when none).
    pgid: Arc<AtomicU32>,
    restarts: AtomicU64,
    progress: Arc<Mutex<HashMap<ProgressToken, ProgressRoute>>>,
    refresh_tx: mpsc::UnboundedSender<()>,
    /// Whether the connected server offers prompts / resources.
    offers_prompts: AtomicBool,
    offers_resources: AtomicBool,
    pub settings: ProbeSettings,
    on_change: ChangeSignal,
    /// The hub's tasks: the supervisor and the child's stderr reader are awaited on shutdown.
    tasks: TaskTracker,
}

impl Upstream {
    /// Creates the upstream and, when the spec is runnable, starts its supervisor.
    pub fn start(
        spec: ServerSpec,
        settings: ProbeSettings,
        on_change: ChangeSignal,
        tasks: &TaskTracker,
    ) -> Arc<Self> {
        let initial = match &spec.status {
            SpecStatus::Enabled => HealthState::Starting,
            SpecStatus::Disabled => HealthState::Disabled,
            SpecStatus::MissingSecrets(_) => HealthState::MissingSecrets,
            SpecStatus::NotServed => HealthState::NotServed,
        };
        let missing = match &spec.status {
            SpecStatus::MissingSecrets(m) => m.clone(),
            _ => Vec::new(),
        };
        let last_error = match &spec.status {
            SpecStatus::MissingSecrets(m) => Some(format!(
                "not started: missing secrets {} (set them in the environment or the secrets file)",
                m.join(", ")
            )),
            SpecStatus::NotServed => {
                Some("image servers are not served yet (containers come in a later release)".into())
            }
            _ => None,
        };
        let (refresh_tx, refresh_rx) = mpsc::unbounded_channel();
        let up = Arc::new(Self {
            name: spec.name.clone(),
            permits: Arc::new(Semaphore::new(settings.max_concurrency)),
            spec: RwLock::new(Arc::new(spec)),
            health: RwLock::new(Health {
                state: initial,
                last_error,
                latency_ms: None,
                consecutive_failures: 0,
                last_probe_unix_ms: None,
                protocol_version: None,
                restarts: 0,
                missing_secrets: missing,
            }),
            tools: RwLock::new(Arc::new(Vec::new())),
            peer: RwLock::new(None),
            cancel: CancellationToken::new(),
            pgid: Arc::new(AtomicU32::new(0)),
            restarts: AtomicU64::new(0),
            progress: Arc::new(Mutex::new(HashMap::new())),
            refresh_tx,
            offers_prompts: AtomicBool::new(false),
            offers_resources: AtomicBool::new(false),
            settings,
            on_change,
            tasks: tasks.clone(),
        });
        if initial == HealthState::Starting {
            tasks.spawn(supervise(
                Arc::downgrade(&up),
                up.cancel.clone(),
                refresh_rx,
            ));
        }
        up
    }

    pub fn spec(&self) -> Arc<ServerSpec> {
        self.spec
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Policy-only edits apply in place so sessions and the child process survive.
    pub fn update_policy(&self, spec: ServerSpec) {
        *self.spec.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(spec);
    }

    pub fn health(&self) -> Health {
        self.health
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The server's tools while it is served, else none.
    pub fn tools(&self) -> Arc<Vec<Tool>> {
        if self.health().state.serves_tools() {
            self.tools
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        } else {
            Arc::new(Vec::new())
        }
    }

    pub fn peer(&self) -> Option<Peer<RoleClient>> {
        if !self.health().state.serves_tools() {
            return None;
        }
        self.peer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn offers_prompts(&self) -> bool {
        self.offers_prompts.load(Ordering::Relaxed)
    }

    pub fn offers_resources(&self) -> bool {
        self.offers_resources.load(Ordering::Relaxed)
    }

    /// Routes progress for an upstream token to a downstream peer until `forget_progress`.
    pub fn route_progress(&self, upstream: ProgressToken, route: ProgressRoute) {
        self.progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(upstream, route);
    }

    pub fn forget_progress(&self, upstream: &ProgressToken) {
        self.progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(upstream);
    }

    /// Stops the supervisor and kills the child's whole process group.
    pub fn stop(&self) {
        self.cancel.cancel();
        kill_group(&self.pgid);
        *self.peer.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn set_health(&self, f: impl FnOnce(&mut Health)) {
        let (before, after) = {
            let mut h = self.health.write().unwrap_or_else(PoisonError::into_inner);
            let before = h.state.serves_tools();
            f(&mut h);
            (before, h.state.serves_tools())
        };
        if before != after {
            tracing::info!(server = %self.name, served = after, "mcp server tools {}", if after { "back in tools/list" } else { "taken out of tools/list" });
            (self.on_change)();
        }
    }

    fn record_success(&self, latency: Duration, protocol: Option<String>) {
        let degraded = latency > self.settings.degraded_latency;
        self.set_health(|h| {
            h.consecutive_failures = 0;
            h.latency_ms = Some(latency.as_millis() as u64);
            h.last_probe_unix_ms = Some(now_ms());
            h.state = if degraded {
                HealthState::Degraded
            } else {
                HealthState::Healthy
            };
            if !degraded {
                h.last_error = None;
            }
            if protocol.is_some() {
                h.protocol_version = protocol;
            }
        });
    }

    fn record_failure(&self, error: ProbeError) {
        let limit = self.settings.unhealthy_after;
        tracing::warn!(server = %self.name, %error, "mcp server probe failed");
        self.set_health(|h| {
            h.consecutive_failures += 1;
            h.last_probe_unix_ms = Some(now_ms());
            h.last_error = Some(error.to_string());
            h.state = if h.consecutive_failures >= limit {
                HealthState::Unhealthy
            } else if h.state == HealthState::Starting {
                HealthState::Starting
            } else {
                HealthState::Degraded
            };
        });
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.cancel.cancel();
        kill_group(&self.pgid);
    }
}

fn kill_group(pgid: &AtomicU32) {
    let pg = pgid.swap(0, Ordering::SeqCst);
    if pg > 1 {
        // SAFETY: killpg only sends a signal; the group was created by us for this child.
        unsafe {
            libc::killpg(pg as libc::pid_t, libc::SIGKILL);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Receives the upstream's notifications.
#[derive(Clone)]
struct UpstreamClient {
    server: String,
    refresh_tx: mpsc::UnboundedSender<()>,
    progress: Arc<Mutex<HashMap<ProgressToken, ProgressRoute>>>,
}

impl ClientHandler for UpstreamClient {
    fn get_info(&self) -> InitializeRequestParams {
        InitializeRequestParams::new(
            ClientCapabilities::default(),
            Implementation::new("aibox-edge", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        tracing::info!(server = %self.server, "upstream tools/list changed");
        let _ = self.refresh_tx.send(());
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let route = self
            .progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&params.progress_token)
            .cloned();
        if let Some((peer, token)) = route {
            let mut forwarded = params;
            forwarded.progress_token = token;
            let _ = peer.notify_progress(forwarded).await;
        }
    }
}

struct Connection {
    service: RunningService<RoleClient, UpstreamClient>,
    legacy: bool,
    protocol: String,
}

async fn supervise(
    weak: Weak<Upstream>,
    cancel: CancellationToken,
    mut refresh_rx: mpsc::UnboundedReceiver<()>,
) {
    let mut conn: Option<Connection> = None;
    loop {
        let Some(up) = weak.upgrade() else { break };
        let spec = up.spec();
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = cancel.cancelled() => break,
            r = probe(&up, &spec, &mut conn) => r,
        };
        match outcome {
            Ok(protocol) => up.record_success(started.elapsed(), protocol),
            Err(error) => {
                if let Some(c) = conn.take() {
                    *up.peer.write().unwrap_or_else(PoisonError::into_inner) = None;
                    drop(c.service);
                }
                kill_group(&up.pgid);
                up.record_failure(error);
            }
        }
        let failures = up.health().consecutive_failures;
        let settings = up.settings.clone();
        drop(up);
        let wait = if failures == 0 {
            settings.interval
        } else {
            let factor = 1u32 << (failures - 1).min(10);
            (settings.interval * factor).min(settings.max_backoff.max(settings.interval))
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
            Some(()) = refresh_rx.recv() => {
                if let (Some(up), Some(c)) = (weak.upgrade(), conn.as_ref()) {
                    match list_tools(c.service.peer(), settings.timeout).await {
                        Ok(tools) => {
                            *up.tools.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(tools);
                            (up.on_change)();
                        }
                        Err(e) => tracing::warn!(server = %up.name, error = %e, "refreshing tools failed"),
                    }
                }
            }
        }
    }
    if let Some(c) = conn.take() {
        drop(c.service);
    }
}

/// One probe: connect (and list tools) when not connected, else ping / tools/list.
async fn probe(
    up: &Arc<Upstream>,
    spec: &ServerSpec,
    conn: &mut Option<Connection>,
) -> Result<Option<String>, ProbeError> {
    let timeout = up.settings.timeout;
    if let Some(c) = conn.as_ref() {
        if c.service.is_closed() {
            return Err(match &spec.transport {
                Transport::Stdio { .. } => ProbeError::StdioExited,
                _ => ProbeError::ConnectionClosed,
            });
        }
        let peer = c.service.peer();
        if c.legacy {
            let ping = ClientRequest::PingRequest(PingRequest {
                method: Default::default(),
                extensions: Default::default(),
            });
            match tokio::time::timeout(timeout, peer.send_request(ping)).await {
                Ok(Ok(_)) => return Ok(None),
                Ok(Err(e)) => return Err(ProbeError::Ping(e)),
                Err(_) => return Err(ProbeError::PingTimeout(timeout)),
            }
        }
        let tools = list_tools(peer, timeout).await?;
        let changed = {
            let mut cur = up.tools.write().unwrap_or_else(PoisonError::into_inner);
            let changed = cur.as_slice() != tools.as_slice();
            if changed {
                *cur = Arc::new(tools);
            }
            changed
        };
        if changed {
            (up.on_change)();
        }
        return Ok(None);
    }
    // Starting a Python server on a busy host can take seconds; connecting gets more time
    // than a probe of a running server.
    let connect_timeout = timeout.max(Duration::from_secs(20));
    let c = match tokio::time::timeout(connect_timeout, connect(up, spec)).await {
        Ok(r) => r?,
        Err(_) => {
            kill_group(&up.pgid);
            return Err(ProbeError::ConnectTimeout(connect_timeout));
        }
    };
    let tools = list_tools(c.service.peer(), timeout).await?;
    tracing::info!(server = %up.name, protocol = %c.protocol, tools = tools.len(), "mcp server connected");
    *up.tools.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(tools);
    *up.peer.write().unwrap_or_else(PoisonError::into_inner) = Some(c.service.peer().clone());
    let protocol = c.protocol.clone();
    if up.restarts.fetch_add(1, Ordering::SeqCst) > 0 {
        up.set_health(|h| h.restarts += 1);
    }
    *conn = Some(c);
    (up.on_change)();
    Ok(Some(protocol))
}

async fn list_tools(peer: &Peer<RoleClient>, timeout: Duration) -> Result<Vec<Tool>, ProbeError> {
    // Raw requests, not Peer::list_tools: the SDK's response cache could answer a probe
    // from memory and hide a dead server.
    let mut all = Vec::new();
    let mut cursor = None;
    for _ in 0..100 {
        let request = ClientRequest::ListToolsRequest(ListToolsRequest {
            method: Default::default(),
            params: cursor.take().map(|c| {
                let mut p = PaginatedRequestParams::default();
                p.cursor = Some(c);
                p
            }),
            extensions: Default::default(),
        });
        let result = match tokio::time::timeout(timeout, peer.send_request(request)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(ProbeError::ListTools(e)),
            Err(_) => return Err(ProbeError::ListToolsTimeout(timeout)),
        };
        let ServerResult::ListToolsResult(page) = result else {
            return Err(ProbeError::ListToolsUnexpected);
        };
        all.extend(page.tools);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    Ok(all)
}

async fn connect(up: &Arc<Upstream>, spec: &ServerSpec) -> Result<Connection, ConnectError> {
    let handler = UpstreamClient {
        server: up.name.clone(),
        refresh_tx: up.refresh_tx.clone(),
        progress: up.progress.clone(),
    };
    let lifecycle = ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        legacy_version: Some(ProtocolVersion::V_2025_11_25),
    };
    let service = match &spec.transport {
        Transport::Stdio {
            command,
            args,
            env,
            cwd,
        } => {
            let transport = spawn_child(up, command, args, env, cwd.as_deref())?;
            handler
                .serve_with_lifecycle(transport, lifecycle)
                .await
                .map_err(|e| ConnectError::Handshake(Box::new(e)))?
        }
        Transport::Http {
            url,
            headers,
            sse: true,
        } => {
            let mut map = http::HeaderMap::new();
            for (k, v) in headers {
                let (name, value) = header(k, v)?;
                map.insert(name, value);
            }
            let client = reqwest::Client::builder()
                .connect_timeout(up.settings.timeout)
                .build()
                .map_err(ConnectError::HttpClient)?;
            let transport = SseClientTransport::connect(client, url, map, &up.tasks).await?;
            handler
                .serve_with_lifecycle(transport, lifecycle)
                .await
                .map_err(|source| ConnectError::SseHandshake {
                    url: url.clone(),
                    source: Box::new(source),
                })?
        }
        Transport::Http { url, headers, .. } => {
            let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
            for (k, v) in headers {
                let (name, value) = header(k, v)?;
                config.custom_headers.insert(name, value);
            }
            let client = reqwest::Client::builder()
                .connect_timeout(up.settings.timeout)
                .build()
                .map_err(ConnectError::HttpClient)?;
            let transport = StreamableHttpClientTransport::with_client(client, config);
            handler
                .serve_with_lifecycle(transport, lifecycle)
                .await
                .map_err(|source| ConnectError::HttpHandshake {
                    url: url.clone(),
                    source: Box::new(source),
                })?
        }
        Transport::Image { .. } => return Err(ConnectError::ImageNotServed),
    };
    let info = service.peer().peer_info();
    if let Some(i) = info.as_ref() {
        up.offers_prompts
            .store(i.capabilities.prompts.is_some(), Ordering::Relaxed);
        up.offers_resources
            .store(i.capabilities.resources.is_some(), Ordering::Relaxed);
    }
    let protocol = info
        .as_ref()
        .map(|i| i.protocol_version.to_string())
        .unwrap_or_else(|| "unknown".into());
    let legacy = info
        .as_ref()
        .is_none_or(|i| i.protocol_version.as_str() < ProtocolVersion::V_2026_07_28.as_str());
    Ok(Connection {
        service,
        legacy,
        protocol,
    })
}

/// One configured header of an HTTP server.
fn header(name: &str, value: &str) -> Result<(http::HeaderName, http::HeaderValue), ConnectError> {
    let header_name =
        http::HeaderName::try_from(name).map_err(|source| ConnectError::HeaderName {
            name: name.to_string(),
            source,
        })?;
    let header_value =
        http::HeaderValue::try_from(value).map_err(|_| ConnectError::HeaderValue {
            name: name.to_string(),
        })?;
    Ok((header_name, header_value))
}

/// Variables a stdio server gets besides its own: enough to find programs and a home,
/// never the edge's secrets (admin token, client keys).
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

fn spawn_child(
    up: &Arc<Upstream>,
    command: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&str>,
) -> Result<TokioChildProcess, ConnectError> {
    let mut cmd = tokio::process::Command::new(command);
    cmd.args(args).env_clear();
    for key in INHERITED_ENV {
        if let Ok(v) = std::env::var(key) {
            cmd.env(key, v);
        }
    }
    cmd.envs(env);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut wrapped = CommandWrap::from(cmd);
    wrapped.wrap(ProcessGroup::leader());
    let (transport, stderr) = TokioChildProcess::builder(wrapped)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| ConnectError::Spawn {
            command: command.to_string(),
            source,
        })?;
    if let Some(pid) = transport.id() {
        // The leader's pid is the group id.
        up.pgid.store(pid, Ordering::SeqCst);
    }
    if let Some(stderr) = stderr {
        let server = up.name.clone();
        let cancel = up.cancel.clone();
        up.tasks.spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            loop {
                // A grandchild outside the group could hold stderr open: stop with the upstream.
                let line = tokio::select! {
                    _ = cancel.cancelled() => break,
                    line = lines.next_line() => line,
                };
                let Ok(Some(line)) = line else { break };
                tracing::debug!(server = %server, "stderr: {line}");
            }
        });
    }
    Ok(transport)
}
