//! Model providers and their endpoints: model lists, routing by model name, health, balancing
//! and failover. The one door to providers: every request the edge makes to one goes through
//! here (`routing` for requests with failover, `probe` for health probes, listings and admin
//! calls), over one client (`client`).
//!
//! Architecture Invariant: no other module talks to a provider, so every upstream request is
//! counted in flight and every failure counts towards ejection.
mod client;
pub mod multipart;
mod probe;
mod routing;

pub use client::{BodyError, Client, ExchangeError, Response, Target, UpstreamRequest};
pub use routing::{Answer, UpstreamResponse};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::aliases::ModelAlias;
use crate::config::{EdgeConfig, HealthConfig, ProviderKind, TimeoutConfig};
use crate::metrics::Metrics;

/// One model as an endpoint listed it; `raw` keeps the upstream's entry for `/api/tags` and
/// `/api/show`.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    pub id: String,
    pub raw: Value,
}

#[derive(Debug, Default)]
struct EndpointState {
    /// `None` until the first successful model list.
    models: Option<Vec<ModelEntry>>,
    models_at: Option<Instant>,
    /// Ollama only: models in memory right now (`/api/ps`).
    loaded: Option<HashSet<String>>,
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    last_error: Option<String>,
    latency_ewma_ms: Option<f64>,
    /// When the estimate last learned from a request; it fades as it ages (see `cost`).
    latency_sampled_at: Option<Instant>,
}

const LATENCY_HALF_LIFE: Duration = Duration::from_secs(30);

pub struct Endpoint {
    pub provider: String,
    pub kind: ProviderKind,
    pub url: String,
    /// `url` taken apart; the config checked it, so an error here is only reported per request.
    target: Result<Target, client::TargetError>,
    pub weight: u32,
    in_flight: AtomicU32,
    state: Mutex<EndpointState>,
}

impl Endpoint {
    fn new(provider: &str, kind: ProviderKind, url: &str, weight: u32) -> Self {
        Self {
            provider: provider.to_owned(),
            kind,
            url: url.to_owned(),
            target: Target::parse(url),
            weight,
            in_flight: AtomicU32::new(0),
            state: Mutex::new(EndpointState::default()),
        }
    }

