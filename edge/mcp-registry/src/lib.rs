//! `registry.json` + `servers.txt` + the secrets file → the set of servers the hub runs.
//!
//! One definition for every reader: the edge's MCP hub (which serves the servers), the
//! controller (which runs `image` and, in the box, `command` servers as containers) and the
//! dashboard (which edits the file).
//!
//! Loading is all-or-nothing: any error (bad JSON, unknown field, bad value, duplicate name)
//! rejects the whole edit and the caller keeps the last good snapshot. A server whose required
//! secrets are missing is not an error: it is loaded with status `missing_secrets` and not started.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The on-disk format of `registry.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    pub servers: ServerMap,
}

/// `servers` keeps file order and refuses duplicate names (JSON parsers would silently keep
/// the last one, hiding a typo).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerMap(pub Vec<(String, ServerEntry)>);

impl<'de> Deserialize<'de> for ServerMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = ServerMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object mapping server names to server entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ServerMap, A::Error> {
                let mut out: Vec<(String, ServerEntry)> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if out.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
                        return Err(serde::de::Error::custom(format!(
                            "duplicate server name {name:?}"
                        )));
                    }
                    let entry = map.next_value::<ServerEntry>()?;
                    out.push((name, entry));
                }
                Ok(ServerMap(out))
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

impl Serialize for ServerMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// One server in `registry.json`: exactly one of `url`, `command` or `image`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// HTTP endpoint of the server (streamable HTTP, or the SSE URL of a legacy server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `"streamable_http"` or `"sse"` (legacy HTTP+SSE, 2024-11-05) for `url` servers;
    /// default `sse` when the URL path ends in `/sse`, else `streamable_http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// Extra HTTP headers for `url` servers; `${VAR}` is replaced from the environment/secrets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Program of a stdio server (a child process of the edge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment of a stdio server; `${VAR}` is replaced from the environment/secrets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// A container image, run by the controller as a tool container (stdio bridged to
    /// streamable HTTP, or the image's own HTTP server on `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `image` servers that serve streamable HTTP themselves: the port of their `/mcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Clients that may use this server; `["*"]` (the default) means every client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_clients: Option<Vec<String>>,
    /// Clients that may not use this server; checked before `allow_clients`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_clients: Vec<String>,
    /// Calls per minute per client to this server (no limit when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_rpm: Option<u32>,
    /// Per-call timeout in seconds (default from `[mcp] default_timeout_sec`, 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_sec: Option<f64>,
    /// Variables the server needs: `{"NAME": {"required": true, "description": "..."}}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_schema: BTreeMap<String, EnvVarSpec>,
    /// `false` keeps the entry but does not run it (state `disabled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// One `env_schema` value: `{"required": true, "description": "…"}`, or the seed RFC's
/// shorthand `"required"` / `"optional"`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EnvVarSpec {
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl<'de> Deserialize<'de> for EnvVarSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            #[serde(default = "yes")]
            required: bool,
            #[serde(default)]
            description: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Word(String),
            Full(Full),
        }
        match Form::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(
                "expected \"required\", \"optional\" or {\"required\": bool, \"description\": string}",
            )
        })? {
            Form::Word(w) => match w.as_str() {
                "required" => Ok(EnvVarSpec {
                    required: true,
                    description: None,
                }),
                "optional" => Ok(EnvVarSpec {
                    required: false,
                    description: None,
                }),
                other => Err(serde::de::Error::custom(format!(
                    "{other:?}: expected \"required\" or \"optional\""
                ))),
            },
            Form::Full(f) => Ok(EnvVarSpec {
                required: f.required,
                description: f.description,
            }),
        }
    }
}

fn yes() -> bool {
    true
}

/// How the hub reaches a server.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    Http {
        url: String,
        headers: BTreeMap<String, String>,
        /// Legacy HTTP+SSE (2024-11-05) instead of streamable HTTP.
        sse: bool,
    },
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: Option<String>,
    },
    /// A tool container (controller-run). `port`: the image serves streamable HTTP itself.
    Image {
        image: String,
        env: BTreeMap<String, String>,
        port: Option<u16>,
    },
}

impl Transport {
    pub fn kind(&self) -> &'static str {
        match self {
            Transport::Http { .. } => "http",
            Transport::Stdio { .. } => "stdio",
            Transport::Image { .. } => "image",
        }
    }
}

/// Who may call a server, how often and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerPolicy {
    pub allow_clients: Vec<String>,
    pub deny_clients: Vec<String>,
    pub rate_limit_rpm: Option<u32>,
    pub timeout: Duration,
}

