//! The aibox edge: one port for every client (models, tools, dashboard) and a second listener
//! that is the browser worker's egress proxy. See docs/ARCHITECTURE.md.
//!
//! Everything runs as a Pingora service (edge/src/services.rs): the API listener, the MCP hub,
//! provider probes, the keys-file watch and the egress proxy; Pingora owns their runtimes and
//! their shutdown.
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;

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
mod services;
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
    config
        .mcp
        .validate()
        .map_err(anyhow::Error::msg)
        .context("starting the MCP hub")?;

    let metrics = Arc::new(metrics::Metrics::try_new().context("metrics")?);
    let providers = Arc::new(providers::ProviderSet::new(&config, metrics.clone()));
    let audit: Option<Arc<dyn aibox_mcp::AuditSink>> = match config.controller.clone() {
        Some((url, token)) => Some(Arc::new(audit::ControllerAudit::new(url, token))),
        None => None,
    };

    let egress_proxy = Arc::new(
        egress::EgressProxy::new(config.egress.clone(), &metrics.registry).context("egress")?,
    );
    let egress_listener = bind_egress(&config.egress_listen)?;
    aibox_log::announce_listening("egress", egress_listener.local_addr()?);

    let listen = concrete_addr(&config.listen)?;
    let api_addrs = api_bind_addrs(listen, &config.api_exclude)?;
    let clients = Arc::new(clients::ClientDirectory::new(&config)?);
    if !clients.anonymous_configured() {
        tracing::warn!(
            "no [anonymous] policy is set: callers without a key may use every model and MCP \
             server without limit (set [anonymous] in the edge config or the keys file; see docs/keys.md)"
        );
    }

    let conf = ServerConf {
        threads: config.worker_threads.get(),
        // One runtime per thread: no cross-thread wake-ups on the request path.
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(2),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let hub = services::HubCell::default();
    let hub_service = server.add_service(background_service(
        "mcp hub",
        services::McpHubService {
            config: config.mcp.clone(),
            registry: metrics.registry.clone(),
            audit: audit.clone(),
            hub: hub.clone(),
        },
    ));
    server.add_service(background_service(
        "probes",
        services::ProviderProbes(providers.clone()),
    ));
    server.add_service(background_service(
        "clients file",
        services::ClientsFileWatch(clients.clone()),
    ));
    server.add_service(background_service(
        "egress",
        services::EgressService {
            proxy: egress_proxy,
            listener: Mutex::new(Some(egress_listener)),
        },
    ));

    let state = Arc::new(surface::EdgeState {
        config,
        providers,
        metrics,
        clients,
        audit,
        responses: Default::default(),
    });
    let server_conf = server.configuration.clone();
    let api_addrs_for_build = api_addrs.clone();
    let build: services::BuildApi<_> = Box::new(move |hub: &Arc<aibox_mcp::McpHub>| {
        let router = surface::router(state.clone(), hub.router());
        let mut service = pingora_proxy::http_proxy_service_with_name(
            &server_conf,
            gateway::EdgeGateway::new(state, router),
            "aibox edge",
        );
        for addr in &api_addrs_for_build {
            service.add_tcp(&addr.to_string());
        }
        service
    });
    let api_service = server.add_service(services::ApiService {
        name: "aibox edge".into(),
        addrs: api_addrs,
        hub: hub.clone(),
        build: Some(build),
    });
    api_service.add_dependency(&hub_service);

    server.run(RunArgs {
        shutdown_signal: Box::new(services::StopOnSignal { hub }),
    });
    Ok(())
}

/// Binds the egress listener now, so a taken port fails start-up and the announced address is
/// the real one. Bound through tokio for its socket options (`SO_REUSEADDR`), then handed to the
/// egress service as a plain socket.
fn bind_egress(listen: &str) -> anyhow::Result<StdListener> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(listen))
        .with_context(|| format!("binding the egress listener {listen}"))?;
    Ok(listener.into_std()?)
}
