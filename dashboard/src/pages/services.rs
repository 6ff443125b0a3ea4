//! Services: a card per compose service with Docker's view (state, health, uptime, image) beside
//! the edge's model-aware readiness; start/stop/restart behind a confirmation that shows the
//! controller's dry run; logs with a follow mode; image pulls with a drift badge.
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use futures::StreamExt;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use super::log_line::{self, short_ts};
use super::{error_page, human_duration, layout, unavailable, FlashKind, Nav, PageContext};
use crate::auth::{csrf_refusal, Viewer};
use crate::backend::{
    valid_service_name, Actor, BackendError, Readiness, ServiceList, ServiceStatus,
};
use crate::SharedState;

pub const ACTIONS: [&str; 4] = ["start", "stop", "restart", "up"];

/// What an image pull through the dashboard found for one service.
#[derive(Debug, Clone)]
pub struct DriftNote {
    pub container_image_id: String,
    pub pulled_image_id: String,
    pub drift: bool,
}

/// The edge's readiness for the model server a compose service runs, if it runs one.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelReadiness {
    pub endpoints: usize,
    pub healthy: usize,
    pub models: usize,
    pub last_error: Option<String>,
}

fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    authority.split(':').next().unwrap_or("")
}

/// A provider endpoint belongs to a compose service when its URL's host is the service name
/// (compose DNS) or the provider is named after the service.
pub fn model_readiness(service: &str, ready: &Readiness) -> Option<ModelReadiness> {
    let mut out = ModelReadiness {
        endpoints: 0,
        healthy: 0,
        models: 0,
        last_error: None,
    };
    for p in &ready.providers {
        for e in &p.endpoints {
            if url_host(&e.url).eq_ignore_ascii_case(service)
                || p.name.eq_ignore_ascii_case(service)
            {
                out.endpoints += 1;
                out.healthy += usize::from(e.healthy);
                out.models += e.models.as_ref().map_or(0, Vec::len);
                if out.last_error.is_none() {
                    out.last_error.clone_from(&e.last_error);
                }
            }
        }
    }
    (out.endpoints > 0).then_some(out)
}

fn state_class(state: &str) -> &'static str {
    match state {
        "running" => "good",
        "restarting" | "paused" | "created" | "removing" => "warn",
        aibox_wire::controller::NOT_CREATED => "neutral",
        _ => "bad",
    }
}

fn health_class(health: &str) -> &'static str {
    match health {
        "healthy" => "good",
        "starting" => "warn",
        "unhealthy" => "bad",
        _ => "neutral",
    }
}

fn badge(class: &str, text: &str) -> Markup {
    html! { span class={ "badge " (class) } { (text) } }
}

fn readiness_cell(r: &ModelReadiness) -> Markup {
    html! {
        @match r {
            r if r.healthy == 0 => {
                (badge("bad", "not ready"))
                @if let Some(e) = &r.last_error { " " span.err-text { (e) } }
            },
            r if r.models == 0 => {
                (badge("warn", "no models"))
                " " span.muted { "container up, but it serves no model" }
            },
            r => {
                (badge("good", "ready"))
                " " (r.models) @if r.models == 1 { " model" } @else { " models" }
                @if r.healthy < r.endpoints { " · " (r.healthy) "/" (r.endpoints) " endpoints healthy" }
            },
        }
    }
}