impl ServerPolicy {
    /// `deny_clients` first, then `allow_clients` (`*` matches every client).
    pub fn allows(&self, client: &str) -> bool {
        let hit = |list: &[String]| list.iter().any(|c| c == "*" || c == client);
        !hit(&self.deny_clients) && hit(&self.allow_clients)
    }
}

/// The port the bridge (`mcp-bridge`) serves streamable HTTP on inside a tool container.
pub const BRIDGE_PORT: u16 = 8000;

/// The network alias of a server's tool container on the `tools` network.
pub fn container_alias(server: &str) -> String {
    format!("mcp-{}", server.to_ascii_lowercase())
}

/// Why a configured server is (not) run.
#[derive(Debug, Clone, PartialEq)]
pub enum SpecStatus {
    Enabled,
    Disabled,
    MissingSecrets(Vec<String>),
    NotServed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSpec {
    pub name: String,
    pub description: Option<String>,
    pub transport: Transport,
    pub policy: ServerPolicy,
    pub scopes: Vec<String>,
    pub status: SpecStatus,
}

/// A consistent view of the configured servers.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub servers: BTreeMap<String, ServerSpec>,
    /// The registry as loaded (for `GET /api/mcp/registry`); `None` without registry.json.
    pub file: Option<RegistryFile>,
}

/// Inputs to one load; kept separate from the file system so `PUT` can validate a body.
pub struct Sources<'a> {
    pub registry_json: Option<&'a str>,
    pub servers_txt: Option<&'a str>,
    /// The secrets file (`data/mcp/.env`) only: `${VAR}` and `env_schema` never read the
    /// reading process's own environment (it holds the edge's and controller's tokens).
    pub env: &'a HashMap<String, String>,
    pub default_timeout: Duration,
}

/// Why a registry edit was rejected. Every message names the file, and the server and field
/// when there is one (`registry.json: servers.git.timeout_sec: ...`): the operator reads it in
/// the health API, the dashboard and the controller's log.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// `registry.json` is not JSON of the registry's shape; `at` is the path of the bad value.
    #[error("registry.json: {}{message}", at.as_deref().map(|p| format!("{p}: ")).unwrap_or_default())]
    Json { at: Option<String>, message: String },
    #[error("servers.txt line {line}: duplicate server name {name:?}")]
    DuplicateInServersTxt { line: usize, name: String },
    #[error("servers.txt line {line}: a URL server takes no further words")]
    UrlWithWords { line: usize },
    #[error("{origin}: server name {name:?} is invalid: use 1-48 of [A-Za-z0-9_-], starting with a letter or digit, without \"__\" or a trailing \"_\" (\"__\" separates server and tool in tool names)")]
    InvalidName { origin: &'static str, name: String },
    #[error(
        "{origin}: servers.{name}: exactly one of \"url\", \"command\" or \"image\" is required"
    )]
    NotOneKind { origin: &'static str, name: String },
    /// One field of one server has a bad value or does not fit the server's kind.
    #[error("{origin}: servers.{name}.{field}: {problem}")]
    Field {
        origin: &'static str,
        name: String,
        field: &'static str,
        problem: String,
    },
    /// A registry file exists but cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a change to the secrets file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{0:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")]
    BadName(String),
    #[error("the value of {0} has a line break or NUL")]
    BadValue(String),
}

/// For readers that report errors as text (the controller's reconcile loop, the dashboard's
/// form checks): `?` keeps working there.
impl From<RegistryError> for String {
    fn from(e: RegistryError) -> String {
        e.to_string()
    }
}

impl From<SecretsError> for String {
    fn from(e: SecretsError) -> String {
        e.to_string()
    }
}

/// Parses `registry.json` text; errors name the server and field (`servers.git.timeout_sec`).
pub fn parse_registry(text: &str) -> Result<RegistryFile, RegistryError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let file: RegistryFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let mut path = e.path().to_string();
        let inner = e.into_inner();
        // For an unknown field the path already ends with that field; name its parent.
        if let Some(field) = inner
            .to_string()
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
        {
            if let Some(parent) = path.strip_suffix(&format!(".{field}")) {
                path = parent.to_string();
            }
        }
        RegistryError::Json {
            at: (!path.is_empty() && path != ".").then_some(path),
            message: inner.to_string(),
        }
    })?;
    Ok(file)
}

