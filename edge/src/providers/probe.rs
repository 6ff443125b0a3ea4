//! Requests to providers that are not a client's model request: the active health probe and
//! model-list refresh, the live listings the Ollama surface answers (`/api/ps`,
//! `/api/version`), and admin calls sent to one endpoint after another (pull, delete, copy).
//! Each is counted in flight at its endpoint like any request.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::{ExchangeError, Response, UpstreamRequest};
use super::{Endpoint, InFlight, ModelEntry, Provider, ProviderSet, UpstreamError};
use crate::config::ProviderKind;

/// A probe or a listing asks with this bound on the whole exchange, body included.
const LISTING_TIMEOUT: Duration = Duration::from_secs(2);

impl ProviderSet {
    /// GET `path` on one endpoint and read the JSON answer, all within `LISTING_TIMEOUT`.
    async fn get_json(
        &self,
        endpoint: &Arc<Endpoint>,
        path: &str,
        bearer: Option<&str>,
    ) -> Result<Value, String> {
        let _in_flight = InFlight::new(endpoint.clone());
        let asked = async {
            let target = endpoint.target().map_err(|e| e.to_string())?;
            let resp = self
                .client
                .exchange(target, &UpstreamRequest::get(path), bearer, LISTING_TIMEOUT)
                .await
                .map_err(|e| match e {
                    ExchangeError::Timeout(_) => "timed out".to_owned(),
                    ExchangeError::Connect(msg) => msg,
                })?;
            if !resp.status().is_success() {
                return Err(format!("{path} answered HTTP {}", resp.status().as_u16()));
            }
            resp.json::<Value>()
                .await
                .map_err(|e| format!("{path}: {e}"))
        };
        tokio::time::timeout(LISTING_TIMEOUT, asked)
            .await
            .unwrap_or_else(|_| Err("timed out".to_owned()))
    }

    /// Refresh one endpoint's model list (and for Ollama, what is loaded). This is also the
    /// active health probe that brings an ejected endpoint back, once its rest is over.
    pub async fn probe(&self, endpoint: &Arc<Endpoint>, api_key: Option<&str>) {
        let (path, list_key, id_key) = match endpoint.kind {
            ProviderKind::Ollama => ("/api/tags", "models", "name"),
            ProviderKind::Openai => ("/models", "data", "id"),
        };
        let started = Instant::now();
        let listed = self.get_json(endpoint, path, api_key).await.map(|body| {
            body.get(list_key)
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
                .unwrap_or_default()
        });
        match listed {
            Ok(models) => endpoint.probe_listed(models, started.elapsed()),
            Err(e) => endpoint.probe_failed(e, &self.health),
        }
        if endpoint.kind == ProviderKind::Ollama && !endpoint.is_ejected() {
            let loaded = self
                .get_json(endpoint, "/api/ps", api_key)
                .await
                .ok()
                .and_then(|v| loaded_names(&v));
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

    /// `/api/version` of the first Ollama endpoint that answers it (not ejected ones).
    pub async fn ollama_version(&self) -> Option<Value> {
        for p in self
            .providers
            .iter()
            .filter(|p| p.kind == ProviderKind::Ollama)
        {
            for e in p.endpoints.iter().filter(|e| !e.is_ejected()) {
                let asked = self.get_json(e, "/api/version", p.api_key.as_deref()).await;
                if let Some(v) = asked.ok().and_then(|v| v.get("version").cloned()) {
                    if v.is_string() {
                        return Some(v);
                    }
                }
            }
        }
        None
    }

    /// `/api/ps` of every Ollama endpoint that is not ejected, asked live, all at once.
    pub async fn loaded_models(&self) -> Vec<(Arc<Provider>, Value)> {
        let asks = self
            .providers
            .iter()
            .filter(|p| p.kind == ProviderKind::Ollama)
            .flat_map(|p| p.endpoints.iter().map(move |e| (p, e)))
            .filter(|(_, e)| !e.is_ejected())
            .map(|(p, e)| async move {
                let v = self.get_json(e, "/api/ps", p.api_key.as_deref()).await;
                v.ok().map(|v| (p.clone(), v))
            });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// An admin call (pull, delete, copy, create) to one endpoint, whatever its health: the
    /// operator asked for every endpoint. Waits as long as a model load may take for the
    /// headers; the body holds the endpoint's in-flight count until it is read or dropped.
    pub async fn admin(
        &self,
        provider: &Provider,
        endpoint: &Arc<Endpoint>,
        request: &UpstreamRequest,
    ) -> Result<Response, UpstreamError> {
        let first_byte = self.timeouts.first_byte_loading();
        let in_flight = InFlight::new(endpoint.clone());
        let target = endpoint.target().map_err(|e| {
            UpstreamError::Unreachable(
                format!("{} ({})", provider.name, endpoint.url),
                e.to_string(),
            )
        })?;
        let asked = self
            .client
            .exchange(target, request, provider.api_key.as_deref(), first_byte)
            .await;
        match asked {
            Ok(r) => Ok(r.holding(in_flight)),
            Err(ExchangeError::Connect(msg)) => {
                endpoint.record_failure(&msg, &self.health);
                Err(UpstreamError::Unreachable(
                    format!("{} ({})", provider.name, endpoint.url),
                    msg,
                ))
            }
            Err(ExchangeError::Timeout(_)) => {
                Err(UpstreamError::Timeout(provider.name.clone(), first_byte))
            }
        }
    }
}

fn loaded_names(ps: &Value) -> Option<HashSet<String>> {
    Some(
        ps.get("models")?
            .as_array()?
            .iter()
            .filter_map(|m| m.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect(),
    )
}