    fn target(&self) -> Result<&Target, ExchangeError> {
        self.target
            .as_ref()
            .map_err(|e| ExchangeError::Connect(e.to_string()))
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EndpointState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_ejected(&self) -> bool {
        self.lock()
            .ejected_until
            .is_some_and(|until| until > Instant::now())
    }

    pub fn models(&self) -> Option<Vec<ModelEntry>> {
        self.lock().models.clone()
    }

    fn has_model(&self, name: &str) -> Option<bool> {
        self.lock()
            .models
            .as_ref()
            .map(|ms| ms.iter().any(|m| model_matches(self.kind, &m.id, name)))
    }

    pub fn is_loaded(&self, name: &str) -> bool {
        self.lock()
            .loaded
            .as_ref()
            .is_some_and(|l| l.iter().any(|m| model_matches(self.kind, m, name)))
    }

    fn cost(&self) -> f64 {
        let s = self.lock();
        let mut ewma = s.latency_ewma_ms.unwrap_or(1.0);
        // An estimate only changes when the endpoint gets traffic, so one that was slow once
        // would be starved for good; halving it every LATENCY_HALF_LIFE without samples lets it
        // be tried again, and one real sample sets it right.
        if let Some(at) = s.latency_sampled_at {
            let halvings = at.elapsed().as_secs_f64() / LATENCY_HALF_LIFE.as_secs_f64();
            ewma /= 2f64.powf(halvings.floor());
        }
        ewma.max(0.05) * (self.in_flight() as f64 + 1.0) / self.weight as f64
    }

    fn record_success(&self, latency: Duration) {
        let ms = latency.as_secs_f64() * 1000.0;
        let mut s = self.lock();
        s.consecutive_failures = 0;
        s.ejected_until = None;
        s.latency_ewma_ms = Some(match s.latency_ewma_ms {
            Some(prev) => prev * 0.8 + ms * 0.2,
            None => ms,
        });
        s.latency_sampled_at = Some(Instant::now());
    }

    /// A probe got the model list: the endpoint is back, unless its rest is not over yet (an
    /// endpoint that lists its models but fails requests would otherwise be let back in at every
    /// probe, not after `eject_ms`).
    fn probe_listed(&self, models: Vec<ModelEntry>, latency: Duration) {
        let mut s = self.lock();
        s.models = Some(models);
        s.models_at = Some(Instant::now());
        if s.ejected_until.is_none_or(|until| until <= Instant::now()) {
            s.consecutive_failures = 0;
            s.ejected_until = None;
            s.last_error = None;
        }
        if s.latency_ewma_ms.is_none() {
            s.latency_ewma_ms = Some(latency.as_secs_f64() * 1000.0);
        }
    }

    /// A probe failed: the endpoint rests for `eject_ms` at once.
    fn probe_failed(&self, error: String, health: &HealthConfig) {
        let mut s = self.lock();
        s.consecutive_failures = s.consecutive_failures.max(health.eject_after);
        s.ejected_until = Some(Instant::now() + Duration::from_millis(health.eject_ms));
        s.last_error = Some(error);
    }

    fn record_failure(&self, error: &str, health: &HealthConfig) {
        let mut s = self.lock();
        s.consecutive_failures += 1;
        s.last_error = Some(error.to_owned());
        if s.consecutive_failures >= health.eject_after {
            s.ejected_until = Some(Instant::now() + Duration::from_millis(health.eject_ms));
        }
    }

    pub fn status(&self) -> aibox_wire::edge::EndpointReadiness {
        let s = self.lock();
        let ejected = s.ejected_until.is_some_and(|u| u > Instant::now());
        aibox_wire::edge::EndpointReadiness {
            url: self.url.clone(),
            healthy: !ejected && s.consecutive_failures == 0 && s.models.is_some(),
            ejected,
            weight: self.weight,
            in_flight: u64::from(self.in_flight()),
            consecutive_failures: s.consecutive_failures,
            latency_ms: s.latency_ewma_ms.map(|l| (l * 100.0).round() / 100.0),
            models: s
                .models
                .as_ref()
                .map(|ms| ms.iter().map(|m| m.id.clone()).collect()),
            loaded: s.loaded.as_ref().map(|l| {
                let mut v: Vec<_> = l.iter().cloned().collect();
                v.sort();
                v
            }),
            last_error: s.last_error.clone(),
        }
    }
}

/// Decrements the endpoint's in-flight count when the request (stream included) is over.
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    fn new(endpoint: Arc<Endpoint>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub endpoints: Vec<Arc<Endpoint>>,
    api_key: Option<String>,
    /// Serves OpenAI's Responses API itself (config `responses = true`).
    pub responses: bool,
}

impl Provider {
    /// When every endpoint is ejected, how long until the first one's rest ends.
    pub fn all_ejected_for(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut soonest: Option<Duration> = None;
        for e in &self.endpoints {
            let until = e.lock().ejected_until.filter(|u| *u > now)?;
            let left = until - now;
            soonest = Some(soonest.map_or(left, |s| s.min(left)));
        }
        soonest
    }

    /// Union of the endpoints' model lists; `None` when no endpoint has answered yet.
    pub fn models(&self) -> Option<Vec<ModelEntry>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut any = false;
        for e in &self.endpoints {
            if let Some(ms) = e.models() {
                any = true;
                for m in ms {
                    if seen.insert(m.id.clone()) {
                        out.push(m);
                    }
                }
            }
        }
        any.then_some(out)
    }

    /// The upstream's own name for `name`, if some endpoint lists it.
    pub fn find_model(&self, name: &str) -> Option<ModelEntry> {
        self.endpoints.iter().find_map(|e| {
            e.lock().models.as_ref().and_then(|ms| {
                ms.iter()
                    .find(|m| model_matches(self.kind, &m.id, name))
                    .cloned()
            })
        })
    }
}

