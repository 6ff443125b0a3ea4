//! Tool containers: one hardened container per enabled `image` (and, in the box, `command`)
//! server of the MCP registry, on the internal `tools` network that only the edge shares.
//!
//! The registry is read with the edge's own parser (`aibox-mcp-registry`), so both sides agree
//! on what is enabled. Reconciling is level-triggered: on start and every tick the containers
//! carrying this project's label are listed and compared with the registry. A container whose
//! server is gone or disabled is removed; one whose settings changed (a digest of its create
//! body, kept in a label) is recreated; a stopped one is started. Names are fixed per server
//! (`<project>-mcp-<server>`), so a crash between create and start (kill -9) can never leave two.
//!
//! The bridge (`mcp-bridge`, plus the C libraries it links and their loader) is placed in a
//! volume once and mounted read-only at `/aibox` in every tool container, where it is the
//! entrypoint wrapping the image's own entrypoint and command.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aibox_mcp_registry::{self as registry, ServerSpec, Sources, SpecStatus, Transport};
use aibox_wire::mcp::ToolContainer;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, EndpointSettings, HostConfig, HostConfigLogConfig,
    Mount, MountType, NetworkingConfig, RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, DownloadFromContainerOptions,
    ListContainersOptions, ListVolumesOptions, LogsOptions, RemoveContainerOptions,
    StartContainerOptions, UploadToContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::audit::{AuditLog, NewEvent};
use crate::engine::{DockerError, PROJECT_LABEL};

pub const SERVER_LABEL: &str = "io.aibox.mcp.server";
const SETTINGS_LABEL: &str = "io.aibox.mcp.settings";
const KIND_LABEL: &str = "io.aibox.mcp.kind";
const BRIDGE_LABEL: &str = "io.aibox.mcp.bridge";
/// Where the bridge volume is mounted inside a tool container.
const BRIDGE_MOUNT: &str = "/aibox";
/// Written last into the bridge volume: its presence means the copy finished.
const COMPLETE_MARKER: &str = ".complete";
const TOOL_UID: &str = "65532:65532";
/// How long an audited registry change (posted by the edge) names the reconcile that follows.
const CORRELATION_TTL: Duration = Duration::from_secs(30);

/// `AIBOX_MCP_*` settings of the controller (only read when `AIBOX_MCP_CONTAINERS=1`).
#[derive(Debug, Clone)]
pub struct ToolsConfig {
    /// Directory of registry.json, servers.txt and .env (read only).
    pub mcp_dir: PathBuf,
    /// The internal network shared by the edge and the tool containers.
    pub network: String,
    /// `mcp-bridge` and, when it is dynamically linked, `lib/` with its loader and libraries.
    pub bridge_dir: PathBuf,
    /// Image in which `command` servers run (must hold their programs: uvx, npx, ...).
    pub runner_image: String,
    /// Proxy for runner containers (the edge's egress listener), so uvx/npx can fetch packages.
    pub runner_proxy: Option<String>,
    pub memory_bytes: i64,
    pub pids_limit: i64,
    pub tmpfs_size: String,
    /// The `/tmp` of runner (`command`) containers, which holds the uv and npm caches.
    pub runner_tmpfs_size: String,
    pub interval: Duration,
}

pub struct Tools {
    cfg: ToolsConfig,
    project: String,
    docker: Docker,
    audit: Arc<AuditLog>,
    /// One reconcile at a time.
    run_lock: tokio::sync::Mutex<()>,
    correlation: Mutex<Option<(String, Instant)>>,
    /// The populated bridge volume (name) once checked in this process.
    bridge_volume: tokio::sync::Mutex<Option<String>>,
    /// The last planning error per server (to log each once).
    plan_errors: Mutex<HashMap<String, String>>,
    /// Whether the bridge leftovers were swept in this process.
    swept: std::sync::atomic::AtomicBool,
    /// Restarts per server: (how many in a row, when the last one was).
    restarts: Mutex<HashMap<String, (u32, Instant)>>,
    /// The bridge's files and their digest, read once.
    bridge_files: tokio::sync::OnceCell<(BridgeFiles, String)>,
}

/// What one server's container should be.
struct Plan {
    server: String,
    container: String,
    kind: &'static str,
    image: String,
    digest: String,
    body: ContainerCreateBody,
}