pub fn load(src: &Sources) -> Result<Snapshot, RegistryError> {
    let file = match src.registry_json {
        Some(text) => Some(parse_registry(text)?),
        None => None,
    };
    let lines = match src.servers_txt {
        Some(text) => Some(parse_servers_txt(text)?),
        None => None,
    };
    let mut entries: Vec<(String, ServerEntry, &'static str)> = Vec::new();
    if let Some(file) = &file {
        for (name, entry) in &file.servers.0 {
            entries.push((name.clone(), entry.clone(), "registry.json"));
        }
    }
    // servers.txt: a bare name enables a registry entry; a name with a URL or command defines
    // a server with defaults (the migration rule for installs without registry.json).
    let mut enabled_by_txt: Option<BTreeSet<String>> = None;
    if let Some(lines) = &lines {
        let mut enabled = BTreeSet::new();
        for line in lines {
            match &line.inline {
                None => {
                    if !entries.iter().any(|(n, _, _)| n == &line.name) {
                        // A bare catalog name (the seed RFC's servers.txt): the Docker MCP
                        // catalog's image of that name.
                        entries.push((
                            line.name.clone(),
                            ServerEntry {
                                image: Some(format!("mcp/{}", line.name.to_ascii_lowercase())),
                                ..Default::default()
                            },
                            "servers.txt",
                        ));
                    }
                }
                Some(entry) => {
                    if entries
                        .iter()
                        .any(|(n, _, _)| n.eq_ignore_ascii_case(&line.name))
                    {
                        return Err(RegistryError::DuplicateInServersTxt {
                            line: line.number,
                            name: line.name.clone(),
                        });
                    }
                    entries.push((line.name.clone(), entry.clone(), "servers.txt"));
                }
            }
            enabled.insert(line.name.clone());
        }
        if file.is_some() {
            enabled_by_txt = Some(enabled);
        }
    }
    let mut servers = BTreeMap::new();
    for (name, entry, origin) in entries {
        let mut spec = resolve(&name, &entry, src, origin)?;
        let listed = enabled_by_txt
            .as_ref()
            .is_none_or(|set| set.contains(&name));
        // Turned off by the operator wins over every other state.
        if !listed || entry.enabled == Some(false) {
            spec.status = SpecStatus::Disabled;
        }
        servers.insert(name, spec);
    }
    Ok(Snapshot { servers, file })
}

/// The rule lives in aibox-wire: the dashboard checks names with the same function.
use aibox_wire::names::mcp_server_name_ok as server_name_ok;

/// A variable name `env_schema`, `env` and the secrets file accept: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn env_name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && !b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Replaces `${VAR}` from `env`; unknown variables are collected into `missing`.
fn expand(value: &str, env: &HashMap<String, String>, missing: &mut Vec<String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let var = &after[..end];
                match env.get(var) {
                    Some(v) => out.push_str(v),
                    None => missing.push(var.to_string()),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Checks one entry exactly as loading `registry.json` would (the name rule included), without
/// secrets: the dashboard validates a new entry with this before it sends the registry.
pub fn check_entry(name: &str, entry: &ServerEntry) -> Result<(), RegistryError> {
    resolve(
        name,
        entry,
        &Sources {
            registry_json: None,
            servers_txt: None,
            env: &HashMap::new(),
            default_timeout: Duration::from_secs(30),
        },
        "registry.json",
    )
    .map(|_| ())
}

fn resolve(
    name: &str,
    e: &ServerEntry,
    src: &Sources,
    origin: &'static str,
) -> Result<ServerSpec, RegistryError> {
    let err = |field: &'static str, problem: &str| RegistryError::Field {
        origin,
        name: name.to_string(),
        field,
        problem: problem.to_string(),
    };
    if !server_name_ok(name) {
        return Err(RegistryError::InvalidName {
            origin,
            name: name.to_string(),
        });
    }
    let kinds = [e.url.is_some(), e.command.is_some(), e.image.is_some()];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(RegistryError::NotOneKind {
            origin,
            name: name.to_string(),
        });
    }
    if e.command.is_none() && (!e.args.is_empty() || e.cwd.is_some()) {
        return Err(err("args", "\"args\" and \"cwd\" need \"command\""));
    }
    if e.url.is_some() && !e.env.is_empty() {
        return Err(err("env", "\"env\" needs \"command\" or \"image\""));
    }
    if e.image.is_none() && e.port.is_some() {
        return Err(err("port", "\"port\" needs \"image\""));
    }
    if e.port == Some(0) {
        return Err(err("port", "must be 1-65535"));
    }
    if e.url.is_none() && !e.headers.is_empty() {
        return Err(err("headers", "\"headers\" need \"url\""));
    }
    if e.image.is_some() {
        match e.transport.as_deref() {
            None | Some("stdio") if e.port.is_none() => {}
            None | Some("streamable_http") | Some("http") if e.port.is_some() => {}
            _ => return Err(err(
                "transport",
                "an image is \"stdio\" (bridged; the default) or \"streamable_http\" with \"port\"",
            )),
        }
    } else if e.url.is_none() && e.transport.is_some() {
        return Err(err("transport", "\"transport\" needs \"url\" or \"image\""));
    }
    if let Some(t) = e.timeout_sec {
        if !(t.is_finite() && t > 0.0 && t <= 3600.0) {
            return Err(err("timeout_sec", "must be a number > 0 and <= 3600"));
        }
    }
    if e.rate_limit_rpm == Some(0) {
        return Err(err("rate_limit_rpm", "must be >= 1 (omit it for no limit)"));
    }
    let allow = e.allow_clients.clone().unwrap_or_else(|| vec!["*".into()]);
    for (field, list) in [("allow_clients", &allow), ("deny_clients", &e.deny_clients)] {
        if list.iter().any(|c| c.trim().is_empty()) {
            return Err(err(field, "client names must not be empty"));
        }
    }
    for var in e.env_schema.keys().chain(e.env.keys()) {
        if !env_name_ok(var) {
            return Err(err(
                "env_schema",
                &format!("{var:?} is not a valid variable name"),
            ));
        }
    }
    let mut missing: Vec<String> = e
        .env_schema
        .iter()
        .filter(|(k, spec)| spec.required && !src.env.contains_key(*k))
        .map(|(k, _)| k.clone())
        .collect();
    let transport = if let Some(url) = &e.url {
        let parsed = url::Url::parse(url).map_err(|x| err("url", &format!("not a URL: {x}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(err("url", "must be an http:// or https:// URL with a host"));
        }
        let headers = e
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), expand(v, src.env, &mut missing)))
            .collect();
        let sse = match e.transport.as_deref() {
            Some("sse") => true,
            Some("streamable_http") => false,
            Some(_) => return Err(err("transport", "must be \"streamable_http\" or \"sse\"")),
            None => parsed.path().trim_end_matches('/').ends_with("/sse"),
        };
        Transport::Http {
            url: url.clone(),
            headers,
            sse,
        }
    } else if let Some(command) = &e.command {
        if command.trim().is_empty() {
            return Err(err("command", "must not be empty"));
        }
        Transport::Stdio {
            command: command.clone(),
            args: e.args.clone(),
            env: server_env(e, src.env, &mut missing),
            cwd: e.cwd.clone(),
        }
    } else {
        let image = e.image.clone().unwrap_or_default();
        if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
            return Err(err("image", "must be an image reference without spaces"));
        }
        Transport::Image {
            image,
            env: server_env(e, src.env, &mut missing),
            port: e.port,
        }
    };
    missing.sort();
    missing.dedup();
    let status = if !missing.is_empty() {
        SpecStatus::MissingSecrets(missing)
    } else {
        SpecStatus::Enabled
    };
    Ok(ServerSpec {
        name: name.to_string(),
        description: e.description.clone(),
        transport,
        policy: ServerPolicy {
            allow_clients: allow,
            deny_clients: e.deny_clients.clone(),
            rate_limit_rpm: e.rate_limit_rpm,
            timeout: e
                .timeout_sec
                .map(Duration::from_secs_f64)
                .unwrap_or(src.default_timeout),
        },
        scopes: e.scopes.clone(),
        status,
    })
}