/// Where one request goes: the provider and the model name to send upstream.
#[derive(Clone)]
pub struct ProviderRoute {
    pub provider: Arc<Provider>,
    pub model: String,
}

/// Where one request may go, in the order to try: a model name has one route; an alias has
/// its targets, ordered by its strategy, each with the context window the config names.
pub struct Plan {
    pub alias: Option<Arc<ModelAlias>>,
    pub targets: Vec<PlannedTarget>,
}

pub struct PlannedTarget {
    pub route: ProviderRoute,
    pub context: Option<u64>,
}

impl Plan {
    pub fn first(&self) -> &ProviderRoute {
        &self.targets[0].route
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("The model `{0}` does not exist or is not served by any provider")]
    NotFound(String),
    #[error(
        "The model `{0}` is served by several providers ({1}); prefix it with one, e.g. `{2}/{0}`"
    )]
    Ambiguous(String, String, String),
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {0} is unreachable: {1}")]
    Unreachable(String, String),
    #[error("upstream {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    /// Every endpoint of the provider is resting after failures: answered at once rather than
    /// after first-byte timeouts on endpoints known to be failing.
    #[error("every endpoint of upstream {0} is failing; retry after {secs} s", secs = retry_after_secs(*.1))]
    AllEjected(String, Duration),
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0 || wait.is_zero())
}

pub struct ProviderSet {
    pub providers: Vec<Arc<Provider>>,
    pub aliases: Vec<Arc<ModelAlias>>,
    pub default_provider: String,
    client: Client,
    pub timeouts: TimeoutConfig,
    pub health: HealthConfig,
    metrics: Arc<Metrics>,
}

/// Ollama names carry a tag; clients such as Open WebUI add `:latest` to names without one.
pub fn model_matches(kind: ProviderKind, listed: &str, asked: &str) -> bool {
    if listed == asked {
        return true;
    }
    match (
        listed.strip_suffix(":latest"),
        asked.strip_suffix(":latest"),
    ) {
        (Some(base), None) => base == asked,
        (None, Some(base)) => listed == base,
        _ => kind == ProviderKind::Ollama && !asked.contains(':') && listed == asked,
    }
}

