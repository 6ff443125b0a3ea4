//! Tools: every MCP server the edge knows, with a green/yellow/red health badge and its last
//! error; enable/disable; edit allow/deny lists and limits; add a server from an image or a URL.
//! Every change is a whole-registry `PUT` to the edge, which validates it before applying it.
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{layout, unavailable, FlashKind, Nav, PageContext};
use crate::auth::{csrf_refusal, Viewer};
use crate::backend::{Actor, McpServerHealth, ToolContainer};
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

fn valid_env_name(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

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
    csrf: &str,
) -> Markup {
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
                    dd { code { (c.container) } " " (c.state) @if !c.status.is_empty() { " · " (c.status) } }
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
            form.stack.panel method="post" action="/tools/add" {
                input type="hidden" name="csrf" value=(csrf);
                label for="add-name" { "Name" span.muted { " (letters, digits, - and _)" } }
                input #add-name type="text" name="name" required pattern="[A-Za-z0-9][A-Za-z0-9_-]{0,62}" autocomplete="off";
                fieldset {
                    legend { "Source" }
                    label.check { input type="radio" name="source" value="url" checked; " URL (streamable HTTP)" }
                    label.check { input type="radio" name="source" value="image"; " Docker image" }
                }
                label for="add-target" { "URL or image" }
                input #add-target type="text" name="target" required placeholder="http://mcp-git:8000/mcp" autocomplete="off" spellcheck="false";
                label for="add-desc" { "Description" }
                input #add-desc type="text" name="description" autocomplete="off";
                label for="add-schema" { "Variables it needs" span.muted { " (one per line: NAME required|optional description)" } }
                textarea #add-schema name="env_schema" rows="3" spellcheck="false" placeholder="GITHUB_TOKEN required Token for the API" {}
                label for="add-env" { "Values" span.muted { " (one per line: NAME=value; use ${SECRET} to read the secrets file)" } }
                textarea #add-env name="env" rows="3" spellcheck="false" placeholder="GITHUB_TOKEN=${GITHUB_TOKEN}" {}
                button.primary type="submit" { "Add server" }
            }
        }
    }
}

pub async fn page(State(state): State<SharedState>, viewer: Viewer) -> Response {
    let actor = Actor::new(&viewer.user);
    let (health, registry, containers) = tokio::join!(
        state.edge.mcp_health(&actor),
        state.edge.mcp_registry(&actor),
        state.controller.tool_containers(&actor)
    );
    // The box's tool containers (image/command servers); none when the controller runs none.
    let containers = containers.map(|c| c.containers).unwrap_or_default();
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
                                (server_card(n, h.servers.iter().find(|s| &s.name == n), containers.iter().find(|c| &c.server == n), entries.get(n).and_then(Value::as_object), &viewer.csrf))
                            }
                        }
                    }
                },
            }
        }
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

#[derive(Debug, Default, Deserialize)]
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
    pub description: String,
    #[serde(default)]
    pub env_schema: String,
    #[serde(default)]
    pub env: String,
}