/// A server's environment: the `env_schema` variables found in the secrets file, then its own
/// `env` with `${VAR}` expanded from the secrets file.
fn server_env(
    e: &ServerEntry,
    secrets: &HashMap<String, String>,
    missing: &mut Vec<String>,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for var in e.env_schema.keys() {
        if let Some(v) = secrets.get(var) {
            env.insert(var.clone(), v.clone());
        }
    }
    for (k, v) in &e.env {
        env.insert(k.clone(), expand(v, secrets, missing));
    }
    env
}

impl Snapshot {
    /// In the box: every `image` and `command` server runs in a tool container (started by the
    /// controller), so the hub reaches it as a streamable-HTTP `url` upstream at its alias on the
    /// `tools` network. The registry itself is the same in both modes.
    pub fn route_to_containers(&mut self) {
        for spec in self.servers.values_mut() {
            let port = match &spec.transport {
                Transport::Image { port, .. } => port.unwrap_or(BRIDGE_PORT),
                Transport::Stdio { .. } => BRIDGE_PORT,
                Transport::Http { .. } => continue,
            };
            spec.transport = Transport::Http {
                url: format!("http://{}:{port}/mcp", container_alias(&spec.name)),
                headers: BTreeMap::new(),
                sse: false,
            };
        }
    }

