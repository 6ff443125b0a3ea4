//! Tools: every MCP server the edge knows, with a green/yellow/red health badge and its last
//! error; its tool container's state and last log lines (from the controller); enable/disable;
//! edit allow/deny lists and limits; add a server of any kind (URL, image, command).
//! Every change is a whole-registry `PUT` to the edge, which validates it before applying it; a
//! new entry is checked first with the edge's own rules (`aibox_mcp_registry::check_entry`).
//! Secrets go to the edge's secrets file (`PUT /api/mcp/secrets`), never into registry.json, and
//! are shown masked: the dashboard only ever learns their names.
use std::collections::{BTreeMap, HashMap};

use aibox_mcp_registry::{self as registry, EnvVarSpec, ServerEntry};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{layout, unavailable, FlashKind, Nav, PageContext};
use crate::auth::{csrf_refusal, Viewer};
use crate::backend::{Actor, McpSecretsUpdate, McpServerHealth, ToolContainer};
use crate::SharedState;

/// Health badge colour: green serves tools, yellow needs a look, red is failing.
pub fn health_colour(state: &str) -> &'static str {
    match state {
        "healthy" => "good",
        "degraded" | "starting" | "missing_secrets" => "warn",
        "unhealthy" => "bad",
        _ => "neutral",
    }
}

/// Exactly the names the edge's registry accepts (one rule, in aibox-wire).
pub use aibox_wire::names::mcp_server_name_ok as valid_server_name;