/// `extra`: service-specific facts (the web UIs' links, OpenClaw's config sync, `openclaw_card.rs`).
fn card(
    s: &ServiceStatus,
    readiness: Option<&ModelReadiness>,
    drift: bool,
    csrf: &str,
    extra: Option<Markup>,
) -> Markup {
    let id = format!("svc-{}", s.name);
    let allowed = s.allowed;
    let not_created = s.state == aibox_wire::controller::NOT_CREATED;
    let running = s.state == "running";
    let ports: Vec<String> = s
        .ports
        .iter()
        .map(|p| {
            let private = p.private;
            match (p.public, &p.ip) {
                (Some(public), Some(ip)) if !ip.is_empty() => format!("{ip}:{public}→{private}"),
                (Some(public), _) => format!("{public}→{private}"),
                _ => format!("{private}"),
            }
        })
        .collect();
    html! {
        article.card #(id) aria-labelledby={ (id) "-title" } data-state=(s.state) {
            header.card-head {
                h2 #{ (id) "-title" } { (s.name) }
                span class={ "badge state " (state_class(&s.state)) } { (s.state) }
            }
            dl.facts {
                dt { "Health" }
                dd { (badge(health_class(&s.health), if s.health.is_empty() { "none" } else { &s.health })) }
                // Only services that serve models get the edge's model-aware readiness.
                @if let Some(r) = readiness {
                    dt { "Models" }
                    dd { (readiness_cell(r)) }
                }
                dt { "Uptime" }
                dd { @match s.uptime_seconds { Some(u) => (human_duration(u.max(0) as u64)), None => span.muted { "—" } } }
                dt { "Image" }
                dd {
                    code.image { (s.image) }
                    @if drift {
                        " " span.badge.warn title="A newer image was pulled; recreate the service to run it" { "newer image pulled" }
                    }
                }
                @if let Some(n) = Some(s.restart_count).filter(|n| *n > 0) {
                    dt { "Restarts" } dd { (n) }
                }
                @if !ports.is_empty() {
                    dt { "Ports" } dd { (ports.join(", ")) }
                }
                @if let Some(extra) = extra { (extra) }
            }
            @if !s.status.is_empty() { p.status.muted { (s.status) } }
            @if not_created {
                p.muted {
                    "Never started"
                    @if !s.profiles.is_empty() { " (profile " (s.profiles.join(", ")) ")" }
                    ". Creating it runs " code { "docker compose up -d " (s.name) } "."
                }
                div.actions {
                    @if allowed { a.button href={ "/services/" (s.name) "/up" } { "Create and start" span.sr-only { " " (s.name) } } }
                }
            } @else {
            div.actions {
                @if allowed && drift {
                    a.button.primary href={ "/services/" (s.name) "/up" } { "Recreate" span.sr-only { " " (s.name) " on the newer image" } }
                }
                @if allowed {
                    @if !running { a.button href={ "/services/" (s.name) "/start" } { "Start" span.sr-only { " " (s.name) } } }
                    @if running { a.button href={ "/services/" (s.name) "/stop" } { "Stop" span.sr-only { " " (s.name) } } }
                    a.button href={ "/services/" (s.name) "/restart" } { "Restart" span.sr-only { " " (s.name) } }
                }
                a.button href={ "/services/" (s.name) "/logs" } { "Logs" span.sr-only { " of " (s.name) } }
                @if allowed && !locally_built(&s.image) {
                    form.inline method="post" action={ "/services/" (s.name) "/pull" } {
                        input type="hidden" name="csrf" value=(csrf);
                        button.secondary type="submit" { "Pull image" span.sr-only { " for " (s.name) } }
                    }
                }
            }
            @if allowed && locally_built(&s.image) {
                p.muted.local-image { (LOCAL_IMAGE_NOTE) }
            }
            }
            @if !allowed { p.muted { "Read-only: outside the controller's service allowlist." } }
        }
    }
}

/// Every service's card (the services page and the overview).
pub fn cards(
    list: &ServiceList,
    ready: Option<&Readiness>,
    drift_notes: &std::collections::HashMap<String, DriftNote>,
    csrf: &str,
) -> Markup {
    html! {
        div.cards {
            @for s in &list.services {
                @let r = ready.and_then(|r| model_readiness(&s.name, r));
                @let drift = drift_notes.get(&s.name).is_some_and(|n| n.drift && (s.image_id.is_empty() || n.container_image_id == s.image_id));
                @let extra = if s.name == super::openclaw_card::SERVICE {
                    Some(super::openclaw_card::facts(s, list.services.iter().find(|x| x.name == super::openclaw_card::SYNC_SERVICE)))
                } else if s.name == super::openclaw_card::BROWSER_SERVICE {
                    Some(super::openclaw_card::browser_facts())
                } else {
                    super::openclaw_card::web_ui_facts(s)
                };
                (card(s, r.as_ref(), drift, csrf, extra))
            }
        }
    }
}

