//! The aibox edge: one port for every client (models, tools, dashboard) and a second listener
//! that is the browser worker's egress proxy. See docs/ARCHITECTURE.md.
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;

mod aliases;
mod api_bind;
mod audit;
mod clients;
mod config;
mod error;
mod gateway;
mod key_cli;
mod keys;
mod metrics;
mod model_field;
mod outcome;
mod policy;
mod providers;
mod relay;
mod surface;
mod trace;
mod translate;

#[derive(Parser)]
#[command(
    name = "edge",
    about = "aibox edge: models, MCP tools, dashboard and egress on one port"
)]
struct Args {
    /// TOML config file (optional; the edge runs with none).
    #[arg(long, env = "EDGE_CONFIG")]
    config: Option<String>,
    /// auto (JSON unless stdout is a terminal), json or pretty.
    #[arg(long, default_value = "auto", env = "LOG_FORMAT")]
    log_format: aibox_log::LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Client keys in the keys file (data/edge/clients.toml): add, list, revoke.
    #[command(subcommand)]
    Key(key_cli::KeyCommand),
}

/// Secrets the edge reads that may come from files (`NAME_FILE`; Swarm secrets).
const SECRETS: [&str; 3] = [
    "OPS_CONTROLLER_TOKEN",
    "AIBOX_ADMIN_TOKEN",
    "AIBOX_REDIS_URL",
];

fn main() {
    if let Err(e) = aibox_log::secret_files::load(&SECRETS) {
        eprintln!("edge: {e}");
        std::process::exit(2);
    }
    let mut args = Args::parse();
    if let Some(Command::Key(key)) = args.command.take() {
        if let Err(e) = key_cli::run(key) {
            eprintln!("edge key: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    aibox_log::init(args.log_format, "info,pingora_core=warn,pingora_proxy=warn");
    if let Err(e) = run(args) {
        eprintln!("edge: {e:#}");
        std::process::exit(2);
    }
}

/// Pingora binds by address string; for port 0, take a free port first so it can be announced.
fn concrete_addr(listen: &str) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr = listen.parse().context("EDGE_LISTEN")?;
    if addr.port() != 0 {
        return Ok(addr);
    }
    let probe = StdListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    Ok(probe.local_addr()?)
}

/// The API listener's addresses: `listen`, or with `EDGE_API_EXCLUDE` every interface address
/// outside the excluded networks (edge/src/api_bind.rs).
fn api_bind_addrs(listen: SocketAddr, exclude: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    let entries = exclude
        .iter()
        .map(|e| api_bind::ExcludeEntry::parse(e).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let excluded = api_bind::resolve(&entries, Duration::from_secs(15))?;
    let addrs = api_bind::bind_addrs(listen, &excluded, &egress::interface_addresses())?;
    if !excluded.is_empty() {
        let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        let left_out: Vec<String> = excluded.iter().map(ToString::to_string).collect();
        tracing::info!(bound = %shown.join(","), excluded = %left_out.join(","), "api listener addresses");
    }
    Ok(addrs)
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = config::EdgeConfig::load(args.config.as_deref(), &config::ProcessEnv)?;
    // Background work (probes, MCP sessions, the egress proxy) lives on its own small runtime;
    // Pingora runs the request path on its own threads.
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("edge-bg")
        .enable_all()
        .build()?;

    let metrics = Arc::new(metrics::Metrics::new());
    let providers = Arc::new(providers::ProviderSet::new(&config, metrics.clone()));
    let audit: Option<Arc<dyn aibox_mcp::AuditSink>> = config
        .controller
        .clone()
        .map(|(url, token)| Arc::new(audit::ControllerAudit::new(url, token)) as _);

    let hub = background
        .block_on(aibox_mcp::McpHub::start(
            config.mcp.clone(),
            &metrics.registry,
            audit.clone(),
        ))
        .context("starting the MCP hub")?;

    let egress_proxy = Arc::new(
        egress::EgressProxy::new(config.egress.clone(), &metrics.registry).context("egress")?,
    );
    let egress_listener = background
        .block_on(tokio::net::TcpListener::bind(&config.egress_listen))
        .with_context(|| format!("binding the egress listener {}", config.egress_listen))?;
    aibox_log::announce_listening("egress", egress_listener.local_addr()?);
    background.spawn(egress_proxy.serve(egress_listener));
    background.spawn(providers.clone().run_probes());

    let listen = concrete_addr(&config.listen)?;
    let api_addrs = api_bind_addrs(listen, &config.api_exclude)?;
    let clients = Arc::new(clients::ClientDirectory::new(&config)?);
    if !clients.anonymous_configured() {
        tracing::warn!(
            "no [anonymous] policy is set: callers without a key may use every model and MCP \
             server without limit (set [anonymous] in the edge config or the keys file; see docs/keys.md)"
        );
    }
    background.spawn(clients.clone().run_file_watch());
    let state = Arc::new(surface::EdgeState {
        config,
        providers,
        metrics,
        clients,
        audit,
        responses: Default::default(),
    });
    let router = surface::router(state.clone(), hub.router());

    let conf = ServerConf {
        threads: 2,
        // One runtime per thread: no cross-thread wake-ups on the request path.
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(2),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        gateway::EdgeGateway::new(state, router),
        "aibox edge",
    );
    for addr in &api_addrs {
        service.add_tcp(&addr.to_string());
    }
    let listen = api_addrs[0];
    server.add_service(service);

    background.spawn(async move {
        // Announce only once the socket accepts, so "listening on" is never a lie.
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(listen).await.is_ok() {
                aibox_log::announce_listening("api", listen);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!("edge: the listener on {listen} never came up");
        std::process::exit(1);
    });
    background.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("shutting down");
        // Child MCP servers go with us; then exit without waiting on open streams.
        let _ = tokio::time::timeout(Duration::from_secs(3), hub.shutdown()).await;
        std::process::exit(0);
    });
    // Keep the background runtime alive for the life of the process.
    std::mem::forget(background);
    server.run_forever()
}
