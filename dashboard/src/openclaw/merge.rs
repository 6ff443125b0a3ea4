//! The merge of aibox's settings into a user's `openclaw.json` (OpenClaw's schema, JSON5).
//!
//! What the sync owns, and sets on every run (everything else is the user's and is only added
//! when absent, never changed or removed):
//!
//! | path | value |
//! | --- | --- |
//! | `models.providers.gateway.baseUrl` | the edge, `http://model-gateway:11435/v1` |
//! | `models.providers.gateway.api` | `"openai-completions"` |
//! | `models.providers.gateway.apiKey` | `"${OPENCLAW_EDGE_KEY}"` (OpenClaw substitutes it) |
//! | `models.providers.gateway.headers.X-Service-Name` | `"openclaw"` |
//! | `models.providers.gateway.models[]` | one `{id, name}` per model the edge lists, added when missing |
//! | `mcp.servers.aibox.{url, transport}` | the edge's `/mcp`, `"streamable-http"` |
//! | `mcp.servers.aibox.headers.Authorization` | `"Bearer ${OPENCLAW_EDGE_KEY}"` |
//! | `browser.profiles.aibox.cdpUrl` | `BROWSER_CDP_URL` (`http://browser:9222`) |
//!
//! Added only when absent: `browser.enabled`, `browser.defaultProfile`, `browser.attachOnly`,
//! `agents.defaults.model.primary`, `gateway.mode`, `gateway.controlUi.allowedOrigins`.
//! Secrets are written as `${VAR}` references, never as values.
use super::json5::Value;

pub const PROVIDER: &str = "gateway";
pub const MCP_SERVER: &str = "aibox";
pub const BROWSER_PROFILE: &str = "aibox";
pub const KEY_REF: &str = "${OPENCLAW_EDGE_KEY}";

/// What the sync wants in the file.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The edge's OpenAI base URL, `…/v1`.
    pub models_url: String,
    /// The edge's MCP endpoint.
    pub mcp_url: String,
    pub service_name: String,
    /// The edge's model ids; `None` when the edge could not be asked (the list is left alone).
    pub models: Option<Vec<String>>,
    pub cdp_url: String,
    /// Where the UI is published (`http://127.0.0.1:6666`), for the Control UI's allowed origins.
    pub ui_origins: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{path} is {found}, expected {expected}; fix it by hand (the file was not changed)")]
pub struct ShapeError {
    pub path: String,
    pub found: &'static str,
    pub expected: &'static str,
}

/// Apply `plan` to `doc`; the list of what changed (empty: the file is already in sync).
pub fn apply(doc: &mut Value, plan: &Plan) -> Result<Vec<String>, ShapeError> {
    let mut m = Merge {
        changes: Vec::new(),
    };
    if !matches!(doc, Value::Object(_)) {
        return Err(ShapeError {
            path: "(top level)".into(),
            found: doc.kind(),
            expected: "an object",
        });
    }

    let provider = m.object_at(doc, &["models", "providers", PROVIDER])?;
    m.set(
        provider,
        "models.providers.gateway",
        "baseUrl",
        Value::str(&plan.models_url),
    );
    m.set(
        provider,
        "models.providers.gateway",
        "api",
        Value::str("openai-completions"),
    );
    m.set(
        provider,
        "models.providers.gateway",
        "apiKey",
        Value::str(KEY_REF),
    );
    let headers = m.object_at(provider, &["headers"])?;
    m.set(
        headers,
        "models.providers.gateway.headers",
        "X-Service-Name",
        Value::str(&plan.service_name),
    );
    let list = m.array_at(provider, "models.providers.gateway", "models")?;
    let mut first_model = first_id(list);
    if let Some(ids) = &plan.models {
        for id in ids {
            let present = items(list)
                .iter()
                .any(|item| item.get("id").and_then(Value::as_str) == Some(id.as_str()));
            if !present {
                push(
                    list,
                    Value::Object(vec![
                        ("id".into(), Value::str(id)),
                        ("name".into(), Value::str(id)),
                    ]),
                );
                m.changes
                    .push(format!("models.providers.gateway.models: added {id}"));
            }
        }
        if first_model.is_none() {
            first_model = ids.first().cloned();
        }
    }

    let server = m.object_at(doc, &["mcp", "servers", MCP_SERVER])?;
    m.set(
        server,
        "mcp.servers.aibox",
        "url",
        Value::str(&plan.mcp_url),
    );
    m.set(
        server,
        "mcp.servers.aibox",
        "transport",
        Value::str("streamable-http"),
    );
    let headers = m.object_at(server, &["headers"])?;
    m.set(
        headers,
        "mcp.servers.aibox.headers",
        "Authorization",
        Value::str(&format!("Bearer {KEY_REF}")),
    );
    m.set(
        headers,
        "mcp.servers.aibox.headers",
        "X-Service-Name",
        Value::str(&plan.service_name),
    );

    let browser = m.object_at(doc, &["browser"])?;
    m.set_if_absent(browser, "browser", "enabled", Value::Bool(true));
    m.set_if_absent(
        browser,
        "browser",
        "defaultProfile",
        Value::str(BROWSER_PROFILE),
    );
    // The browser is a service of its own: OpenClaw attaches to it and never starts a local one.
    m.set_if_absent(browser, "browser", "attachOnly", Value::Bool(true));
    let profile = m.object_at(browser, &["profiles", BROWSER_PROFILE])?;
    m.set(
        profile,
        "browser.profiles.aibox",
        "cdpUrl",
        Value::str(&plan.cdp_url),
    );
    m.set_if_absent(
        profile,
        "browser.profiles.aibox",
        "color",
        Value::str("#2F6FEB"),
    );

    if let Some(id) = first_model {
        let defaults = m.object_at(doc, &["agents", "defaults"])?;
        if defaults.get("model").is_none() {
            let model = m.object_at(defaults, &["model"])?;
            m.set_if_absent(
                model,
                "agents.defaults.model",
                "primary",
                Value::str(&format!("{PROVIDER}/{id}")),
            );
        }
    }

    let gateway = m.object_at(doc, &["gateway"])?;
    m.set_if_absent(gateway, "gateway", "mode", Value::str("local"));
    if !plan.ui_origins.is_empty() {
        let ui = m.object_at(gateway, &["controlUi"])?;
        let origins = Value::Array(plan.ui_origins.iter().map(|o| Value::str(o)).collect());
        m.set_if_absent(ui, "gateway.controlUi", "allowedOrigins", origins);
    }
    Ok(m.changes)
}