pub async fn page(State(state): State<SharedState>, viewer: Viewer) -> Response {
    let actor = Actor::new(&viewer.user);
    let (services, ready) = tokio::join!(
        state.controller.services(&actor),
        state.edge.readiness(&actor)
    );
    let drift_notes = state
        .drift
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let body = html! {
        div.page-head {
            h1 { "Services" }
            @if let Ok(list) = &services { @if !list.project.is_empty() { p.muted { "Compose project " code { (list.project) } } } }
        }
        div #services data-refresh="10" {
            @if let Err(e) = &ready {
                p.muted { "Model readiness from the edge is unavailable (" (e) ")." }
            }
            @match &services {
                Err(e) => {
                    (unavailable("Operations", e))
                    p { "Services, logs and start/stop need the controller. Models, tools and traffic still work." }
                },
                Ok(list) if list.services.is_empty() => p { "The controller found no services in its compose project." },
                Ok(list) => (cards(list, ready.as_ref().ok(), &drift_notes, &viewer.csrf)),
            }
        }
    };
    layout(
        PageContext {
            title: "Services",
            nav: Nav::Services,
            viewer: Some(&viewer),
            flashes: state.flashes.take(&viewer),
            noscript_refresh: None,
        },
        body,
    )
    .into_response()
}

fn target_refusal(name: &str, action: &str) -> Option<Response> {
    if !valid_service_name(name) {
        return Some(error_page(
            StatusCode::NOT_FOUND,
            "Not found",
            "No such service.",
        ));
    }
    if !ACTIONS.contains(&action) {
        return Some(error_page(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no page at this address.",
        ));
    }
    None
}

fn past(action: &str) -> &'static str {
    match action {
        "start" => "Started",
        "stop" => "Stopped",
        "up" => "Brought up",
        _ => "Restarted",
    }
}

/// The flash after `up`, by what the controller did.
fn up_text(name: &str, step: &str) -> String {
    match step {
        "create" => format!("Created and started {name}."),
        "recreate" => format!("Recreated {name} on its newer image."),
        "start" => format!("Started {name}."),
        _ => format!("{name} already runs its current image."),
    }
}

/// The confirmation step: shows the controller's dry run and asks before acting.
pub async fn confirm_page(
    State(state): State<SharedState>,
    viewer: Viewer,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    if let Some(r) = target_refusal(&name, &action) {
        return r;
    }
    let actor = Actor::new(&viewer.user);
    let dry = state
        .controller
        .act(&actor, &name, &action, true, None)
        .await;
    // `up` reads as what compose calls it.
    let verb = if action == "up" {
        "bring up"
    } else {
        action.as_str()
    };
    let title = format!("{} {name}?", capitalize(verb));
    let body = html! {
        h1 { (title) }
        @match &dry {
            Err(e) => {
                (unavailable("Operations", e))
                p { a href="/" { "Back to services" } }
            },
            Ok(v) => {
                section.confirm aria-labelledby="dry-title" {
                    h2 #dry-title { "Dry run" }
                    p { "The controller says it would: " strong { (v.get("would").and_then(Value::as_str).unwrap_or(&action)) } }
                    @if let Some(cs) = v.get("containers").and_then(Value::as_array) {
                        p { "Containers: " @for (i, c) in cs.iter().enumerate() { @if i > 0 { ", " } code { (c.as_str().unwrap_or("?")) } } }
                    }
                    @if let Some(st) = v.get("state").and_then(Value::as_str) { p { "Current state: " (st) } }
                    @let lockout = needs_typed_name(&name, &action);
                    @if let Some(why) = lockout {
                        div.notice.warn #lockout role="alert" {
                            strong { "Stopping " (name) " locks you out. " }
                            (why)
                        }
                    }
                    form method="post" action={ "/services/" (name) "/" (action) } {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        input type="hidden" name="confirm" value="yes";
                        @if lockout.is_some() {
                            p {
                                label for="confirm-service" { "Type " code { (name) } " to confirm" }
                                " "
                                input #confirm-service type="text" name="confirm_service" required autocomplete="off" spellcheck="false" aria-describedby="lockout";
                            }
                        }
                        div.actions {
                            button.primary.danger type="submit" { "Yes, " (verb) " " (name) }
                            a.button href="/" { "Cancel" }
                        }
                    }
                }
            },
        }
    };
    layout(
        PageContext {
            title: &title,
            nav: Nav::Services,
            viewer: Some(&viewer),
            flashes: state.flashes.take(&viewer),
            noscript_refresh: None,
        },
        body,
    )
    .into_response()
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

