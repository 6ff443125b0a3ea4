//! The edge's Pingora services besides the request path's own loop. Each is registered with the
//! `Server` in main.rs, so Pingora owns its runtime, starts it in dependency order and tells it
//! when to stop; no work of the edge runs on a runtime of its own making.
//!
//! - [`ProviderProbes`]: the providers' health and model-list probes.
//! - [`ClientsFileWatch`]: re-reads the keys file when it changes.
//! - [`McpHubService`]: starts the MCP hub (its supervisors and stdio children live on this
//!   service's runtime) and publishes it in a [`HubCell`].
//! - [`EgressService`]: the browser worker's egress proxy on a listener bound before start-up.
//! - [`ApiService`]: the API listener, built once the hub it routes `/mcp` to is up.
//! - [`StopOnSignal`]: SIGTERM, SIGINT or SIGQUIT stop the hub's children first, then let
//!   Pingora stop every service.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::{ListenFds, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::BackgroundService;
use pingora_core::services::{ServiceReadyNotifier, ServiceWithDependents};

use crate::clients::ClientDirectory;
use crate::providers::ProviderSet;

/// How long a stop signal waits for the MCP hub to stop its children.
const HUB_STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// The running MCP hub, once [`McpHubService`] has started it.
pub type HubCell = Arc<OnceLock<Arc<aibox_mcp::McpHub>>>;

/// Runs `work` until the server shuts down.
async fn until_shutdown(work: impl Future<Output = ()>, mut shutdown: ShutdownWatch) {
    tokio::select! {
        () = work => {}
        _ = shutdown.wait_for(|&stop| stop) => {}
    }
}

pub struct ProviderProbes(pub Arc<ProviderSet>);

#[async_trait]
impl BackgroundService for ProviderProbes {
    async fn start(&self, shutdown: ShutdownWatch) {
        until_shutdown(self.0.clone().run_probes(), shutdown).await;
    }
}

pub struct ClientsFileWatch(pub Arc<ClientDirectory>);

#[async_trait]
impl BackgroundService for ClientsFileWatch {
    async fn start(&self, shutdown: ShutdownWatch) {
        until_shutdown(self.0.clone().run_file_watch(), shutdown).await;
    }
}

/// Starts the MCP hub on this service's runtime and is ready once the hub is; the API service
/// depends on it for the hub's router.
pub struct McpHubService {
    pub config: aibox_mcp::McpConfig,
    pub registry: prometheus::Registry,
    pub audit: Option<Arc<dyn aibox_mcp::AuditSink>>,
    pub hub: HubCell,
}

#[async_trait]
impl BackgroundService for McpHubService {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let started =
            aibox_mcp::McpHub::start(self.config.clone(), &self.registry, self.audit.clone()).await;
        let hub = match started {
            Ok(hub) => hub,
            Err(e) => {
                // main.rs validated the config before start-up; what is left here is not
                // something the edge can serve without.
                eprintln!("edge: starting the MCP hub: {e}");
                std::process::exit(2);
            }
        };
        // Only this service sets the cell.
        let _ = self.hub.set(hub.clone());
        ready.notify_ready();
        let _ = shutdown.wait_for(|&stop| stop).await;
        // Stopping twice is harmless: [`StopOnSignal`] stopped the children already when a
        // signal began the shutdown.
        hub.shutdown().await;
    }
}

/// The egress proxy, serving a listener main.rs bound (and announced) before start-up. Its
/// connections are tasks of `EgressProxy::serve`, dropped with it at shutdown.
pub struct EgressService {
    pub proxy: Arc<egress::EgressProxy>,
    pub listener: Mutex<Option<std::net::TcpListener>>,
}

#[async_trait]
impl BackgroundService for EgressService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let taken = self.listener.lock().ok().and_then(|mut l| l.take());
        let Some(listener) = taken else {
            return;
        };
        match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => until_shutdown(self.proxy.clone().serve(listener), shutdown).await,
            Err(e) => {
                eprintln!("edge: the egress listener: {e}");
                std::process::exit(2);
            }
        }
    }
}

/// Builds the API's listening service from the started hub.
pub type BuildApi<S> = Box<dyn FnOnce(&Arc<aibox_mcp::McpHub>) -> S + Send + Sync>;

/// The API listener. Its routes include the hub's, so it is built when its dependency, the hub
/// service, is ready; then it announces `api listening on` once its socket accepts.
pub struct ApiService<S> {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    pub hub: HubCell,
    pub build: Option<BuildApi<S>>,
}

#[async_trait]
impl<S: ServiceWithDependents + 'static> ServiceWithDependents for ApiService<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready: ServiceReadyNotifier,
    ) {
        let (Some(hub), Some(build), Some(&first)) =
            (self.hub.get(), self.build.take(), self.addrs.first())
        else {
            eprintln!("edge: the API service started without the MCP hub or an address");
            std::process::exit(1);
        };
        let mut service = build(hub);
        let serve = service.start_service(fds, shutdown, listeners_per_fd, ready);
        tokio::join!(serve, announce_when_accepting(first));
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(self.addrs.iter().map(ToString::to_string).collect())
    }
}

/// Announces the API only once its socket accepts, so "listening on" is never a lie.
async fn announce_when_accepting(addr: SocketAddr) {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            aibox_log::announce_listening("api", addr);
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("edge: the listener on {addr} never came up");
    std::process::exit(1);
}

/// Pingora's shutdown trigger. Every stop signal is a graceful stop; the MCP hub's children are
/// stopped here, before Pingora tears the runtimes down, so none outlives the edge.
pub struct StopOnSignal {
    pub hub: HubCell,
}

#[async_trait]
impl ShutdownSignalWatch for StopOnSignal {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let signals = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        );
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = signals else {
            tracing::error!("cannot listen for stop signals; the edge stops only when killed");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = quit.recv() => {}
        }
        tracing::info!("shutting down");
        if let Some(hub) = self.hub.get() {
            if tokio::time::timeout(HUB_STOP_TIMEOUT, hub.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("the MCP hub did not stop within {HUB_STOP_TIMEOUT:?}");
            }
        }
        ShutdownSignal::GracefulTerminate
    }
}
