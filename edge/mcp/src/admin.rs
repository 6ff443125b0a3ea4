//! Admin API: `GET`/`PUT /api/mcp/registry`, `GET /api/mcp/health` (admin key only).
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::audited;
use crate::hub::{HubCore, LoadError};
use crate::registry::{self, RegistryFile, Sources, Transport};
use crate::{AuditRecord, Caller};
use aibox_wire::mcp::{McpSecretNames, McpSecretsUpdate};

/// Why an admin write did not take effect; rendered as one problem answer ([`ApplyError::answer`]).
#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error("{0}")]
    Encode(#[source] serde_json::Error),
    #[error("{}: {source}", path.display())]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Written, but the hub would not load it (the file changed under us, or a secret vanished).
    #[error("{0}")]
    NotApplied(Arc<LoadError>),
    /// The task doing the write panicked or was cancelled.
    #[error("{0}")]
    Task(#[source] tokio::task::JoinError),
}

impl ApplyError {
    fn answer(&self, write_title: &'static str) -> Response {
        let (status, title) = match self {
            Self::Encode(_) | Self::Task(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "Internal error")
            }
            Self::Write { .. } => (StatusCode::INTERNAL_SERVER_ERROR, write_title),
            Self::NotApplied(_) => (StatusCode::CONFLICT, "Registry not applied"),
        };
        problem(status, title, self.to_string())
    }
}

