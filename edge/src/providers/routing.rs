//! Routing: which provider and endpoint a request goes to, and the failover loop around one
//! exchange with an endpoint.
//!
//! Architecture Invariant: a request is retried on another endpoint only when nothing has been
//! sent to the client yet (connect error, timeout before the response headers, or a 5xx status).
//! Once `send` returns a response, the caller owns it and there is no second attempt.
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use rand::Rng;

use super::client::{ExchangeError, Response, UpstreamRequest};
use super::{
    Endpoint, InFlight, ModelEntry, Plan, PlannedTarget, Provider, ProviderRoute, ProviderSet,
    RouteError, UpstreamError,
};
use crate::aliases::Strategy;
use crate::config::ProviderKind;

/// What the failover loop needs to know of an answer: whether it is a server error.
pub trait Answer {
    fn status(&self) -> StatusCode;
}

impl Answer for Response {
    fn status(&self) -> StatusCode {
        Response::status(self)
    }
}

/// An answer whose headers arrived from `endpoint`; the body is still to be read by the caller,
/// who holds `in_flight` until the body is done.
pub struct Answered<R> {
    pub endpoint: Arc<Endpoint>,
    pub response: R,
    pub upstream_time: Duration,
    pub in_flight: InFlight,
}

/// A response from a provider, as the surfaces get it.
pub type UpstreamResponse = Answered<Response>;