    /// Outside the box (no controller runs containers): `image` servers are reported
    /// `not_served`; `command` servers are the hub's own child processes.
    pub fn mark_images_not_served(&mut self) {
        for spec in self.servers.values_mut() {
            if matches!(spec.transport, Transport::Image { .. })
                && spec.status != SpecStatus::Disabled
            {
                spec.status = SpecStatus::NotServed;
            }
        }
    }
}

/// A short stable digest of a value's JSON form (which container settings a tool container
/// was made from, so a change is seen after a restart too).
/// Object keys are sorted first, so maps with no fixed order (HashMap) give one digest.
pub fn digest<T: Serialize>(value: &T) -> String {
    fn canonical(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let sorted: BTreeMap<String, serde_json::Value> =
                    m.into_iter().map(|(k, v)| (k, canonical(v))).collect();
                serde_json::Value::Object(sorted.into_iter().collect())
            }
            serde_json::Value::Array(a) => {
                serde_json::Value::Array(a.into_iter().map(canonical).collect())
            }
            other => other,
        }
    }
    // Only maps with non-string keys fail to convert; they digest as their error, which is as
    // stable as the value itself. A `Value` always prints (its Display is the compact JSON).
    let value = serde_json::to_value(value)
        .unwrap_or_else(|e| serde_json::Value::String(format!("unserializable: {e}")));
    let json = canonical(value).to_string();
    hex::encode(&Sha256::digest(json.as_bytes())[..8])
}

struct TxtLine {
    number: usize,
    name: String,
    inline: Option<ServerEntry>,
}

/// `servers.txt`: one server per line, `#` comments. `name` enables a registry entry;
/// `name https://host/mcp` or `name command arg...` defines one with default policy.
fn parse_servers_txt(text: &str) -> Result<Vec<TxtLine>, RegistryError> {
    let mut out: Vec<TxtLine> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let name = parts.next().unwrap_or_default().to_string();
        if out.iter().any(|l| l.name.eq_ignore_ascii_case(&name)) {
            return Err(RegistryError::DuplicateInServersTxt { line: i + 1, name });
        }
        let rest: Vec<String> = parts.map(str::to_string).collect();
        let inline = match rest.first() {
            None => None,
            Some(first) if first.starts_with("http://") || first.starts_with("https://") => {
                if rest.len() > 1 {
                    return Err(RegistryError::UrlWithWords { line: i + 1 });
                }
                Some(ServerEntry {
                    url: Some(first.clone()),
                    ..Default::default()
                })
            }
            Some(first) => Some(ServerEntry {
                command: Some(first.clone()),
                args: rest[1..].to_vec(),
                ..Default::default()
            }),
        };
        out.push(TxtLine {
            number: i + 1,
            name,
            inline,
        });
    }
    Ok(out)
}

/// `KEY=value` lines (optional `export `, quotes stripped, `#` comments).
pub fn parse_env_file(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            out.insert(k.trim().to_string(), v.to_string());
        }
    }
    out
}

/// The secrets file with `set` applied: a variable already there is replaced in place (the
/// first line that sets it; later ones are dropped), a new one is appended; comments and other
/// lines stay. Values are written in double quotes (read back unchanged by [`parse_env_file`]);
/// a name that is not a variable name, or a value with a line break or NUL, is refused (it
/// would write a second line).
pub fn set_env_vars(text: &str, set: &BTreeMap<String, String>) -> Result<String, SecretsError> {
    for (k, v) in set {
        if !env_name_ok(k) {
            return Err(SecretsError::BadName(k.clone()));
        }
        if v.contains(['\n', '\r', '\0']) {
            return Err(SecretsError::BadValue(k.clone()));
        }
    }
    let name_of = |line: &str| -> Option<String> {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line);
        line.split_once('=').map(|(k, _)| k.trim().to_string())
    };
    let mut written: BTreeSet<&str> = BTreeSet::new();
    let mut out = String::new();
    for raw in text.lines() {
        match name_of(raw).and_then(|n| set.get_key_value(n.as_str())) {
            Some((k, _)) if written.contains(k.as_str()) => {}
            Some((k, v)) => {
                out.push_str(&format!("{k}=\"{v}\"\n"));
                written.insert(k);
            }
            None => {
                out.push_str(raw);
                out.push('\n');
            }
        }
    }
    for (k, v) in set {
        if !written.contains(k.as_str()) {
            out.push_str(&format!("{k}=\"{v}\"\n"));
        }
    }
    Ok(out)
}