/// An RFC 9457 problem document.
pub fn problem(status: StatusCode, title: &str, detail: impl Into<String>) -> Response {
    let body = json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail.into(),
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

fn require_admin(caller: &Option<Extension<Caller>>) -> Result<Caller, Box<Response>> {
    match caller {
        Some(Extension(c)) if c.admin => Ok(c.clone()),
        Some(Extension(c)) if c.client != "anonymous" => Err(Box::new(problem(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "the MCP admin API needs the admin key",
        ))),
        _ => Err(Box::new(problem(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the MCP admin API needs the admin key (Authorization: Bearer <admin token>)",
        ))),
    }
}

pub async fn get_registry(
    State(core): State<Arc<HubCore>>,
    caller: Option<Extension<Caller>>,
) -> Response {
    if let Err(r) = require_admin(&caller) {
        return *r;
    }
    let snap = core.snapshot();
    let servers: Vec<Value> = snap
        .servers
        .values()
        .map(|s| {
            json!({
                "name": s.name,
                "transport": s.transport.kind(),
                "status": format!("{:?}", s.status).to_lowercase(),
            })
        })
        .collect();
    axum::Json(json!({
        "path": core.config.registry_path(),
        "servers_txt": core.config.servers_txt_path(),
        "registry": snap.file,
        "servers": servers,
        "error": core.registry_error().map(|e| e.to_string()),
    }))
    .into_response()
}

pub async fn get_health(
    State(core): State<Arc<HubCore>>,
    caller: Option<Extension<Caller>>,
) -> Response {
    if let Err(r) = require_admin(&caller) {
        return *r;
    }
    let servers: Vec<Value> = core
        .upstreams()
        .iter()
        .map(|up| {
            let spec = up.spec();
            let h = up.health();
            let tools: Vec<String> = up
                .tools()
                .iter()
                .map(|t| crate::naming::exposed_name(&up.name, &t.name))
                .collect();
            let target = match &spec.transport {
                Transport::Http { url, .. } => url.clone(),
                Transport::Stdio { command, .. } => command.clone(),
                Transport::Image { image, .. } => image.clone(),
            };
            json!({
                "name": up.name,
                "transport": spec.transport.kind(),
                "target": target,
                "state": h.state,
                "last_error": h.last_error,
                "latency_ms": h.latency_ms,
                "consecutive_failures": h.consecutive_failures,
                "last_probe_unix_ms": h.last_probe_unix_ms,
                "protocol_version": h.protocol_version,
                "restarts": h.restarts,
                "missing_secrets": h.missing_secrets,
                "tools": tools,
                "policy": {
                    "allow_clients": spec.policy.allow_clients,
                    "deny_clients": spec.policy.deny_clients,
                    "rate_limit_rpm": spec.policy.rate_limit_rpm,
                    "timeout_sec": spec.policy.timeout.as_secs_f64(),
                },
            })
        })
        .collect();
    axum::Json(json!({
        "registry_error": core.registry_error().map(|e| e.to_string()),
        "servers": servers,
    }))
    .into_response()
}

pub async fn put_registry(
    State(core): State<Arc<HubCore>>,
    caller: Option<Extension<Caller>>,
    body: Bytes,
) -> Response {
    let caller = match require_admin(&caller) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    // An array is not a registry, even though serde would build one from it.
    if let Some(what) = aibox_wire::body::non_object_kind(&body) {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid registry",
            format!(
                "registry.json: {}",
                aibox_wire::body::BodyError::NotAnObject { what }
            ),
        );
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid registry",
            "registry.json: body is not UTF-8",
        );
    };
    // Validate exactly as the poller would load it (with servers.txt and the secrets).
    let validated = (|| -> Result<_, registry::RegistryError> {
        let servers_txt = registry::read_optional(&core.config.servers_txt_path())?;
        let env = core.secrets_env()?;
        core.load_registry(&Sources {
            registry_json: Some(text),
            servers_txt: servers_txt.as_deref(),
            env: &env,
            default_timeout: core.config.default_timeout(),
        })
    })();
    let new_file = match validated {
        Ok(snapshot) => snapshot.file.unwrap_or_default(),
        Err(e) => return problem(StatusCode::BAD_REQUEST, "Invalid registry", e.to_string()),
    };
    let old_file: RegistryFile = core.snapshot().file.clone().unwrap_or_default();
    let changes = diff(&old_file, &new_file);
    // Fail closed: an admin change whose intent cannot be audited is not made.
    let mut intents = Vec::new();
    if let Some(audit) = &core.audit {
        for (action, server) in &changes {
            let record = AuditRecord {
                action: action.to_string(),
                resource: format!("mcp:{server}"),
                actor: Some(caller.client.clone()),
                correlation_id: Some(caller.request_id.clone()),
                metadata: Some(
                    json!({"server": server, "registry": core.config.registry_path()})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                ),
                ..Default::default()
            };
            match audited::begin(audit.clone(), record).await {
                Ok(intent) => intents.push(intent),
                Err(e) => {
                    // The intents already written get their outcome (error) as they drop.
                    return problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Audit unavailable",
                        format!("the change was not made because it could not be audited: {e}"),
                    );
                }
            }
        }
    }
    // Written and applied in a task of its own: a client that hangs up cancels neither the
    // change nor the outcome events.
    let task_core = core.clone();
    let applied = core
        .tasks
        .spawn(async move {
            let result = apply_registry(&task_core, &new_file).await;
            for intent in intents {
                let detail = match &result {
                    Ok(()) => json!({}),
                    Err(e) => json!({"error": e.to_string()}),
                };
                // Awaited here, inside the task: the answer follows the outcome events.
                let _ = intent.finish(result.is_ok(), detail).await;
            }
            result
        })
        .await;
    if let Err(e) = applied.map_err(ApplyError::Task).and_then(|r| r) {
        return e.answer("Registry not written");
    }
    tracing::info!(actor = %caller.client, changes = changes.len(), "mcp registry updated");
    let list = |a: &str| -> Vec<String> {
        changes
            .iter()
            .filter(|(x, _)| *x == a)
            .map(|(_, s)| s.clone())
            .collect()
    };
    axum::Json(json!({
        "ok": true,
        "added": list("mcp_add"),
        "removed": list("mcp_remove"),
        "updated": list("mcp_update"),
    }))
    .into_response()
}

/// `GET /api/mcp/secrets`: the names the secrets file sets, never a value.
pub async fn get_secrets(
    State(core): State<Arc<HubCore>>,
    caller: Option<Extension<Caller>>,
) -> Response {
    if let Err(r) = require_admin(&caller) {
        return *r;
    }
    match core.secrets_env() {
        Ok(env) => axum::Json(secret_names(&env)).into_response(),
        Err(e) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Secrets not readable",
            e.to_string(),
        ),
    }
}

fn secret_names(env: &std::collections::HashMap<String, String>) -> McpSecretNames {
    let mut names: Vec<String> = env.keys().cloned().collect();
    names.sort();
    McpSecretNames { names }
}

