//! Prometheus metrics for `/metrics`, and the per-minute traffic table behind `/api/edge/stats`
//! (what the dashboard charts: requests, errors and tokens per client and model, last hour).
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use serde_json::{json, Value};

pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    upstream_duration: HistogramVec,
    tokens: IntCounterVec,
    failovers: IntCounterVec,
    endpoint_up: IntGaugeVec,
    model_requests: IntCounterVec,
    model_tokens: IntCounterVec,
    first_token: HistogramVec,
    endpoint_in_flight: IntGaugeVec,
    alias_fallbacks: IntCounterVec,
    /// Model names that have a label of their own; later ones count as `other`.
    model_labels: Mutex<HashSet<String>>,
    minutes: Mutex<MinuteTable>,
}

/// How many distinct model names get their own label before the rest fold into `other`.
pub const MODEL_LABEL_LIMIT: usize = 64;

/// What one finished request contributes to the metrics.
pub struct RequestRecord<'a> {
    pub surface: &'a str,
    /// The matched route template, or `other`.
    pub route: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    pub client: &'a str,
    pub status: u16,
    pub error: Option<&'a str>,
    pub total: Duration,
    pub upstream: Option<Duration>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// When a streamed answer's first bytes left for the client.
    pub first_token: Option<Duration>,
}

#[derive(Default, Clone, Copy)]
struct Cell {
    requests: u64,
    errors: u64,
    tokens_in: u64,
    tokens_out: u64,
}

/// client -> model -> minute (unix seconds / 60) -> counts; trimmed to the last hour.
/// Nested maps so a request for a known client and model allocates nothing.
#[derive(Default)]
struct MinuteTable {
    cells: HashMap<String, HashMap<String, HashMap<i64, Cell>>>,
}

impl MinuteTable {
    /// Always `Some`: a missing row is inserted first (an `Option` only because the map's
    /// API cannot say so without a key allocation on every call).
    fn row(&mut self, client: &str, model: &str) -> Option<&mut HashMap<i64, Cell>> {
        if !self.cells.contains_key(client) {
            self.cells.insert(client.to_owned(), HashMap::new());
        }
        let models = self.cells.get_mut(client)?;
        if !models.contains_key(model) {
            models.insert(model.to_owned(), HashMap::new());
        }
        models.get_mut(model)
    }
}

const WINDOW_MINUTES: i64 = 60;
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

fn now_minute() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp() / 60
}

impl Metrics {
    /// For tests: the metrics are static, so building them cannot fail there.
    #[cfg(test)]
    pub fn new() -> Self {
        Self::try_new().expect("static metrics")
    }

