//! The hub's shared state: upstreams by name, the loaded registry, rate limiters, change fan-out.
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rmcp::model::Tool;
use rmcp::service::{Peer, RoleServer};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::McpConfig;
use crate::metrics::HubMetrics;
use crate::naming::exposed_name;
use crate::registry::{self, RegistryError, ServerSpec, Snapshot, Sources};
use crate::upstream::{ProbeSettings, Upstream};
use crate::AuditSink;

type Limiter = Arc<DefaultKeyedRateLimiter<String>>;

/// Why the registry files were not loaded; the running set stays as it was.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Editors that delete and recreate would otherwise stop every server for a moment.
    #[error("{}: file disappeared; keeping the last good registry (write {{\"servers\": {{}}}} to remove every server)", .0.display())]
    RegistryFileGone(PathBuf),
}

/// A tool as one client sees it: exposed name, owning server, the server's own name.
pub struct RoutedTool {
    pub exposed: String,
    pub upstream: Arc<Upstream>,
    pub original: String,
    pub tool: Tool,
}

pub struct HubCore {
    pub config: McpConfig,
    pub settings: ProbeSettings,
    pub metrics: HubMetrics,
    pub audit: Option<Arc<dyn AuditSink>>,
    upstreams: RwLock<BTreeMap<String, Arc<Upstream>>>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// The last load error; cleared by the next good load.
    registry_error: RwLock<Option<Arc<LoadError>>>,
    limiters: Mutex<HashMap<String, (u32, Limiter)>>,
    /// Fires whenever the set of served tools may have changed.
    pub changes: broadcast::Sender<()>,
    /// 2025-11-25 sessions, for `notifications/tools/list_changed` on their GET stream.
    sessions: Mutex<Vec<Peer<RoleServer>>>,
    pub cancel: CancellationToken,
    /// Every task the hub starts (supervisors, the file watch, admin writes): closed and awaited
    /// on shutdown, so none outlives the hub unnoticed.
    pub tasks: TaskTracker,
    stamps: Mutex<Option<Vec<Option<SystemTime>>>>,
    /// Serialises loads (poller and admin PUT).
    load_lock: tokio::sync::Mutex<()>,
}

