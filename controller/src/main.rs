//! The controller: the only aibox process with the Docker socket (docs/controller.md).
#![allow(
    clippy::disallowed_methods,
    reason = "a binary: its tasks (tool runner, audit self-check, pulls, log streams) belong to \
              the process and end with it"
)]

mod api;
mod audit;
mod audited;
mod compose_model;
mod config;
mod engine;
mod logstream;
mod tools;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{ControllerConfig, ServeArgs};

#[derive(Debug, Parser)]
#[command(
    name = "controller",
    about = "Safe compose operations over the Docker socket, with an audit trail"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
    /// auto (JSON unless stdout is a terminal), json or pretty.
    #[arg(long, global = true, default_value = "auto", env = "LOG_FORMAT")]
    log_format: aibox_log::LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain across audit.log and its rotated files; exit 1 at the first broken link.
    Verify {
        #[arg(
            long,
            env = "CONTROLLER_AUDIT_DIR",
            default_value = "data/ops-controller"
        )]
        dir: std::path::PathBuf,
        /// The head anchor recorded elsewhere (`GET /audit/head`): `SEQ:HASH`. A log that ends
        /// before it, or whose event SEQ does not hash to HASH, fails.
        #[arg(long, value_name = "SEQ:HASH")]
        expect_head: Option<String>,
    },
}

fn main() -> ExitCode {
    // Secrets that may come from files (`NAME_FILE`; Swarm secrets).
    if let Err(e) = aibox_log::secret_files::load(&["OPS_CONTROLLER_TOKEN", "AUDIT_HMAC_KEY"]) {
        eprintln!("controller: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Audit {
            command: AuditCommand::Verify { dir, expect_head },
        }) => verify(&dir, expect_head.as_deref()),
        None => match serve(cli.serve, cli.log_format) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("controller: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn verify(dir: &std::path::Path, expect_head: Option<&str>) -> ExitCode {
    let key = match config::audit_key_from_env() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("controller audit verify: {e}");
            return ExitCode::from(2);
        }
    };
    let expected = match expect_head.map(aibox_wire::audit::AuditHead::parse_arg) {
        None => None,
        Some(Some(h)) => Some(h),
        Some(None) => {
            eprintln!("controller audit verify: --expect-head must be SEQ:HASH (64 hex digits), as GET /audit/head reports it");
            return ExitCode::from(2);
        }
    };
    match audit::verify_dir(dir, &key) {
        Ok(report) if report.ok => {
            if let Some(expected) = expected {
                match audit::head_in_dir(dir, &key, &expected) {
                    Ok(None) => {}
                    Ok(Some(why)) => {
                        println!("broken: {why} ({} events verified)", report.events);
                        return ExitCode::from(1);
                    }
                    Err(e) => {
                        eprintln!("controller audit verify: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            println!("ok: {} events", report.events);
            if let Some(note) = report.note {
                println!("note: {note}");
            }
            ExitCode::SUCCESS
        }
        Ok(report) => {
            let Some(b) = report.broken else {
                println!("broken: ({} events verified)", report.events);
                return ExitCode::from(1);
            };
            let seq = b.seq.map_or("?".to_string(), |s| s.to_string());
            println!(
                "broken: seq {seq} in {} line {}: {} ({} events verified before it)",
                b.file, b.line, b.reason, report.events
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("controller audit verify: {e}");
            ExitCode::from(2)
        }
    }
}

fn serve(args: ServeArgs, log_format: aibox_log::LogFormat) -> anyhow::Result<()> {
    let cfg = ControllerConfig::load(args)?;
    aibox_log::init(log_format, "info");
    let audit = audit::AuditLog::open(cfg.audit.clone())
        .with_context(|| format!("opening the audit log in {}", cfg.audit.dir.display()))?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let audit = Arc::new(audit);
        let engine = engine::Engine::new(
            cfg.project.clone(),
            cfg.allow.clone(),
            cfg.compose_model.clone(),
        );
        // Actions left open by the previous process (its own restart, a crash) get their outcome
        // before anything new is done.
        audited::close_open_intents(&audit, &engine)
            .await
            .context("closing actions left open in the audit log")?;
        let tools = match cfg.tools.clone() {
            Some(tc) => {
                let tools = tools::Tools::new(tc, cfg.project.clone(), audit.clone())
                    .context("connecting to Docker for tool containers")?;
                tokio::spawn(tools.clone().run());
                Some(tools)
            }
            None => None,
        };
        let state = Arc::new(api::AppState {
            engine,
            audit,
            token: cfg.token.clone(),
            audit_check: std::sync::Mutex::new(None),
            tools,
        });
        tokio::spawn(self_check_loop(state.clone(), cfg.audit.check_interval));
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        aibox_log::announce_listening("api", addr);
        tracing::info!(project = %cfg.project, audit_dir = %cfg.audit.dir.display(), allowlist = ?cfg.allow, "controller ready");
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving the API")
    })?;
    // Followed log streams never end on their own; do not let them hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// Compares the log with the head anchor every `interval`. A mismatch is an ERROR log line and a
/// flag in `/health`, `GET /audit/head` and the dashboard's Audit page, kept until restart.
async fn self_check_loop(state: Arc<api::AppState>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let audit = state.audit.clone();
        let found = tokio::task::spawn_blocking(move || audit.self_check())
            .await
            .unwrap_or_else(|e| Err(audit::AuditError::Unavailable(e.to_string())));
        let alarm = match found {
            Ok(alarm) => alarm,
            Err(e) => Some(format!("the log could not be read: {e}")),
        };
        if let Some(why) = &alarm {
            tracing::error!(alarm = %why, head = %state.audit.head().to_arg(), "AUDIT ALARM: the audit log does not match its head anchor");
        }
        let mut check = state.audit_check.lock().unwrap_or_else(|p| p.into_inner());
        let sticky = check.as_ref().and_then(|c| c.alarm.clone());
        *check = Some(aibox_wire::audit::AuditCheck {
            ok: alarm.is_none() && sticky.is_none(),
            at: audit::now_ts(),
            alarm: alarm.or(sticky),
        });
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        },
        // Without a SIGTERM handler, Ctrl-C still stops it (and SIGTERM's default action does).
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    // Nothing is logged here: the process is expected to go quiet once asked to stop.
    // Give in-flight actions a moment, then stop regardless of open log streams.
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        std::process::exit(0);
    });
}
