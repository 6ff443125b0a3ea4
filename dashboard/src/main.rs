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
    /// Log format: text or json
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read a password from stdin (one line) and print its argon2id PHC string, the form
    /// DASHBOARD_PASSWORD_HASH and DASHBOARD_PASSWORD_FILE hold. Never takes it as an argument,
    /// which other users of the host could read in the process list.
    HashPassword,
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
    let args = Args::parse();
    if let Some(Command::HashPassword) = args.command {
        return print_password_hash();
    }
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if args.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }

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
    eprintln!("api listening on {addr}");
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