impl ProviderSet {
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
            .filter_map(|t| {
                // Alias targets are checked against the providers when the config loads.
                let p = self.get(&t.provider)?;
                let listed = p.find_model(&t.model).map(|m| m.id);
                let listed = listed.as_deref().unwrap_or(&t.model);
                Some(PlannedTarget {
                    route: ProviderRoute {
                        provider: p.clone(),
                        model: upstream_name(p.kind, listed, &t.model),
                    },
                    context: t.context,
                })
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
                // The default provider is checked when the config loads.
                let Some(default) = self.get(&self.default_provider) else {
                    return Err(RouteError::NotFound(requested.to_owned()));
                };
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

    /// Send `request` on the route (with failover); the endpoint's URL is its base.
    pub async fn send(
        &self,
        route: &ProviderRoute,
        request: &UpstreamRequest,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let bearer = route.provider.api_key.as_deref();
        self.failover(route, |endpoint, first_byte| async move {
            self.client
                .exchange(endpoint.target()?, request, bearer, first_byte)
                .await
        })
        .await
    }

    /// Try the route's endpoints with `once`, failing over once before any byte reached the
    /// client. Every endpoint resting after failures answers at once with `AllEjected`: waiting
    /// out first-byte timeouts on endpoints known to fail helps nobody.
    pub async fn failover<R, F, Fut>(
        &self,
        route: &ProviderRoute,
        once: F,
    ) -> Result<Answered<R>, UpstreamError>
    where
        R: Answer,
        F: Fn(Arc<Endpoint>, Duration) -> Fut,
        Fut: Future<Output = Result<R, ExchangeError>>,
    {
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
            let first_byte =
                if endpoint.kind == ProviderKind::Ollama && !endpoint.is_loaded(&route.model) {
                    self.timeouts.first_byte_loading()
                } else {
                    self.timeouts.first_byte()
                };
            let in_flight = InFlight::new(endpoint.clone());
            let started = Instant::now();
            let outcome = once(endpoint.clone(), first_byte).await;
            let upstream_time = started.elapsed();
            let answered = {
                let endpoint = endpoint.clone();
                move |response| Answered {
                    endpoint,
                    response,
                    upstream_time,
                    in_flight,
                }
            };
            let failure = match outcome {
                Ok(resp) if resp.status().is_server_error() => {
                    let msg = format!("HTTP {}", resp.status().as_u16());
                    endpoint.record_failure(&msg, &self.health);
                    let elsewhere = attempt == 0
                        && provider.endpoints.iter().any(|e| {
                            !Arc::ptr_eq(e, &endpoint) && e.has_model(&route.model) != Some(false)
                        });
                    if !elsewhere {
                        return Ok(answered(resp));
                    }
                    msg
                }
                Ok(resp) => {
                    endpoint.record_success(upstream_time);
                    return Ok(answered(resp));
                }
                Err(ExchangeError::Connect(msg)) => {
                    endpoint.record_failure(&msg, &self.health);
                    last_err = Some(UpstreamError::Unreachable(
                        provider.name.clone(),
                        msg.clone(),
                    ));
                    msg
                }
                Err(e @ ExchangeError::Timeout(_)) => {
                    let msg = e.to_string();
                    endpoint.record_failure(&msg, &self.health);
                    last_err = Some(UpstreamError::Timeout(provider.name.clone(), first_byte));
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
}

fn upstream_name(kind: ProviderKind, listed: &str, asked: &str) -> String {
    match kind {
        // Ollama resolves tags itself; keep what the client asked for.
        ProviderKind::Ollama => asked.to_owned(),
        ProviderKind::Openai => listed.to_owned(),
    }
}

/// Routing and failover with a scripted stand-in for the exchange: no network, no clock but
/// the failover loop's own.
#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::config::EdgeConfig;
    use crate::metrics::Metrics;

    struct Scripted(StatusCode);

    impl Answer for Scripted {
        fn status(&self) -> StatusCode {
            self.0
        }
    }

    #[derive(Clone, Copy)]
    enum Step {
        Status(u16),
        Refuse,
        Hang,
    }

    struct NoEnv;
    impl crate::config::Env for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    /// A provider `pool` (Ollama) with endpoints a and b, both listing `llama3:8b`.
    fn pool(health: &str) -> ProviderSet {
        let toml = format!(
            r#"
{health}
[[providers]]
name = "pool"
kind = "ollama"
[[providers.endpoints]]
url = "http://a:11434"
[[providers.endpoints]]
url = "http://b:11434"
"#
        );
        let file = EdgeConfig::parse_file("test.toml", &toml).unwrap();
        let config = EdgeConfig::resolve(file, &NoEnv).unwrap();
        let set = ProviderSet::new(&config, Arc::new(Metrics::new()));
        for e in &set.get("pool").unwrap().endpoints {
            e.probe_listed(vec![entry("llama3:8b")], Duration::from_millis(1));
        }
        set
    }

    fn entry(id: &str) -> ModelEntry {
        ModelEntry {
            id: id.into(),
            raw: serde_json::json!({"name": id}),
        }
    }

    fn endpoint(set: &ProviderSet, host: &str) -> Arc<Endpoint> {
        let url = format!("http://{host}:11434");
        set.get("pool")
            .unwrap()
            .endpoints
            .iter()
            .find(|e| e.url == url)
            .unwrap()
            .clone()
    }

    /// Requests piled on `host`, so that the other endpoint is the cheaper first choice.
    fn busy(set: &ProviderSet, host: &str) -> Vec<InFlight> {
        (0..50)
            .map(|_| InFlight::new(endpoint(set, host)))
            .collect()
    }

    /// Send once through the failover loop; each endpoint answers as `script` says. Returns
    /// the outcome (the answering host, or the error) and the hosts asked with their timeouts.
    async fn send(
        set: &ProviderSet,
        script: &[(&str, Step)],
    ) -> (Result<(String, u16), String>, Vec<(String, Duration)>) {
        let script: HashMap<String, Step> = script
            .iter()
            .map(|(h, s)| (format!("http://{h}:11434"), *s))
            .collect();
        let asked = Mutex::new(Vec::new());
        let route = set.route("pool/llama3:8b").unwrap();
        let outcome = set
            .failover(&route, |e, first_byte| {
                let host = e
                    .url
                    .trim_start_matches("http://")
                    .trim_end_matches(":11434");
                asked.lock().unwrap().push((host.to_owned(), first_byte));
                let step = script[&e.url];
                async move {
                    match step {
                        Step::Status(s) => Ok(Scripted(StatusCode::from_u16(s).unwrap())),
                        Step::Refuse => Err(ExchangeError::Connect(
                            "connection refused or unreachable".into(),
                        )),
                        Step::Hang => Err(ExchangeError::Timeout(first_byte)),
                    }
                }
            })
            .await;
        let outcome = outcome
            .map(|a| {
                let host = a
                    .endpoint
                    .url
                    .trim_start_matches("http://")
                    .trim_end_matches(":11434");
                (host.to_owned(), a.response.0.as_u16())
            })
            .map_err(|e| e.to_string());
        (outcome, asked.into_inner().unwrap())
    }

    fn hosts(asked: &[(String, Duration)]) -> Vec<&str> {
        asked.iter().map(|(h, _)| h.as_str()).collect()
    }

    const HEALTH: &str = "[health]\neject_after = 2\neject_ms = 60000";

    #[tokio::test]
    async fn a_refused_connection_fails_over_and_repeated_failures_eject() {
        let set = pool(HEALTH);
        let _b_busy = busy(&set, "b");
        let script = [("a", Step::Refuse), ("b", Step::Status(200))];
        let (outcome, asked) = send(&set, &script).await;
        assert_eq!(outcome, Ok(("b".into(), 200)));
        assert_eq!(hosts(&asked), ["a", "b"]);
        assert!(
            !endpoint(&set, "a").is_ejected(),
            "one failure is not enough"
        );
        let (_, asked) = send(&set, &script).await;
        assert_eq!(hosts(&asked), ["a", "b"]);
        assert!(endpoint(&set, "a").is_ejected(), "eject_after = 2");
        // Ejected, a is not asked at all, however busy b is.
        let (outcome, asked) = send(&set, &script).await;
        assert_eq!((outcome, hosts(&asked)), (Ok(("b".into(), 200)), vec!["b"]));
        let status = endpoint(&set, "a").status();
        assert_eq!(
            status.last_error.as_deref(),
            Some("connection refused or unreachable")
        );
    }

    #[tokio::test]
    async fn a_server_error_fails_over_only_where_another_endpoint_has_the_model() {
        let set = pool(HEALTH);
        let _b_busy = busy(&set, "b");
        let (outcome, asked) =
            send(&set, &[("a", Step::Status(503)), ("b", Step::Status(200))]).await;
        assert_eq!(
            (outcome, hosts(&asked)),
            (Ok(("b".into(), 200)), vec!["a", "b"])
        );

        // b does not list the model: a's 503 is the answer, passed on as it is.
        let set = pool(HEALTH);
        endpoint(&set, "b").probe_listed(vec![entry("other:1b")], Duration::from_millis(1));
        let (outcome, asked) =
            send(&set, &[("a", Step::Status(503)), ("b", Step::Status(200))]).await;
        assert_eq!((outcome, hosts(&asked)), (Ok(("a".into(), 503)), vec!["a"]));
        // And a client error is an answer, not a failure.
        let (outcome, _) = send(&set, &[("a", Step::Status(404)), ("b", Step::Status(200))]).await;
        assert_eq!(outcome, Ok(("a".into(), 404)));
        assert_eq!(
            endpoint(&set, "a").status().consecutive_failures,
            0,
            "a 404 is a healthy answer"
        );
    }

    #[tokio::test]
    async fn two_timeouts_are_a_timeout_and_a_cold_model_gets_the_loading_budget() {
        let set = pool(HEALTH);
        let (outcome, asked) = send(&set, &[("a", Step::Hang), ("b", Step::Hang)]).await;
        let loading = set.timeouts.first_byte_loading();
        assert_eq!(
            outcome,
            Err(UpstreamError::Timeout("pool".into(), loading).to_string())
        );
        assert_eq!(asked.len(), 2, "one failover, no more");
        assert!(
            asked.iter().all(|(_, t)| *t == loading),
            "llama3:8b is not loaded anywhere"
        );
        // Loaded (as `/api/ps` reports it): the ordinary first-byte budget.
        let set = pool(HEALTH);
        for e in &set.get("pool").unwrap().endpoints {
            e.lock().loaded = Some(["llama3:8b".to_owned()].into());
        }
        let (_, asked) = send(&set, &[("a", Step::Hang), ("b", Step::Hang)]).await;
        assert!(asked.iter().all(|(_, t)| *t == set.timeouts.first_byte()));
    }

    #[tokio::test]
    async fn with_every_endpoint_ejected_the_answer_is_at_once_with_retry_after() {
        let set = pool("[health]\neject_after = 1\neject_ms = 5000");
        let script = [("a", Step::Refuse), ("b", Step::Refuse)];
        let (outcome, asked) = send(&set, &script).await;
        assert_eq!(asked.len(), 2);
        assert!(outcome.unwrap_err().contains("unreachable"));
        let (outcome, asked) = send(&set, &script).await;
        assert!(asked.is_empty(), "no endpoint is asked: {asked:?}");
        let msg = outcome.unwrap_err();
        assert!(
            msg.contains("every endpoint") && msg.contains("retry after 5 s"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn a_rest_lasts_eject_ms_whatever_the_probes_say() {
        let set = pool("[health]\neject_after = 1\neject_ms = 150");
        let a = endpoint(&set, "a");
        let _b_busy = busy(&set, "b");
        let _ = send(&set, &[("a", Step::Status(500)), ("b", Step::Status(200))]).await;
        assert!(a.is_ejected());
        // The model list still answers (a host that lists models but fails chats).
        a.probe_listed(vec![entry("llama3:8b")], Duration::from_millis(1));
        assert!(a.is_ejected(), "a probe does not cut the rest short");
        let (_, asked) = send(&set, &[("a", Step::Status(200)), ("b", Step::Status(200))]).await;
        assert_eq!(hosts(&asked), ["b"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!a.is_ejected());
        a.probe_listed(vec![entry("llama3:8b")], Duration::from_millis(1));
        assert_eq!(
            a.status().consecutive_failures,
            0,
            "over its rest, a probe lets it back"
        );
        let (_, asked) = send(&set, &[("a", Step::Status(200)), ("b", Step::Status(200))]).await;
        assert_eq!(hosts(&asked), ["a"], "b is still the busier one");
    }

    #[test]
    fn pick_goes_where_the_model_is_and_prefers_where_it_is_loaded() {
        let set = pool(HEALTH);
        let provider = set.get("pool").unwrap().clone();
        endpoint(&set, "a").probe_listed(vec![entry("qwen2.5:0.5b")], Duration::from_millis(1));
        for _ in 0..20 {
            let e = set.pick(&provider, "llama3:8b", None).unwrap();
            assert_eq!(e.url, "http://b:11434");
        }
        // Both list it, a has it in memory: a, unless a is far busier than b.
        endpoint(&set, "a").probe_listed(vec![entry("llama3:8b")], Duration::from_millis(1));
        endpoint(&set, "a").lock().loaded = Some(["llama3:8b".to_owned()].into());
        for _ in 0..20 {
            let e = set.pick(&provider, "llama3:8b", None).unwrap();
            assert_eq!(e.url, "http://a:11434");
        }
        let _a_busy: Vec<InFlight> = (0..set.health.warm_busy_margin + 1)
            .map(|_| InFlight::new(endpoint(&set, "a")))
            .collect();
        assert_eq!(
            set.pick(&provider, "llama3:8b", None).unwrap().url,
            "http://b:11434"
        );
        // Excluding the one tried already.
        let a = endpoint(&set, "a");
        assert_eq!(
            set.pick(&provider, "llama3:8b", Some(&a)).unwrap().url,
            "http://b:11434"
        );
    }
}
