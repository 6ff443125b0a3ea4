//! The compose project as the controller sees it, through the Docker Engine API (bollard).
//!
//! Only containers labelled `com.docker.compose.project=<project>` are ever looked at or acted on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use bollard::models::NetworkConnectRequest;
use bollard::models::{ContainerInspectResponse, ContainerSummary};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, RemoveContainerOptions,
    RenameContainerOptions, RestartContainerOptions, StartContainerOptions, StopContainerOptions,
};

use crate::compose_model::{ComposeModel, ContainerSpec};
use bollard::Docker;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::OnceCell;

pub const PROJECT_LABEL: &str = "com.docker.compose.project";
pub const SERVICE_LABEL: &str = "com.docker.compose.service";
const ONEOFF_LABEL: &str = "com.docker.compose.oneoff";
const MAX_PROGRESS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("the Docker engine is unreachable: {0}")]
    Unavailable(String),
    #[error("unknown service {service:?} in compose project {project:?}")]
    UnknownService { service: String, project: String },
    #[error("service {0:?} is not in the CONTROLLER_SERVICES allowlist")]
    NotAllowed(String),
    #[error("the container is gone: {0}")]
    Gone(String),
    #[error("the Docker engine answered {status}: {message}")]
    Api { status: u16, message: String },
    /// The compose model is missing, unreadable or asks for something the controller cannot do.
    #[error("{0}")]
    Compose(String),
}

impl From<crate::compose_model::ModelError> for DockerError {
    fn from(e: crate::compose_model::ModelError) -> Self {
        DockerError::Compose(e.to_string())
    }
}

