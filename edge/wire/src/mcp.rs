//! The MCP tool servers as the dashboard reads them: the controller's tool containers and the
//! edge's secrets file (`data/mcp/.env`), whose values never leave the edge.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /mcp/containers` on the controller: one entry per tool container of the project.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolContainerList {
    /// False when the controller runs no tool containers (`AIBOX_MCP_CONTAINERS` off).
    pub enabled: bool,
    pub containers: Vec<ToolContainer>,
}

/// One tool container (one per enabled `image`/`command` server).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolContainer {
    /// The registry entry it runs.
    pub server: String,
    pub container: String,
    /// `image` or `command` (a container of the runner image).
    #[serde(default)]
    pub kind: String,
    /// Docker's container state (`running`, `exited`, ...).
    pub state: String,
    /// Docker's status text (`Up 3 minutes`, `Exited (137) 2 seconds ago`).
    pub status: String,
    pub image: String,
    /// The last lines of its log, oldest first; only with `?tail=N` (an audited log read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
}

/// `GET /api/mcp/secrets` on the edge, and its answer to `PUT`: which variables the secrets file
/// sets. Names only: a value, once written, is never read back out of the edge.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct McpSecretNames {
    pub names: Vec<String>,
}

/// `PUT /api/mcp/secrets` on the edge: variables to set (added, or replaced) in the secrets file.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpSecretsUpdate {
    pub set: BTreeMap<String, String>,
}

/// Names only: an update may be logged or shown in a panic without its values.
impl std::fmt::Debug for McpSecretsUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpSecretsUpdate")
            .field("set", &self.set.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secrets_update_never_debug_prints_its_values() {
        let u = McpSecretsUpdate {
            set: BTreeMap::from([("GH_TOKEN".to_string(), "ghp_secret".to_string())]),
        };
        let shown = format!("{u:?}");
        assert!(
            shown.contains("GH_TOKEN") && !shown.contains("ghp_secret"),
            "{shown}"
        );
    }

    #[test]
    fn a_container_without_a_log_tail_reads_back() {
        let c: ToolContainerList = serde_json::from_str(
            r#"{"enabled":true,"containers":[{"server":"time","container":"p-mcp-time","kind":"image",
                "state":"running","status":"Up 1 second","image":"mcp/time"}]}"#,
        )
        .unwrap();
        assert!(c.containers[0].log_tail.is_empty());
    }
}
