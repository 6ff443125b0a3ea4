//! Admin actions taken at the edge (model pull/delete, MCP registry edits) are recorded in the
//! controller's audit log through its `POST /audit`: an intent before acting, an outcome after
//! (`aibox_mcp::audited`). Fail closed: no intent on record, no action.
use std::time::Duration;

use aibox_mcp::{AuditRecord, AuditSink};

pub struct ControllerAudit {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl ControllerAudit {
    pub fn new(url: String, token: String) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()?;
        Ok(Self { url, token, http })
    }
}

#[async_trait::async_trait]
impl AuditSink for ControllerAudit {
    async fn record(&self, record: AuditRecord) -> Result<u64, String> {
        let resp = self
            .http
            .post(format!("{}/audit", self.url))
            .bearer_auth(&self.token)
            .header("x-actor", "edge")
            .header(
                "x-request-id",
                record.correlation_id.clone().unwrap_or_default(),
            )
            .json(&record)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "controller unreachable: {}",
                    crate::providers::describe_reqwest_error(&e)
                )
            })?;
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
