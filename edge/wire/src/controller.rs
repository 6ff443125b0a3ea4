//! The controller's API (docs/controller.md) as the dashboard and the edge read it.
use serde::{Deserialize, Serialize};

/// Every controller error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// `GET /services`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceList {
    pub project: String,
    pub services: Vec<ServiceStatus>,
}

/// One compose service of the project, described by its first container (by name).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// False for services outside `CONTROLLER_SERVICES` (listed, never acted on).
    pub allowed: bool,
    /// Docker's container state (`running`, `exited`, ...).
    pub state: String,
    pub status: String,
    /// `healthy`, `unhealthy`, `starting`, or `none` without a HEALTHCHECK.
    pub health: String,
    pub image: String,
    pub image_id: String,
    pub container: String,
    pub container_id: String,
    /// `None` if never started.
    pub started_at: Option<String>,
    /// `None` unless running.
    pub uptime_seconds: Option<i64>,
    pub restart_count: i64,
    pub replicas: usize,
    pub ports: Vec<PortBinding>,
    /// The compose profiles the service belongs to (from the compose model; empty when unknown).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
}

/// The `state` of a service the compose model has but no container exists for (a profile never
/// started): `POST /services/<name>/up` creates and starts it.
pub const NOT_CREATED: &str = "not created";

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortBinding {
    pub private: u16,
    pub public: Option<u16>,
    pub ip: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
}

/// The answer of `POST /images/pull` (and the last line of a streamed pull, plus `"done": true`):
/// 200 when every pull worked, 502 `pull_failed` (with `error`) when one did not.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PullAnswer {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default)]
    pub results: Vec<PullResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// The pull of one service's image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PullResult {
    pub service: String,
    pub image: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub container_image_id: Option<String>,
    pub pulled_image_id: Option<String>,
    /// The container runs an older image than the one now pulled.
    pub drift: Option<bool>,
    /// Milestones of Docker's progress stream.
    pub progress: Vec<String>,
}

/// The services whose stop cuts the user off from the dashboard, and what happens then. Stopping
/// one needs `"confirm_service": "<name>"` besides `"confirm": true` (the controller refuses it
/// otherwise with `service_name_required`); the dashboard asks for the name typed.
pub const LOCKOUT_SERVICES: [(&str, &str); 3] = [
    (
        "edge",
        "The edge serves this dashboard and every model, tool and egress request: the dashboard, \
         every client (Open WebUI, n8n, OpenClaw, the SDKs) and the browser's way out stop answering. \
         Only the host can bring it back: `./aibox up` (or `docker compose start edge`).",
    ),
    (
        "dashboard",
        "This dashboard stops answering (the edge keeps serving models and tools). Only the host \
         can bring it back: `./aibox up` (or `docker compose start dashboard`).",
    ),
    (
        "controller",
        "The dashboard can no longer list, start, stop or read the logs of any service (itself \
         included), and audit events of the edge's admin actions are refused. Only the host can \
         bring it back: `./aibox up` (or `docker compose start controller`).",
    ),
];

/// What stopping `service` would cut off, if it is one of [`LOCKOUT_SERVICES`].
pub fn lockout_risk(service: &str) -> Option<&'static str> {
    LOCKOUT_SERVICES
        .iter()
        .find(|(name, _)| *name == service)
        .map(|(_, why)| *why)
}
