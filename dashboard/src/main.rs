//! `dashboard`: the aibox control center. Reads its settings, binds, prints
//! `api listening on <addr>`, and serves the pages until SIGTERM/Ctrl-C.
use anyhow::Context;
use clap::Parser;

use dashboard::config::{DashboardConfig, FlagValues};

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
