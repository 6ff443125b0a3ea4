//! Keys: every client of the edge with its policy and its use over the last hour and day;
//! create a key (shown once, on the answer to the form, never stored here), revoke one (after a
//! confirmation page). The edge writes the keys file and audits each change; the dashboard only
//! calls its admin API (`/api/edge/keys`).
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{error_page, layout, unavailable, Flash, FlashKind, Nav, PageContext};
use crate::auth::{csrf_refusal, Viewer};
use crate::backend::{Actor, BackendError};
use crate::SharedState;

/// Client names as the edge accepts them (letters, digits, `-`, `_`, `.`; 1 to 64).
pub fn valid_client_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn list(v: &Value) -> String {
    match v.as_array() {
        None => "all".into(),
        Some(a) if a.is_empty() => "none".into(),
        Some(a) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn limit(v: &Value) -> String {
    v.as_u64()
        .map(|n| n.to_string())
        .unwrap_or_else(|| "—".into())
}

fn table(keys: &Result<Value, BackendError>) -> Markup {
    html! {
        section aria-labelledby="keys-title" {
            h2 #keys-title { "Clients" }
            @match keys {
                Err(e) => (unavailable("Edge keys", e)),
                Ok(v) => {
                    @if let Some(file) = v.get("keys_file").and_then(Value::as_str) {
                        p.muted { "Keys file: " code { (file) } }
                    } @else {
                        p.notice.warn { "The edge has no keys file (EDGE_CLIENTS_FILE); keys can only be listed." }
                    }
                    div.table-wrap tabindex="0" role="region" aria-label="Clients and their keys" { table.responsive #keys-table {
                        thead { tr {
                            th scope="col" { "Client" } th scope="col" { "Models" } th scope="col" { "MCP servers" }
                            th scope="col" { "Req/min" } th scope="col" { "Tokens/min" } th scope="col" { "At once" }
                            th scope="col" { "Last hour" } th scope="col" { "Last day" } th scope="col" { "" }
                        } }
                        tbody {
                            @for c in v.get("clients").and_then(Value::as_array).into_iter().flatten() {
                                @let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
                                @let source = c.get("source").and_then(Value::as_str).unwrap_or_default();
                                tr data-client=(name) {
                                    td data-label="Client" { strong { (name) } @if source == "config" { span.muted { " (edge config)" } } }
                                    td data-label="Models" { (list(&c["models"])) }
                                    td data-label="MCP" { (list(&c["mcp_servers"])) }
                                    td data-label="Req/min" { (limit(&c["rpm"])) }
                                    td data-label="Tokens/min" { (limit(&c["tpm"])) }
                                    td data-label="At once" { (limit(&c["concurrency"])) }
                                    td.usage-hour data-label="Last hour" { (c["requests_hour"].as_u64().unwrap_or(0)) " req, " (c["tokens_hour"].as_u64().unwrap_or(0)) " tok" }
                                    td.usage-day data-label="Last day" { (c["requests_day"].as_u64().unwrap_or(0)) " req, " (c["tokens_day"].as_u64().unwrap_or(0)) " tok" }
                                    td data-label="" {
                                        @if source == "file" {
                                            a.button.danger href={ "/keys/" (name) "/revoke" } { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    } }
                }
            }
        }
    }
}

fn create_form(csrf: &str) -> Markup {
    html! {
        section aria-labelledby="create-title" {
            h2 #create-title { "New key" }
            form.stack.panel method="post" action="/keys" #create-key {
                input type="hidden" name="csrf" value=(csrf);
                label { "Client name " input type="text" name="name" required pattern="[A-Za-z0-9._-]{1,64}"; }
                label { "Models (globs over provider/model, comma-separated; empty: all) " input type="text" name="models" placeholder="ollama/*"; }
                label { "MCP servers (globs; empty: all) " input type="text" name="mcp_servers"; }
                label { "Requests per minute " input type="number" min="1" name="rpm"; }
                label { "Tokens per minute " input type="number" min="1" name="tpm"; }
                label { "Requests at once " input type="number" min="1" name="concurrency"; }
                div.actions { button.primary type="submit" { "Create key" } }
            }
        }
    }
}

fn render(
    viewer: &Viewer,
    keys: Result<Value, BackendError>,
    extra: Markup,
    flashes: Vec<Flash>,
) -> Response {
    let body = html! {
        h1 { "Keys" }
        p { "Each client sends its key as " code { "Authorization: Bearer <key>" } "; its policy decides which models and MCP servers it may use and how much. Callers without a valid key are " code { "anonymous" } "." }
        (extra)
        (table(&keys))
        (create_form(&viewer.csrf))
    };
    layout(
        PageContext {
            title: "Keys",
            nav: Nav::Keys,
            viewer: Some(viewer),
            flashes,
            noscript_refresh: None,
        },
        body,
    )
    .into_response()
}

pub async fn page(State(state): State<SharedState>, viewer: Viewer) -> Response {
    let keys = state.edge.keys(&Actor::new(&viewer.user)).await;
    let flashes = state.flashes.take(&viewer);
    render(&viewer, keys, html! {}, flashes)
}

#[derive(Debug, Default, Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    models: String,
    #[serde(default)]
    mcp_servers: String,
    #[serde(default)]
    rpm: String,
    #[serde(default)]
    tpm: String,
    #[serde(default)]
    concurrency: String,
}

/// The edge's JSON body for a new key, or what is wrong with the form.
pub fn new_key_body(f: &CreateForm) -> Result<Value, String> {
    let name = f.name.trim();
    if !valid_client_name(name) {
        return Err("The client name must be 1 to 64 letters, digits, '-', '_' or '.'.".into());
    }
    let globs = |s: &str| -> Option<Vec<String>> {
        let v: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect();
        (!v.is_empty()).then_some(v)
    };
    let number = |label: &str, s: &str| -> Result<Option<u32>, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        s.parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .map(Some)
            .ok_or_else(|| format!("{label} must be a whole number of at least 1."))
    };
    Ok(json!({
        "name": name,
        "models": globs(&f.models),
        "mcp_servers": globs(&f.mcp_servers),
        "rpm": number("Requests per minute", &f.rpm)?,
        "tpm": number("Tokens per minute", &f.tpm)?,
        "concurrency": number("Requests at once", &f.concurrency)?,
    }))
}

pub async fn create(
    State(state): State<SharedState>,
    viewer: Viewer,
    Form(f): Form<CreateForm>,
) -> Response {
    if let Some(r) = csrf_refusal(&state, &viewer, &f.csrf) {
        return r;
    }
    let actor = Actor::new(&viewer.user);
    let body = match new_key_body(&f) {
        Ok(b) => b,
        Err(msg) => {
            state.flashes.push(&viewer, FlashKind::Error, msg);
            return Redirect::to("/keys").into_response();
        }
    };
    match state.edge.create_key(&actor, &body).await {
        Ok(v) => {
            let name = v["name"].as_str().unwrap_or_default().to_owned();
            let key = v["key"].as_str().unwrap_or_default().to_owned();
            tracing::info!(user = %viewer.user, client = %name, "key created");
            // Shown on this answer only: it is not kept anywhere the dashboard can show it again.
            let shown = html! {
                div.notice.ok role="status" #new-key {
                    p { "Key for " strong { (name) } " — copy it now; it is not shown again:" }
                    p { code #new-key-value { (key) } }
                }
            };
            let keys = state.edge.keys(&actor).await;
            let mut resp = render(&viewer, keys, shown, vec![]);
            resp.headers_mut().insert(
                axum::http::header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
            resp
        }
        Err(e) => {
            state
                .flashes
                .push(&viewer, FlashKind::Error, format!("Key not created: {e}"));
            Redirect::to("/keys").into_response()
        }
    }
}

pub async fn confirm_revoke(
    State(_state): State<SharedState>,
    viewer: Viewer,
    Path(name): Path<String>,
) -> Response {
    if !valid_client_name(&name) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Not a client name",
            "Pick a client from the keys page.",
        );
    }
    let title = format!("Revoke {name}?");
    let body = html! {
        h1 { "Revoke the key of " code { (name) } "?" }
        p { "Requests with this key are refused at once. The client needs a new key to come back." }
        form method="post" action={ "/keys/" (name) "/revoke" } {
            input type="hidden" name="csrf" value=(viewer.csrf);
            input type="hidden" name="confirm" value="yes";
            div.actions {
                button.primary.danger type="submit" { "Yes, revoke " (name) }
                a.button href="/keys" { "Cancel" }
            }
        }
    };
    layout(
        PageContext {
            title: &title,
            nav: Nav::Keys,
            viewer: Some(&viewer),
            flashes: vec![],
            noscript_refresh: None,
        },
        body,
    )
    .into_response()
}

#[derive(Debug, Deserialize)]
pub struct RevokeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
}

pub async fn revoke(
    State(state): State<SharedState>,
    viewer: Viewer,
    Path(name): Path<String>,
    Form(f): Form<RevokeForm>,
) -> Response {
    if let Some(r) = csrf_refusal(&state, &viewer, &f.csrf) {
        return r;
    }
    if !valid_client_name(&name) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Not a client name",
            "Pick a client from the keys page.",
        );
    }
    if f.confirm != "yes" {
        return Redirect::to(&format!("/keys/{name}/revoke")).into_response();
    }
    match state
        .edge
        .revoke_key(&Actor::new(&viewer.user), &name)
        .await
    {
        Ok(_) => {
            tracing::info!(user = %viewer.user, client = %name, "key revoked");
            state.flashes.push(
                &viewer,
                FlashKind::Ok,
                format!("Revoked the key of {name}."),
            );
        }
        Err(e) => state
            .flashes
            .push(&viewer, FlashKind::Error, format!("Key not revoked: {e}")),
    }
    Redirect::to("/keys").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_becomes_the_edge_body() {
        let f = CreateForm {
            name: " n8n ".into(),
            models: "ollama/*, vllm/Qwen/*".into(),
            rpm: "60".into(),
            ..Default::default()
        };
        let v = new_key_body(&f).unwrap();
        assert_eq!(v["name"], "n8n");
        assert_eq!(v["models"], json!(["ollama/*", "vllm/Qwen/*"]));
        assert_eq!(v["rpm"], 60);
        assert!(v["tpm"].is_null() && v["mcp_servers"].is_null());
        let bad = CreateForm {
            name: "a b".into(),
            ..Default::default()
        };
        assert!(new_key_body(&bad).is_err());
        let zero = CreateForm {
            name: "x".into(),
            tpm: "0".into(),
            ..Default::default()
        };
        assert!(new_key_body(&zero).is_err());
    }
}
