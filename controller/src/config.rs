//! Settings, from flags and the environment, validated once at start; errors name the key.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Args;

use crate::audit::{derive_key, AuditConfig};
use crate::tools::ToolsConfig;

pub const MIN_TOKEN_LEN: usize = 32;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CONTROLLER_LISTEN", default_value = "0.0.0.0:9000")]
    pub listen: String,
    /// Compose project whose containers may be managed.
    #[arg(long, env = "COMPOSE_PROJECT_NAME")]
    pub project: Option<String>,
    /// Directory of audit.log and its rotated files.
    #[arg(
        long,
        env = "CONTROLLER_AUDIT_DIR",
        default_value = "data/ops-controller"
    )]
    pub audit_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key} is not set: {why}")]
    Missing {
        key: &'static str,
        why: &'static str,
    },
    #[error("{key} is invalid: {why}")]
    Invalid { key: &'static str, why: String },
}

#[derive(Debug)]
pub struct ControllerConfig {
    pub listen: String,
    pub project: String,
    pub token: String,
    pub allow: Option<BTreeSet<String>>,
    pub audit: AuditConfig,
    /// Tool containers for the MCP registry (`AIBOX_MCP_CONTAINERS=1`), else `None`.
    pub tools: Option<ToolsConfig>,
    /// `CONTROLLER_COMPOSE_MODEL`: the resolved compose file (`docker compose config`) that
    /// `./aibox up` writes; without it services never created are not listed and `up` can only
    /// start existing containers.
    pub compose_model: Option<PathBuf>,
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

fn env_number(key: &'static str, default: u64, min: u64) -> Result<u64, ConfigError> {
    match env(key) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= min)
            .ok_or(ConfigError::Invalid {
                key,
                why: format!("{v:?} is not a whole number >= {min}"),
            }),
    }
}

/// `AIBOX_MCP_*`: the tool containers of the MCP registry (docs/mcp.md, "Tool containers").
fn tools_from_env(project: &str) -> Result<Option<ToolsConfig>, ConfigError> {
    match env("AIBOX_MCP_CONTAINERS").as_deref() {
        None | Some("0" | "false") => return Ok(None),
        Some("1" | "true") => {}
        Some(other) => {
            return Err(ConfigError::Invalid {
                key: "AIBOX_MCP_CONTAINERS",
                why: format!("{other:?} is not one of 1, true, 0, false"),
            })
        }
    }
    let memory_mb = env_number("AIBOX_MCP_MEMORY_MB", 512, 16)?;
    Ok(Some(ToolsConfig {
        mcp_dir: PathBuf::from(env("AIBOX_MCP_DIR").unwrap_or_else(|| "data/mcp".into())),
        network: env("AIBOX_MCP_NETWORK").unwrap_or_else(|| format!("{project}_tools")),
        bridge_dir: PathBuf::from(
            env("AIBOX_MCP_BRIDGE_DIR").unwrap_or_else(|| "/usr/local/lib/aibox/mcp-bridge".into()),
        ),
        runner_image: env("AIBOX_MCP_RUNNER_IMAGE").unwrap_or_else(|| DEFAULT_RUNNER_IMAGE.into()),
        runner_proxy: env("AIBOX_MCP_RUNNER_PROXY"),
        memory_bytes: (memory_mb * 1024 * 1024) as i64,
        pids_limit: env_number("AIBOX_MCP_PIDS_LIMIT", 128, 8)? as i64,
        tmpfs_size: env("AIBOX_MCP_TMPFS_SIZE").unwrap_or_else(|| "64m".into()),
        // uvx and npx unpack whole packages into their caches under /tmp.
        runner_tmpfs_size: env("AIBOX_MCP_RUNNER_TMPFS_SIZE").unwrap_or_else(|| "256m".into()),
        interval: std::time::Duration::from_millis(env_number(
            "AIBOX_MCP_RECONCILE_MS",
            2000,
            100,
        )?),
    }))
}

/// The runner of `command` servers: Python 3.12 with uv (`uvx`) and Node 22 (`npx`) on Debian
/// slim, pinned by digest (the digest a public Dockerfile pins this tag to; refresh it with
/// `deploy/pin-images.sh` where a registry is reachable). docs/mcp.md, "The runner image".
pub const DEFAULT_RUNNER_IMAGE: &str =
    "nikolaik/python-nodejs:python3.12-nodejs22-slim@sha256:15a5d044754b9c8d7a86df9b7bb44087b8737070ea249af084d2670aeaad75ba";

fn token_from_env() -> Result<String, ConfigError> {
    let token = std::env::var("OPS_CONTROLLER_TOKEN").unwrap_or_default();
    if token.is_empty() {
        return Err(ConfigError::Missing {
            key: "OPS_CONTROLLER_TOKEN",
            why: "the controller has no default token and will not start without one (e.g. `openssl rand -hex 32`)",
        });
    }
    if token.chars().count() < MIN_TOKEN_LEN {
        return Err(ConfigError::Invalid {
            key: "OPS_CONTROLLER_TOKEN",
            why: format!(
                "it is {} characters; at least {MIN_TOKEN_LEN} are required (e.g. `openssl rand -hex 32`)",
                token.chars().count()
            ),
        });
    }
    Ok(token)
}

/// `AUDIT_HMAC_KEY` if set, else a key derived from `OPS_CONTROLLER_TOKEN` (docs/audit/SCHEMA.md).
pub fn audit_key_from_env() -> Result<Vec<u8>, ConfigError> {
    if let Some(key) = env("AUDIT_HMAC_KEY") {
        return Ok(key.into_bytes());
    }
    match std::env::var("OPS_CONTROLLER_TOKEN") {
        Ok(t) if !t.is_empty() => Ok(derive_key(&t)),
        _ => Err(ConfigError::Missing {
            key: "AUDIT_HMAC_KEY",
            why: "set AUDIT_HMAC_KEY (or OPS_CONTROLLER_TOKEN, from which the key is derived)",
        }),
    }
}

impl ControllerConfig {
    pub fn load(args: ServeArgs) -> Result<ControllerConfig, ConfigError> {
        let token = token_from_env()?;
        let project =
            args.project
                .filter(|p| !p.trim().is_empty())
                .ok_or(ConfigError::Missing {
                key: "COMPOSE_PROJECT_NAME",
                why: "the controller manages exactly one compose project; set it or pass --project",
            })?;
        let allow = env("CONTROLLER_SERVICES").map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect::<BTreeSet<_>>()
        });
        if allow.as_ref().is_some_and(BTreeSet::is_empty) {
            return Err(ConfigError::Invalid {
                key: "CONTROLLER_SERVICES",
                why: "it names no service; unset it to allow every service of the project".into(),
            });
        }
        let max_bytes = env_number("AUDIT_MAX_BYTES", 10 * 1024 * 1024, 1024)?;
        let keep = env_number("AUDIT_KEEP", 5, 1)? as usize;
        let check_secs = env_number("AUDIT_CHECK_INTERVAL_SECS", 60, 1)?;
        let key = audit_key_from_env()?;
        let tools = tools_from_env(&project)?;
        Ok(ControllerConfig {
            tools,
            compose_model: env("CONTROLLER_COMPOSE_MODEL").map(PathBuf::from),
            listen: args.listen,
            project,
            token,
            allow,
            audit: AuditConfig {
                dir: args.audit_dir,
                key,
                max_bytes,
                keep,
                check_interval: std::time::Duration::from_secs(check_secs),
            },
        })
    }
}