impl Tools {
    pub fn new(
        cfg: ToolsConfig,
        project: String,
        audit: Arc<AuditLog>,
    ) -> Result<Arc<Tools>, DockerError> {
        let docker = Docker::connect_with_defaults()?;
        Ok(Arc::new(Tools {
            cfg,
            project,
            docker,
            audit,
            run_lock: tokio::sync::Mutex::new(()),
            correlation: Mutex::new(None),
            bridge_volume: tokio::sync::Mutex::new(None),
            bridge_files: tokio::sync::OnceCell::new(),
            restarts: Mutex::new(HashMap::new()),
            plan_errors: Mutex::new(HashMap::new()),
            swept: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The edge audited a registry change with this request id: the reconcile that applies it
    /// records its container changes under the same id.
    pub fn note_correlation(&self, id: &str) {
        *self.correlation.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((id.to_string(), Instant::now()));
    }

    fn correlation_id(&self) -> String {
        let noted = self
            .correlation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match noted {
            Some((id, at)) if at.elapsed() < CORRELATION_TTL => id,
            _ => format!("controller-{}", uuid::Uuid::new_v4()),
        }
    }

    /// Reconciles now and then every `interval`, for ever.
    pub async fn run(self: Arc<Self>) {
        let mut last_error: Option<String> = None;
        loop {
            match self.reconcile().await {
                Ok(()) => last_error = None,
                Err(e) => {
                    if last_error.as_deref() != Some(e.as_str()) {
                        tracing::error!(error = %e, "tool containers: reconcile failed; retrying");
                    }
                    last_error = Some(e);
                }
            }
            tokio::time::sleep(self.cfg.interval).await;
        }
    }

    fn load_registry(&self) -> Result<Vec<ServerSpec>, String> {
        let read = |name: &str| registry::read_optional(&self.cfg.mcp_dir.join(name));
        let env = read(".env")?
            .map(|t| registry::parse_env_file(&t))
            .unwrap_or_default();
        let registry_json = read("registry.json")?;
        let servers_txt = read("servers.txt")?;
        let snapshot = registry::load(&Sources {
            registry_json: registry_json.as_deref(),
            servers_txt: servers_txt.as_deref(),
            env: &env,
            default_timeout: Duration::from_secs(30),
        })?;
        Ok(snapshot
            .servers
            .into_values()
            .filter(|s| s.status == SpecStatus::Enabled)
            .filter(|s| !matches!(s.transport, Transport::Http { .. }))
            .collect())
    }

    async fn list(&self) -> Result<Vec<ContainerSummary>, DockerError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{PROJECT_LABEL}={}", self.project),
                SERVER_LABEL.to_string(),
            ],
        )]);
        Ok(self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await?)
    }

    /// Every tool container of the project; with `tail > 0`, each with its last log lines.
    pub async fn views(&self, tail: u32) -> Result<Vec<ToolContainer>, DockerError> {
        let mut out = Vec::new();
        for c in self.list().await? {
            let log_tail = match (&c.id, tail) {
                (Some(id), 1..) => self.log_tail(id, tail).await,
                _ => Vec::new(),
            };
            out.push(ToolContainer {
                server: label(&c, SERVER_LABEL),
                container: container_name(&c),
                kind: label(&c, KIND_LABEL),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                status: c.status.clone().unwrap_or_default(),
                image: c.image.clone().unwrap_or_default(),
                log_tail,
            });
        }
        out.sort_by(|a, b| a.server.cmp(&b.server));
        Ok(out)
    }

    /// The last `tail` lines of a tool container's log (stdout and stderr as they came). A
    /// container removed meanwhile, or a log that cannot be read, gives none: this is a view.
    async fn log_tail(&self, id: &str, tail: u32) -> Vec<String> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: tail.to_string(),
            ..Default::default()
        };
        let mut stream = self.docker.logs(id, Some(options));
        let mut text = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            text.extend_from_slice(&chunk.into_bytes());
        }
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let skip = lines.len().saturating_sub(tail as usize);
        lines.into_iter().skip(skip).collect()
    }

    pub async fn reconcile(&self) -> Result<(), String> {
        let _one = self.run_lock.lock().await;
        // A registry that does not load leaves the running containers as they are (the edge
        // keeps its last good registry too).
        let specs = self.load_registry()?;
        let existing = self.list().await.map_err(|e| e.to_string())?;
        let mut plans: BTreeMap<String, Plan> = BTreeMap::new();
        for spec in &specs {
            match self.plan(spec).await {
                Ok(p) => {
                    self.plan_errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&p.server);
                    plans.insert(p.server.clone(), p);
                }
                Err(e) => {
                    // Logged when it first happens or changes, not every round.
                    let e = e.to_string();
                    let mut seen = self.plan_errors.lock().unwrap_or_else(|p| p.into_inner());
                    if seen.get(&spec.name) != Some(&e) {
                        tracing::error!(server = %spec.name, error = %e, "tool container: cannot plan");
                        seen.insert(spec.name.clone(), e);
                    }
                }
            }
        }
        let planned: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let mut kept: BTreeMap<String, ContainerSummary> = BTreeMap::new();
        for c in existing {
            let server = label(&c, SERVER_LABEL);
            let name = container_name(&c);
            let reason = match plans.get(&server) {
                // Kept if it cannot be planned now (e.g. its image is being pulled).
                None if planned.contains(&server.as_str()) => None,
                None => Some("removed or disabled in the registry"),
                Some(p) if p.container != name || kept.contains_key(&server) => {
                    Some("not the server's one container")
                }
                Some(p) if label(&c, SETTINGS_LABEL) != p.digest => Some("settings changed"),
                Some(_) => None,
            };
            match reason {
                None => {
                    kept.insert(server, c);
                }
                Some(reason) => {
                    let recreate = reason == "settings changed";
                    let action = if recreate {
                        "mcp_container_recreate"
                    } else {
                        "mcp_container_remove"
                    };
                    self.act(
                        action,
                        &server,
                        json!({"container": name, "reason": reason}),
                        || self.remove(&c),
                    )
                    .await?;
                }
            }
        }
        for (server, plan) in plans {
            match kept.get(&server) {
                Some(c) if c.state.map(|s| s.to_string()).as_deref() == Some("running") => {}
                Some(c) => {
                    // A server that keeps exiting is started again after a growing pause.
                    if !self.may_restart(&server) {
                        continue;
                    }
                    let state = c.state.map(|s| s.to_string()).unwrap_or_default();
                    let id = c.id.clone().unwrap_or_default();
                    self.act(
                        "mcp_container_start",
                        &server,
                        json!({"container": plan.container, "was": state}),
                        || async {
                            self.docker
                                .start_container(&id, None::<StartContainerOptions>)
                                .await
                                .map_err(DockerError::from)
                        },
                    )
                    .await?;
                }
                None => {
                    let meta = json!({"container": plan.container, "image": plan.image, "kind": plan.kind});
                    self.act("mcp_container_create", &server, meta, || self.create(&plan))
                        .await?;
                }
            }
        }
        if !self.swept.swap(true, std::sync::atomic::Ordering::Relaxed) {
            self.sweep_bridge_leftovers().await;
        }
        Ok(())
    }

    /// Once per process: carrier containers left by a controller killed while filling the
    /// bridge volume, and bridge volumes of older bridges no container uses any more.
    async fn sweep_bridge_leftovers(&self) {
        let current = self.bridge_volume.lock().await.clone();
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{PROJECT_LABEL}={}", self.project),
                BRIDGE_LABEL.to_string(),
            ],
        )]);
        let carriers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters.clone()),
                ..Default::default()
            }))
            .await
            .unwrap_or_default();
        for c in carriers {
            let _ = self.remove(&c).await;
        }
        let volumes = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filters),
            }))
            .await
            .map(|v| v.volumes.unwrap_or_default())
            .unwrap_or_default();
        for v in volumes {
            if Some(&v.name) != current.as_ref() {
                // In use (a container not yet recreated) is refused by Docker: tried next start.
                let _ = self
                    .docker
                    .remove_volume(
                        &v.name,
                        None::<bollard::query_parameters::RemoveVolumeOptions>,
                    )
                    .await;
            }
        }
    }

    /// Restart back-off per server: 0 s for the first restart, then 2, 4, … up to 60 s; a
    /// server that stayed up for a minute starts from zero again.
    fn may_restart(&self, server: &str) -> bool {
        let mut map = self.restarts.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let entry = map.entry(server.to_string()).or_insert((0, now));
        if now.duration_since(entry.1) > Duration::from_secs(60 + (1u64 << entry.0.min(6))) {
            *entry = (0, now);
        }
        let wait = if entry.0 == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs((1u64 << entry.0.min(6)).min(60))
        };
        if entry.0 > 0 && now.duration_since(entry.1) < wait {
            return false;
        }
        *entry = (entry.0 + 1, now);
        true
    }

    /// Acts only when the audit log is writable, then records the outcome (fail closed).
    async fn act<F, Fut>(&self, action: &str, server: &str, meta: Value, f: F) -> Result<(), String>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), DockerError>>,
    {
        // The audit rule (docs/audit/SCHEMA.md): the intent is on disk before Docker acts, the
        // outcome after. The reconcile loop is no request, so no caller can cancel it midway.
        let intent = NewEvent {
            action: action.to_string(),
            resource: format!("mcp/{server}"),
            actor: "controller".into(),
            result: crate::audit::INTENT.into(),
            correlation_id: self.correlation_id(),
            metadata: meta.as_object().cloned().unwrap_or_default(),
        };
        let recorded = crate::audited::append(&self.audit, intent.clone())
            .await
            .map_err(|e| format!("audit log not writable, {action} {server} refused: {e}"))?;
        let outcome = f().await;
        let result = match &outcome {
            Ok(()) => crate::audited::Outcome::ok(Map::new()),
            Err(e) => crate::audited::Outcome::error(e, Map::new()),
        };
        crate::audited::append(
            &self.audit,
            crate::audited::outcome_event(&intent, recorded.seq, result),
        )
        .await
        .map_err(|e| format!("audit write failed after {action} {server}: {e}"))?;
        match outcome {
            Ok(()) => {
                tracing::info!(server, action, "tool container");
                Ok(())
            }
            Err(e) => {
                tracing::error!(server, action, error = %e, "tool container");
                Ok(())
            }
        }
    }

    async fn remove(&self, c: &ContainerSummary) -> Result<(), DockerError> {
        let id = c.id.clone().unwrap_or_default();
        match self
            .docker
            .remove_container(
                &id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn create(&self, plan: &Plan) -> Result<(), DockerError> {
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(plan.container.clone()),
                    ..Default::default()
                }),
                plan.body.clone(),
            )
            .await?;
        self.docker
            .start_container(&created.id, None::<StartContainerOptions>)
            .await?;
        Ok(())
    }

    /// The image's config, pulling it once when it is not here.
    async fn image_config(
        &self,
        image: &str,
    ) -> Result<bollard::models::ImageInspect, DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(i) => return Ok(i),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(image, "tool container: pulling the image");
        let mut pull = self.docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(image.to_string()),
                ..Default::default()
            }),
            None,
            None,
        );
        while let Some(step) = pull.next().await {
            step?;
        }
        Ok(self.docker.inspect_image(image).await?)
    }

    async fn plan(&self, spec: &ServerSpec) -> Result<Plan, DockerError> {
        let (kind, image, program, mut env, workdir, http_port) = match &spec.transport {
            Transport::Image { image, env, port } => {
                ("image", image.clone(), None, env.clone(), None, *port)
            }
            Transport::Stdio {
                command,
                args,
                env,
                cwd,
            } => {
                let mut program = vec![command.clone()];
                program.extend(args.iter().cloned());
                (
                    "command",
                    self.cfg.runner_image.clone(),
                    Some(program),
                    env.clone(),
                    cwd.clone(),
                    None,
                )
            }
            Transport::Http { .. } => unreachable!("url servers have no container"),
        };
        let inspect = self.image_config(&image).await?;
        let config = inspect.config.clone().unwrap_or_default();
        let program = program.unwrap_or_else(|| {
            let mut p = config.entrypoint.clone().unwrap_or_default();
            p.extend(config.cmd.clone().unwrap_or_default());
            p
        });
        let image_user = config.user.clone().unwrap_or_default();
        let root = image_user.is_empty()
            || image_user == "root"
            || image_user == "0"
            || image_user.starts_with("0:")
            || image_user.starts_with("root:");
        let user = if root {
            TOOL_UID.to_string()
        } else {
            image_user
        };
        env.entry("HOME".into()).or_insert_with(|| "/tmp".into());
        if kind == "command" {
            env.entry("UV_CACHE_DIR".into())
                .or_insert_with(|| "/tmp/uv-cache".into());
            env.entry("npm_config_cache".into())
                .or_insert_with(|| "/tmp/npm-cache".into());
            if let Some(proxy) = &self.cfg.runner_proxy {
                for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                    env.entry(k.into()).or_insert_with(|| proxy.clone());
                }
            }
        }
        let (entrypoint, cmd, volume) = match http_port {
            // The image serves streamable HTTP itself: run it as it is.
            Some(_) => (config.entrypoint.clone(), config.cmd.clone(), None),
            None => {
                if program.is_empty() {
                    return Err(DockerError::Api {
                        status: 400,
                        message: format!("image {image} has no entrypoint or command to bridge"),
                    });
                }
                let (volume, mut entry) = self.bridge(&image).await?;
                entry.extend([
                    "--listen".to_string(),
                    format!("0.0.0.0:{}", registry::BRIDGE_PORT),
                    "--".to_string(),
                ]);
                entry.extend(program);
                (Some(entry), Some(Vec::new()), Some(volume))
            }
        };
        let mounts = volume.map(|v| {
            vec![Mount {
                target: Some(BRIDGE_MOUNT.into()),
                source: Some(v),
                typ: Some(MountType::VOLUME),
                read_only: Some(true),
                ..Default::default()
            }]
        });
        let alias = registry::container_alias(&spec.name);
        let mut body = ContainerCreateBody {
            image: Some(image.clone()),
            user: Some(user),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            entrypoint,
            cmd,
            working_dir: workdir,
            host_config: Some(HostConfig {
                readonly_rootfs: Some(true),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                memory: Some(self.cfg.memory_bytes),
                pids_limit: Some(self.cfg.pids_limit),
                tmpfs: Some(HashMap::from([(
                    "/tmp".to_string(),
                    format!(
                        "size={},mode=1777",
                        if kind == "command" {
                            &self.cfg.runner_tmpfs_size
                        } else {
                            &self.cfg.tmpfs_size
                        }
                    ),
                )])),
                mounts,
                network_mode: Some(self.cfg.network.clone()),
                init: Some(true),
                // The controller is the supervisor: it restarts, recreates and removes.
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: Some(HashMap::from([
                        ("max-size".to_string(), "1m".to_string()),
                        ("max-file".to_string(), "2".to_string()),
                    ])),
                }),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    self.cfg.network.clone(),
                    EndpointSettings {
                        aliases: Some(vec![alias]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        // The image id is part of the digest: a rebuilt or re-pulled image recreates the container.
        let digest = registry::digest(&(&body, &inspect.id));
        body.labels = Some(HashMap::from([
            (PROJECT_LABEL.to_string(), self.project.clone()),
            (SERVER_LABEL.to_string(), spec.name.clone()),
            (KIND_LABEL.to_string(), kind.to_string()),
            (SETTINGS_LABEL.to_string(), digest.clone()),
        ]));
        Ok(Plan {
            server: spec.name.clone(),
            container: format!("{}-mcp-{}", self.project, spec.name.to_ascii_lowercase()),
            kind,
            image,
            digest,
            body,
        })
    }

    /// The bridge volume (filled on first use) and the entrypoint prefix that runs the bridge.
    async fn bridge(&self, carrier_image: &str) -> Result<(String, Vec<String>), DockerError> {
        let (files, digest) = self
            .bridge_files
            .get_or_try_init(|| async {
                let dir = self.cfg.bridge_dir.clone();
                let read = tokio::task::spawn_blocking(move || bridge_files(&dir))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r);
                let files = read.map_err(|e| DockerError::Api {
                    status: 500,
                    message: format!(
                        "AIBOX_MCP_BRIDGE_DIR {}: {e}",
                        self.cfg.bridge_dir.display()
                    ),
                })?;
                let mut h = Sha256::new();
                for (path, data) in &files {
                    h.update(path.as_bytes());
                    h.update((data.len() as u64).to_le_bytes());
                    h.update(data);
                }
                let digest = hex::encode(&h.finalize()[..8]);
                Ok::<_, DockerError>((files, digest))
            })
            .await?;
        let loader = files
            .iter()
            .map(|(p, _)| p.as_str())
            .find(|p| p.starts_with("lib/ld-linux") || p.starts_with("lib/ld-musl"));
        let bin = format!("{BRIDGE_MOUNT}/mcp-bridge");
        let entry = match loader {
            // Run through the carried loader, so the image's own C library does not matter.
            Some(l) => vec![
                format!("{BRIDGE_MOUNT}/{l}"),
                "--library-path".into(),
                format!("{BRIDGE_MOUNT}/lib"),
                bin,
            ],
            None => vec![bin],
        };
        let mut ready = self.bridge_volume.lock().await;
        let name = format!("{}-mcp-bridge-{digest}", self.project);
        if ready.as_deref() == Some(name.as_str()) {
            return Ok((name, entry));
        }
        let listed = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(HashMap::from([("name".to_string(), vec![name.clone()])])),
            }))
            .await?;
        let exists = listed
            .volumes
            .unwrap_or_default()
            .iter()
            .any(|v| v.name == name);
        if !exists {
            self.docker
                .create_volume(VolumeCreateRequest {
                    name: Some(name.clone()),
                    labels: Some(HashMap::from([
                        (PROJECT_LABEL.to_string(), self.project.clone()),
                        (BRIDGE_LABEL.to_string(), digest.clone()),
                    ])),
                    ..Default::default()
                })
                .await?;
        }
        // A never-started carrier container mounts the volume read-write to receive the files.
        let carrier = format!(
            "{name}-fill-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(carrier.clone()),
                    ..Default::default()
                }),
                ContainerCreateBody {
                    image: Some(carrier_image.to_string()),
                    entrypoint: Some(vec!["/aibox/none".into()]),
                    network_disabled: Some(true),
                    labels: Some(HashMap::from([
                        (PROJECT_LABEL.to_string(), self.project.clone()),
                        (BRIDGE_LABEL.to_string(), digest.clone()),
                    ])),
                    host_config: Some(HostConfig {
                        mounts: Some(vec![Mount {
                            target: Some(BRIDGE_MOUNT.into()),
                            source: Some(name.clone()),
                            typ: Some(MountType::VOLUME),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await?;
        let filled = async {
            let mut marker = self.docker.download_from_container(
                &created.id,
                Some(DownloadFromContainerOptions {
                    path: format!("{BRIDGE_MOUNT}/{COMPLETE_MARKER}"),
                }),
            );
            let complete = matches!(marker.next().await, Some(Ok(_)));
            drop(marker);
            if !complete {
                self.docker
                    .upload_to_container(
                        &created.id,
                        Some(UploadToContainerOptions {
                            path: BRIDGE_MOUNT.into(),
                            ..Default::default()
                        }),
                        bollard::body_full(tar_of(files).into()),
                    )
                    .await?;
                tracing::info!(volume = %name, "tool containers: bridge volume filled");
            }
            Ok::<(), DockerError>(())
        }
        .await;
        let _ = self
            .docker
            .remove_container(
                &created.id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
        filled?;
        *ready = Some(name.clone());
        Ok((name, entry))
    }
}

fn label(c: &ContainerSummary, key: &str) -> String {
    c.labels
        .as_ref()
        .and_then(|l| l.get(key))
        .cloned()
        .unwrap_or_default()
}

fn container_name(c: &ContainerSummary) -> String {
    c.names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default()
}

/// (relative path, bytes) of each file of the bridge.
type BridgeFiles = Vec<(String, Vec<u8>)>;

/// The bridge's files, sorted, with the completion marker last.
fn bridge_files(dir: &Path) -> std::io::Result<BridgeFiles> {
    let mut out = vec![(
        "mcp-bridge".to_string(),
        std::fs::read(dir.join("mcp-bridge"))?,
    )];
    let lib = dir.join("lib");
    if lib.is_dir() {
        let mut libs: Vec<(String, Vec<u8>)> = Vec::new();
        for e in std::fs::read_dir(&lib)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            libs.push((format!("lib/{name}"), std::fs::read(e.path())?));
        }
        libs.sort();
        out.extend(libs);
    }
    out.push((COMPLETE_MARKER.to_string(), Vec::new()));
    Ok(out)
}

/// A ustar archive of regular files (mode 0755, owner root) and the `lib/` directory.
fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    fn header(path: &str, size: usize, dir: bool) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..path.len()].copy_from_slice(path.as_bytes());
        let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
            let s = format!("{v:0w$o}\0", w = width - 1);
            h[at..at + width].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, 0o755);
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, size as u64);
        octal(&mut h, 136, 12, 0);
        h[156] = if dir { b'5' } else { b'0' };
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        h
    }
    let mut out = Vec::new();
    if files.iter().any(|(p, _)| p.starts_with("lib/")) {
        out.extend_from_slice(&header("lib/", 0, true));
    }
    for (path, data) in files {
        out.extend_from_slice(&header(path, data.len(), false));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tar_reads_back_with_tar() {
        let files = vec![
            ("mcp-bridge".to_string(), b"#!bin".to_vec()),
            ("lib/libc.so.6".to_string(), vec![7u8; 1000]),
            (COMPLETE_MARKER.to_string(), Vec::new()),
        ];
        let dir = std::env::temp_dir().join(format!("tools-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let archive = dir.join("a.tar");
        std::fs::write(&archive, tar_of(&files)).unwrap();
        let out = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(&archive)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{listing} {:?}", out.stderr);
        for want in ["mcp-bridge", "lib/libc.so.6", ".complete", "rwxr-xr-x"] {
            assert!(listing.contains(want), "{listing}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