/// A new registry entry from the add form, with its `env_schema` checked: names are valid, values
/// only for declared variables, and required ones without a value are reported (they must then
/// come from the secrets file, or the edge reports the server `missing_secrets`).
pub fn entry_from_form(f: &AddForm) -> Result<(Value, Vec<String>), String> {
    let target = f.target.trim();
    let mut entry = Map::new();
    match f.source.as_str() {
        "url" => {
            if !(target.starts_with("http://") || target.starts_with("https://"))
                || target.len() < 10
                || target.contains(char::is_whitespace)
            {
                return Err("The URL must start with http:// or https://.".into());
            }
            entry.insert("url".into(), json!(target));
        }
        "image" => {
            let ok = !target.is_empty()
                && target.len() <= 255
                && target.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '@')
                });
            if !ok {
                return Err("The image must be a reference like ghcr.io/org/server:1.2.".into());
            }
            entry.insert("image".into(), json!(target));
        }
        _ => return Err("Choose URL or Docker image.".into()),
    }
    if !f.description.trim().is_empty() {
        entry.insert("description".into(), json!(f.description.trim()));
    }
    let mut schema = Map::new();
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
                "Variables, line {}: {name:?} is not a variable name (A-Z, 0-9, _).",
                i + 1
            ));
        }
        let rest: Vec<&str> = parts.collect();
        let (required, desc) = match rest.first().copied() {
            Some("required") => (true, &rest[1..]),
            Some("optional") => (false, &rest[1..]),
            _ => (true, &rest[..]),
        };
        let mut spec = Map::new();
        spec.insert("required".into(), json!(required));
        if !desc.is_empty() {
            spec.insert("description".into(), json!(desc.join(" ")));
        }
        schema.insert(name.to_string(), Value::Object(spec));
    }
    let mut env = Map::new();
    for (i, line) in f
        .env
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("Values, line {}: write NAME=value.", i + 1));
        };
        let k = k.trim();
        if !valid_env_name(k) {
            return Err(format!(
                "Values, line {}: {k:?} is not a variable name (A-Z, 0-9, _).",
                i + 1
            ));
        }
        if !schema.is_empty() && !schema.contains_key(k) {
            return Err(format!(
                "Values, line {}: {k} is not among the variables it needs; declare it first.",
                i + 1
            ));
        }
        env.insert(k.to_string(), json!(v.trim()));
    }
    let warnings: Vec<String> = schema
        .iter()
        .filter(|(k, s)| s.get("required") == Some(&Value::Bool(true)) && !env.contains_key(*k))
        .map(|(k, _)| k.clone())
        .collect();
    if !schema.is_empty() {
        entry.insert("env_schema".into(), Value::Object(schema));
    }
    if !env.is_empty() {
        if f.source == "url" {
            // URL servers take their settings as headers; env is for servers the edge runs.
            return Err("Values apply to image servers only; a URL server takes none here.".into());
        }
        entry.insert("env".into(), Value::Object(env));
    }
    Ok((Value::Object(entry), warnings))
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
    let entry = entry_from_form(&f);
    let server = name.clone();
    edit_registry(&state, &viewer, "mcp_add", &name, |servers| {
        let (entry, missing) = entry.map_err(|e| format!("Not added: {e}"))?;
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
                "Added {server}. It needs {} from the secrets file before it can start.",
                missing.join(", ")
            )
        })
    })
    .await;
    Redirect::to(&format!("/tools#tool-{name}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(source: &str, target: &str, schema: &str, env: &str) -> AddForm {
        AddForm {
            name: "x".into(),
            source: source.into(),
            target: target.into(),
            env_schema: schema.into(),
            env: env.into(),
            ..Default::default()
        }
    }

    #[test]
    fn add_form_checks_env_schema() {
        let (e, missing) = entry_from_form(&form(
            "image",
            "mcp/git:1",
            "TOKEN required The token\nDEBUG optional",
            "DEBUG=1",
        ))
        .unwrap();
        assert_eq!(e["image"], "mcp/git:1");
        assert_eq!(e["env_schema"]["TOKEN"]["required"], true);
        assert_eq!(e["env_schema"]["TOKEN"]["description"], "The token");
        assert_eq!(e["env"]["DEBUG"], "1");
        assert_eq!(missing, vec!["TOKEN"]);
        assert!(entry_from_form(&form("image", "mcp/git:1", "lower", ""))
            .unwrap_err()
            .contains("not a variable name"));
        assert!(entry_from_form(&form("image", "mcp/git:1", "A", "B=1"))
            .unwrap_err()
            .contains("declare it first"));
        assert!(entry_from_form(&form("url", "ftp://x", "", "")).is_err());
        assert!(entry_from_form(&form("image", "bad image", "", "")).is_err());
        assert_eq!(
            entry_from_form(&form("url", "http://time:8000/mcp", "", ""))
                .unwrap()
                .0,
            json!({"url": "http://time:8000/mcp"})
        );
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
