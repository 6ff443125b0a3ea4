//! The controller's API (docs/controller.md) as the dashboard and the edge read it.
use serde::{Deserialize, Serialize};

/// Every controller error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
}

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortBinding {
    pub private: u16,
    pub public: Option<u16>,
    pub ip: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
}