    pub fn try_new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "aibox_requests_total",
                "Model requests by surface, provider, client and status",
            ),
            &["surface", "provider", "client", "status"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "aibox_request_errors_total",
                "Failed model requests by kind",
            ),
            &["provider", "client", "kind"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "aibox_request_duration_seconds",
                "Whole request, as the client saw it",
            )
            .buckets(BUCKETS.to_vec()),
            &["surface", "provider"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "aibox_upstream_duration_seconds",
                "Upstream time until response headers",
            )
            .buckets(BUCKETS.to_vec()),
            &["provider"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "aibox_tokens_total",
                "Tokens in (prompt) and out (completion)",
            ),
            &["provider", "client", "direction"],
        )?;
        let failovers = IntCounterVec::new(
            Opts::new(
                "aibox_upstream_failures_total",
                "Upstream attempts that failed before the first byte",
            ),
            &["provider", "endpoint"],
        )?;
        let endpoint_up = IntGaugeVec::new(
            Opts::new(
                "aibox_endpoint_up",
                "1 when the endpoint is in service, 0 when ejected",
            ),
            &["provider", "endpoint"],
        )?;
        let model_requests = IntCounterVec::new(
            Opts::new(
                "aibox_model_requests_total",
                "Model requests by route, provider, model (bounded), client and status",
            ),
            &["route", "provider", "model", "client", "status"],
        )?;
        let model_tokens = IntCounterVec::new(
            Opts::new(
                "aibox_model_tokens_total",
                "Tokens in (prompt) and out (completion) by route, provider, model (bounded) and client",
            ),
            &["route", "provider", "model", "client", "direction"],
        )
        ?;
        let first_token = HistogramVec::new(
            HistogramOpts::new(
                "aibox_time_to_first_token_seconds",
                "From the request's arrival until a streamed answer's first bytes left for the client",
            )
            .buckets(BUCKETS.to_vec()),
            &["route", "provider", "model"],
        )
        ?;
        let endpoint_in_flight = IntGaugeVec::new(
            Opts::new(
                "aibox_endpoint_in_flight",
                "Requests in flight at each endpoint (read at scrape time)",
            ),
            &["provider", "endpoint"],
        )?;
        let alias_fallbacks = IntCounterVec::new(
            Opts::new(
                "aibox_alias_fallbacks_total",
                "Moves from one alias target to the next, by alias and reason (upstream_failed, context_length)",
            ),
            &["alias", "reason"],
        )
        ?;
        let build_info = IntGaugeVec::new(
            Opts::new("aibox_build_info", "The edge's version; always 1"),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        for c in [&model_requests, &model_tokens, &alias_fallbacks] {
            registry.register(Box::new(c.clone()))?;
        }
        for g in [&endpoint_in_flight, &build_info] {
            registry.register(Box::new(g.clone()))?;
        }
        registry.register(Box::new(first_token.clone()))?;
        for c in [&requests, &errors, &tokens, &failovers] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(endpoint_up.clone()))?;
        Ok(Self {
            registry,
            requests,
            errors,
            duration,
            upstream_duration,
            tokens,
            failovers,
            endpoint_up,
            model_requests,
            model_tokens,
            first_token,
            endpoint_in_flight,
            alias_fallbacks,
            model_labels: Mutex::new(HashSet::new()),
            minutes: Mutex::new(MinuteTable::default()),
        })
    }

    /// `model` as a label: its own name for the first `MODEL_LABEL_LIMIT` names seen, `other`
    /// after that (and for requests that never named a routable model).
    fn model_label<'a>(&self, model: &'a str) -> &'a str {
        if model == "none" {
            return "other";
        }
        let mut seen = self.model_labels.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(model) {
            return model;
        }
        if seen.len() < MODEL_LABEL_LIMIT {
            seen.insert(model.to_owned());
            return model;
        }
        "other"
    }

    /// An alias moved on to its next target (aliases come from the config: bounded).
    pub fn observe_alias_fallback(&self, alias: &str, reason: &str) {
        self.alias_fallbacks
            .with_label_values(&[alias, reason])
            .inc();
    }

    pub fn set_endpoint_in_flight(&self, provider: &str, endpoint: &str, n: u32) {
        self.endpoint_in_flight
            .with_label_values(&[provider, endpoint])
            .set(i64::from(n));
    }

    pub fn record(&self, r: &RequestRecord<'_>) {
        let status = r.status.to_string();
        let model = self.model_label(r.model);
        self.model_requests
            .with_label_values(&[r.route, r.provider, model, r.client, &status])
            .inc();
        for (direction, n) in [("in", r.tokens_in), ("out", r.tokens_out)] {
            if n > 0 {
                self.model_tokens
                    .with_label_values(&[r.route, r.provider, model, r.client, direction])
                    .inc_by(n);
            }
        }
        if let Some(t) = r.first_token {
            self.first_token
                .with_label_values(&[r.route, r.provider, model])
                .observe(t.as_secs_f64());
        }
        self.requests
            .with_label_values(&[r.surface, r.provider, r.client, &status])
            .inc();
        if let Some(kind) = r.error {
            self.errors
                .with_label_values(&[r.provider, r.client, kind])
                .inc();
        }
        self.duration
            .with_label_values(&[r.surface, r.provider])
            .observe(r.total.as_secs_f64());
        if let Some(u) = r.upstream {
            self.upstream_duration
                .with_label_values(&[r.provider])
                .observe(u.as_secs_f64());
        }
        if r.tokens_in > 0 {
            self.tokens
                .with_label_values(&[r.provider, r.client, "in"])
                .inc_by(r.tokens_in);
        }
        if r.tokens_out > 0 {
            self.tokens
                .with_label_values(&[r.provider, r.client, "out"])
                .inc_by(r.tokens_out);
        }
        let minute = now_minute();
        let mut table = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(row) = table.row(r.client, r.model) else {
            return;
        };
        if !row.contains_key(&minute) {
            // A new minute begins: drop what fell out of the window.
            row.retain(|m, _| minute - m < WINDOW_MINUTES);
        }
        let cell = row.entry(minute).or_default();
        cell.requests += 1;
        cell.errors += u64::from(r.error.is_some() || r.status >= 400);
        cell.tokens_in += r.tokens_in;
        cell.tokens_out += r.tokens_out;
    }

    pub fn observe_failover(&self, provider: &str, endpoint: &str) {
        self.failovers
            .with_label_values(&[provider, endpoint])
            .inc();
    }

    pub fn set_endpoint_health(&self, provider: &str, endpoint: &str, up: bool) {
        self.endpoint_up
            .with_label_values(&[provider, endpoint])
            .set(i64::from(up));
    }

    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }

    /// The last hour per client and model, one entry per minute that saw traffic.
    pub fn stats(&self) -> Value {
        let now = now_minute();
        let mut table = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        for models in table.cells.values_mut() {
            for row in models.values_mut() {
                row.retain(|m, _| now - m < WINDOW_MINUTES);
            }
            models.retain(|_, row| !row.is_empty());
        }
        table.cells.retain(|_, models| !models.is_empty());
        let mut series: Vec<Value> = table
            .cells
            .iter()
            .flat_map(|(client, models)| {
                models.iter().map(move |(model, row)| (client, model, row))
            })
            .map(|(client, model, row)| {
                let mut minutes: Vec<(&i64, &Cell)> = row.iter().collect();
                minutes.sort_by_key(|(m, _)| **m);
                let minutes: Vec<Value> = minutes
                    .into_iter()
                    .map(|(m, c)| {
                        let t = time::OffsetDateTime::from_unix_timestamp(m * 60)
                            .ok()
                            .and_then(|t| {
                                t.format(&time::format_description::well_known::Rfc3339)
                                    .ok()
                            })
                            .unwrap_or_default();
                        json!({"t": t, "requests": c.requests, "errors": c.errors,
                               "tokens_in": c.tokens_in, "tokens_out": c.tokens_out})
                    })
                    .collect();
                json!({"client": client, "model": model, "minutes": minutes})
            })
            .collect();
        series.sort_by(|a, b| {
            (a["client"].as_str(), a["model"].as_str())
                .cmp(&(b["client"].as_str(), b["model"].as_str()))
        });
        json!({"window_minutes": WINDOW_MINUTES, "series": series})
    }
}

#[cfg(test)]
impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_labels_are_bounded() {
        let m = Metrics::new();
        for i in 0..MODEL_LABEL_LIMIT {
            assert_eq!(m.model_label(&format!("model-{i}")), format!("model-{i}"));
        }
        assert_eq!(m.model_label("one-too-many"), "other");
        assert_eq!(
            m.model_label("model-3"),
            "model-3",
            "a known name keeps its label"
        );
        assert_eq!(m.model_label("none"), "other");
    }
}
