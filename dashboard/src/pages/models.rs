//! Models: what the edge serves (by provider and endpoint, with health), what is loaded in
//! memory right now (Ollama's `/api/ps`: VRAM held and when it unloads), pull and delete, and the
//! last hour of traffic per client and per model.
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::json;

use super::{
    error_page, human_bytes, layout, relative_time, unavailable, FlashKind, Nav, PageContext,
};
use crate::auth::{csrf_refusal, Viewer};
use crate::backend::{Actor, BackendError, LoadedModels, ModelList, Readiness, TrafficStats};
use crate::charts::{bar_chart, group, GroupBy};
use crate::pulls::PullJob;
use crate::SharedState;

/// Ollama model names (`llama3:8b`, `library/qwen2.5:0.5b`, `hf.co/org/x:Q4_K_M`), optionally
/// with the edge's provider prefix.
pub fn valid_model_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '@'))
        && !s.contains("..")
}

fn provider_section(ready: &Result<Readiness, BackendError>) -> Markup {
    html! {
        section aria-labelledby="providers-title" {
            h2 #providers-title { "Providers" }
            @match ready {
                Err(e) => (unavailable("Edge", e)),
                Ok(r) => {
                    p {
                        "Edge readiness: "
                        @if r.ready { span.badge.good { "ready" } } @else { span.badge.bad { "not ready" } }
                    }
                    @for p in &r.providers {
                        div.table-wrap tabindex="0" role="region" aria-label={ "Endpoints of " (p.name) } {
                            table.responsive {
                                caption { (p.name) " " span.muted { "(" (p.kind) ")" } }
                                thead { tr { th scope="col" { "Endpoint" } th scope="col" { "Health" } th scope="col" { "In flight" } th scope="col" { "Models" } } }
                                tbody {
                                    @for e in &p.endpoints {
                                        tr {
                                            td data-label="Endpoint" { code { (e.url) } }
                                            td data-label="Health" {
                                                @if e.healthy { span.badge.good { "healthy" } } @else { span.badge.bad { "unhealthy" } }
                                                @if let Some(err) = &e.last_error { br; span.err-text { (err) } }
                                            }
                                            td data-label="In flight" { (e.in_flight) }
                                            td data-label="Models" {
                                                @match &e.models {
                                                    None => span.muted { "unknown (no answer yet)" },
                                                    Some(ms) if ms.is_empty() => span.muted { "none" },
                                                    Some(ms) => (ms.join(", ")),
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                },
            }
        }
    }
}

fn loaded_section(loaded: &Result<LoadedModels, BackendError>) -> Markup {
    html! {
        section aria-labelledby="loaded-title" {
            h2 #loaded-title { "Loaded now" }
            @match loaded {
                Err(e) => (unavailable("Loaded models", e)),
                Ok(l) if l.models.is_empty() => p.muted { "No model is loaded in memory right now." },
                Ok(l) => {
                    (super::gpu::vram_bars(l))
                    p.muted { (super::gpu::VRAM_NOTE) }
                    div.table-wrap tabindex="0" role="region" aria-label="Loaded models" {
                    table.responsive #loaded {
                        thead { tr { th scope="col" { "Model" } th scope="col" { "Size" } th scope="col" { "GPU memory" } th scope="col" { "Unloads" } } }
                        tbody {
                            @for m in &l.models {
                                tr {
                                    td data-label="Model" { (if m.name.is_empty() { &m.model } else { &m.name }) }
                                    td data-label="Size" { (human_bytes(m.size)) }
                                    td data-label="VRAM" {
                                        (human_bytes(m.size_vram))
                                        @if m.size > 0 { span.muted { " (" ((m.size_vram.min(m.size) * 100) / m.size) "% on GPU)" } }
                                    }
                                    td data-label="Unloads" {
                                        @match m.expires_at.as_deref() {
                                            Some(t) => time datetime=(t) { (relative_time(t).unwrap_or_else(|| t.to_string())) },
                                            None => span.muted { "—" },
                                        }
                                    }
                                }
                            }
                        }
                    }
                    }
                },
            }
        }
    }
}

fn models_section(
    models: &Result<ModelList, BackendError>,
    ready: &Result<Readiness, BackendError>,
) -> Markup {
    // A model is served when some healthy endpoint lists it (by bare name or provider/name).
    let healthy_for = |id: &str, owner: &str| -> Option<bool> {
        let r = ready.as_ref().ok()?;
        let mut listed = false;
        for p in &r.providers {
            for e in &p.endpoints {
                if e.models.iter().flatten().any(|m| {
                    m == id
                        || format!("{}/{m}", p.name) == id
                        || (p.name == owner && id.ends_with(&format!("/{m}")))
                }) {
                    listed = true;
                    if e.healthy {
                        return Some(true);
                    }
                }
            }
        }
        listed.then_some(false)
    };
    html! {
        section aria-labelledby="models-title" {
            h2 #models-title { "All models" }
            @match models {
                Err(e) => (unavailable("Edge", e)),
                Ok(l) if l.data.is_empty() => p.muted { "The edge lists no models." },
                Ok(l) => div.table-wrap tabindex="0" role="region" aria-label="All models" {
                    table.responsive #models {
                        thead { tr { th scope="col" { "Model" } th scope="col" { "Provider" } th scope="col" { "Health" } th scope="col" { span.sr-only { "Actions" } } } }
                        tbody {
                            @for m in &l.data {
                                tr {
                                    td data-label="Model" { code { (m.id) } }
                                    td data-label="Provider" { (m.owned_by) }
                                    td data-label="Health" {
                                        @match healthy_for(&m.id, &m.owned_by) {
                                            Some(true) => span.badge.good { "served" },
                                            Some(false) => span.badge.bad { "endpoint down" },
                                            None => span.muted { "—" },
                                        }
                                    }
                                    td data-label="" { a.button.small href={ "/models/delete?model=" (super::encode_query_value(&m.id)) } { "Delete" span.sr-only { " " (m.id) } } }
                                }
                            }
                        }
                    }
                },
            }
        }
    }
}

/// The form stays outside the refreshing region, so a half-typed name is never wiped.
fn pull_form(csrf: &str, admin: bool) -> Markup {
    html! {
        section aria-labelledby="pull-title" {
            h2 #pull-title { "Pull a model" }
            @if !admin { p.notice.warn { "Set EDGE_ADMIN_TOKEN for the dashboard to pull and delete models." } }
            form.toolbar method="post" action="/models/pull" {
                input type="hidden" name="csrf" value=(csrf);
                label for="pull-model" { "Model name" }
                input #pull-model type="text" name="model" required placeholder="llama3.2:1b" autocomplete="off" spellcheck="false" pattern="[A-Za-z0-9][A-Za-z0-9._:/@-]*";
                button.primary type="submit" { "Pull" }
            }
        }
    }
}

fn pull_jobs(jobs: &[PullJob]) -> Markup {
    html! {
            @if !jobs.is_empty() {
                ul.pulls #pulls aria-label="Model pulls" {
                    @for j in jobs {
                        li {
                            strong { (j.model) } " — "
                            @if let Some(e) = &j.error { span.badge.bad { "failed" } " " span.err-text { (e) } }
                            @else if j.done { span.badge.good { "pulled" } }
                            @else {
                                (j.status)
                                @if let Some(p) = j.percent() {
                                    " " progress max="100" value=(p) aria-label={ "Pull of " (j.model) } { (p) "%" } " " (p) "%"
                                }
                            }
                            @if let Some(a) = &j.audit_error { br; span.err-text { "Not recorded in the audit log: " (a) } }
                            span.muted { " · by " (j.user) }
                        }
                    }
                }
            }
    }
}

fn traffic_section(traffic: &Result<TrafficStats, BackendError>) -> Markup {
    html! {
        section aria-labelledby="traffic-title" {
            h2 #traffic-title { "Traffic, last hour" }
            @match traffic {
                Err(e) => (unavailable("Traffic", e)),
                Ok(t) => {
                    @let clients = group(t, GroupBy::Client);
                    @let models = group(t, GroupBy::Model);
                    @if clients.is_empty() {
                        p.muted { "No requests in the last " (t.window_minutes) " minutes." }
                    } @else {
                        p.muted.legend { span.key.req {} " requests per minute  " span.key.err {} " errors" }
                        h3 { "Per client" }
                        div.charts { @for s in &clients { (bar_chart(s)) } }
                        h3 { "Per model" }
                        div.charts { @for s in &models { (bar_chart(s)) } }
                    }
                },
            }
        }
    }
}

pub async fn page(State(state): State<SharedState>, viewer: Viewer) -> Response {
    let actor = Actor::new(&viewer.user);
    let (models, ready, loaded, traffic) = tokio::join!(
        state.edge.models(&actor),
        state.edge.readiness(&actor),
        state.edge.loaded(&actor),
        state.edge.traffic(&actor),
    );
    let jobs = state.pulls.list();
    let running = state.pulls.any_running();
    let body = html! {
        h1 { "Models" }
        (pull_form(&viewer.csrf, state.edge.has_admin_token()))
        div #models-live data-refresh=(if running { "2" } else { "15" }) {
            (pull_jobs(&jobs))
            (loaded_section(&loaded))
            (models_section(&models, &ready))
            (provider_section(&ready))
            (traffic_section(&traffic))
        }
    };
    layout(
        PageContext {
            title: "Models",
            nav: Nav::Models,
            viewer: Some(&viewer),
            flashes: state.flashes.take(&viewer),
            noscript_refresh: running.then_some(3),
        },
        body,
    )
    .into_response()
}

#[derive(Debug, Deserialize)]
pub struct ModelForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    confirm: String,
}

pub async fn pull(
    State(state): State<SharedState>,
    viewer: Viewer,
    Form(f): Form<ModelForm>,
) -> Response {
    if let Some(r) = csrf_refusal(&state, &viewer, &f.csrf) {
        return r;
    }
    let model = f.model.trim().to_string();
    if !valid_model_name(&model) {
        state.flashes.push(
            &viewer,
            FlashKind::Error,
            format!("{model:?} is not a model name (like llama3.2:1b)."),
        );
        return Redirect::to("/models").into_response();
    }
    let actor = Actor::new(&viewer.user);
    state.pulls.start(
        state.edge.clone(),
        state.controller.clone(),
        actor,
        model.clone(),
    );
    state
        .flashes
        .push(&viewer, FlashKind::Info, format!("Pulling {model}…"));
    Redirect::to("/models#pull-title").into_response()
}

#[derive(Debug, Deserialize)]
pub struct ModelQuery {
    #[serde(default)]
    model: String,
}

pub async fn confirm_delete(
    State(_state): State<SharedState>,
    viewer: Viewer,
    Query(q): Query<ModelQuery>,
) -> Response {
    if !valid_model_name(&q.model) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Not a model name",
            "Pick a model from the models page.",
        );
    }
    let title = format!("Delete {}?", q.model);
    let body = html! {
        h1 { "Delete " code { (q.model) } "?" }
        p { "The model's files are removed from the provider's disk. Pulling it again downloads it again." }
        form method="post" action="/models/delete" {
            input type="hidden" name="csrf" value=(viewer.csrf);
            input type="hidden" name="model" value=(q.model);
            input type="hidden" name="confirm" value="yes";
            div.actions {
                button.primary.danger type="submit" { "Yes, delete " (q.model) }
                a.button href="/models" { "Cancel" }
            }
        }
    };
    layout(
        PageContext {
            title: &title,
            nav: Nav::Models,
            viewer: Some(&viewer),
            flashes: vec![],
            noscript_refresh: None,
        },
        body,
    )
    .into_response()
}

pub async fn delete(
    State(state): State<SharedState>,
    viewer: Viewer,
    Form(f): Form<ModelForm>,
) -> Response {
    if let Some(r) = csrf_refusal(&state, &viewer, &f.csrf) {
        return r;
    }
    if !valid_model_name(&f.model) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Not a model name",
            "Pick a model from the models page.",
        );
    }
    if f.confirm != "yes" {
        return Redirect::to(&format!(
            "/models/delete?model={}",
            super::encode_query_value(&f.model)
        ))
        .into_response();
    }
    let actor = Actor::new(&viewer.user);
    let result = state.edge.delete_model(&actor, &f.model).await;
    let meta = match &result {
        Ok(()) => json!({"model": f.model, "via": "edge", "user": viewer.user}),
        Err(e) => {
            json!({"model": f.model, "via": "edge", "user": viewer.user, "error": e.to_string()})
        }
    };
    let audit = state
        .controller
        .record(
            &actor,
            "model_delete",
            &format!("model:{}", f.model),
            result.is_ok(),
            meta,
        )
        .await;
    match result {
        Ok(()) => state
            .flashes
            .push(&viewer, FlashKind::Ok, format!("Deleted {}.", f.model)),
        Err(e) => state.flashes.push(
            &viewer,
            FlashKind::Error,
            format!("Could not delete {}: {e}", f.model),
        ),
    }
    if let Err(e) = audit {
        state.flashes.push(
            &viewer,
            FlashKind::Error,
            format!("The deletion was not recorded in the audit log: {e}"),
        );
    }
    Redirect::to("/models").into_response()
}

#[cfg(test)]
mod tests {
    use super::valid_model_name;

    #[test]
    fn model_names() {
        assert!(valid_model_name("llama3.2:1b"));
        assert!(valid_model_name("ollama/llama3:8b"));
        assert!(valid_model_name("hf.co/org/x:Q4_K_M"));
        assert!(!valid_model_name("../etc"));
        assert!(!valid_model_name("a b"));
        assert!(!valid_model_name(""));
    }
}
