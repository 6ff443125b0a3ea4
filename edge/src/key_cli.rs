//! `edge key add|list|revoke`: the keys file from the command line (`./aibox key` runs it).
//!
//! Works on the file directly (no edge needs to run; a running edge sees the change within a
//! quarter second). Every add and revoke is recorded in the controller's audit log when
//! `CONTROLLER_URL` and `OPS_CONTROLLER_TOKEN` are set, before the change (no record, no
//! change); otherwise the output says the change is not audited.
use std::path::PathBuf;

use aibox_mcp::AuditSink;
use anyhow::{bail, Context};
use clap::Subcommand;

use crate::config::ClientConfig;
use crate::keys;

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Make a key for a new client and print it once.
    Add {
        name: String,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Print only the key (for scripts).
        #[arg(long)]
        quiet: bool,
        /// Take the key from this environment variable instead of making one (how
        /// `./aibox up` registers the keys it wrote into .env); nothing is printed.
        #[arg(long)]
        key_env: Option<String>,
        /// Do nothing when the client exists already.
        #[arg(long)]
        if_missing: bool,
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Set the policy of callers without a valid key.
    Anonymous {
        /// Anonymous may use nothing: every request needs a key (the bundle's default).
        #[arg(long, conflicts_with_all = ["models", "mcp_servers"])]
        none: bool,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Do nothing when the file sets `[anonymous]` already.
        #[arg(long)]
        if_unset: bool,
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// The clients of the keys file and their policies (never a key).
    List {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Remove a client's key; it stops working at once.
    Revoke {
        name: String,
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

/// A client's policy as `key add` and `key anonymous` take it.
#[derive(clap::Args)]
pub struct PolicyArgs {
    /// Models it may use: globs over provider/model, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// MCP servers it may use: globs, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    mcp_servers: Option<Vec<String>>,
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u32>,
    /// Prompt + completion tokens per minute.
    #[arg(long)]
    tpm: Option<u32>,
    /// Requests at once.
    #[arg(long)]
    concurrency: Option<u32>,
}

pub fn run(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Add {
            name,
            policy:
                PolicyArgs {
                    models,
                    mcp_servers,
                    rpm,
                    tpm,
                    concurrency,
                },
            quiet,
            key_env,
            if_missing,
            file,
        } => {
            let path = keys::cli_path(file);
            let exists = keys::read(&path)?.clients.iter().any(|c| c.name == name);
            if exists && if_missing {
                return Ok(());
            }
            let given = match &key_env {
                Some(var) => Some(
                    std::env::var(var)
                        .ok()
                        .filter(|k| k.len() >= 16)
                        .with_context(|| {
                            format!("{var} must hold a key of at least 16 characters")
                        })?,
                ),
                None => None,
            };
            let entry = ClientConfig {
                name: name.clone(),
                models,
                mcp_servers,
                rpm,
                tpm,
                concurrency,
                ..Default::default()
            };
            crate::config::check_client_name(&name).map_err(keys::KeysError::BadName)?;
            entry.policy().resolve("policy")?;
            if exists {
                bail!(keys::KeysError::Exists(name));
            }
            let metadata = serde_json::json!({"models": entry.models, "mcp_servers": entry.mcp_servers,
                "rpm": entry.rpm, "tpm": entry.tpm, "concurrency": entry.concurrency});
            let audit = audit("key_create", &name, metadata)?;
            let added = keys::add(&path, entry, given.clone());
            let audited = audit.finish(added.is_ok());
            let key = added?;
            if given.is_some() {
                println!(
                    "registered client {name:?} (key from {}) in {}",
                    key_env.unwrap_or_default(),
                    path.display()
                );
                println!("{audited}");
            } else if quiet {
                println!("{key}");
            } else {
                println!("created client {name:?} in {}", path.display());
                println!("key (shown once, stored only as its SHA-256): {key}");
                println!("{audited}");
            }
        }
        KeyCommand::List { json, file } => {
            let path = keys::cli_path(file);
            let f = keys::read(&path)?;
            if json {
                let rows: Vec<_> = f
                    .clients
                    .iter()
                    .map(|c| ClientConfig {
                        key_sha256: None,
                        key_env: None,
                        ..c.clone()
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"file": path.display().to_string(),
                        "anonymous": f.anonymous, "clients": rows})
                );
                return Ok(());
            }
            println!("keys file: {}", path.display());
            let all = |v: &Option<Vec<String>>| match v {
                None => "*".to_owned(),
                Some(v) if v.is_empty() => "(none)".to_owned(),
                Some(v) => v.join(","),
            };
            let n = |v: Option<u32>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
            println!(
                "{:<20} {:<24} {:>6} {:>8} {:>5} {:<12} created",
                "NAME", "MODELS", "RPM", "TPM", "CONC", "MCP"
            );
            for c in &f.clients {
                println!(
                    "{:<20} {:<24} {:>6} {:>8} {:>5} {:<12} {}",
                    c.name,
                    all(&c.models),
                    n(c.rpm),
                    n(c.tpm),
                    n(c.concurrency),
                    all(&c.mcp_servers),
                    c.created.as_deref().unwrap_or("-")
                );
            }
            match &f.anonymous {
                Some(a) => println!(
                    "anonymous: models {}, mcp servers {}{}",
                    all(&a.models),
                    all(&a.mcp_servers),
                    if a.models.as_ref().is_some_and(Vec::is_empty)
                        && a.mcp_servers.as_ref().is_some_and(Vec::is_empty)
                    {
                        " (keys are required)"
                    } else {
                        ""
                    }
                ),
                None => {
                    println!("anonymous: not set here (the edge config's [anonymous], else open)")
                }
            }
        }
        KeyCommand::Anonymous {
            none,
            policy:
                PolicyArgs {
                    models,
                    mcp_servers,
                    rpm,
                    tpm,
                    concurrency,
                },
            if_unset,
            file,
        } => {
            let path = keys::cli_path(file);
            let policy = crate::config::PolicyConfig {
                models: if none { Some(vec![]) } else { models },
                mcp_servers: if none { Some(vec![]) } else { mcp_servers },
                rpm,
                tpm,
                concurrency,
            };
            policy.resolve("anonymous")?;
            if keys::set_anonymous(&path, policy, if_unset)? {
                println!("set the anonymous policy in {}", path.display());
            }
        }
        KeyCommand::Revoke { name, file } => {
            let path = keys::cli_path(file);
            if !keys::read(&path)?.clients.iter().any(|c| c.name == name) {
                bail!(keys::KeysError::Unknown(name));
            }
            let audit = audit("key_revoke", &name, serde_json::json!({}))?;
            let revoked = keys::revoke(&path, &name);
            let audited = audit.finish(revoked.is_ok());
            revoked?;
            println!("revoked client {name:?} in {}", path.display());
            println!("{audited}");
        }
    }
    Ok(())
}

/// A key change from the CLI under the audit rule (docs/audit/SCHEMA.md, "Intent and outcome"):
/// the intent is recorded before the file changes, the outcome after; without a controller the
/// change is made and the output says it is not audited.
struct CliAudit {
    runtime: tokio::runtime::Runtime,
    intent: Option<aibox_mcp::audited::OpenIntent>,
    what: String,
}

fn audit(action: &str, name: &str, metadata: serde_json::Value) -> anyhow::Result<CliAudit> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let what = format!("{action} key:{name}");
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (Some(url), Some(token)) = (var("CONTROLLER_URL"), var("OPS_CONTROLLER_TOKEN")) else {
        return Ok(CliAudit {
            runtime,
            intent: None,
            what,
        });
    };
    let sink: std::sync::Arc<dyn AuditSink> = std::sync::Arc::new(
        crate::audit::ControllerAudit::new(url.trim_end_matches('/').to_owned(), token),
    );
    let record = aibox_mcp::AuditRecord {
        action: action.to_owned(),
        resource: format!("key:{name}"),
        actor: Some("cli".to_owned()),
        correlation_id: Some(uuid::Uuid::new_v4().to_string()),
        metadata: metadata.as_object().cloned(),
        ..Default::default()
    };
    let intent = runtime
        .block_on(aibox_mcp::audited::begin(sink, record))
        .map_err(anyhow::Error::msg)
        .context("the key was not changed because the change could not be audited")?;
    Ok(CliAudit {
        runtime,
        intent: Some(intent),
        what,
    })
}

impl CliAudit {
    /// Writes the outcome (and waits for it); says what was recorded.
    fn finish(self, ok: bool) -> String {
        let Some(intent) = self.intent else {
            return "not audited: CONTROLLER_URL and OPS_CONTROLLER_TOKEN are not set (the bundle's \
                    `./aibox key` sets them by running this inside the edge container)"
                .into();
        };
        let outcome = self
            .runtime
            .block_on(async { intent.finish(ok, serde_json::json!({})).await });
        match outcome {
            Ok(()) => format!("audited: {} in the controller's audit log", self.what),
            Err(e) => format!("audited: the intent of {}; its outcome: {e}", self.what),
        }
    }
}