/// Reads a file that may legitimately be absent.
pub fn read_optional(path: &Path) -> Result<Option<String>, RegistryError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RegistryError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(
        json: Option<&str>,
        txt: Option<&str>,
        env: &[(&str, &str)],
    ) -> Result<Snapshot, String> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load(&Sources {
            registry_json: json,
            servers_txt: txt,
            env: &env,
            default_timeout: Duration::from_secs(30),
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn the_shipped_examples_load() {
        let json = include_str!("../../../data/mcp/registry.example.json");
        let txt = include_str!("../../../data/mcp/servers.txt.example");
        let s = load_str(Some(json), Some(txt), &[("SEARCH_API_KEY", "k")]).unwrap();
        assert_eq!(s.servers["time"].status, SpecStatus::Enabled);
        assert_eq!(s.servers["search"].status, SpecStatus::Enabled);
        assert_eq!(s.servers["github"].status, SpecStatus::Disabled);
        assert_eq!(s.servers["browser"].status, SpecStatus::Disabled);
        assert_eq!(s.servers["wiki"].status, SpecStatus::Disabled);
        assert!(matches!(
            s.servers["wiki"].transport,
            Transport::Http { sse: true, .. }
        ));
        let s = load_str(Some(json), None, &[]).unwrap();
        assert_eq!(
            s.servers["github"].status,
            SpecStatus::MissingSecrets(vec!["GITHUB_TOKEN".into()])
        );
    }

    #[test]
    fn secrets_are_set_in_place_and_read_back_unchanged() {
        let before = "# tool secrets\nA=1\nexport GH_TOKEN=old\nGH_TOKEN=older\n";
        let set = BTreeMap::from([
            ("GH_TOKEN".to_string(), " new \"quoted\" ".to_string()),
            ("NEW_ONE".to_string(), "x=y#z".to_string()),
        ]);
        let after = set_env_vars(before, &set).unwrap();
        assert!(after.starts_with("# tool secrets\nA=1\n"), "{after}");
        assert_eq!(after.matches("GH_TOKEN").count(), 1, "{after}");
        let read = parse_env_file(&after);
        assert_eq!(read["GH_TOKEN"], " new \"quoted\" ");
        assert_eq!(read["NEW_ONE"], "x=y#z");
        assert_eq!(read["A"], "1");
        for (k, v) in [("BAD NAME", "x"), ("OK", "a\nB=1"), ("OK", "a\rb")] {
            let one = BTreeMap::from([(k.to_string(), v.to_string())]);
            assert!(set_env_vars("", &one).is_err(), "{k:?}={v:?}");
        }
    }

    #[test]
    fn one_entry_is_checked_as_the_file_would_be() {
        let url = |u: &str| ServerEntry {
            url: Some(u.into()),
            ..Default::default()
        };
        assert!(check_entry("web", &url("http://h:1/mcp")).is_ok());
        assert!(matches!(
            check_entry("web", &url("ftp://h/")),
            Err(RegistryError::Field { field: "url", .. })
        ));
        assert!(check_entry("web", &url("ftp://h/"))
            .unwrap_err()
            .to_string()
            .contains("servers.web.url"));
        assert!(matches!(
            check_entry("a__b", &url("http://h:1/mcp")),
            Err(RegistryError::InvalidName { .. })
        ));
        let secret = ServerEntry {
            image: Some("mcp/github".into()),
            env_schema: BTreeMap::from([(
                "GH_TOKEN".to_string(),
                EnvVarSpec {
                    required: true,
                    description: None,
                },
            )]),
            ..Default::default()
        };
        assert!(
            check_entry("github", &secret).is_ok(),
            "a missing secret is a state, not an error"
        );
    }

    #[test]
    fn unknown_field_names_server_and_field() {
        let e = load_str(
            Some(r#"{"servers":{"git":{"command":"x","timeout":3}}}"#),
            None,
            &[],
        )
        .unwrap_err();
        assert!(e.contains("servers.git"), "{e}");
        assert!(e.contains("unknown field `timeout`"), "{e}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let e = load_str(
            Some(r#"{"servers":{"git":{"command":"x"},"git":{"command":"y"}}}"#),
            None,
            &[],
        )
        .unwrap_err();
        assert!(e.contains("duplicate server name \"git\""), "{e}");
    }

    #[test]
    fn missing_secret_is_a_status_not_an_error() {
        let s = load_str(
            Some(r#"{"servers":{"gh":{"url":"http://127.0.0.1:1/mcp","headers":{"Authorization":"Bearer ${GH_TOKEN}"},"env_schema":{"GH_TOKEN":{}}}}}"#),
            None,
            &[],
        )
        .unwrap();
        assert_eq!(
            s.servers["gh"].status,
            SpecStatus::MissingSecrets(vec!["GH_TOKEN".into()])
        );
        let s = load_str(
            Some(r#"{"servers":{"gh":{"url":"http://127.0.0.1:1/mcp","headers":{"Authorization":"Bearer ${GH_TOKEN}"},"env_schema":{"GH_TOKEN":{}}}}}"#),
            None,
            &[("GH_TOKEN", "t")],
        )
        .unwrap();
        assert_eq!(s.servers["gh"].status, SpecStatus::Enabled);
        match &s.servers["gh"].transport {
            Transport::Http { headers, .. } => assert_eq!(headers["Authorization"], "Bearer t"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn servers_txt_alone_gets_defaults_and_enables_registry_entries() {
        let s = load_str(
            None,
            Some("# tools\ntime /bin/time-server --x\nweb http://127.0.0.1:9/mcp\n"),
            &[],
        )
        .unwrap();
        assert_eq!(s.servers.len(), 2);
        assert!(s.servers["time"].policy.allows("anonymous"));
        let s = load_str(
            Some(r#"{"servers":{"a":{"command":"x"},"b":{"command":"y"},"img":{"image":"busybox"}}}"#),
            Some("a\nimg\n"),
            &[],
        )
        .unwrap();
        assert_eq!(s.servers["a"].status, SpecStatus::Enabled);
        assert_eq!(s.servers["b"].status, SpecStatus::Disabled);
        assert_eq!(s.servers["img"].status, SpecStatus::Enabled);
    }

    #[test]
    fn digests_do_not_depend_on_map_order() {
        let a: HashMap<String, u32> = (0..50).map(|i| (format!("k{i}"), i)).collect();
        let b: HashMap<String, u32> = (0..50).rev().map(|i| (format!("k{i}"), i)).collect();
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&1));
    }

    #[test]
    fn bare_catalog_names_in_servers_txt_are_images() {
        let s = load_str(
            Some(r#"{"servers":{"a":{"command":"x"}}}"#),
            Some("a\ngithub\nTime\n"),
            &[],
        )
        .unwrap();
        assert_eq!(s.servers["a"].status, SpecStatus::Enabled);
        for (name, image) in [("github", "mcp/github"), ("Time", "mcp/time")] {
            match &s.servers[name].transport {
                Transport::Image { image: i, .. } => assert_eq!(i, image),
                t => panic!("{name}: {t:?}"),
            }
        }
        let s = load_str(None, Some("time\n"), &[]).unwrap();
        assert!(matches!(
            s.servers["time"].transport,
            Transport::Image { .. }
        ));
    }

    #[test]
    fn the_seed_rfc_registry_loads_as_written() {
        let json = r#"{
          "servers": {
            "github": {
              "image": "mcp/github",
              "env_schema": {"GITHUB_PERSONAL_ACCESS_TOKEN": "required", "GITHUB_HOST": "optional"},
              "scopes": ["repo:read"],
              "allow_clients": ["cursor"],
              "rate_limit_rpm": 60
            },
            "time": {"image": "mcp/time"}
          }
        }"#;
        let s = load_str(Some(json), None, &[]).unwrap();
        assert_eq!(
            s.servers["github"].status,
            SpecStatus::MissingSecrets(vec!["GITHUB_PERSONAL_ACCESS_TOKEN".into()])
        );
        assert_eq!(s.servers["time"].status, SpecStatus::Enabled);
        let s = load_str(
            Some(json),
            None,
            &[("GITHUB_PERSONAL_ACCESS_TOKEN", "ghp"), ("UNRELATED", "x")],
        )
        .unwrap();
        match &s.servers["github"].transport {
            Transport::Image { image, env, port } => {
                assert_eq!(image, "mcp/github");
                assert_eq!(env.len(), 1, "only env_schema names: {env:?}");
                assert_eq!(env["GITHUB_PERSONAL_ACCESS_TOKEN"], "ghp");
                assert_eq!(*port, None);
            }
            t => panic!("{t:?}"),
        }
        let e = load_str(
            Some(r#"{"servers":{"a":{"image":"x","env_schema":{"K":"maybe"}}}}"#),
            None,
            &[],
        )
        .unwrap_err();
        assert!(e.contains("servers.a.env_schema.K"), "{e}");
    }

    #[test]
    fn images_and_commands_route_to_their_containers_in_the_box() {
        let json = r#"{"servers":{
            "time":{"image":"mcp/time"},
            "web":{"image":"acme/web-mcp","port":3000,"transport":"streamable_http"},
            "git":{"command":"uvx","args":["mcp-server-git"]},
            "u":{"url":"http://127.0.0.1:1/mcp"}}}"#;
        let mut s = load_str(Some(json), None, &[]).unwrap();
        let mut native = s.clone();
        s.route_to_containers();
        let url = |s: &Snapshot, n: &str| match &s.servers[n].transport {
            Transport::Http { url, .. } => url.clone(),
            t => panic!("{n}: {t:?}"),
        };
        assert_eq!(url(&s, "time"), "http://mcp-time:8000/mcp");
        assert_eq!(url(&s, "web"), "http://mcp-web:3000/mcp");
        assert_eq!(url(&s, "git"), "http://mcp-git:8000/mcp");
        assert_eq!(url(&s, "u"), "http://127.0.0.1:1/mcp");
        native.mark_images_not_served();
        assert_eq!(native.servers["time"].status, SpecStatus::NotServed);
        assert_eq!(native.servers["git"].status, SpecStatus::Enabled);
        let e = load_str(
            Some(r#"{"servers":{"a":{"image":"x","transport":"sse"}}}"#),
            None,
            &[],
        )
        .unwrap_err();
        assert!(e.contains("servers.a.transport"), "{e}");
        let e = load_str(
            Some(r#"{"servers":{"a":{"command":"x","port":1}}}"#),
            None,
            &[],
        )
        .unwrap_err();
        assert!(e.contains("servers.a.port"), "{e}");
    }

    #[test]
    fn policy_deny_wins_over_allow() {
        let s = load_str(
            Some(r#"{"servers":{"a":{"command":"x","allow_clients":["*"],"deny_clients":["n8n"]},"b":{"command":"x","allow_clients":["cursor"]}}}"#),
            None,
            &[],
        )
        .unwrap();
        assert!(!s.servers["a"].policy.allows("n8n"));
        assert!(s.servers["a"].policy.allows("cursor"));
        assert!(s.servers["b"].policy.allows("cursor"));
        assert!(!s.servers["b"].policy.allows("anonymous"));
    }

    #[test]
    fn url_transport_defaults_by_path_and_can_be_set() {
        let s = load_str(
            Some(
                r#"{"servers":{
                "a":{"url":"http://127.0.0.1:1/mcp"},
                "b":{"url":"http://127.0.0.1:1/sse"},
                "c":{"url":"http://127.0.0.1:1/events","transport":"sse"},
                "d":{"url":"http://127.0.0.1:1/sse","transport":"streamable_http"}}}"#,
            ),
            None,
            &[],
        )
        .unwrap();
        for (name, want) in [("a", false), ("b", true), ("c", true), ("d", false)] {
            match &s.servers[name].transport {
                Transport::Http { sse, .. } => assert_eq!(*sse, want, "{name}"),
                t => panic!("{name}: {t:?}"),
            }
        }
    }

    #[test]
    fn bad_names_and_values_are_refused() {
        for (json, needle) in [
            (r#"{"servers":{"a__b":{"command":"x"}}}"#, "server name"),
            (
                r#"{"servers":{"a":{"command":"x","url":"http://h/"}}}"#,
                "exactly one of",
            ),
            (r#"{"servers":{"a":{"url":"ftp://h/"}}}"#, "servers.a.url"),
            (
                r#"{"servers":{"a":{"url":"http://h/","transport":"ws"}}}"#,
                "servers.a.transport",
            ),
            (
                r#"{"servers":{"a":{"command":"x","transport":"sse"}}}"#,
                "servers.a.transport",
            ),
            (
                r#"{"servers":{"a":{"command":"x","timeout_sec":0}}}"#,
                "servers.a.timeout_sec",
            ),
            (
                r#"{"servers":{"a":{"command":"x","rate_limit_rpm":"9"}}}"#,
                "servers.a.rate_limit_rpm",
            ),
            (r#"{"servers": [}"#, "registry.json"),
        ] {
            let e = load_str(Some(json), None, &[]).unwrap_err();
            assert!(e.contains(needle), "{json}: {e}");
        }
    }
}