fn valid_client(s: &str) -> bool {
    s == "*"
        || (!s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
}

/// The variable-name rule of the registry and its secrets file (one definition).
use aibox_mcp_registry::env_name_ok as valid_env_name;

/// Log lines shown per tool container.
const LOG_TAIL: u32 = 12;

/// Masked stand-in for a secret that is set (the dashboard never has its value).
const MASK: &str = "••••••••";

fn split_list(s: &str) -> Vec<String> {
    s.split([',', ' ', '\n', '\r', '\t'])
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn list_text(v: Option<&Value>) -> String {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn server_card(
    name: &str,
    health: Option<&McpServerHealth>,
    container: Option<&ToolContainer>,
    entry: Option<&Map<String, Value>>,
    secrets_set: &[String],
    csrf: &str,
) -> Markup {
    // The variables the entry declares (read as the registry's own type, so the RFC's
    // "required"/"optional" words and the object form mean the same here as at the edge), with
    // whether the secrets file sets each.
    let schema: Vec<(String, bool, bool)> = entry
        .and_then(|e| serde_json::from_value::<ServerEntry>(Value::Object(e.clone())).ok())
        .map(|e| {
            e.env_schema
                .into_iter()
                .map(|(k, spec)| {
                    let set = secrets_set.contains(&k);
                    (k, spec.required, set)
                })
                .collect()
        })
        .unwrap_or_default();
    let id = format!("tool-{name}");
    let state = health.map(|h| h.state.as_str()).unwrap_or("unknown");
    let enabled = entry
        .and_then(|e| e.get("enabled"))
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let target = health
        .map(|h| h.target.clone())
        .or_else(|| {
            entry
                .and_then(|e| e.get("url").or(e.get("image")).or(e.get("command")))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_default();
    let (allow, deny, rpm, timeout) = match entry {
        Some(e) => (
            list_text(e.get("allow_clients")),
            list_text(e.get("deny_clients")),
            e.get("rate_limit_rpm")
                .and_then(Value::as_u64)
                .map(|v| v.to_string())
                .unwrap_or_default(),
            e.get("timeout_sec")
                .and_then(Value::as_f64)
                .map(|v| v.to_string())
                .unwrap_or_default(),
        ),
        None => Default::default(),
    };
    html! {
        article.card #(id) aria-labelledby={ (id) "-title" } {
            header.card-head {
                h2 #{ (id) "-title" } { (name) }
                span class={ "badge " (health_colour(state)) } { (state.replace('_', " ")) }
            }
            dl.facts {
                dt { "Source" }
                dd {
                    @if let Some(h) = health { (h.transport) " " }
                    code.image { (target) }
                }
                @if let Some(c) = container {
                    dt { "Container" }
                    dd.container-state data-state=(c.state) { code { (c.container) } " " (c.state) @if !c.status.is_empty() { " · " (c.status) } }
                }
                @if !schema.is_empty() {
                    dt { "Secrets" }
                    dd.secrets {
                        @for (i, (k, required, set)) in schema.iter().enumerate() {
                            @if i > 0 { ", " }
                            code { (k) } " "
                            @if *set { span.masked data-secret=(k) { (MASK) } }
                            @else if *required { span.err-text data-secret=(k) { "not set" } }
                            @else { span.muted data-secret=(k) { "not set (optional)" } }
                        }
                    }
                }
                @if let Some(h) = health {
                    dt { "Tools" } dd { (h.tools.len()) }
                    @if let Some(ms) = h.latency_ms { dt { "Latency" } dd { (ms) " ms" } }
                    @if !h.missing_secrets.is_empty() { dt { "Missing secrets" } dd { (h.missing_secrets.join(", ")) } }
                    dt { "Last error" }
                    dd { @match &h.last_error { Some(e) => span.err-text { (e) }, None => span.muted { "none" } } }
                    dt { "Clients" }
                    dd {
                        "allow " (if h.policy.allow_clients.is_empty() { "*".to_string() } else { h.policy.allow_clients.join(", ") })
                        @if !h.policy.deny_clients.is_empty() { " · deny " (h.policy.deny_clients.join(", ")) }
                    }
                    dt { "Limits" }
                    dd {
                        @match h.policy.rate_limit_rpm { Some(r) => { (r) " calls/min" }, None => "no rate limit" }
                        @if let Some(t) = h.policy.timeout_sec { " · " (t) " s timeout" }
                    }
                }
            }
            @match entry {
                None => p.muted { "Defined outside registry.json (servers.txt): edit it there." },
                Some(_) => {
                    div.actions {
                        form.inline method="post" action={ "/tools/" (name) "/enabled" } {
                            input type="hidden" name="csrf" value=(csrf);
                            input type="hidden" name="enabled" value=(if enabled { "false" } else { "true" });
                            button.secondary type="submit" {
                                (if enabled { "Disable" } else { "Enable" }) span.sr-only { " " (name) }
                            }
                        }
                    }
                    @if !schema.is_empty() {
                        details {
                            summary { "Set secrets" span.sr-only { " of " (name) } }
                            form.stack method="post" action={ "/tools/" (name) "/secrets" } {
                                input type="hidden" name="csrf" value=(csrf);
                                p.muted { "Written to the secrets file (data/mcp/.env), never to registry.json. Empty fields keep the value that is set." }
                                @for (k, _, set) in &schema {
                                    label for={ (id) "-secret-" (k) } { (k) @if *set { span.muted { " (set)" } } }
                                    input #{ (id) "-secret-" (k) } type="password" name=(k) autocomplete="new-password" spellcheck="false";
                                }
                                button.primary type="submit" { "Save secrets" }
                            }
                        }
                    }
                    details {
                        summary { "Edit access and limits" span.sr-only { " of " (name) } }
                        form.stack method="post" action={ "/tools/" (name) "/policy" } {
                            input type="hidden" name="csrf" value=(csrf);
                            label for={ (id) "-allow" } { "Allowed clients" span.muted { " (comma-separated; empty or * = every client)" } }
                            input #{ (id) "-allow" } type="text" name="allow_clients" value=(allow) autocomplete="off";
                            label for={ (id) "-deny" } { "Denied clients" }
                            input #{ (id) "-deny" } type="text" name="deny_clients" value=(deny) autocomplete="off";
                            label for={ (id) "-rpm" } { "Calls per minute per client" span.muted { " (empty = no limit)" } }
                            input #{ (id) "-rpm" } type="number" name="rate_limit_rpm" min="1" max="100000" value=(rpm) inputmode="numeric";
                            label for={ (id) "-timeout" } { "Timeout per call, seconds" span.muted { " (empty = default)" } }
                            input #{ (id) "-timeout" } type="number" name="timeout_sec" min="0.1" max="3600" step="0.1" value=(timeout);
                            button.primary type="submit" { "Save" }
                        }
                    }
                },
            }
        }
    }
}

fn add_form(csrf: &str) -> Markup {
    html! {
        section aria-labelledby="add-title" {
            h2 #add-title { "Add a tool server" }
            form #add-server .stack.panel method="post" action="/tools/add" {
                input type="hidden" name="csrf" value=(csrf);
                label for="add-name" { "Name" span.muted { " (letters, digits, - and _)" } }
                input #add-name type="text" name="name" required pattern="[A-Za-z0-9][A-Za-z0-9_-]{0,47}" autocomplete="off";
                fieldset {
                    legend { "Kind" }
                    label.check { input type="radio" name="source" value="url" checked; " URL (an MCP server reachable over HTTP)" }
                    label.check { input type="radio" name="source" value="image"; " Docker image (run as a tool container, e.g. mcp/github)" }
                    label.check { input type="radio" name="source" value="command"; " Command (e.g. uvx or npx; a tool container of the runner image in the box)" }
                }
                label for="add-target" { "URL, image or command" }
                input #add-target type="text" name="target" required placeholder="http://mcp-git:8000/mcp · mcp/github · uvx" autocomplete="off" spellcheck="false";
                label for="add-args" { "Arguments" span.muted { " (command only; one per line)" } }
                textarea #add-args name="args" rows="2" spellcheck="false" placeholder="mcp-server-time" {}
                label for="add-desc" { "Description" }
                input #add-desc type="text" name="description" autocomplete="off";
                label for="add-secrets" { "Secrets" span.muted { " (image and command; one per line: NAME=value. Stored in data/mcp/.env, never in registry.json, and shown masked)" } }
                textarea #add-secrets name="secrets" rows="2" spellcheck="false" autocomplete="off" placeholder="GITHUB_PERSONAL_ACCESS_TOKEN=ghp_…" {}
                label for="add-schema" { "Other variables it needs" span.muted { " (one per line: NAME required|optional description; set them later with Set secrets)" } }
                textarea #add-schema name="env_schema" rows="2" spellcheck="false" placeholder="GITHUB_HOST optional Enterprise host" {}
                label for="add-env" { "Plain settings" span.muted { " (image and command; one per line: NAME=value, not secret; ${NAME} reads the secrets file)" } }
                textarea #add-env name="env" rows="2" spellcheck="false" placeholder="LOG_LEVEL=info" {}
                button.primary type="submit" { "Add server" }
            }
        }
    }
}

/// The last log lines of each tool container: outside the refreshed region, so one page view
/// is one (audited) log read at the controller.
fn logs_section(containers: &[ToolContainer]) -> Markup {
    html! {
        @if !containers.is_empty() {
            section #tool-logs aria-labelledby="tool-logs-title" {
                h2 #tool-logs-title { "Tool container logs" }
                @for c in containers {
                    article.card id={ "tool-log-" (c.server) } {
                        header.card-head {
                            h3 { (c.server) }
                            span class={ "badge " (if c.state == "running" { "good" } else { "bad" }) } { (c.state) }
                        }
                        p.muted { code { (c.container) } " · " (c.kind) " · " (c.image) @if !c.status.is_empty() { " · " (c.status) } }
                        @if c.log_tail.is_empty() {
                            p.muted { "No log lines." }
                        } @else {
                            pre.log-tail { @for l in &c.log_tail { (l) "\n" } }
                        }
                    }
                }
            }
        }
    }
}

pub async fn page(
    State(state): State<SharedState>,
    viewer: Viewer,
    headers: axum::http::HeaderMap,
) -> Response {
    let actor = Actor::new(&viewer.user);
    // A refresh of the live region (app.js) needs no log lines: they are read once per view.
    let refresh = headers.contains_key("x-dashboard-refresh");
    let tail = if refresh { 0 } else { LOG_TAIL };
    let (health, registry, containers, secrets) = tokio::join!(
        state.edge.mcp_health(&actor),
        state.edge.mcp_registry(&actor),
        state.controller.tool_containers(&actor, tail),
        state.edge.mcp_secrets(&actor)
    );
    // The box's tool containers (image/command servers); none when the controller runs none.
    let containers = containers.map(|c| c.containers).unwrap_or_default();
    let secrets_set = secrets.map(|s| s.names).unwrap_or_default();
    let entries: Map<String, Value> = registry
        .as_ref()
        .ok()
        .and_then(|r| r.registry.get("servers"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut names: Vec<String> = health
        .as_ref()
        .map(|h| h.servers.iter().map(|s| s.name.clone()).collect())
        .unwrap_or_default();
    for n in entries.keys() {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let body = html! {
        h1 { "Tools" }
        div #tools-live data-refresh="15" {
            @match (&health, &registry) {
                (Err(e), _) | (_, Err(e)) => (unavailable("Tool registry", e)),
                (Ok(h), Ok(r)) => {
                    @if let Some(e) = h.registry_error.as_ref().or(r.error.as_ref()) {
                        div.notice.bad role="alert" { strong { "Registry error" } " — " (e) " (the last good registry stays in use)" }
                    }
                    @if let Some(p) = &r.path { p.muted { "Registry " code { (p) } } }
                    @if names.is_empty() {
                        p { "No tool servers yet." }
                    } @else {
                        div.cards {
                            @for n in &names {
                                (server_card(n, h.servers.iter().find(|s| &s.name == n), containers.iter().find(|c| &c.server == n), entries.get(n).and_then(Value::as_object), &secrets_set, &viewer.csrf))
                            }
                        }
                    }
                },
            }
        }
        @if !refresh { (logs_section(&containers)) }
        @if health.is_ok() && registry.is_ok() { (add_form(&viewer.csrf)) }
    };
    layout(
        PageContext {
            title: "Tools",
            nav: Nav::Tools,
            viewer: Some(&viewer),
            flashes: state.flashes.take(&viewer),
            noscript_refresh: None,
        },
        body,
    )
    .into_response()
}

/// Read the registry, change it, write it back through the edge, and record the change.
async fn edit_registry(
    state: &SharedState,
    viewer: &Viewer,
    action: &str,
    server: &str,
    change: impl FnOnce(&mut Map<String, Value>) -> Result<String, String>,
) {
    let actor = Actor::new(&viewer.user);
    let current = match state.edge.mcp_registry(&actor).await {
        Ok(r) => r.registry,
        Err(e) => {
            state.flashes.push(
                viewer,
                FlashKind::Error,
                format!("Could not read the tool registry: {e}"),
            );
            return;
        }
    };
    let mut registry = match current {
        Value::Object(o) => o,
        _ => Map::new(),
    };
    let servers = registry
        .entry("servers")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(servers) = servers.as_object_mut() else {
        state.flashes.push(
            viewer,
            FlashKind::Error,
            "The registry's \"servers\" is not an object; fix registry.json by hand.",
        );
        return;
    };
    let done = match change(servers) {
        Ok(d) => d,
        Err(e) => {
            state.flashes.push(viewer, FlashKind::Error, e);
            return;
        }
    };
    let result = state
        .edge
        .put_mcp_registry(&actor, &Value::Object(registry))
        .await;
    let meta = match &result {
        Ok(_) => json!({"server": server, "via": "edge", "user": viewer.user}),
        Err(e) => {
            json!({"server": server, "via": "edge", "user": viewer.user, "error": e.to_string()})
        }
    };
    let audit = state
        .controller
        .record(
            &actor,
            action,
            &format!("mcp:{server}"),
            result.is_ok(),
            meta,
        )
        .await;
    match result {
        Ok(_) => state.flashes.push(viewer, FlashKind::Ok, done),
        Err(e) => state.flashes.push(
            viewer,
            FlashKind::Error,
            format!("The edge refused the change: {e}"),
        ),
    }
    if let Err(e) = audit {
        state.flashes.push(
            viewer,
            FlashKind::Error,
            format!("Not recorded in the audit log: {e}"),
        );
    }
}

#[derive(Debug, Deserialize)]
pub struct EnabledForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    enabled: String,
}

pub async fn set_enabled(
    State(state): State<SharedState>,
    viewer: Viewer,
    Path(name): Path<String>,
    Form(f): Form<EnabledForm>,
) -> Response {
    if let Some(r) = csrf_refusal(&state, &viewer, &f.csrf) {
        return r;
    }
    let enable = f.enabled == "true";
    let action = if enable { "mcp_enable" } else { "mcp_disable" };
    let server = name.clone();
    edit_registry(&state, &viewer, action, &name, |servers| {
        let entry = servers
            .get_mut(&server)
            .and_then(Value::as_object_mut)
            .ok_or_else(|| format!("{server} is not in registry.json."))?;
        if enable {
            // `enabled` absent means enabled: keep the file minimal.
            entry.remove("enabled");
        } else {
            entry.insert("enabled".into(), Value::Bool(false));
        }
        Ok(format!(
            "{} {server}.",
            if enable { "Enabled" } else { "Disabled" }
        ))
    })
    .await;
    Redirect::to(&format!("/tools#tool-{name}")).into_response()
}

#[derive(Debug, Deserialize)]
pub struct PolicyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    allow_clients: String,
    #[serde(default)]
    deny_clients: String,
    #[serde(default)]
    rate_limit_rpm: String,
    #[serde(default)]
    timeout_sec: String,
}

/// The policy fields of a registry entry from the form; errors say which field is wrong.
pub fn policy_from_form(f: &PolicyForm) -> Result<Vec<(&'static str, Option<Value>)>, String> {
    let allow = split_list(&f.allow_clients);
    let deny = split_list(&f.deny_clients);
    if let Some(bad) = allow.iter().chain(deny.iter()).find(|c| !valid_client(c)) {
        return Err(format!(
            "{bad:?} is not a client name (letters, digits, - _ . or *)."
        ));
    }
    let rpm = match f.rate_limit_rpm.trim() {
        "" => None,
        s => match s.parse::<u32>() {
            Ok(n) if (1..=100_000).contains(&n) => Some(json!(n)),
            _ => return Err("Calls per minute must be a whole number from 1 to 100000.".into()),
        },
    };
    let timeout = match f.timeout_sec.trim() {
        "" => None,
        s => match s.parse::<f64>() {
            Ok(t) if (0.1..=3600.0).contains(&t) => Some(json!(t)),
            _ => return Err("The timeout must be between 0.1 and 3600 seconds.".into()),
        },
    };
    let allow = if allow.is_empty() || allow == ["*"] {
        None
    } else {
        Some(json!(allow))
    };
    let deny = if deny.is_empty() {
        None
    } else {
        Some(json!(deny))
    };
    Ok(vec![
        ("allow_clients", allow),
        ("deny_clients", deny),
        ("rate_limit_rpm", rpm),
        ("timeout_sec", timeout),
    ])
}

pub async fn set_policy(
    State(state): State<SharedState>,
    viewer: Viewer,
    Path(name): Path<String>,
    Form(f): Form<PolicyForm>,
) -> Response {
    if let Some(r) = csrf_refusal(&state, &viewer, &f.csrf) {
        return r;
    }
    let fields = policy_from_form(&f);
    let server = name.clone();
    edit_registry(&state, &viewer, "mcp_update", &name, |servers| {
        let fields = fields.map_err(|e| format!("Not saved: {e}"))?;
        let entry = servers
            .get_mut(&server)
            .and_then(Value::as_object_mut)
            .ok_or_else(|| format!("{server} is not in registry.json."))?;
        for (k, v) in fields {
            match v {
                Some(v) => entry.insert(k.to_string(), v),
                None => entry.remove(k),
            };
        }
        Ok(format!("Saved access and limits of {server}."))
    })
    .await;
    Redirect::to(&format!("/tools#tool-{name}")).into_response()
}

#[derive(Default, Deserialize)]
pub struct AddForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub args: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub secrets: String,
    #[serde(default)]
    pub env_schema: String,
    #[serde(default)]
    pub env: String,
}

/// A new server from the add form: its registry entry, and the secrets that go to the secrets
/// file instead (their names are in the entry's `env_schema`, their values only here).
pub struct NewServer {
    pub entry: ServerEntry,
    pub secrets: BTreeMap<String, String>,
}

/// `NAME=value` lines; `what` names the field in errors.
fn assignments(text: &str, what: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("{what}, line {}: write NAME=value.", i + 1));
        };
        let k = k.trim();
        if !valid_env_name(k) {
            return Err(format!(
                "{what}, line {}: {k:?} is not a variable name (letters, digits, _).",
                i + 1
            ));
        }
        out.push((k.to_string(), v.trim().to_string()));
    }
    Ok(out)
}