impl From<bollard::errors::Error> for DockerError {
    fn from(e: bollard::errors::Error) -> Self {
        use bollard::errors::Error as B;
        match e {
            B::DockerResponseServerError {
                status_code: 404,
                message,
            } => DockerError::Gone(message),
            B::DockerResponseServerError {
                status_code,
                message,
            } => DockerError::Api {
                status: status_code,
                message,
            },
            B::DockerStreamError { error } => DockerError::Api {
                status: 200,
                message: error,
            },
            B::JsonDataError { .. } | B::JsonSerdeError { .. } => DockerError::Api {
                status: 200,
                message: e.to_string(),
            },
            other => DockerError::Unavailable(other.to_string()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
}

impl ServiceAction {
    pub fn parse(s: &str) -> Option<ServiceAction> {
        match s {
            "start" => Some(ServiceAction::Start),
            "stop" => Some(ServiceAction::Stop),
            "restart" => Some(ServiceAction::Restart),
            _ => None,
        }
    }
    pub fn verb(self) -> &'static str {
        match self {
            ServiceAction::Start => "start",
            ServiceAction::Stop => "stop",
            ServiceAction::Restart => "restart",
        }
    }
    pub fn past(self) -> &'static str {
        match self {
            ServiceAction::Start => "started",
            ServiceAction::Stop => "stopped",
            ServiceAction::Restart => "restarted",
        }
    }
}

/// The `GET /services` types, shared with the dashboard that reads them.
pub use aibox_wire::controller::{PortBinding as PortView, ServiceStatus as ServiceView};

#[derive(Debug, Clone, Serialize)]
pub struct ActionOutcome {
    pub changed: bool,
    pub containers: Vec<String>,
}

pub use aibox_wire::controller::PullResult;

/// What `up` does for a service (docs/controller.md, `POST /services/<name>/up`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpStep {
    /// No container yet (a profile never started): create it from the compose model, start it.
    Create,
    /// The container runs an older image than its reference names now (after a pull or rebuild).
    Recreate,
    /// Created but stopped.
    Start,
    /// Running the current image already.
    Nothing,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpPlan {
    pub step: UpStep,
    pub containers: Vec<String>,
    pub image: String,
    pub container_image_id: Option<String>,
    pub current_image_id: Option<String>,
}

/// A running container's log body, still to be decoded.
pub struct LogSource {
    pub container: String,
    pub tty: bool,
    pub body: Incoming,
}

/// Where raw HTTP to the engine goes (for logs, whose framing we decode ourselves).
#[derive(Debug, Clone)]
enum RawEndpoint {
    Unix(PathBuf),
    Tcp(String),
    Unsupported(String),
}

impl RawEndpoint {
    fn from_env() -> RawEndpoint {
        let host = std::env::var("DOCKER_HOST").unwrap_or_default();
        if host.is_empty() {
            RawEndpoint::Unix(PathBuf::from("/var/run/docker.sock"))
        } else if let Some(path) = host.strip_prefix("unix://") {
            RawEndpoint::Unix(PathBuf::from(path))
        } else if let Some(addr) = host
            .strip_prefix("tcp://")
            .or_else(|| host.strip_prefix("http://"))
        {
            RawEndpoint::Tcp(addr.trim_end_matches('/').to_string())
        } else {
            RawEndpoint::Unsupported(host)
        }
    }
}

pub struct Engine {
    project: String,
    allow: Option<BTreeSet<String>>,
    /// The resolved compose file (`CONTROLLER_COMPOSE_MODEL`), read at each use: `./aibox up`
    /// rewrites it.
    model: Option<PathBuf>,
    docker: OnceCell<Docker>,
    raw: RawEndpoint,
}

fn container_name(c: &ContainerSummary) -> String {
    c.names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_else(|| c.id.clone().unwrap_or_default())
}

/// The error of a streamed pull whose client went away before it finished.
pub const CLIENT_GONE: &str = "the client disconnected; the pull was stopped";

/// `repo` and `repo/x` mean `:latest`; pulling without a tag would fetch every tag.
fn pull_reference(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || image.contains('@') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

impl Engine {
    pub fn new(project: String, allow: Option<BTreeSet<String>>, model: Option<PathBuf>) -> Engine {
        Engine {
            project,
            allow,
            model,
            docker: OnceCell::new(),
            raw: RawEndpoint::from_env(),
        }
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    /// Connected on first use, so the controller starts (and answers 503) while Docker is down.
    async fn docker(&self) -> Result<&Docker, DockerError> {
        self.docker
            .get_or_try_init(|| async {
                let docker = Docker::connect_with_defaults()?;
                docker.negotiate_version().await
            })
            .await
            .map_err(DockerError::from)
    }

    fn allowed(&self, service: &str) -> bool {
        self.allow.as_ref().is_none_or(|a| a.contains(service))
    }

    /// Containers of the project grouped by service, each group sorted by container name.
    async fn containers(&self) -> Result<BTreeMap<String, Vec<ContainerSummary>>, DockerError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{PROJECT_LABEL}={}", self.project)],
        )]);
        let list = self
            .docker()
            .await?
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await?;
        let mut by_service: BTreeMap<String, Vec<ContainerSummary>> = BTreeMap::new();
        for c in list {
            let labels = c.labels.clone().unwrap_or_default();
            // The filter already did this; checking again keeps the scope rule local and obvious.
            if labels.get(PROJECT_LABEL) != Some(&self.project) {
                continue;
            }
            if labels.get(ONEOFF_LABEL).map(String::as_str) == Some("True") {
                continue;
            }
            if let Some(service) = labels.get(SERVICE_LABEL) {
                by_service.entry(service.clone()).or_default().push(c);
            }
        }
        for group in by_service.values_mut() {
            group.sort_by_key(container_name);
        }
        Ok(by_service)
    }

    /// The containers of one service that may be acted on.
    async fn resolve(&self, service: &str) -> Result<Vec<ContainerSummary>, DockerError> {
        let mut all = self.containers().await?;
        let found = all
            .remove(service)
            .ok_or_else(|| DockerError::UnknownService {
                service: service.to_string(),
                project: self.project.clone(),
            })?;
        if !self.allowed(service) {
            return Err(DockerError::NotAllowed(service.to_string()));
        }
        Ok(found)
    }

    async fn inspect(&self, c: &ContainerSummary) -> Result<ContainerInspectResponse, DockerError> {
        let id = c.id.clone().unwrap_or_default();
        Ok(self.docker().await?.inspect_container(&id, None).await?)
    }

    pub async fn services(&self) -> Result<Vec<ServiceView>, DockerError> {
        let mut out = Vec::new();
        for (name, group) in self.containers().await? {
            let first = &group[0];
            let inspect = self.inspect(first).await?;
            let state = inspect.state.clone().unwrap_or_default();
            let running = state.running.unwrap_or(false);
            let started_at = state.started_at.clone().filter(|s| !s.starts_with("0001-"));
            let uptime_seconds = started_at
                .as_deref()
                .filter(|_| running)
                .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
                .map(|t| (OffsetDateTime::now_utc() - t).whole_seconds().max(0));
            let health = state
                .health
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "none".to_string());
            let mut ports: Vec<PortView> = first
                .ports
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|p| PortView {
                    private: p.private_port,
                    public: p.public_port,
                    ip: p.ip,
                    kind: p.typ.map(|t| t.to_string()).unwrap_or_else(|| "tcp".into()),
                })
                .collect();
            ports.sort();
            // Docker lists a published port once per address family; one entry is enough.
            ports.dedup_by(|a, b| {
                a.private == b.private && a.public == b.public && a.kind == b.kind
            });
            out.push(ServiceView {
                allowed: self.allowed(&name),
                name,
                state: state
                    .status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "unknown".into()),
                status: first.status.clone().unwrap_or_default(),
                health,
                image: inspect
                    .config
                    .as_ref()
                    .and_then(|c| c.image.clone())
                    .or_else(|| first.image.clone())
                    .unwrap_or_default(),
                image_id: inspect.image.clone().unwrap_or_default(),
                container: container_name(first),
                container_id: first.id.clone().unwrap_or_default(),
                started_at,
                uptime_seconds,
                restart_count: inspect.restart_count.unwrap_or(0),
                replicas: group.len(),
                ports,
                profiles: Vec::new(),
            });
        }
        // The compose model adds what no container shows: the services never created.
        match self.model() {
            Ok(Some(model)) => {
                for s in &mut out {
                    s.profiles = model.profiles(&s.name);
                }
                for name in model.service_names() {
                    if out.iter().any(|s| &s.name == name) {
                        continue;
                    }
                    out.push(ServiceView {
                        allowed: self.allowed(name),
                        name: name.clone(),
                        state: aibox_wire::controller::NOT_CREATED.into(),
                        health: "none".into(),
                        image: model.image(name).unwrap_or_default(),
                        profiles: model.profiles(name),
                        ..Default::default()
                    });
                }
                out.sort_by(|a, b| a.name.cmp(&b.name));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the compose model cannot be used; services never created are not listed")
            }
        }
        Ok(out)
    }

    /// The compose model, if one is configured (read anew each time).
    fn model(&self) -> Result<Option<ComposeModel>, DockerError> {
        match &self.model {
            // Not written (a plain `docker compose up` instead of `./aibox up`): as if unset.
            Some(path) if path.exists() => Ok(Some(ComposeModel::load(path)?)),
            _ => Ok(None),
        }
    }

    fn require_model(&self, why: &str) -> Result<ComposeModel, DockerError> {
        self.model()?.ok_or_else(|| {
            DockerError::Compose(format!(
                "{why} needs the compose model: set CONTROLLER_COMPOSE_MODEL (./aibox up writes it)"
            ))
        })
    }

    /// The id of the image a reference names on this host now, if it is here.
    async fn local_image_id(&self, reference: &str) -> Result<Option<String>, DockerError> {
        match self.docker().await?.inspect_image(reference).await {
            Ok(i) => Ok(i.id),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// What `up` would do for the service, changing nothing.
    pub async fn up_plan(&self, service: &str) -> Result<UpPlan, DockerError> {
        if let Some(group) = self.containers().await?.remove(service) {
            if !self.allowed(service) {
                return Err(DockerError::NotAllowed(service.to_string()));
            }
            let inspect = self.inspect(&group[0]).await?;
            let image = inspect
                .config
                .as_ref()
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            let container_image_id = inspect.image.clone();
            let current_image_id = self.local_image_id(&image).await?;
            let stopped = group
                .iter()
                .any(|c| c.state.map(|s| s.to_string()) != Some("running".into()));
            let step = if current_image_id.is_some() && current_image_id != container_image_id {
                UpStep::Recreate
            } else if stopped {
                UpStep::Start
            } else {
                UpStep::Nothing
            };
            return Ok(UpPlan {
                step,
                containers: group.iter().map(container_name).collect(),
                image,
                container_image_id,
                current_image_id,
            });
        }
        let model = self.model()?.filter(|m| m.has(service)).ok_or_else(|| {
            DockerError::UnknownService {
                service: service.to_string(),
                project: self.project.clone(),
            }
        })?;
        if !self.allowed(service) {
            return Err(DockerError::NotAllowed(service.to_string()));
        }
        let spec = model.container_spec(&self.project, service)?;
        let image = spec.body.image.clone().unwrap_or_default();
        Ok(UpPlan {
            step: UpStep::Create,
            containers: vec![spec.name],
            current_image_id: self.local_image_id(&image).await?,
            image,
            container_image_id: None,
        })
    }

    /// `docker compose up -d <service>` for one service: creates it when it was never created,
    /// recreates it when its image reference now names another image, starts it when stopped.
    pub async fn up(&self, service: &str) -> Result<(UpPlan, ActionOutcome), DockerError> {
        let plan = self.up_plan(service).await?;
        let changed = match plan.step {
            UpStep::Nothing => false,
            UpStep::Start => self.act(service, ServiceAction::Start).await?.changed,
            UpStep::Create | UpStep::Recreate => {
                if plan.current_image_id.is_none() {
                    return Err(DockerError::Compose(format!(
                        "the image {} is not on this host: build it (./aibox up) or pull it first",
                        plan.image
                    )));
                }
                let model = self.require_model(&format!("creating {service}"))?;
                let spec = model.container_spec(&self.project, service)?;
                if plan.step == UpStep::Create {
                    self.create_and_start(&spec).await?;
                } else {
                    self.recreate(service, &spec).await?;
                }
                true
            }
        };
        let containers = plan.containers.clone();
        Ok((
            plan,
            ActionOutcome {
                changed,
                containers,
            },
        ))
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<(), DockerError> {
        let docker = self.docker().await?;
        for net in &spec.networks {
            if let Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) = docker.inspect_network(&net.name, None).await
            {
                docker.create_network(net.clone()).await?;
            }
        }
        for vol in &spec.volumes {
            let name = vol.name.clone().unwrap_or_default();
            if let Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) = docker.inspect_volume(&name).await
            {
                docker.create_volume(vol.clone()).await?;
            }
        }
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(spec.name.clone()),
                    ..Default::default()
                }),
                spec.body.clone(),
            )
            .await?;
        let started = async {
            for (net, endpoint) in &spec.more_networks {
                docker
                    .connect_network(
                        net,
                        NetworkConnectRequest {
                            container: created.id.clone(),
                            endpoint_config: Some(endpoint.clone()),
                        },
                    )
                    .await?;
            }
            docker
                .start_container(&created.id, None::<StartContainerOptions>)
                .await
        }
        .await;
        if let Err(e) = started {
            // Leave nothing half-made behind: a later `up` starts from scratch.
            let _ = docker
                .remove_container(
                    &created.id,
                    Some(RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await;
            return Err(e.into());
        }
        Ok(())
    }

    /// Replaces the service's container with one of the image its reference names now: the old
    /// one is stopped and set aside under another name, and put back if the new one fails.
    async fn recreate(&self, service: &str, spec: &ContainerSpec) -> Result<(), DockerError> {
        let group = self.resolve(service).await?;
        if group.len() > 1 {
            return Err(DockerError::Compose(format!(
                "{service} runs {} containers; recreate a scaled service with docker compose",
                group.len()
            )));
        }
        let docker = self.docker().await?;
        let old = &group[0];
        let old_id = old.id.clone().unwrap_or_default();
        let was_running = old.state.map(|s| s.to_string()) == Some("running".into());
        let set_aside = format!(
            "{}-replaced-{}",
            container_name(old),
            &old_id[..old_id.len().min(12)]
        );
        docker
            .stop_container(&old_id, None::<StopContainerOptions>)
            .await?;
        docker
            .rename_container(&old_id, RenameContainerOptions { name: set_aside })
            .await?;
        match self.create_and_start(spec).await {
            Ok(()) => {
                docker
                    .remove_container(
                        &old_id,
                        Some(RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                    .await?;
                Ok(())
            }
            Err(e) => {
                let _ = docker
                    .rename_container(
                        &old_id,
                        RenameContainerOptions {
                            name: container_name(old),
                        },
                    )
                    .await;
                if was_running {
                    let _ = docker
                        .start_container(&old_id, None::<StartContainerOptions>)
                        .await;
                }
                Err(e)
            }
        }
    }

    /// Checks the service exists and may be acted on; returns its container names and state.
    pub async fn describe(&self, service: &str) -> Result<(Vec<String>, String), DockerError> {
        let group = self.resolve(service).await?;
        let state = group[0]
            .state
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into());
        Ok((group.iter().map(container_name).collect(), state))
    }

    /// The state of the service's first container and the ids of all its containers (to tell
    /// whether the controller itself is one of them).
    pub async fn observe(&self, service: &str) -> Result<(String, Vec<String>), DockerError> {
        let group = self.resolve(service).await?;
        let state = group[0]
            .state
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into());
        Ok((state, group.iter().filter_map(|c| c.id.clone()).collect()))
    }

    pub async fn act(
        &self,
        service: &str,
        action: ServiceAction,
    ) -> Result<ActionOutcome, DockerError> {
        let group = self.resolve(service).await?;
        let docker = self.docker().await?;
        let mut changed = false;
        let mut names = Vec::new();
        for c in &group {
            let id = c.id.clone().unwrap_or_default();
            let running = self
                .inspect(c)
                .await?
                .state
                .and_then(|s| s.running)
                .unwrap_or(false);
            // Docker answers 304 for start-when-running and stop-when-stopped; both are success.
            match action {
                ServiceAction::Start => {
                    docker
                        .start_container(&id, None::<StartContainerOptions>)
                        .await?;
                    changed |= !running;
                }
                ServiceAction::Stop => {
                    docker
                        .stop_container(&id, None::<StopContainerOptions>)
                        .await?;
                    changed |= running;
                }
                ServiceAction::Restart => {
                    docker
                        .restart_container(&id, None::<RestartContainerOptions>)
                        .await?;
                    changed = true;
                }
            }
            names.push(container_name(c));
        }
        Ok(ActionOutcome {
            changed,
            containers: names,
        })
    }

    /// Opens the log stream of the service's first container (a running one if any).
    pub async fn logs(
        &self,
        service: &str,
        tail: u32,
        follow: bool,
        timestamps: bool,
    ) -> Result<LogSource, DockerError> {
        let group = self.resolve(service).await?;
        let chosen = group
            .iter()
            .find(|c| c.state.map(|s| s.to_string()) == Some("running".into()))
            .unwrap_or(&group[0]);
        let inspect = self.inspect(chosen).await?;
        let tty = inspect.config.as_ref().and_then(|c| c.tty).unwrap_or(false);
        let version = self.docker().await?.client_version();
        let path = format!(
            "/v{}.{}/containers/{}/logs?stdout=1&stderr=1&tail={tail}&follow={}&timestamps={}",
            version.major_version,
            version.minor_version,
            chosen.id.clone().unwrap_or_default(),
            follow as u8,
            timestamps as u8,
        );
        let body = self.raw_get(&path).await?;
        Ok(LogSource {
            container: container_name(chosen),
            tty,
            body,
        })
    }

    async fn raw_get(&self, path: &str) -> Result<Incoming, DockerError> {
        let unavailable = |e: std::io::Error| DockerError::Unavailable(e.to_string());
        match &self.raw {
            RawEndpoint::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(unavailable)?;
                raw_request(s, path).await
            }
            RawEndpoint::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a)
                    .await
                    .map_err(unavailable)?;
                raw_request(s, path).await
            }
            RawEndpoint::Unsupported(h) => Err(DockerError::Unavailable(format!(
                "log streaming supports unix:// and tcp:// DOCKER_HOST values, not {h:?}"
            ))),
        }
    }

    pub async fn image_refs(
        &self,
        services: &[String],
    ) -> Result<Vec<(String, String)>, DockerError> {
        let mut out = Vec::new();
        for s in services {
            let group = self.resolve(s).await?;
            let inspect = self.inspect(&group[0]).await?;
            let image = inspect.config.and_then(|c| c.image).unwrap_or_default();
            out.push((s.clone(), image));
        }
        Ok(out)
    }

    /// Pulls the service's image. With `events`, every progress event (byte ticks included) and
    /// every error inside Docker's stream is also sent there as it arrives, as one JSON object; when
    /// the receiver is gone (the client disconnected) reading stops and the pull is reported failed.
    pub async fn pull(
        &self,
        service: &str,
        events: Option<&tokio::sync::mpsc::Sender<serde_json::Value>>,
    ) -> Result<PullResult, DockerError> {
        let group = self.resolve(service).await?;
        let inspect = self.inspect(&group[0]).await?;
        let image = inspect
            .config
            .as_ref()
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let container_image_id = inspect.image.clone();
        let mut result = PullResult {
            service: service.to_string(),
            image: image.clone(),
            ok: false,
            error: None,
            container_image_id,
            pulled_image_id: None,
            drift: None,
            progress: Vec::new(),
        };
        if image.is_empty() || image.starts_with("sha256:") {
            result.error = Some(
                "the container was created from an image id; there is no reference to pull".into(),
            );
            return Ok(result);
        }
        let reference = pull_reference(&image);
        let docker = self.docker().await?;
        let mut stream = docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(reference.clone()),
                ..Default::default()
            }),
            None,
            None,
        );
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(tx) = events {
                        let mut event = serde_json::Map::new();
                        event.insert("service".into(), service.into());
                        event.insert(
                            "status".into(),
                            info.status.clone().unwrap_or_default().into(),
                        );
                        if let Some(id) = info.id.as_ref().filter(|id| !id.is_empty()) {
                            event.insert("id".into(), id.clone().into());
                        }
                        if let Some(d) = &info.progress_detail {
                            if let Some(current) = d.current {
                                event.insert("current".into(), current.into());
                            }
                            if let Some(total) = d.total {
                                event.insert("total".into(), total.into());
                            }
                        }
                        if tx.send(event.into()).await.is_err() {
                            result.error = Some(CLIENT_GONE.into());
                            return Ok(result);
                        }
                    }
                    // Byte-level "Downloading"/"Extracting" ticks carry a progress bar; keep the milestones.
                    if info
                        .progress_detail
                        .as_ref()
                        .is_some_and(|d| d.current.is_some() || d.total.is_some())
                    {
                        continue;
                    }
                    let Some(status) = info.status else { continue };
                    let line = match info.id {
                        Some(id) if !id.is_empty() => format!("{id}: {status}"),
                        _ => status,
                    };
                    if result.progress.last() != Some(&line) && result.progress.len() < MAX_PROGRESS
                    {
                        result.progress.push(line);
                    }
                }
                Err(e) => {
                    let e = DockerError::from(e);
                    if let DockerError::Unavailable(_) = e {
                        return Err(e);
                    }
                    let message = match e {
                        DockerError::Api { message, .. } | DockerError::Gone(message) => message,
                        other => other.to_string(),
                    };
                    if let Some(tx) = events {
                        let _ = tx
                            .send(serde_json::json!({"error": message, "service": service}))
                            .await;
                    }
                    result.error = Some(message);
                    return Ok(result);
                }
            }
        }
        let pulled = docker.inspect_image(&reference).await?;
        result.drift = Some(pulled.id.is_some() && pulled.id != result.container_image_id);
        result.pulled_image_id = pulled.id;
        result.ok = true;
        Ok(result)
    }
}

async fn raw_request<S>(stream: S, path: &str) -> Result<Incoming, DockerError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let unavailable = |e: hyper::Error| DockerError::Unavailable(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(unavailable)?;
    tokio::spawn(async move {
        // Ends when the response body is dropped (client gone) or fully read.
        let _ = conn.await;
    });
    let req = http::Request::get(path)
        .header(http::header::HOST, "docker")
        .body(Empty::<Bytes>::new())
        .map_err(|e| DockerError::Unavailable(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(unavailable)?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp.into_body());
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    Err(match status.as_u16() {
        404 => DockerError::Gone(message),
        s => DockerError::Api { status: s, message },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untagged_references_pull_latest_only() {
        assert_eq!(pull_reference("busybox"), "busybox:latest");
        assert_eq!(
            pull_reference("127.0.0.1:5000/a/b"),
            "127.0.0.1:5000/a/b:latest"
        );
        assert_eq!(
            pull_reference("127.0.0.1:5000/a/b:1"),
            "127.0.0.1:5000/a/b:1"
        );
        assert_eq!(pull_reference("a@sha256:abc"), "a@sha256:abc");
    }
}