struct Merge {
    changes: Vec<String>,
}

impl Merge {
    /// The object at `path` under `v`, created (and recorded) where missing.
    fn object_at<'a>(
        &mut self,
        v: &'a mut Value,
        path: &[&str],
    ) -> Result<&'a mut Value, ShapeError> {
        let mut cur = v;
        let mut walked: Vec<&str> = Vec::new();
        for &key in path {
            walked.push(key);
            let Value::Object(members) = cur else {
                unreachable!("checked by the caller or the previous step")
            };
            let idx = match members.iter().position(|(k, _)| k == key) {
                Some(i) => i,
                None => {
                    members.push((key.to_owned(), Value::Object(Vec::new())));
                    self.changes.push(format!("{}: added", walked.join(".")));
                    members.len() - 1
                }
            };
            cur = &mut members[idx].1;
            if !matches!(cur, Value::Object(_)) {
                return Err(ShapeError {
                    path: walked.join("."),
                    found: cur.kind(),
                    expected: "an object",
                });
            }
        }
        Ok(cur)
    }

    fn array_at<'a>(
        &mut self,
        obj: &'a mut Value,
        at: &str,
        key: &str,
    ) -> Result<&'a mut Value, ShapeError> {
        let found = obj.kind();
        if obj.get(key).is_none() {
            if let Value::Object(members) = obj {
                members.push((key.to_owned(), Value::Array(Vec::new())));
            }
        }
        let Some(v) = obj.get_mut(key) else {
            return Err(ShapeError {
                path: at.to_owned(),
                found,
                expected: "an object",
            });
        };
        if !matches!(v, Value::Array(_)) {
            return Err(ShapeError {
                path: format!("{at}.{key}"),
                found: v.kind(),
                expected: "an array",
            });
        }
        Ok(v)
    }

    fn set(&mut self, obj: &mut Value, at: &str, key: &str, value: Value) {
        let Value::Object(members) = obj else { return };
        match members.iter_mut().find(|(k, _)| k == key) {
            Some((_, old)) if *old == value => {}
            Some((_, old)) => {
                *old = value;
                self.changes.push(format!("{at}.{key}: updated"));
            }
            None => {
                members.push((key.to_owned(), value));
                self.changes.push(format!("{at}.{key}: added"));
            }
        }
    }

    fn set_if_absent(&mut self, obj: &mut Value, at: &str, key: &str, value: Value) {
        if obj.get(key).is_none() {
            self.set(obj, at, key, value);
        }
    }
}

fn items(list: &Value) -> &[Value] {
    match list {
        Value::Array(items) => items,
        _ => &[],
    }
}

fn push(list: &mut Value, item: Value) {
    if let Value::Array(items) = list {
        items.push(item);
    }
}

fn first_id(list: &Value) -> Option<String> {
    items(list)
        .iter()
        .find_map(|i| i.get("id").and_then(Value::as_str).map(str::to_owned))
}