/// A new registry entry from the add form. The entry is the registry's own type and is checked
/// with the edge's own rules (`check_entry`), so the dashboard accepts exactly what the edge does.
pub fn entry_from_form(f: &AddForm) -> Result<NewServer, String> {
    let target = f.target.trim();
    if target.is_empty() {
        return Err("Give the URL, image or command.".into());
    }
    let mut entry = ServerEntry::default();
    match f.source.as_str() {
        "url" => entry.url = Some(target.to_string()),
        "image" => entry.image = Some(target.to_string()),
        "command" => {
            entry.command = Some(target.to_string());
            entry.args = f
                .args
                .lines()
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect();
        }
        _ => return Err("Choose URL, Docker image or command.".into()),
    }
    if f.source != "command" && !f.args.trim().is_empty() {
        return Err("Arguments apply to a command only.".into());
    }
    if !f.description.trim().is_empty() {
        entry.description = Some(f.description.trim().to_string());
    }
    for (i, line) in f
        .env_schema
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let mut parts = line.split_whitespace();
        let name = parts.next().unwrap_or_default();
        if !valid_env_name(name) {
            return Err(format!(
                "Variables, line {}: {name:?} is not a variable name (letters, digits, _).",
                i + 1
            ));
        }
        let rest: Vec<&str> = parts.collect();
        let (required, desc) = match rest.first().copied() {
            Some("required") => (true, &rest[1..]),
            Some("optional") => (false, &rest[1..]),
            _ => (true, &rest[..]),
        };
        entry.env_schema.insert(
            name.to_string(),
            EnvVarSpec {
                required,
                description: (!desc.is_empty()).then(|| desc.join(" ")),
            },
        );
    }
    let secrets: BTreeMap<String, String> =
        assignments(&f.secrets, "Secrets")?.into_iter().collect();
    let env = assignments(&f.env, "Plain settings")?;
    if f.source == "url" && !(secrets.is_empty() && env.is_empty()) {
        // A URL server gets no environment; its credentials are headers (edit registry.json).
        return Err("Secrets and settings apply to image and command servers; a URL server takes its credentials as headers in registry.json.".into());
    }
    for (k, v) in &secrets {
        if v.is_empty() {
            return Err(format!("Secrets: {k} has no value."));
        }
        if entry.env.contains_key(k) {
            return Err(format!("{k} is both a secret and a plain setting."));
        }
        // Declared, so the container gets it from the secrets file (and only it).
        entry.env_schema.entry(k.clone()).or_insert(EnvVarSpec {
            required: true,
            description: None,
        });
    }
    for (k, v) in env {
        if secrets.contains_key(&k) {
            return Err(format!("{k} is both a secret and a plain setting."));
        }
        entry.env.insert(k, v);
    }
    registry::check_entry(f.name.trim(), &entry)?;
    Ok(NewServer { entry, secrets })
}

