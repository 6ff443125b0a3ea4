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
