//! `dashboard`: the aibox control center. Reads its settings, binds, prints
//! `api listening on <addr>`, and serves the pages until SIGTERM/Ctrl-C.
use anyhow::Context;
use clap::{Parser, Subcommand};

use dashboard::config::{DashboardConfig, FlagValues};
use dashboard::password::hash_password;

#[derive(Debug, Parser)]
#[command(
    name = "dashboard",
    about = "aibox dashboard: services, logs, models, tools, audit"
)]
struct Args {
    /// Address to listen on [env: DASHBOARD_LISTEN] [default: 0.0.0.0:8080]
    #[arg(long)]
    listen: Option<String>,
    /// The controller's base URL, or `none` [env: CONTROLLER_URL] [default: http://controller:9000]
    #[arg(long)]
    controller_url: Option<String>,
    /// The edge's base URL, or `none` [env: EDGE_URL] [default: http://edge:11435]
    #[arg(long)]
    edge_url: Option<String>,
    /// auto (JSON unless stdout is a terminal), json or pretty
    #[arg(long, default_value = "auto", env = "LOG_FORMAT")]
    log_format: aibox_log::LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Merge the edge's models, its /mcp and the browser into OpenClaw's openclaw.json, then exit
    /// (the compose one-shot before OpenClaw starts; docs/openclaw.md).
    OpenclawSync(OpenclawSyncArgs),
    /// Read a password from stdin (one line) and print its argon2id PHC string, the form
    /// DASHBOARD_PASSWORD_HASH and DASHBOARD_PASSWORD_FILE hold. Never takes it as an argument,
    /// which other users of the host could read in the process list.
    HashPassword,
}

#[derive(Debug, clap::Args)]
struct OpenclawSyncArgs {
    /// The file to merge into (created when missing; JSON5).
    #[arg(
        long,
        env = "OPENCLAW_CONFIG_FILE",
        default_value = "/data/openclaw/openclaw.json"
    )]
    file: std::path::PathBuf,
    /// The edge as OpenClaw reaches it.
    #[arg(
        long,
        env = "OPENCLAW_EDGE_URL",
        default_value = "http://model-gateway:11435"
    )]
    edge_url: String,
    /// The browser's CDP endpoint as OpenClaw reaches it.
    #[arg(long, env = "BROWSER_CDP_URL", default_value = "http://browser:9222")]
    cdp_url: String,
    /// Where the OpenClaw UI is published on the host (its Control UI's allowed origin).
    #[arg(
        long,
        env = "OPENCLAW_UI_ORIGIN",
        default_value = "http://127.0.0.1:6666"
    )]
    ui_origin: String,
}

/// `dashboard openclaw-sync`: exit 0 when the file is in sync, 1 with a clear message when it
/// could not be (malformed or wrongly shaped file: left untouched).
async fn openclaw_sync(args: OpenclawSyncArgs) -> i32 {
    use dashboard::openclaw::{merge, sync};
    // The key is only used to ask the edge for its models; the file gets a ${VAR} reference.
    let key = std::env::var("OPENCLAW_EDGE_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    if key.is_none() {
        eprintln!("openclaw-sync: OPENCLAW_EDGE_KEY is not set; asking the edge without a key");
    }
    let models = match sync::edge_models(&args.edge_url, key.as_deref(), "openclaw").await {
        Ok(ids) => Some(ids),
        Err(e) => {
            eprintln!("openclaw-sync: {e}; the model list in the file is left as it is");
            None
        }
    };
    let edge = args.edge_url.trim_end_matches('/');
    let plan = merge::Plan {
        models_url: format!("{edge}/v1"),
        mcp_url: format!("{edge}/mcp"),
        service_name: "openclaw".into(),
        models,
        cdp_url: args.cdp_url,
        ui_origins: vec![args.ui_origin],
    };
    match sync::sync_file(&args.file, &plan) {
        Ok(sync::Outcome::Unchanged) => {
            eprintln!("openclaw-sync: {} is in sync", args.file.display());
            0
        }
        Ok(sync::Outcome::Written { changes, backup }) => {
            for c in &changes {
                eprintln!("openclaw-sync: {c}");
            }
            match backup {
                Some(b) => eprintln!(
                    "openclaw-sync: wrote {} (previous file: {})",
                    args.file.display(),
                    b.display()
                ),
                None => eprintln!("openclaw-sync: wrote {}", args.file.display()),
            }
            0
        }
        Err(e) => {
            eprintln!("openclaw-sync: {e}");
            1
        }
    }
}

fn print_password_hash() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    let phc = hash_password(password).context("hash-password")?;
    println!("{phc}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Secrets that may come from files (`NAME_FILE`; Swarm secrets). `DASHBOARD_PASSWORD_FILE`
    // keeps its own meaning (docs/runbooks), so the password is not in this list.
    aibox_log::secret_files::load(&[
        "OPS_CONTROLLER_TOKEN",
        "EDGE_ADMIN_TOKEN",
        "DASHBOARD_SESSION_KEY",
        "DASHBOARD_PASSWORD_HASH",
    ])?;
    let args = Args::parse();
    match args.command {
        Some(Command::HashPassword) => return print_password_hash(),
        Some(Command::OpenclawSync(sync)) => std::process::exit(openclaw_sync(sync).await),
        None => {}
    }
    aibox_log::init(args.log_format, "info");

    let config = match DashboardConfig::load(
        FlagValues {
            listen: args.listen,
            controller_url: args.controller_url,
            edge_url: args.edge_url,
        },
        |k| std::env::var(k).ok(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dashboard: refusing to start: {e}");
            std::process::exit(2);
        }
    };
    if config.session_key_generated {
        tracing::warn!("DASHBOARD_SESSION_KEY is not set: using a random key, so sessions end when the dashboard restarts");
    }
    if config.controller_token.is_none() {
        tracing::warn!("OPS_CONTROLLER_TOKEN is not set: service operations and the audit trail are unavailable");
    }
    if config.password.is_legacy() {
        tracing::warn!("the dashboard password is an unsalted SHA-256 (legacy): it is accepted once and replaced by argon2id at the first sign-in; set DASHBOARD_PASSWORD_HASH from `dashboard hash-password` instead");
    }
    if config.trust_tailscale {
        tracing::warn!("trusting the Tailscale-User-Login header: only expose the dashboard through Tailscale Serve");
    }

    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    aibox_log::announce_listening("api", addr);
    tracing::info!(?config, "dashboard started");

    let app = dashboard::router(dashboard::AppState::new(config));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
