//! The controller: the only aibox process with the Docker socket (docs/controller.md).

mod api;
mod audit;
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Audit {
            command: AuditCommand::Verify { dir },
        }) => verify(&dir),
        None => match serve(cli.serve) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("controller: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn verify(dir: &std::path::Path) -> ExitCode {
    let key = match config::audit_key_from_env() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("controller audit verify: {e}");
            return ExitCode::from(2);
        }
    };
    match audit::verify_dir(dir, &key) {
        Ok(report) if report.ok => {
            println!("ok: {} events", report.events);
            if let Some(note) = report.note {
                println!("note: {note}");
            }
            ExitCode::SUCCESS
        }
        Ok(report) => {
            let b = report.broken.expect("a failed report names the break");
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

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = ControllerConfig::load(args)?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let audit = audit::AuditLog::open(cfg.audit.clone())
        .with_context(|| format!("opening the audit log in {}", cfg.audit.dir.display()))?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let audit = Arc::new(audit);
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
            engine: engine::Engine::new(cfg.project.clone(), cfg.allow.clone()),
            audit,
            token: cfg.token.clone(),
            tools,
        });
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        eprintln!("api listening on {addr}");
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

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Nothing is logged here: the process is expected to go quiet once asked to stop.
    // Give in-flight actions a moment, then stop regardless of open log streams.
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        std::process::exit(0);
    });
}
