//! `/`, the home page: the whole box at a glance, each part linking to its own page: GPU memory
//! of the loaded models, traffic of the last hour, tool servers, the browser's egress denials,
//! the newest audit events, and every service's card. One region refreshes in place.
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};

use super::{layout, relative_time, unavailable, Nav, PageContext};
use crate::auth::Viewer;
use crate::backend::{Actor, AuditQuery, BackendError, LoadedModels, McpHealth, TrafficStats};
use crate::SharedState;

const AUDIT_ROWS: u32 = 6;

fn gpu_tile(loaded: &Result<LoadedModels, BackendError>) -> Markup {
    html! {
        section #ov-gpu aria-labelledby="ov-gpu-title" {
            h2 #ov-gpu-title { a href="/models" { "GPU memory" } }
            @match loaded {
                Err(e) => (unavailable("Loaded models", e)),
                Ok(l) if l.models.is_empty() => p.muted { "No model is loaded right now." },
                Ok(l) => {
                    (super::gpu::vram_bars(l))
                    p.muted.small { (super::gpu::VRAM_NOTE) }
                },
            }
        }
    }
}

fn traffic_tile(traffic: &Result<TrafficStats, BackendError>) -> Markup {
    html! {
        section #ov-traffic aria-labelledby="ov-traffic-title" {
            h2 #ov-traffic-title { a href="/models#traffic-title" { "Traffic, last hour" } }
            @match traffic {
                Err(e) => (unavailable("Traffic", e)),
                Ok(t) => @match crate::charts::total(t, "Tokens per minute") {
                    None => p.muted { "No model request in the last hour." },
                    Some(series) => div.charts {
                        (crate::charts::bar_chart(&requests_series(&series)))
                        (crate::charts::tokens_chart(&series))
                    },
                },
            }
        }
    }
}

/// The requests chart's caption names what it counts.
fn requests_series(series: &crate::charts::Series) -> crate::charts::Series {
    crate::charts::Series {
        name: "Requests per minute".into(),
        minutes: series.minutes.clone(),
    }
}

fn tools_tile(tools: &Result<McpHealth, BackendError>) -> Markup {
    html! {
        section #ov-tools aria-labelledby="ov-tools-title" {
            h2 #ov-tools-title { a href="/tools" { "Tool servers" } }
            @match tools {
                Err(e) => (unavailable("Tools", e)),
                Ok(h) if h.servers.is_empty() => p.muted { "No tool server is registered." },
                Ok(h) => ul.plain {
                    @for s in &h.servers {
                        li {
                            a href={ "/tools#tool-" (s.name) } { (s.name) }
                            span class={ "badge " (super::tools::health_colour(&s.state)) } { (s.state) }
                        }
                    }
                },
            }
        }
    }
}

fn egress_tile(metrics: &Result<String, BackendError>) -> Markup {
    html! {
        section #ov-egress aria-labelledby="ov-egress-title" {
            h2 #ov-egress-title { a href="/egress" { "Browser egress denials" } }
            @match metrics {
                Err(e) => (unavailable("Egress decisions", e)),
                Ok(text) => {
                    @let denied: Vec<_> = super::egress::decision_counts(text).into_iter().filter(|c| c.decision != "allow").collect();
                    @if denied.is_empty() {
                        p.muted { "None since the edge started." }
                    } @else {
                        ul.plain {
                            @for c in &denied {
                                li { code { (c.reason) } span.badge.bad { (c.count) } }
                            }
                        }
                        p.muted.small { "Counted since the edge started." }
                    }
                },
            }
        }
    }
}

fn audit_tile(events: &Result<Vec<crate::backend::AuditEvent>, BackendError>) -> Markup {
    html! {
        section #ov-audit aria-labelledby="ov-audit-title" {
            h2 #ov-audit-title { a href="/audit" { "Newest audit events" } }
            @match events {
                Err(e) => (unavailable("Audit", e)),
                Ok(list) if list.is_empty() => p.muted { "No event yet." },
                Ok(list) => ul.plain {
                    @for e in list {
                        li {
                            span {
                                strong { (e.action) } " " (e.resource)
                                span.muted { " · " (e.actor) " · " time datetime=(e.ts) { (relative_time(&e.ts).unwrap_or_else(|| e.ts.clone())) } }
                            }
                            span class={ "badge " (match e.result.as_str() { "ok" => "good", "intent" => "neutral", _ => "bad" }) } { (e.result) }
                        }
                    }
                },
            }
        }
    }
}

pub async fn page(State(state): State<SharedState>, viewer: Viewer) -> Response {
    let actor = Actor::new(&viewer.user);
    let audit_query = AuditQuery {
        limit: Some(AUDIT_ROWS),
        ..Default::default()
    };
    let (services, ready, loaded, traffic, tools, metrics, audit) = tokio::join!(
        state.controller.services(&actor),
        state.edge.readiness(&actor),
        state.edge.loaded(&actor),
        state.edge.traffic(&actor),
        state.edge.mcp_health(&actor),
        state.edge.metrics_text(&actor),
        state.controller.audit(&actor, &audit_query),
    );
    let drift_notes = state
        .drift
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let body = html! {
        div.page-head {
            h1 { "Overview" }
        }
        div #overview data-refresh="10" {
            div.overview-grid {
                (gpu_tile(&loaded))
                (traffic_tile(&traffic))
                (tools_tile(&tools))
                (egress_tile(&metrics))
                (audit_tile(&audit))
            }
            section aria-labelledby="ov-services-title" {
                h2 #ov-services-title { a href="/services" { "Services" } }
                @if let Ok(list) = &services { @if !list.project.is_empty() { p.muted { "Compose project " code { (list.project) } } } }
                @if let Err(e) = &ready {
                    p.muted { "Model readiness from the edge is unavailable (" (e) ")." }
                }
                @match &services {
                    Err(e) => (unavailable("Operations", e)),
                    Ok(list) if list.services.is_empty() => p { "The controller found no services in its compose project." },
                    Ok(list) => (super::services::cards(list, ready.as_ref().ok(), &drift_notes, &viewer.csrf)),
                }
            }
        }
    };
    layout(
        PageContext {
            title: "Overview",
            nav: Nav::Overview,
            viewer: Some(&viewer),
            flashes: state.flashes.take(&viewer),
            noscript_refresh: None,
        },
        body,
    )
    .into_response()
}