pub async fn add(
    State(state): State<SharedState>,
    viewer: Viewer,
    Form(f): Form<AddForm>,
) -> Response {
    if let Some(r) = csrf_refusal(&state, &viewer, &f.csrf) {
        return r;
    }
    let name = f.name.trim().to_string();
    if !valid_server_name(&name) {
        state.flashes.push(
            &viewer,
            FlashKind::Error,
            format!(
                "{name:?} is not a server name: {}.",
                aibox_wire::names::MCP_SERVER_NAME_RULE
            ),
        );
        return Redirect::to("/tools#add-title").into_response();
    }
    let new = match entry_from_form(&f) {
        Ok(n) => n,
        Err(e) => {
            state
                .flashes
                .push(&viewer, FlashKind::Error, format!("Not added: {e}"));
            return Redirect::to("/tools#add-title").into_response();
        }
    };
    // Secrets first: the entry that names them then starts with them instead of being
    // `missing_secrets` for a moment.
    if !new.secrets.is_empty() && !save_secrets(&state, &viewer, &name, new.secrets).await {
        return Redirect::to("/tools#add-title").into_response();
    }
    let set = state
        .edge
        .mcp_secrets(&Actor::new(&viewer.user))
        .await
        .map(|s| s.names)
        .unwrap_or_default();
    let missing: Vec<String> = new
        .entry
        .env_schema
        .iter()
        .filter(|(k, spec)| spec.required && !set.contains(k))
        .map(|(k, _)| k.clone())
        .collect();
    let entry = serde_json::to_value(&new.entry).unwrap_or_default();
    let server = name.clone();
    edit_registry(&state, &viewer, "mcp_add", &name, |servers| {
        if servers.keys().any(|k| k.eq_ignore_ascii_case(&server)) {
            return Err(format!(
                "Not added: a server named {server} exists already."
            ));
        }
        servers.insert(server.clone(), entry);
        Ok(if missing.is_empty() {
            format!("Added {server}.")
        } else {
            format!(
                "Added {server}. It needs {} from the secrets file (Set secrets on its card) before it can start.",
                missing.join(", ")
            )
        })
    })
    .await;
    Redirect::to(&format!("/tools#tool-{name}")).into_response()
}

