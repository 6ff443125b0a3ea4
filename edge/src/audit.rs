//! Admin actions taken at the edge (model pull/delete, MCP registry edits) are recorded in the
//! controller's audit log through its `POST /audit`: an intent before acting, an outcome after
//! (`aibox_mcp::audited`). Fail closed: no intent on record, no action.
use std::time::Duration;

use aibox_mcp::{AuditRecord, AuditSink};
use http::Method;

use crate::providers::{Client, Target, UpstreamRequest};

/// The whole exchange with the controller, body included.
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct ControllerAudit {
    target: Result<Target, String>,
    token: String,
    /// The same client the edge uses for providers (Pingora's connector).
    http: Client,
}

impl ControllerAudit {
    pub fn new(url: String, token: String) -> Self {
        Self {
            target: Target::parse(&url).map_err(|e| e.to_string()),
            token,
            http: Client::new(TIMEOUT),
        }
    }

    async fn post(&self, record: &AuditRecord) -> Result<u64, String> {
        let target = self
            .target
            .as_ref()
            .map_err(|e| format!("controller URL: {e}"))?;
        let body = serde_json::to_vec(record).map_err(|e| format!("audit record: {e}"))?;
        let request = UpstreamRequest::json(Method::POST, "/audit", body.into())
            .header_str("x-actor", "edge")
            .header_str(
                "x-request-id",
                record.correlation_id.as_deref().unwrap_or_default(),
            );
        let resp = self
            .http
            .exchange(target, &request, Some(&self.token), TIMEOUT)
            .await
            .map_err(|e| format!("controller unreachable: {e}"))?;
        if resp.status().is_success() {
            let stored: aibox_wire::audit::AuditEvent = resp
                .json()
                .await
                .map_err(|e| format!("the controller's answer is not an audit event: {e}"))?;
            Ok(stored.seq)
        } else {
            Err(format!(
                "controller refused the audit event: HTTP {}",
                resp.status().as_u16()
            ))
        }
    }
}

#[async_trait::async_trait]
impl AuditSink for ControllerAudit {
    async fn record(&self, record: AuditRecord) -> Result<u64, String> {
        tokio::time::timeout(TIMEOUT, self.post(&record))
            .await
            .unwrap_or_else(|_| Err("controller unreachable: timed out".to_owned()))
    }
}