/// `PUT /api/mcp/secrets` `{"set": {"NAME": "value"}}`: adds or replaces variables in the secrets
/// file (`data/mcp/.env`, mode 0600), so a server's `env_schema` secrets are entered once and
/// never written into registry.json. Audited as `mcp_secret_set` with the names only.
pub async fn put_secrets(
    State(core): State<Arc<HubCore>>,
    caller: Option<Extension<Caller>>,
    body: Bytes,
) -> Response {
    let caller = match require_admin(&caller) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let update: McpSecretsUpdate = match aibox_wire::body::from_slice(&body) {
        Ok(u) => u,
        Err(e) => return problem(StatusCode::BAD_REQUEST, "Invalid secrets", e.to_string()),
    };
    if update.set.is_empty() {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid secrets",
            "\"set\" names no variable",
        );
    }
    // One change at a time: each is a read, change and rewrite of the whole file.
    static ONE_WRITER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let one = ONE_WRITER.lock().await;
    let path = core.config.env_file_path();
    let current = match registry::read_optional(&path) {
        Ok(t) => t.unwrap_or_default(),
        Err(e) => {
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Secrets not readable",
                e.to_string(),
            )
        }
    };
    let text = match registry::set_env_vars(&current, &update.set) {
        Ok(t) => t,
        Err(e) => return problem(StatusCode::BAD_REQUEST, "Invalid secrets", e.to_string()),
    };
    let names: Vec<&String> = update.set.keys().collect();
    let intent = match &core.audit {
        Some(audit) => {
            let record = AuditRecord {
                action: "mcp_secret_set".into(),
                resource: "mcp:secrets".into(),
                actor: Some(caller.client.clone()),
                correlation_id: Some(caller.request_id.clone()),
                metadata: json!({"names": names, "file": path}).as_object().cloned(),
                ..Default::default()
            };
            match audited::begin(audit.clone(), record).await {
                Ok(i) => Some(i),
                Err(e) => {
                    return problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Audit unavailable",
                        format!(
                            "the secrets were not written because it could not be audited: {e}"
                        ),
                    )
                }
            }
        }
        None => None,
    };
    // In a task of its own, like a registry change: a client that hangs up cancels neither the
    // write nor its outcome event.
    let task_core = core.clone();
    let applied = core
        .tasks
        .spawn(async move {
            let result = write_atomically(&path, text.as_bytes(), 0o600)
                .map_err(|source| ApplyError::Write { path, source });
            if result.is_ok() {
                // Servers waiting for these secrets start now, not at the next poll.
                let _ = task_core.reload_from_disk().await;
                task_core.remember_stamps();
            }
            if let Some(intent) = intent {
                let detail = match &result {
                    Ok(()) => json!({}),
                    Err(e) => json!({"error": e.to_string()}),
                };
                let _ = intent.finish(result.is_ok(), detail).await;
            }
            drop(one);
            result
        })
        .await;
    if let Err(e) = applied.map_err(ApplyError::Task).and_then(|r| r) {
        return e.answer("Secrets not written");
    }
    tracing::info!(actor = %caller.client, names = ?names, "mcp secrets set");
    match core.secrets_env() {
        Ok(env) => axum::Json(secret_names(&env)).into_response(),
        Err(e) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Secrets not readable",
            e.to_string(),
        ),
    }
}

/// Writes the registry file and loads it.
async fn apply_registry(core: &Arc<HubCore>, new_file: &RegistryFile) -> Result<(), ApplyError> {
    let path = core.config.registry_path();
    let pretty = serde_json::to_string_pretty(new_file)
        .map(|s| s + "\n")
        .map_err(ApplyError::Encode)?;
    write_atomically(&path, pretty.as_bytes(), 0o644)
        .map_err(|source| ApplyError::Write { path, source })?;
    core.reload_from_disk()
        .await
        .map_err(ApplyError::NotApplied)?;
    core.remember_stamps();
    Ok(())
}

fn diff(old: &RegistryFile, new: &RegistryFile) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for (name, entry) in &new.servers.0 {
        match old.servers.0.iter().find(|(n, _)| n == name) {
            None => out.push(("mcp_add", name.clone())),
            Some((_, prev)) if prev != entry => out.push(("mcp_update", name.clone())),
            Some(_) => {}
        }
    }
    for (name, _) in &old.servers.0 {
        if !new.servers.0.iter().any(|(n, _)| n == name) {
            out.push(("mcp_remove", name.clone()));
        }
    }
    out
}

/// Write to a temporary file (created with `mode`) in the same directory, fsync, then rename
/// over the target.
fn write_atomically(path: &std::path::Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("registry.json"),
        uuid::Uuid::new_v4()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