impl ProviderSet {
    pub fn new(config: &EdgeConfig, metrics: Arc<Metrics>) -> Self {
        let providers = config
            .providers
            .iter()
            .map(|p| {
                Arc::new(Provider {
                    name: p.name.clone(),
                    kind: p.kind,
                    api_key: p.api_key.clone(),
                    responses: p.responses,
                    endpoints: p
                        .endpoints
                        .iter()
                        .map(|e| Arc::new(Endpoint::new(&p.name, p.kind, &e.url, e.weight)))
                        .collect(),
                })
            })
            .collect();
        Self {
            providers,
            aliases: config.aliases.iter().cloned().map(Arc::new).collect(),
            default_provider: config.default_provider.clone(),
            client: Client::new(config.timeouts.connect()),
            timeouts: config.timeouts.clone(),
            health: config.health.clone(),
            metrics,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// The alias `name` names, if any (an alias wins over a provider's model of the same name).
    pub fn alias(&self, name: &str) -> Option<&Arc<ModelAlias>> {
        self.aliases.iter().find(|a| a.answers_to(name))
    }

    /// The body of `/ready` (its type is shared with the dashboard, which reads it).
    pub fn status(&self) -> aibox_wire::edge::Readiness {
        let providers: Vec<aibox_wire::edge::ProviderReadiness> = self
            .providers
            .iter()
            .map(|p| {
                let endpoints: Vec<_> = p.endpoints.iter().map(|e| e.status()).collect();
                aibox_wire::edge::ProviderReadiness {
                    name: p.name.clone(),
                    kind: p.kind.as_str().to_owned(),
                    healthy: endpoints.iter().any(|e| e.healthy),
                    endpoints,
                }
            })
            .collect();
        aibox_wire::edge::Readiness {
            ready: providers.iter().any(|p| p.healthy),
            providers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_tag_is_implied_both_ways() {
        assert!(model_matches(
            ProviderKind::Ollama,
            "llama3:latest",
            "llama3"
        ));
        assert!(model_matches(
            ProviderKind::Ollama,
            "llama3",
            "llama3:latest"
        ));
        assert!(model_matches(ProviderKind::Openai, "qwen2", "qwen2:latest"));
        assert!(!model_matches(ProviderKind::Ollama, "llama3:8b", "llama3"));
        assert!(!model_matches(
            ProviderKind::Ollama,
            "llama3:8b",
            "llama3:70b"
        ));
    }

    fn endpoint(url: &str) -> Arc<Endpoint> {
        Arc::new(Endpoint::new("pool", ProviderKind::Ollama, url, 1))
    }

    #[test]
    fn a_provider_is_all_ejected_only_when_every_endpoint_rests() {
        let health = HealthConfig {
            eject_after: 1,
            eject_ms: 5_000,
            ..HealthConfig::default()
        };
        let (a, b) = (endpoint("http://a"), endpoint("http://b"));
        let provider = Provider {
            name: "pool".into(),
            kind: ProviderKind::Ollama,
            endpoints: vec![a.clone(), b.clone()],
            api_key: None,
            responses: false,
        };
        assert_eq!(provider.all_ejected_for(), None);
        a.record_failure("HTTP 500", &health);
        assert_eq!(provider.all_ejected_for(), None, "b is still in");
        b.record_failure("HTTP 500", &health);
        let wait = provider.all_ejected_for().expect("both rest");
        assert!(wait <= Duration::from_millis(5_000) && wait > Duration::from_millis(4_000));
        assert_eq!(retry_after_secs(wait), 5);
        // A request that got through (the fallback in `pick`) is evidence: the rest ends.
        a.record_success(Duration::from_millis(3));
        assert_eq!(provider.all_ejected_for(), None);
    }

    struct NoEnv;
    impl crate::config::Env for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    fn set_with_aliases(toml: &str) -> ProviderSet {
        let file = EdgeConfig::parse_file("test.toml", toml).unwrap();
        let config = EdgeConfig::resolve(file, &NoEnv).unwrap();
        ProviderSet::new(&config, Arc::new(Metrics::new()))
    }

    #[test]
    fn a_balanced_alias_starts_with_the_cheaper_target_and_keeps_the_rest_as_fallbacks() {
        let set = set_with_aliases(
            r#"
[[providers]]
name = "a"
kind = "ollama"
base_url = "http://a:11434"
[[providers]]
name = "b"
kind = "openai"
base_url = "http://b:8000/v1"
[[providers]]
name = "c"
kind = "openai"
base_url = "http://c:8000/v1"
[[models]]
name = "spread"
strategy = "balance"
targets = ["a/llama3", "b/Qwen/Qwen2.5-7B"]
[[models]]
name = "ordered"
targets = ["c/m", "a/llama3", "b/Qwen/Qwen2.5-7B"]
"#,
        );
        let endpoint = |p: &str| set.get(p).unwrap().endpoints[0].clone();
        endpoint("a").record_success(Duration::from_millis(100));
        endpoint("b").record_success(Duration::from_millis(1));
        let order = |name: &str| -> Vec<String> {
            set.plan(name)
                .unwrap()
                .targets
                .iter()
                .map(|t| format!("{}/{}", t.route.provider.name, t.route.model))
                .collect()
        };
        for _ in 0..20 {
            assert_eq!(order("spread"), ["b/Qwen/Qwen2.5-7B", "a/llama3"]);
        }
        // Requests piling up on the faster one make the other the cheaper start.
        let _busy: Vec<InFlight> = (0..200).map(|_| InFlight::new(endpoint("b"))).collect();
        assert_eq!(order("spread"), ["a/llama3", "b/Qwen/Qwen2.5-7B"]);
        // `fallback` keeps the written order whatever the load.
        assert_eq!(
            order("ordered:latest"),
            ["c/m", "a/llama3", "b/Qwen/Qwen2.5-7B"]
        );
        assert!(set.plan("llama3").is_ok_and(|p| p.alias.is_none()));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2_000)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2_001)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