/// Writes secrets through the edge (which audits the names); false, with a flash, if it failed.
async fn save_secrets(
    state: &SharedState,
    viewer: &Viewer,
    server: &str,
    set: BTreeMap<String, String>,
) -> bool {
    let names: Vec<String> = set.keys().cloned().collect();
    let actor = Actor::new(&viewer.user);
    match state
        .edge
        .put_mcp_secrets(&actor, &McpSecretsUpdate { set })
        .await
    {
        Ok(_) => {
            state.flashes.push(
                viewer,
                FlashKind::Ok,
                format!(
                    "Saved {} of {server} in the secrets file.",
                    names.join(", ")
                ),
            );
            true
        }
        Err(e) => {
            state.flashes.push(
                viewer,
                FlashKind::Error,
                format!("The secrets of {server} were not saved: {e}"),
            );
            false
        }
    }
}

/// `POST /tools/{name}/secrets`: the card's password fields, one per `env_schema` variable.
pub async fn set_secrets(
    State(state): State<SharedState>,
    viewer: Viewer,
    Path(name): Path<String>,
    Form(mut f): Form<HashMap<String, String>>,
) -> Response {
    let csrf = f.remove("csrf").unwrap_or_default();
    if let Some(r) = csrf_refusal(&state, &viewer, &csrf) {
        return r;
    }
    let back = Redirect::to(&format!("/tools#tool-{name}")).into_response();
    let declared: Vec<String> = match state.edge.mcp_registry(&Actor::new(&viewer.user)).await {
        Ok(r) => r
            .registry
            .pointer(&format!(
                "/servers/{}/env_schema",
                name.replace('~', "~0").replace('/', "~1")
            ))
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
        Err(e) => {
            state.flashes.push(
                &viewer,
                FlashKind::Error,
                format!("Could not read the tool registry: {e}"),
            );
            return back;
        }
    };
    // Only variables the entry declares; an empty field keeps what is set.
    if let Some(k) = f.keys().find(|k| !declared.contains(k)) {
        state.flashes.push(
            &viewer,
            FlashKind::Error,
            format!("{k} is not a variable {name} declares."),
        );
        return back;
    }
    let set: BTreeMap<String, String> = f.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    if set.is_empty() {
        state.flashes.push(
            &viewer,
            FlashKind::Error,
            "No secret entered; nothing changed.",
        );
        return back;
    }
    save_secrets(&state, &viewer, &name, set).await;
    back
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(source: &str, target: &str, secrets: &str, schema: &str, env: &str) -> AddForm {
        AddForm {
            name: "x".into(),
            source: source.into(),
            target: target.into(),
            secrets: secrets.into(),
            env_schema: schema.into(),
            env: env.into(),
            ..Default::default()
        }
    }

    #[test]
    fn add_form_makes_each_kind_and_keeps_secrets_out_of_the_entry() {
        let n = entry_from_form(&form(
            "image",
            "mcp/github:1",
            "GH_TOKEN=ghp_secret",
            "GH_HOST optional The host",
            "LOG=debug",
        ))
        .unwrap();
        assert_eq!(n.entry.image.as_deref(), Some("mcp/github:1"));
        assert!(n.entry.env_schema["GH_TOKEN"].required);
        assert!(!n.entry.env_schema["GH_HOST"].required);
        assert_eq!(n.entry.env["LOG"], "debug");
        assert_eq!(n.secrets["GH_TOKEN"], "ghp_secret");
        let json = serde_json::to_string(&n.entry).unwrap();
        assert!(!json.contains("ghp_secret"), "{json}");

        let mut f = form("command", "uvx", "", "", "");
        f.args = "mcp-server-time\n--local-timezone\nUTC\n".into();
        let n = entry_from_form(&f).unwrap();
        assert_eq!(n.entry.command.as_deref(), Some("uvx"));
        assert_eq!(n.entry.args, ["mcp-server-time", "--local-timezone", "UTC"]);

        let n = entry_from_form(&form("url", "http://time:8000/mcp", "", "", "")).unwrap();
        assert_eq!(
            serde_json::to_value(&n.entry).unwrap(),
            json!({"url": "http://time:8000/mcp"})
        );
    }

    #[test]
    fn add_form_refuses_what_the_edge_refuses() {
        for (f, needle) in [
            (form("url", "ftp://x", "", "", ""), "servers.x.url"),
            (form("image", "bad image", "", "", ""), "servers.x.image"),
            (
                form("image", "i", "", "lower-case!", ""),
                "not a variable name",
            ),
            (form("image", "i", "A", "", ""), "NAME=value"),
            (form("image", "i", "A=", "", ""), "no value"),
            (form("image", "i", "A=1", "", "A=2"), "both a secret"),
            (form("url", "http://h:1/mcp", "A=1", "", ""), "URL server"),
            (form("other", "x", "", "", ""), "Choose"),
        ] {
            let e = entry_from_form(&f).err().unwrap_or_default();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let mut f = form("url", "http://h:1/mcp", "", "", "");
        f.name = "a__b".into();
        assert!(entry_from_form(&f).err().unwrap().contains("server name"));
    }

    #[test]
    fn policy_form() {
        let f = PolicyForm {
            csrf: String::new(),
            allow_clients: "n8n, webui".into(),
            deny_clients: "".into(),
            rate_limit_rpm: "60".into(),
            timeout_sec: "".into(),
        };
        let p = policy_from_form(&f).unwrap();
        assert_eq!(p[0], ("allow_clients", Some(json!(["n8n", "webui"]))));
        assert_eq!(p[1], ("deny_clients", None));
        assert_eq!(p[2], ("rate_limit_rpm", Some(json!(60))));
        let bad = PolicyForm {
            rate_limit_rpm: "0".into(),
            ..f
        };
        assert!(policy_from_form(&bad).is_err());
    }
}