impl HubCore {
    pub fn new(
        config: McpConfig,
        metrics: HubMetrics,
        audit: Option<Arc<dyn AuditSink>>,
    ) -> Arc<Self> {
        let settings = ProbeSettings {
            interval: config.probe_interval(),
            timeout: config.probe_timeout(),
            unhealthy_after: config.unhealthy_after(),
            degraded_latency: config.degraded_latency(),
            max_backoff: config.max_backoff(),
            max_concurrency: config.max_concurrency(),
        };
        let (changes, _) = broadcast::channel(64);
        Arc::new(Self {
            config,
            settings,
            metrics,
            audit,
            upstreams: RwLock::new(BTreeMap::new()),
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            registry_error: RwLock::new(None),
            limiters: Mutex::new(HashMap::new()),
            changes,
            sessions: Mutex::new(Vec::new()),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            stamps: Mutex::new(None),
            load_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        self.upstreams
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    pub fn upstream(&self, name: &str) -> Option<Arc<Upstream>> {
        self.upstreams
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn registry_error(&self) -> Option<Arc<LoadError>> {
        self.registry_error
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every tool `caller` may call, in a stable order (server name, then tool name).
    pub fn visible_tools(&self, caller: &crate::Caller) -> Vec<RoutedTool> {
        let mut out = Vec::new();
        for up in self.upstreams() {
            if !caller.may_use(&up.name, &up.spec().policy) {
                continue;
            }
            let mut tools: Vec<Tool> = up.tools().as_ref().clone();
            tools.sort_by(|a, b| a.name.cmp(&b.name));
            for tool in tools {
                let original = tool.name.to_string();
                let exposed = exposed_name(&up.name, &original);
                out.push(RoutedTool {
                    exposed,
                    upstream: up.clone(),
                    original,
                    tool,
                });
            }
        }
        out
    }

    /// The server owning an exposed tool name, whatever the caller may do with it.
    pub fn route(&self, exposed: &str) -> Option<(Arc<Upstream>, String)> {
        for up in self.upstreams() {
            if !exposed.starts_with(up.name.as_str()) {
                continue;
            }
            for tool in up.tools().iter() {
                if exposed_name(&up.name, &tool.name) == exposed {
                    return Some((up.clone(), tool.name.to_string()));
                }
            }
        }
        None
    }

    /// The server an exposed name points at by its prefix, even if its tools are out.
    pub fn server_of(&self, exposed: &str) -> Option<Arc<Upstream>> {
        let (server, _) = exposed.split_once(crate::naming::SEPARATOR)?;
        self.upstream(server)
    }

    /// `Ok(())` when the call may go ahead, else how long until it may.
    pub async fn check_rate(
        &self,
        server: &str,
        rpm: Option<u32>,
        client: &str,
    ) -> Result<(), Duration> {
        let Some(rpm) = rpm.and_then(NonZeroU32::new) else {
            return Ok(());
        };
        if let Some(shared) = &self.config.shared_limits {
            // One window per (server, client) across replicas; `/` cannot be in a server name.
            let name = format!("{server}/{client}");
            if let Some(verdict) = shared.hit("mcp", &name, rpm.get()).await {
                return verdict;
            }
        }
        let limiter = {
            let mut map = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
            match map.get(server) {
                Some((n, l)) if *n == rpm.get() => l.clone(),
                _ => {
                    let l: Limiter = Arc::new(RateLimiter::keyed(Quota::per_minute(rpm)));
                    map.insert(server.to_string(), (rpm.get(), l.clone()));
                    l
                }
            }
        };
        limiter.check_key(&client.to_string()).map_err(|not_until| {
            not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ))
        })
    }

    pub fn add_session(&self, peer: Peer<RoleServer>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.retain(|p| !p.is_transport_closed());
        sessions.push(peer);
    }

    fn sessions(&self) -> Vec<Peer<RoleServer>> {
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.retain(|p| !p.is_transport_closed());
        sessions.clone()
    }

    pub fn signal_change(&self) {
        let _ = self.changes.send(());
    }

    /// Fans list changes out to legacy sessions, coalescing bursts.
    pub async fn run_change_fanout(self: Arc<Self>) {
        let mut rx = self.changes.subscribe();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = rx.recv() => if let Err(broadcast::error::RecvError::Closed) = r { return },
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            while rx.try_recv().is_ok() {}
            self.update_up_gauges();
            for peer in self.sessions() {
                let _ = peer.notify_tool_list_changed().await;
            }
        }
    }

    fn update_up_gauges(&self) {
        for up in self.upstreams() {
            self.metrics
                .server_up
                .with_label_values(&[up.name.as_str()])
                .set(i64::from(up.health().state.serves_tools()));
        }
    }

    fn paths(&self) -> [PathBuf; 3] {
        [
            self.config.registry_path(),
            self.config.servers_txt_path(),
            self.config.env_file_path(),
        ]
    }

    /// What `${VAR}` and `env_schema` are read from: the secrets file only, never the edge's
    /// own environment (which holds its admin and controller tokens).
    pub fn secrets_env(&self) -> Result<HashMap<String, String>, RegistryError> {
        Ok(registry::read_optional(&self.config.env_file_path())?
            .map(|text| registry::parse_env_file(&text))
            .unwrap_or_default())
    }

    /// Loads the registry for this hub's mode (tool containers in the box, or not).
    pub fn load_registry(&self, src: &Sources) -> Result<Snapshot, RegistryError> {
        let mut snapshot = registry::load(src)?;
        if self.config.containers() {
            snapshot.route_to_containers();
        } else {
            snapshot.mark_images_not_served();
        }
        Ok(snapshot)
    }

    /// Loads the files from disk; a bad edit leaves the running set untouched.
    pub async fn reload_from_disk(self: &Arc<Self>) -> Result<(), Arc<LoadError>> {
        let _guard = self.load_lock.lock().await;
        let [reg, txt, _] = self.paths();
        let had_registry = self.snapshot().file.is_some();
        let result = (|| -> Result<Snapshot, LoadError> {
            let registry_json = registry::read_optional(&reg)?;
            if registry_json.is_none() && had_registry {
                // Removing servers is done by editing the file, not deleting it.
                return Err(LoadError::RegistryFileGone(reg.clone()));
            }
            let servers_txt = registry::read_optional(&txt)?;
            let env = self.secrets_env()?;
            Ok(self.load_registry(&Sources {
                registry_json: registry_json.as_deref(),
                servers_txt: servers_txt.as_deref(),
                env: &env,
                default_timeout: self.config.default_timeout(),
            })?)
        })();
        match result {
            Ok(snapshot) => {
                *self
                    .registry_error
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                self.apply(snapshot);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "mcp registry rejected; the last good registry stays in force");
                let e = Arc::new(e);
                *self
                    .registry_error
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Reconciles running upstreams with a new snapshot: unchanged servers keep their
    /// connection (and child process); policy-only edits apply in place.
    fn apply(self: &Arc<Self>, snapshot: Snapshot) {
        let mut changed = false;
        {
            let mut ups = self
                .upstreams
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            ups.retain(|name, up| {
                let keep = snapshot.servers.contains_key(name);
                if !keep {
                    tracing::info!(server = %name, "mcp server removed");
                    up.stop();
                    changed = true;
                }
                keep
            });
            for (name, spec) in &snapshot.servers {
                if let Some(up) = ups.get(name) {
                    let cur = up.spec();
                    if same_process(&cur, spec) {
                        if cur.as_ref() != spec {
                            up.update_policy(spec.clone());
                            changed = true;
                        }
                        continue;
                    }
                    tracing::info!(server = %name, "mcp server changed; restarting it");
                    up.stop();
                } else {
                    tracing::info!(server = %name, transport = spec.transport.kind(), "mcp server added");
                }
                let weak = Arc::downgrade(self);
                let signal: crate::upstream::ChangeSignal = Arc::new(move || {
                    if let Some(core) = weak.upgrade() {
                        core.signal_change();
                    }
                });
                ups.insert(
                    name.clone(),
                    Upstream::start(spec.clone(), self.settings.clone(), signal, &self.tasks),
                );
                changed = true;
            }
        }
        *self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(snapshot);
        if changed {
            self.signal_change();
        }
    }

    /// Polls the three files' mtimes and reloads on any change.
    pub async fn run_file_watch(self: Arc<Self>) {
        let interval = self.config.reload_interval();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let stamps: Vec<Option<SystemTime>> = self
                .paths()
                .iter()
                .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
                .collect();
            let changed = {
                let mut cur = self.stamps.lock().unwrap_or_else(PoisonError::into_inner);
                let changed = cur.as_ref() != Some(&stamps);
                *cur = Some(stamps);
                changed
            };
            if changed {
                let _ = self.reload_from_disk().await;
            }
        }
    }

    pub fn remember_stamps(&self) {
        let stamps = self
            .paths()
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect();
        *self.stamps.lock().unwrap_or_else(PoisonError::into_inner) = Some(stamps);
    }

    /// Stops every upstream (killing stdio children's process groups), then waits for the
    /// hub's tasks to end.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        for up in self.upstreams() {
            up.stop();
        }
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Same process/connection: only policy fields differ.
fn same_process(a: &ServerSpec, b: &ServerSpec) -> bool {
    a.transport == b.transport && a.status == b.status
}