#[derive(Debug, Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
    /// The service's name as typed, for actions that would lock the user out.
    #[serde(default)]
    confirm_service: Option<String>,
}

/// What the action would cut off, when it stops a service the dashboard depends on (the user
/// types the service's name to confirm it; the controller checks the same).
fn needs_typed_name(name: &str, action: &str) -> Option<&'static str> {
    (action == "stop")
        .then(|| aibox_wire::controller::lockout_risk(name))
        .flatten()
}

pub async fn act(
    State(state): State<SharedState>,
    viewer: Viewer,
    headers: axum::http::HeaderMap,
    Path((name, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Response {
    if let Some(r) = target_refusal(&name, &action) {
        return r;
    }
    if let Some(r) = csrf_refusal(&state, &viewer, &f.csrf) {
        return r;
    }
    if f.confirm != "yes" {
        return Redirect::to(&format!("/services/{name}/{action}")).into_response();
    }
    let typed = f.confirm_service.as_deref().map(str::trim);
    if needs_typed_name(&name, &action).is_some() && typed != Some(name.as_str()) {
        state.flashes.push(
            &viewer,
            FlashKind::Error,
            format!("Not stopped: type {name} to confirm that you want to stop it."),
        );
        return Redirect::to(&format!("/services/{name}/{action}")).into_response();
    }
    // The edge's request id, so the audit events join the edge's and the dashboard's log lines.
    let actor = Actor::for_request(&viewer.user, &headers);
    let typed = needs_typed_name(&name, &action).and(typed);
    match state
        .controller
        .act(&actor, &name, &action, false, typed)
        .await
    {
        Ok(v) => {
            let changed = v.get("changed").and_then(Value::as_bool).unwrap_or(true);
            let text = if action == "up" {
                if changed {
                    state
                        .drift
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&name);
                }
                up_text(&name, v.get("step").and_then(Value::as_str).unwrap_or(""))
            } else if changed {
                format!("{} {name}.", past(&action))
            } else {
                format!(
                    "{name} was already {}.",
                    if action == "start" {
                        "running"
                    } else {
                        "stopped"
                    }
                )
            };
            state.flashes.push(
                &viewer,
                FlashKind::Ok,
                format!("{text} (request {})", actor.request_id),
            );
        }
        Err(e) => {
            state.flashes.push(
                &viewer,
                FlashKind::Error,
                format!("Could not {action} {name}: {e}"),
            );
        }
    }
    Redirect::to("/").into_response()
}

#[derive(Debug, Deserialize)]
pub struct PullForm {
    #[serde(default)]
    csrf: String,
}

const LOCAL_IMAGE_NOTE: &str = "Built locally (deploy/build-images.sh): no registry has this image, so there is nothing to pull. Rebuild it and recreate the service to update it.";

/// Our own images (`aibox-edge:local`, `aibox-test/...`): no registry host in the reference and a
/// repository starting with `aibox`. Pulling them can only fail.
pub fn locally_built(image: &str) -> bool {
    let first = image.split('/').next().unwrap_or("");
    let has_registry =
        image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    !has_registry && first.starts_with("aibox")
}

pub async fn pull_image(
    State(state): State<SharedState>,
    viewer: Viewer,
    Path(name): Path<String>,
    Form(f): Form<PullForm>,
) -> Response {
    if !valid_service_name(&name) {
        return error_page(StatusCode::NOT_FOUND, "Not found", "No such service.");
    }
    if let Some(r) = csrf_refusal(&state, &viewer, &f.csrf) {
        return r;
    }
    let actor = Actor::new(&viewer.user);
    let local = state.controller.services(&actor).await.ok().and_then(|l| {
        l.services
            .into_iter()
            .find(|s| s.name == name)
            .filter(|s| locally_built(&s.image))
    });
    if local.is_some() {
        state.flashes.push(
            &viewer,
            FlashKind::Error,
            format!("{name}: {LOCAL_IMAGE_NOTE}"),
        );
        return Redirect::to("/").into_response();
    }
    match state
        .controller
        .pull_images(&actor, std::slice::from_ref(&name))
        .await
    {
        Ok(answer) => {
            for r in answer.results {
                let service = r.service.clone();
                let image = r.image.clone();
                if !r.ok {
                    state.flashes.push(
                        &viewer,
                        FlashKind::Error,
                        format!(
                            "Pull of {image} for {service} failed: {}",
                            r.error.as_deref().unwrap_or("")
                        ),
                    );
                    continue;
                }
                let drift = r.drift.unwrap_or(false);
                state
                    .drift
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(
                        service.clone(),
                        DriftNote {
                            container_image_id: r.container_image_id.clone().unwrap_or_default(),
                            pulled_image_id: r.pulled_image_id.clone().unwrap_or_default(),
                            drift,
                        },
                    );
                let text = if drift {
                    format!("Pulled {image} for {service}: a newer image is ready; use Recreate on its card to run it.")
                } else {
                    format!("Pulled {image} for {service}: the running container already uses it.")
                };
                state.flashes.push(&viewer, FlashKind::Ok, text);
            }
        }
        Err(e) => state.flashes.push(
            &viewer,
            FlashKind::Error,
            format!("Could not pull the image of {name}: {e}"),
        ),
    }
    Redirect::to("/").into_response()
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    tail: Option<u32>,
    #[serde(default)]
    follow: Option<String>,
    /// Show the lines exactly as the container wrote them instead of rendered.
    #[serde(default)]
    raw: Option<String>,
}

fn checked(flag: Option<&str>) -> bool {
    flag.is_some_and(|f| f == "1" || f == "true" || f == "on")
}

const TAIL_CHOICES: [u32; 6] = [50, 100, 200, 500, 1000, 5000];

pub async fn logs_page(
    State(state): State<SharedState>,
    viewer: Viewer,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Response {
    if !valid_service_name(&name) {
        return error_page(StatusCode::NOT_FOUND, "Not found", "No such service.");
    }
    let tail = q.tail.unwrap_or(200).clamp(1, 5000);
    let follow = checked(q.follow.as_deref());
    let raw = checked(q.raw.as_deref());
    let actor = Actor::new(&viewer.user);
    let logs = state.controller.logs(&actor, &name, tail).await;
    let follow_url = format!(
        "/services/{name}/logs/stream?tail={tail}{}",
        if raw { "&raw=1" } else { "" }
    );
    let title = format!("Logs: {name}");
    let body = html! {
        div.page-head {
            h1 { "Logs: " (name) }
            p { a href={ "/#svc-" (name) } { "← Services" } }
        }
        form.toolbar method="get" action={ "/services/" (name) "/logs" } {
            label for="tail" { "Lines" }
            select #tail name="tail" {
                @for n in TAIL_CHOICES { option value=(n) selected[n == tail] { (n) } }
            }
            label.check { input type="checkbox" name="follow" value="1" checked[follow]; " Follow" }
            label.check { input type="checkbox" name="raw" value="1" checked[raw]; " Raw" }
            button type="submit" { "Show" }
        }
        @match &logs {
            Err(BackendError::Status { status: 404, message, .. }) => div.notice.warn role="alert" { (message) },
            Err(e) => (unavailable("Operations", e)),
            Ok(page) => {
                p.muted #log-meta {
                    "Container " code { (page.container) }
                    @if page.tty { " (TTY: stdout and stderr merged)" }
                    " · last " (page.lines.len()) " lines"
                    @if follow { " · " span #follow-state { "following" } }
                }
                div.log-wrap tabindex="0" role="region" aria-label={ "Log lines of " (name) } {
                    ol.log #log
                        data-follow-url=[follow.then_some(&follow_url)] {
                        @for l in &page.lines {
                            li class={ "s-" (l.stream) } {
                                @if raw {
                                    @if let Some(ts) = &l.ts { time datetime=(ts) { (short_ts(ts)) } " " }
                                    span.line { (l.line) }
                                } @else {
                                    (log_line::render(l.ts.as_deref(), &l.line))
                                }
                            }
                        }
                    }
                }
            },
        }
    };
    layout(
        PageContext {
            title: &title,
            nav: Nav::Services,
            viewer: Some(&viewer),
            flashes: state.flashes.take(&viewer),
            // Without JavaScript, "follow" reloads the page instead of streaming.
            noscript_refresh: follow.then_some(5),
        },
        body,
    )
    .into_response()
}

/// The controller's follow stream as NDJSON for the page's script; unless `raw`, each line also
/// carries `html`, the same rendering as the page's.
pub async fn logs_stream(
    State(state): State<SharedState>,
    viewer: Viewer,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Response {
    if !valid_service_name(&name) {
        return (StatusCode::NOT_FOUND, "no such service\n").into_response();
    }
    let tail = q.tail.unwrap_or(200).clamp(1, 5000);
    let raw = checked(q.raw.as_deref());
    let actor = Actor::new(&viewer.user);
    match state.controller.follow_logs(&actor, &name, tail).await {
        Ok(lines) => {
            let body = Body::from_stream(lines.map(move |l| {
                l.map(|s| {
                    let mut s = if raw { s } else { with_html(s) };
                    s.push('\n');
                    s
                })
            }));
            ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
        }
        Err(e) => {
            let status = match &e {
                BackendError::Status { status, .. } => {
                    StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
                }
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            let body = serde_json::json!({"error": e.to_string()}).to_string();
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    }
}

/// Adds the rendered `html` to one `{"stream","line","ts"}` line of the follow stream.
fn with_html(s: String) -> String {
    let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(&s) else {
        return s;
    };
    let line = obj.get("line").and_then(Value::as_str).unwrap_or_default();
    let html = log_line::render(obj.get("ts").and_then(Value::as_str), line).into_string();
    obj.insert("html".into(), Value::String(html));
    Value::Object(obj).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aibox_wire::edge::{
        EndpointReadiness as EndpointHealth, ProviderReadiness as ProviderHealth,
    };

    #[test]
    fn our_own_images_are_not_pullable() {
        for local in [
            "aibox-edge:local",
            "aibox-test/busybox:1",
            "aiboxdev-controller:1",
        ] {
            assert!(locally_built(local), "{local}");
        }
        for remote in [
            "ollama/ollama:0.5",
            "ghcr.io/open-webui/open-webui:v1",
            "127.0.0.1:5000/aibox-test/app:1",
            "busybox",
        ] {
            assert!(!locally_built(remote), "{remote}");
        }
    }

    #[test]
    fn readiness_matches_by_host_or_provider_name() {
        let r = Readiness {
            ready: true,
            providers: vec![ProviderHealth {
                name: "local".into(),
                kind: "ollama".into(),
                healthy: true,
                endpoints: vec![
                    EndpointHealth {
                        url: "http://ollama:11434".into(),
                        healthy: true,
                        models: Some(vec!["a".into()]),
                        ..Default::default()
                    },
                    EndpointHealth {
                        url: "http://gpu2:11434/v1".into(),
                        healthy: false,
                        last_error: Some("refused".into()),
                        ..Default::default()
                    },
                ],
            }],
        };
        assert_eq!(
            model_readiness("ollama", &r),
            Some(ModelReadiness {
                endpoints: 1,
                healthy: 1,
                models: 1,
                last_error: None
            })
        );
        assert_eq!(
            model_readiness("gpu2", &r).unwrap().last_error.as_deref(),
            Some("refused")
        );
        assert_eq!(model_readiness("local", &r).unwrap().endpoints, 2);
        assert_eq!(model_readiness("webui", &r), None);
        assert_eq!(url_host("http://user@[::1]:80/x"), "::1");
    }
}
