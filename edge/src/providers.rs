//! Model providers and their endpoints: model lists, routing by model name, health, balancing
//! and failover.
//!
//! Architecture Invariant: a request is retried on another endpoint only when nothing has been
//! sent to the client yet (connect error, timeout before the response headers, or a 5xx status).
//! Once `send` returns a response, the caller owns it and there is no second attempt.
use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::Value;

use crate::aliases::{ModelAlias, Strategy};
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
    pub weight: u32,
    in_flight: AtomicU32,
    state: Mutex<EndpointState>,
}

impl Endpoint {
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

    pub fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => req.bearer_auth(key),
            None => req,
        }
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

/// A response whose headers arrived; the body is still to be read by the caller.
pub struct UpstreamResponse {
    pub endpoint: Arc<Endpoint>,
    pub response: reqwest::Response,
    pub upstream_time: Duration,
    pub in_flight: InFlight,
}

pub struct ProviderSet {
    pub providers: Vec<Arc<Provider>>,
    pub aliases: Vec<Arc<ModelAlias>>,
    pub default_provider: String,
    pub http: reqwest::Client,
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
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeouts.connect())
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .no_proxy()
            .build()
            .expect("reqwest client builds with static settings");
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
                        .map(|e| {
                            Arc::new(Endpoint {
                                provider: p.name.clone(),
                                kind: p.kind,
                                url: e.url.clone(),
                                weight: e.weight,
                                in_flight: AtomicU32::new(0),
                                state: Mutex::new(EndpointState::default()),
                            })
                        })
                        .collect(),
                })
            })
            .collect();
        Self {
            providers,
            aliases: config.aliases.iter().cloned().map(Arc::new).collect(),
            default_provider: config.default_provider.clone(),
            http,
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

    /// An alias's targets in the order to try them, or the one route of a model name.
    pub fn plan(&self, requested: &str) -> Result<Plan, RouteError> {
        let Some(alias) = self.alias(requested) else {
            return Ok(Plan {
                alias: None,
                targets: vec![PlannedTarget {
                    route: self.route(requested)?,
                    context: None,
                }],
            });
        };
        let mut targets: Vec<PlannedTarget> = alias
            .targets
            .iter()
            .map(|t| {
                let p = self
                    .get(&t.provider)
                    .expect("alias targets validated at load");
                let listed = p.find_model(&t.model).map(|m| m.id);
                let listed = listed.as_deref().unwrap_or(&t.model);
                PlannedTarget {
                    route: ProviderRoute {
                        provider: p.clone(),
                        model: upstream_name(p.kind, listed, &t.model),
                    },
                    context: t.context,
                }
            })
            .collect();
        if alias.strategy == Strategy::Balance && targets.len() > 1 {
            // Power of two choices over the targets, each costed by its provider's best
            // endpoint for the model; the rest stay in config order as fallbacks.
            let cost = |t: &PlannedTarget| {
                t.route
                    .provider
                    .endpoints
                    .iter()
                    .filter(|e| !e.is_ejected() && e.has_model(&t.route.model) != Some(false))
                    .map(|e| e.cost())
                    .fold(f64::INFINITY, f64::min)
            };
            let mut rng = rand::rng();
            let a = rng.random_range(0..targets.len());
            let mut b = rng.random_range(0..targets.len() - 1);
            if b >= a {
                b += 1;
            }
            let first = if cost(&targets[a]) <= cost(&targets[b]) {
                a
            } else {
                b
            };
            let chosen = targets.remove(first);
            targets.insert(0, chosen);
        }
        Ok(Plan {
            alias: Some(alias.clone()),
            targets,
        })
    }

    /// `provider/model` goes to that provider; a bare name to the one provider that lists it,
    /// else to the default provider (which answers 404 itself if it lacks the model too).
    pub fn route(&self, requested: &str) -> Result<ProviderRoute, RouteError> {
        if let Some((prefix, rest)) = requested.split_once('/') {
            if let Some(p) = self.get(prefix) {
                if rest.is_empty() {
                    return Err(RouteError::NotFound(requested.to_owned()));
                }
                let model = p.find_model(rest).map(|m| m.id).unwrap_or(rest.to_owned());
                return Ok(ProviderRoute {
                    provider: p.clone(),
                    model: upstream_name(p.kind, &model, rest),
                });
            }
        }
        let owners: Vec<(&Arc<Provider>, ModelEntry)> = self
            .providers
            .iter()
            .filter_map(|p| p.find_model(requested).map(|m| (p, m)))
            .collect();
        match owners.len() {
            1 => {
                let (p, m) = &owners[0];
                Ok(ProviderRoute {
                    provider: (*p).clone(),
                    model: upstream_name(p.kind, &m.id, requested),
                })
            }
            0 => {
                let default = self
                    .get(&self.default_provider)
                    .expect("default provider validated at load");
                // Every list is known and none has it: answer now rather than ask upstream.
                if self.providers.iter().all(|p| p.models().is_some()) {
                    return Err(RouteError::NotFound(requested.to_owned()));
                }
                Ok(ProviderRoute {
                    provider: default.clone(),
                    model: requested.to_owned(),
                })
            }
            _ => {
                if let Some((p, m)) = owners.iter().find(|(p, _)| p.name == self.default_provider) {
                    return Ok(ProviderRoute {
                        provider: (*p).clone(),
                        model: upstream_name(p.kind, &m.id, requested),
                    });
                }
                let names: Vec<&str> = owners.iter().map(|(p, _)| p.name.as_str()).collect();
                Err(RouteError::Ambiguous(
                    requested.to_owned(),
                    names.join(", "),
                    names[0].to_owned(),
                ))
            }
        }
    }

    /// Choose an endpoint: power of two choices on `latency × (in_flight + 1) / weight`,
    /// among endpoints that are not ejected and list the model (or have not listed yet).
    pub fn pick(
        &self,
        provider: &Provider,
        model: &str,
        exclude: Option<&Arc<Endpoint>>,
    ) -> Option<Arc<Endpoint>> {
        let usable = |e: &&Arc<Endpoint>| exclude.is_none_or(|x| !Arc::ptr_eq(x, e));
        let mut candidates: Vec<&Arc<Endpoint>> = provider
            .endpoints
            .iter()
            .filter(usable)
            .filter(|e| !e.is_ejected() && e.has_model(model) != Some(false))
            .collect();
        if candidates.is_empty() {
            // Only ejected endpoints list it: retry the one whose rest ends first, since an
            // endpoint without the model would answer a misleading 404.
            if let Some(e) = provider
                .endpoints
                .iter()
                .filter(usable)
                .filter(|e| e.has_model(model) == Some(true))
                .min_by_key(|e| e.lock().ejected_until)
            {
                return Some(e.clone());
            }
        }
        if candidates.is_empty() {
            // Nothing healthy lists it: let an endpoint that is up answer (its 404 is accurate),
            // and if every one is ejected, try the one whose rest ends first.
            candidates = provider
                .endpoints
                .iter()
                .filter(usable)
                .filter(|e| !e.is_ejected())
                .collect();
        }
        if candidates.is_empty() {
            return provider
                .endpoints
                .iter()
                .filter(usable)
                .min_by_key(|e| e.lock().ejected_until)
                .cloned();
        }
        // Where `/api/ps` shows the model loaded, prefer those endpoints: a cold one first has
        // to load it (seconds to minutes). A cold endpoint is chosen only when every warm one
        // has at least `warm_busy_margin` more requests in flight than the least busy cold one.
        let warm: Vec<&Arc<Endpoint>> = candidates
            .iter()
            .filter(|e| e.is_loaded(model))
            .copied()
            .collect();
        if !warm.is_empty() && warm.len() < candidates.len() {
            let busy = |es: &mut dyn Iterator<Item = &&Arc<Endpoint>>| {
                es.map(|e| e.in_flight()).min().unwrap_or(u32::MAX)
            };
            let warm_busy = busy(&mut warm.iter());
            let cold_busy = busy(&mut candidates.iter().filter(|e| !e.is_loaded(model)));
            if warm_busy < cold_busy.saturating_add(self.health.warm_busy_margin) {
                candidates = warm;
            }
        }
        if candidates.len() == 1 {
            return Some(candidates[0].clone());
        }
        let mut rng = rand::rng();
        let a = rng.random_range(0..candidates.len());
        let mut b = rng.random_range(0..candidates.len() - 1);
        if b >= a {
            b += 1;
        }
        let (ea, eb) = (candidates[a], candidates[b]);
        Some(if ea.cost() <= eb.cost() { ea } else { eb }.clone())
    }

    /// Send a request built per endpoint, failing over once before any byte reached the client.
    pub async fn send(
        &self,
        route: &ProviderRoute,
        build: impl Fn(&Endpoint) -> reqwest::RequestBuilder,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let provider = &route.provider;
        if let Some(wait) = provider.all_ejected_for() {
            return Err(UpstreamError::AllEjected(provider.name.clone(), wait));
        }
        let mut tried: Option<Arc<Endpoint>> = None;
        let mut last_err = None;
        for attempt in 0..2 {
            let Some(endpoint) = self.pick(provider, &route.model, tried.as_ref()) else {
                break;
            };
            if attempt > 0 && endpoint.has_model(&route.model) == Some(false) {
                break; // no other endpoint has the model: its 404 would hide the real failure
            }
            let timeout =
                if endpoint.kind == ProviderKind::Ollama && !endpoint.is_loaded(&route.model) {
                    self.timeouts.first_byte_loading()
                } else {
                    self.timeouts.first_byte()
                };
            let in_flight = InFlight::new(endpoint.clone());
            let started = Instant::now();
            let request = provider.authorize(build(&endpoint));
            let outcome = tokio::time::timeout(timeout, request.send()).await;
            let elapsed = started.elapsed();
            let failure = match outcome {
                Ok(Ok(resp)) if resp.status().is_server_error() && attempt == 0 => {
                    let msg = format!("HTTP {}", resp.status().as_u16());
                    endpoint.record_failure(&msg, &self.health);
                    let elsewhere = provider.endpoints.iter().any(|e| {
                        !Arc::ptr_eq(e, &endpoint) && e.has_model(&route.model) != Some(false)
                    });
                    if elsewhere {
                        msg
                    } else {
                        return Ok(UpstreamResponse {
                            endpoint,
                            response: resp,
                            upstream_time: elapsed,
                            in_flight,
                        });
                    }
                }
                Ok(Ok(resp)) => {
                    if resp.status().is_server_error() {
                        endpoint.record_failure(&format!("HTTP {}", resp.status()), &self.health);
                    } else {
                        endpoint.record_success(elapsed);
                    }
                    return Ok(UpstreamResponse {
                        endpoint,
                        response: resp,
                        upstream_time: elapsed,
                        in_flight,
                    });
                }
                Ok(Err(e)) => {
                    let msg = describe_reqwest_error(&e);
                    endpoint.record_failure(&msg, &self.health);
                    last_err = Some(UpstreamError::Unreachable(
                        provider.name.clone(),
                        msg.clone(),
                    ));
                    msg
                }
                Err(_) => {
                    let msg = format!("no response headers within {timeout:?}");
                    endpoint.record_failure(&msg, &self.health);
                    last_err = Some(UpstreamError::Timeout(provider.name.clone(), timeout));
                    msg
                }
            };
            self.metrics.observe_failover(&provider.name, &endpoint.url);
            tracing::warn!(provider = %provider.name, endpoint = %endpoint.url, error = %failure, attempt, "upstream attempt failed");
            tried = Some(endpoint);
        }
        Err(last_err.unwrap_or_else(|| {
            UpstreamError::Unreachable(provider.name.clone(), "no endpoint available".into())
        }))
    }

    /// Refresh one endpoint's model list (and for Ollama, what is loaded). This is also the
    /// active health probe that brings an ejected endpoint back.
    pub async fn probe(&self, endpoint: &Endpoint, api_key: Option<&str>) {
        let (path, list_key, id_key) = match endpoint.kind {
            ProviderKind::Ollama => ("/api/tags", "models", "name"),
            ProviderKind::Openai => ("/models", "data", "id"),
        };
        let started = Instant::now();
        let mut req = self
            .http
            .get(format!("{}{path}", endpoint.url))
            .timeout(Duration::from_secs(2));
        if let Some(k) = api_key {
            req = req.bearer_auth(k);
        }
        let result: Result<Vec<ModelEntry>, String> = async {
            let resp = req.send().await.map_err(|e| describe_reqwest_error(&e))?;
            if !resp.status().is_success() {
                return Err(format!(
                    "model list answered HTTP {}",
                    resp.status().as_u16()
                ));
            }
            let body: Value = resp.json().await.map_err(|e| format!("model list: {e}"))?;
            Ok(body
                .get(list_key)
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|m| {
                            m.get(id_key).and_then(Value::as_str).map(|id| ModelEntry {
                                id: id.to_owned(),
                                raw: m.clone(),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default())
        }
        .await;
        match result {
            Ok(models) => {
                let mut s = endpoint.lock();
                s.models = Some(models);
                s.models_at = Some(Instant::now());
                // A rest lasts `eject_ms`: an endpoint that lists its models but fails requests
                // would otherwise be let back in at every probe.
                if s.ejected_until.is_none_or(|until| until <= Instant::now()) {
                    s.consecutive_failures = 0;
                    s.ejected_until = None;
                    s.last_error = None;
                }
                if s.latency_ewma_ms.is_none() {
                    s.latency_ewma_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                }
            }
            Err(e) => {
                let mut s = endpoint.lock();
                s.consecutive_failures = s.consecutive_failures.max(self.health.eject_after);
                s.ejected_until =
                    Some(Instant::now() + Duration::from_millis(self.health.eject_ms));
                s.last_error = Some(e);
            }
        }
        if endpoint.kind == ProviderKind::Ollama && !endpoint.is_ejected() {
            let loaded: Option<HashSet<String>> = async {
                let resp = self
                    .http
                    .get(format!("{}/api/ps", endpoint.url))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .ok()?;
                let body: Value = resp.json().await.ok()?;
                Some(
                    body.get("models")?
                        .as_array()?
                        .iter()
                        .filter_map(|m| m.get("name").and_then(Value::as_str).map(str::to_owned))
                        .collect(),
                )
            }
            .await;
            endpoint.lock().loaded = loaded;
        }
        self.metrics
            .set_endpoint_health(&endpoint.provider, &endpoint.url, !endpoint.is_ejected());
    }

    fn needs_probe(&self, endpoint: &Endpoint) -> bool {
        let s = endpoint.lock();
        let ttl = Duration::from_millis(self.health.models_ttl_ms);
        s.models_at.is_none_or(|at| at.elapsed() >= ttl)
            || s.consecutive_failures > 0
            || s.ejected_until.is_some()
            || endpoint.kind == ProviderKind::Ollama
    }

    /// Probe every endpoint that is due, all at once, each bounded by its own 2 s timeout.
    pub async fn refresh(&self, force: bool) {
        let mut probes = Vec::new();
        for p in &self.providers {
            for e in &p.endpoints {
                if force || self.needs_probe(e) {
                    probes.push(self.probe(e, p.api_key.as_deref()));
                }
            }
        }
        futures::future::join_all(probes).await;
    }

    /// Runs for the life of the process: active probes and model-list refresh.
    pub async fn run_probes(self: Arc<Self>) {
        self.refresh(true).await;
        let mut tick = tokio::time::interval(Duration::from_millis(self.health.probe_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.refresh(false).await;
        }
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

fn upstream_name(kind: ProviderKind, listed: &str, asked: &str) -> String {
    match kind {
        // Ollama resolves tags itself; keep what the client asked for.
        ProviderKind::Ollama => asked.to_owned(),
        ProviderKind::Openai => listed.to_owned(),
    }
}

pub fn describe_reqwest_error(e: &reqwest::Error) -> String {
    if e.is_connect() {
        "connection refused or unreachable".into()
    } else if e.is_timeout() {
        "timed out".into()
    } else {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        msg
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
        Arc::new(Endpoint {
            provider: "pool".into(),
            kind: ProviderKind::Ollama,
            url: url.into(),
            weight: 1,
            in_flight: AtomicU32::new(0),
            state: Mutex::new(EndpointState::default()),
        })
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
