//! The edge's configuration: one typed struct, read from the environment and an optional TOML
//! file (`EDGE_CONFIG`), validated once at start-up with errors that name the key.
use std::collections::HashSet;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::policy::Policy;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Ollama's native API (`/api/chat`, `/api/embed`, ...), translated to and from OpenAI's.
    Ollama,
    /// Any OpenAI-compatible server (vLLM, llama.cpp, LM Studio, OpenAI): passed through.
    Openai,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Ollama => "ollama",
            ProviderKind::Openai => "openai",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub url: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// One endpoint. For OpenAI-compatible servers this includes `/v1`, as in the openai SDK.
    pub base_url: Option<String>,
    /// Several endpoints serving the same provider, balanced and failed over.
    #[serde(default)]
    pub base_urls: Vec<String>,
    /// Several endpoints with weights (`[[providers.endpoints]] url, weight`).
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// Name of the environment variable holding this provider's API key (never logged).
    pub api_key_env: Option<String>,
    /// The server serves OpenAI's Responses API (`/v1/responses`) itself: pass it through
    /// instead of translating it to chat completions. Only for `kind = "openai"`.
    #[serde(default)]
    pub responses: bool,
}

/// One client: its key (by environment variable or by hash) and its policy. The same shape in
/// the edge's TOML (`[[clients]]`) and in the keys file (`data/edge/clients.toml`).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub name: String,
    /// Environment variable holding the client's key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_env: Option<String>,
    /// Hex SHA-256 of the client's key, for configs that must not hold the key itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    /// Globs over `provider/model` this client may use (absent: every model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Globs over MCP server names this client may use (absent: every server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_servers: Option<Vec<String>>,
    /// Requests per minute (absent: no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Prompt + completion tokens per minute (absent: no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    /// Requests at once (absent: no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// When the key was made (RFC 3339), written by `edge key add`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

/// The policy of callers without a valid key (`[anonymous]`), same fields as a client's.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_servers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

impl PolicyConfig {
    /// The checked policy; `key` prefixes the name of a bad field in the error.
    pub fn resolve(&self, key: &str) -> Result<Policy, ConfigError> {
        let limit = |field: &str, v: Option<u32>| match v {
            None => Ok(None),
            Some(n) => NonZeroU32::new(n).map(Some).ok_or_else(|| {
                invalid(
                    format!("{key}.{field}"),
                    "must be at least 1 (leave it out for no limit)",
                )
            }),
        };
        for (field, list) in [("models", &self.models), ("mcp_servers", &self.mcp_servers)] {
            if let Some(g) = list.iter().flatten().find(|g| g.trim().is_empty()) {
                return Err(invalid(
                    format!("{key}.{field}"),
                    format!("{g:?} is not a pattern"),
                ));
            }
        }
        Ok(Policy {
            models: self.models.clone(),
            mcp_servers: self.mcp_servers.clone(),
            rpm: limit("rpm", self.rpm)?,
            tpm: limit("tpm", self.tpm)?,
            concurrency: limit("concurrency", self.concurrency)?,
        })
    }
}

impl ClientConfig {
    pub fn policy(&self) -> PolicyConfig {
        PolicyConfig {
            models: self.models.clone(),
            mcp_servers: self.mcp_servers.clone(),
            rpm: self.rpm,
            tpm: self.tpm,
            concurrency: self.concurrency,
        }
    }
}

/// The keys file (`data/edge/clients.toml`): written by `edge key` and the edge's admin API,
/// read at start-up and again whenever it changes.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientsFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<PolicyConfig>,
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerLink {
    /// The controller's base URL, e.g. `http://controller:9000`.
    pub url: String,
    /// Environment variable holding `OPS_CONTROLLER_TOKEN`.
    #[serde(default = "default_controller_token_env")]
    pub token_env: String,
}

fn default_controller_token_env() -> String {
    "OPS_CONTROLLER_TOKEN".into()
}

/// Upstream timeouts in milliseconds. See docs/ARCHITECTURE.md for what each one bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    pub connect_ms: u64,
    /// Until the upstream's response headers, for a model that is loaded.
    pub first_byte_ms: u64,
    /// Until the response headers when the model is not loaded yet (Ollama loads it first).
    pub first_byte_loading_ms: u64,
    /// Longest silence between two chunks of a stream.
    pub idle_ms: u64,
    /// Whole request, stream included.
    pub total_ms: u64,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            connect_ms: 2_000,
            first_byte_ms: 60_000,
            first_byte_loading_ms: 300_000,
            idle_ms: 60_000,
            total_ms: 600_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Consecutive connect errors or 5xx that eject an endpoint.
    pub eject_after: u32,
    /// How long an ejected endpoint rests before a probe may bring it back.
    pub eject_ms: u64,
    /// Interval of the active probes (model lists, `/api/ps`).
    pub probe_interval_ms: u64,
    /// How long a provider's model list is served from cache.
    pub models_ttl_ms: u64,
    /// How many more requests in flight an endpoint with the model loaded (`/api/ps`) may
    /// have than the least busy endpoint without it before the cold one is chosen instead.
    pub warm_busy_margin: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            eject_after: 3,
            eject_ms: 10_000,
            probe_interval_ms: 5_000,
            models_ttl_ms: 60_000,
            warm_busy_margin: 4,
        }
    }
}

/// The `EDGE_CONFIG` file as written by the user.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    /// Threads that serve requests (`EDGE_WORKER_THREADS`); default: the number of cores.
    pub worker_threads: Option<usize>,
    /// Addresses (IP, CIDR or a host name resolved at start) the API listener must not answer
    /// on; see `api_exclude` on `EdgeConfig`.
    #[serde(default)]
    pub api_exclude: Vec<String>,
    pub default_provider: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub admin_token_env: Option<String>,
    /// Honour `X-Client-ID` (only on networks where every caller is trusted).
    #[serde(default)]
    pub trust_client_id_header: bool,
    /// Names accepted from `X-Service-Name` as metric labels; others fold into `other`.
    #[serde(default)]
    pub service_names: Vec<String>,
    pub dashboard_url: Option<String>,
    /// Peers allowed to assert a user through `Tailscale-User-*` headers (Tailscale Serve).
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Peers that may read `/metrics` without a key; everyone else needs the admin key.
    /// Default: loopback and the private ranges compose networks use.
    pub metrics_open_cidrs: Option<Vec<ipnet::IpNet>>,
    pub controller: Option<ControllerLink>,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    /// Model aliases with fallbacks (`[[models]]`), see edge/src/aliases.rs.
    #[serde(default)]
    pub models: Vec<crate::aliases::AliasConfig>,
    /// Policy for callers without a valid key; absent means every model and tool, no limits.
    pub anonymous: Option<PolicyConfig>,
    /// The keys file (`EDGE_CLIENTS_FILE` overrides); its clients add to `[[clients]]` and its
    /// `[anonymous]` replaces this file's.
    pub clients_file: Option<String>,
    #[serde(default)]
    pub mcp: aibox_mcp::McpConfig,
    #[serde(default)]
    pub egress: egress::EgressConfig,
}

#[derive(Debug, Clone)]
pub struct ResolvedEndpoint {
    pub url: String,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct ResolvedProvider {
    pub name: String,
    pub kind: ProviderKind,
    pub endpoints: Vec<ResolvedEndpoint>,
    pub api_key: Option<String>,
    /// Serves `/v1/responses` itself (`responses = true`).
    pub responses: bool,
}

#[derive(Debug, Clone)]
pub struct ResolvedClient {
    pub name: String,
    pub key_sha256: [u8; 32],
    pub policy: Policy,
}

/// Everything the edge runs with, after environment and file are merged and checked.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub listen: String,
    /// `EDGE_API_EXCLUDE`: when `listen` is a wildcard address, the API listener binds to every
    /// interface address of the edge except these (the browser's `egress` network must reach the
    /// egress proxy and nothing else). Entries are IPs, CIDRs or host names; see edge/src/api_bind.rs.
    pub api_exclude: Vec<String>,
    pub egress_listen: String,
    /// Threads of the request path, each with its own runtime (`worker_threads`).
    pub worker_threads: NonZeroUsize,
    pub default_provider: String,
    pub max_body_bytes: usize,
    pub admin_token_sha256: Option<[u8; 32]>,
    pub trust_client_id_header: bool,
    pub service_names: HashSet<String>,
    pub dashboard_url: Option<String>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub metrics_open_cidrs: Vec<ipnet::IpNet>,
    pub controller: Option<(String, String)>,
    pub timeouts: TimeoutConfig,
    pub health: HealthConfig,
    pub providers: Vec<ResolvedProvider>,
    /// `[[models]]`: aliases over `provider/model` targets, checked against `providers`.
    pub aliases: Vec<crate::aliases::ModelAlias>,
    /// Clients from the TOML (`[[clients]]`); the keys file's are added by `ClientDirectory`.
    pub clients: Vec<ResolvedClient>,
    /// `[anonymous]` of the TOML, if set.
    pub anonymous: Option<Policy>,
    pub clients_file: Option<std::path::PathBuf>,
    pub mcp: aibox_mcp::McpConfig,
    pub egress: egress::EgressConfig,
    /// `AIBOX_REDIS_URL`: the limits every edge replica shares (docs/SCALING.md); `None` keeps
    /// them in this process.
    pub shared_limits: Option<Arc<aibox_limits::SharedLimits>>,
}

impl TimeoutConfig {
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
    pub fn first_byte(&self) -> Duration {
        Duration::from_millis(self.first_byte_ms)
    }
    pub fn first_byte_loading(&self) -> Duration {
        Duration::from_millis(self.first_byte_loading_ms)
    }
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms)
    }
    pub fn total(&self) -> Duration {
        Duration::from_millis(self.total_ms)
    }
}

/// Loopback and the private ranges Docker gives compose networks.
pub fn default_metrics_open_cidrs() -> Vec<ipnet::IpNet> {
    [
        "127.0.0.0/8",
        "::1/128",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fc00::/7",
    ]
    .iter()
    .filter_map(|c| c.parse().ok())
    .collect()
}

impl EdgeConfig {
    /// Whether `peer` may read `/metrics` without the admin key.
    pub fn metrics_open_to(&self, peer: Option<std::net::IpAddr>) -> bool {
        peer.is_some_and(|ip| {
            let ip = match ip {
                std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
                v4 => v4,
            };
            self.metrics_open_cidrs.iter().any(|n| n.contains(&ip))
        })
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// The environment as the edge reads it; a trait-free map so tests can pass their own.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

impl EdgeConfig {
    /// Load from the process environment and `EDGE_CONFIG` (or `path` when given).
    pub fn load(path: Option<&str>, env: &dyn Env) -> Result<Self, ConfigError> {
        let path = path.map(str::to_owned).or_else(|| env.var("EDGE_CONFIG"));
        let file = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?;
                Self::parse_file(p, &text)?
            }
            None => FileConfig::default(),
        };
        Self::resolve(file, env)
    }

    pub fn parse_file(path: &str, text: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })
    }

    pub fn resolve(file: FileConfig, env: &dyn Env) -> Result<Self, ConfigError> {
        let port = match env.var("OPENAI_COMPAT_PORT") {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| invalid("OPENAI_COMPAT_PORT", format!("not a port number: {p:?}")))?,
            None => 11435,
        };
        let listen = env
            .var("EDGE_LISTEN")
            .or(file.listen.clone())
            .unwrap_or_else(|| format!("127.0.0.1:{port}"));
        check_socket_addr("EDGE_LISTEN", &listen)?;
        let api_exclude: Vec<String> = match env.var("EDGE_API_EXCLUDE") {
            Some(v) => v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            None => file.api_exclude.clone(),
        };
        for entry in &api_exclude {
            crate::api_bind::ExcludeEntry::parse(entry)
                .map_err(|message| invalid("EDGE_API_EXCLUDE", message))?;
        }
        let egress_listen = env
            .var("EGRESS_LISTEN")
            .or(file.egress.listen.clone())
            .unwrap_or_else(|| "0.0.0.0:3128".into());
        check_socket_addr("EGRESS_LISTEN", &egress_listen)?;
        let worker_threads = worker_threads(env, file.worker_threads)?;

        let mut providers = Vec::new();
        let mut names = HashSet::new();
        let provider_configs = if file.providers.is_empty() {
            vec![ProviderConfig {
                name: "ollama".into(),
                kind: ProviderKind::Ollama,
                base_url: Some(
                    env.var("OLLAMA_URL")
                        .unwrap_or_else(|| "http://127.0.0.1:11434".into()),
                ),
                base_urls: vec![],
                endpoints: vec![],
                responses: false,
                api_key_env: None,
            }]
        } else {
            file.providers.clone()
        };
        for (i, p) in provider_configs.iter().enumerate() {
            let key = format!("providers[{i}]");
            if p.name.is_empty()
                || !p
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                return Err(invalid(
                    format!("{key}.name"),
                    format!(
                        "{:?} must be letters, digits, '-', '_' or '.' (it prefixes model ids)",
                        p.name
                    ),
                ));
            }
            if !names.insert(p.name.clone()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("provider {:?} is defined twice", p.name),
                ));
            }
            let mut endpoints: Vec<ResolvedEndpoint> = Vec::new();
            let mut urls: Vec<(String, u32, String)> = Vec::new();
            if let Some(u) = &p.base_url {
                // OLLAMA_URL overrides the url of the provider named `ollama`, as in the RFC.
                let u = match (p.name.as_str(), env.var("OLLAMA_URL")) {
                    ("ollama", Some(env_url)) if !file.providers.is_empty() => env_url,
                    _ => u.clone(),
                };
                urls.push((u, 1, format!("{key}.base_url")));
            }
            for (j, u) in p.base_urls.iter().enumerate() {
                urls.push((u.clone(), 1, format!("{key}.base_urls[{j}]")));
            }
            for (j, e) in p.endpoints.iter().enumerate() {
                if e.weight == 0 {
                    return Err(invalid(
                        format!("{key}.endpoints[{j}].weight"),
                        "must be at least 1",
                    ));
                }
                urls.push((e.url.clone(), e.weight, format!("{key}.endpoints[{j}].url")));
            }
            if urls.is_empty() {
                return Err(invalid(
                    format!("{key}.base_url"),
                    "a provider needs base_url, base_urls or endpoints",
                ));
            }
            for (u, weight, ukey) in urls {
                // The same parser that takes the URL apart for each request.
                crate::providers::Target::parse(&u).map_err(|e| invalid(&ukey, e.to_string()))?;
                endpoints.push(ResolvedEndpoint {
                    url: u.trim_end_matches('/').to_owned(),
                    weight,
                });
            }
            let api_key = match &p.api_key_env {
                Some(var) => Some(env.var(var).ok_or_else(|| {
                    invalid(
                        format!("{key}.api_key_env"),
                        format!("environment variable {var} is not set"),
                    )
                })?),
                None => None,
            };
            if p.responses && p.kind != ProviderKind::Openai {
                return Err(invalid(
                    format!("{key}.responses"),
                    "only an OpenAI-compatible provider (kind = \"openai\") can serve the Responses API; the edge translates it for Ollama",
                ));
            }
            providers.push(ResolvedProvider {
                name: p.name.clone(),
                kind: p.kind,
                endpoints,
                api_key,
                responses: p.responses,
            });
        }

        let default_provider = env
            .var("DEFAULT_PROVIDER")
            .or(file.default_provider.clone())
            .unwrap_or_else(|| providers[0].name.clone());
        if !names.contains(&default_provider) {
            return Err(invalid(
                "default_provider",
                format!("{default_provider:?} is not a configured provider"),
            ));
        }

        let provider_names: Vec<String> = providers.iter().map(|p| p.name.clone()).collect();
        let aliases = crate::aliases::resolve(&file.models, &provider_names)?;

        let admin_var = file
            .admin_token_env
            .clone()
            .unwrap_or_else(|| "AIBOX_ADMIN_TOKEN".into());
        let admin_token_sha256 = match env.var(&admin_var) {
            Some(t) if t.len() < 16 => {
                return Err(invalid(
                    "admin_token_env",
                    format!("{admin_var} must be at least 16 characters"),
                ))
            }
            Some(t) => Some(sha256(t.as_bytes())),
            None => None,
        };

        let clients = resolve_clients(&file.clients, env, "clients")?;
        let anonymous = file
            .anonymous
            .as_ref()
            .map(|p| p.resolve("anonymous"))
            .transpose()?;
        let clients_file = env
            .var("EDGE_CLIENTS_FILE")
            .or(file.clients_file.clone())
            .map(std::path::PathBuf::from);

        let controller = match &file.controller {
            Some(link) => {
                let token = env.var(&link.token_env).ok_or_else(|| {
                    invalid(
                        "controller.token_env",
                        format!("environment variable {} is not set", link.token_env),
                    )
                })?;
                Some((link.url.trim_end_matches('/').to_owned(), token))
            }
            None => match (env.var("CONTROLLER_URL"), env.var("OPS_CONTROLLER_TOKEN")) {
                (Some(url), Some(token)) => Some((url.trim_end_matches('/').to_owned(), token)),
                _ => None,
            },
        };

        let shared_limits = shared_limits(env)?;
        let mut service_names: HashSet<String> = file.service_names.iter().cloned().collect();
        service_names.extend(clients.iter().map(|c| c.name.clone()));

        Ok(Self {
            listen,
            api_exclude,
            egress_listen,
            worker_threads,
            default_provider,
            max_body_bytes: file.max_body_bytes.unwrap_or(32 * 1024 * 1024),
            admin_token_sha256,
            trust_client_id_header: file.trust_client_id_header,
            service_names,
            dashboard_url: env
                .var("DASHBOARD_URL")
                .or(file.dashboard_url.clone())
                .map(|u| u.trim_end_matches('/').to_owned()),
            trusted_proxies: file.trusted_proxies.clone(),
            metrics_open_cidrs: file
                .metrics_open_cidrs
                .clone()
                .unwrap_or_else(default_metrics_open_cidrs),
            controller,
            timeouts: file.timeouts.clone(),
            health: file.health.clone(),
            providers,
            aliases,
            clients,
            anonymous,
            clients_file,
            mcp: aibox_mcp::McpConfig {
                containers: match env.var("AIBOX_MCP_CONTAINERS").as_deref() {
                    None => file.mcp.containers,
                    Some("1" | "true") => Some(true),
                    Some("0" | "false") => Some(false),
                    Some(other) => {
                        return Err(invalid(
                            "AIBOX_MCP_CONTAINERS",
                            format!("{other:?} is not one of 1, true, 0, false"),
                        ))
                    }
                },
                shared_limits: shared_limits.clone(),
                ..file.mcp.clone()
            },
            egress: file.egress.clone(),
            shared_limits,
        })
    }
}

/// Most threads the request path may have; more is a typo, not a machine.
const MAX_WORKER_THREADS: usize = 1024;

/// `EDGE_WORKER_THREADS`, else `worker_threads` in the file, else the number of cores.
fn worker_threads(env: &dyn Env, file: Option<usize>) -> Result<NonZeroUsize, ConfigError> {
    let (key, value) = match (env.var("EDGE_WORKER_THREADS"), file) {
        (Some(v), _) => (
            "EDGE_WORKER_THREADS",
            v.trim().parse::<usize>().map_err(|_| {
                invalid(
                    "EDGE_WORKER_THREADS",
                    format!("{v:?} is not a number of threads"),
                )
            })?,
        ),
        (None, Some(n)) => ("worker_threads", n),
        (None, None) => {
            return Ok(std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN));
        }
    };
    NonZeroUsize::new(value)
        .filter(|n| n.get() <= MAX_WORKER_THREADS)
        .ok_or_else(|| {
            invalid(
                key,
                format!("{value} must be from 1 to {MAX_WORKER_THREADS}"),
            )
        })
}

/// `AIBOX_REDIS_URL` (and `AIBOX_REDIS_TIMEOUT_MS`, default 250): checked now, connected when
/// first used, so the edge starts even while Redis does not answer yet.
fn shared_limits(env: &dyn Env) -> Result<Option<Arc<aibox_limits::SharedLimits>>, ConfigError> {
    let Some(url) = env.var("AIBOX_REDIS_URL") else {
        return Ok(None);
    };
    let timeout = match env.var("AIBOX_REDIS_TIMEOUT_MS") {
        None => aibox_limits::DEFAULT_TIMEOUT,
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if (1..=10_000).contains(&ms) => Duration::from_millis(ms),
            _ => {
                return Err(invalid(
                    "AIBOX_REDIS_TIMEOUT_MS",
                    format!("{v:?} is not a number of milliseconds from 1 to 10000"),
                ))
            }
        },
    };
    aibox_limits::SharedLimits::new(&url, timeout)
        .map(|l| Some(Arc::new(l)))
        .map_err(|e| invalid("AIBOX_REDIS_URL", e.to_string()))
}

/// Checks every client (names, keys, policies); `list` names the table in errors.
pub fn resolve_clients(
    entries: &[ClientConfig],
    env: &dyn Env,
    list: &str,
) -> Result<Vec<ResolvedClient>, ConfigError> {
    let mut clients = Vec::new();
    let mut client_names = HashSet::new();
    for (i, c) in entries.iter().enumerate() {
        let key = format!("{list}[{i}]");
        check_client_name(&c.name).map_err(|m| invalid(format!("{key}.name"), m))?;
        if !client_names.insert(c.name.clone()) {
            return Err(invalid(
                format!("{key}.name"),
                format!("client {:?} is defined twice", c.name),
            ));
        }
        let key_sha256 = match (&c.key_env, &c.key_sha256) {
            (Some(var), None) => {
                let k = env.var(var).ok_or_else(|| {
                    invalid(
                        format!("{key}.key_env"),
                        format!("environment variable {var} is not set"),
                    )
                })?;
                sha256(k.as_bytes())
            }
            (None, Some(hexed)) => hex::decode(hexed)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| invalid(format!("{key}.key_sha256"), "must be 64 hex digits"))?,
            _ => {
                return Err(invalid(
                    key.clone(),
                    "set exactly one of key_env and key_sha256",
                ))
            }
        };
        clients.push(ResolvedClient {
            name: c.name.clone(),
            key_sha256,
            policy: c.policy().resolve(&key)?,
        });
    }
    Ok(clients)
}

/// Client names label metrics and appear in audit events: short, plain, not reserved.
pub fn check_client_name(name: &str) -> Result<(), String> {
    if matches!(name, "anonymous" | "other" | "admin") {
        return Err(format!("{name:?} is reserved"));
    }
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(format!(
            "{name:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

fn check_socket_addr(key: &str, value: &str) -> Result<(), ConfigError> {
    value
        .parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|_| invalid(key, format!("{value:?} is not an ip:port address")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, &'static str>);
    impl Env for MapEnv {
        fn var(&self, key: &str) -> Option<String> {
            self.0.get(key).map(|v| v.to_string())
        }
    }

    fn env(pairs: &[(&'static str, &'static str)]) -> MapEnv {
        MapEnv(pairs.iter().cloned().collect())
    }

    #[test]
    fn zero_config_is_one_ollama_on_the_default_port() {
        let c = EdgeConfig::resolve(FileConfig::default(), &env(&[])).unwrap();
        assert_eq!(c.listen, "127.0.0.1:11435");
        assert_eq!(c.default_provider, "ollama");
        assert_eq!(c.providers[0].endpoints[0].url, "http://127.0.0.1:11434");
    }

    #[test]
    fn environment_names_from_the_rfc_apply() {
        let c = EdgeConfig::resolve(
            FileConfig::default(),
            &env(&[
                ("OLLAMA_URL", "http://ollama:11434/"),
                ("OPENAI_COMPAT_PORT", "9999"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9999");
        assert_eq!(c.providers[0].endpoints[0].url, "http://ollama:11434");
    }

    #[test]
    fn worker_threads_default_to_the_cores_and_are_checked_by_name() {
        let c = EdgeConfig::resolve(FileConfig::default(), &env(&[])).unwrap();
        let cores = std::thread::available_parallelism().unwrap();
        assert_eq!(c.worker_threads, cores);

        let file = EdgeConfig::parse_file("x.toml", "worker_threads = 3").unwrap();
        let c = EdgeConfig::resolve(file.clone(), &env(&[])).unwrap();
        assert_eq!(c.worker_threads.get(), 3);
        let c = EdgeConfig::resolve(file, &env(&[("EDGE_WORKER_THREADS", "5")])).unwrap();
        assert_eq!(
            c.worker_threads.get(),
            5,
            "the environment wins over the file"
        );

        let file = EdgeConfig::parse_file("x.toml", "worker_threads = 0").unwrap();
        let err = EdgeConfig::resolve(file, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("worker_threads:"), "{err}");
        for bad in ["0", "two", "100000"] {
            let err =
                EdgeConfig::resolve(FileConfig::default(), &env(&[("EDGE_WORKER_THREADS", bad)]))
                    .unwrap_err()
                    .to_string();
            assert!(err.starts_with("EDGE_WORKER_THREADS:"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = EdgeConfig::parse_file(
            "x.toml",
            "[[providers]]\nname='a'\nkind='openai'\nbase_url='http://a/v1'\nbogus=1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn missing_api_key_env_names_the_key() {
        let file = EdgeConfig::parse_file(
            "x.toml",
            "[[providers]]\nname='vllm'\nkind='openai'\nbase_url='http://v/v1'\napi_key_env='NOPE'\n",
        )
        .unwrap();
        let err = EdgeConfig::resolve(file, &env(&[]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "providers[0].api_key_env: environment variable NOPE is not set"
        );
    }

    #[test]
    fn api_exclude_is_a_comma_list_checked_entry_by_entry() {
        let c = EdgeConfig::resolve(
            FileConfig::default(),
            &env(&[("EDGE_API_EXCLUDE", "egress-proxy, 172.30.0.0/16,,10.0.0.1")]),
        )
        .unwrap();
        assert_eq!(c.api_exclude, ["egress-proxy", "172.30.0.0/16", "10.0.0.1"]);
        let err = EdgeConfig::resolve(
            FileConfig::default(),
            &env(&[("EDGE_API_EXCLUDE", "bad name!")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("EDGE_API_EXCLUDE: "), "{err}");
    }

    #[test]
    fn responses_is_only_for_openai_providers() {
        let file = EdgeConfig::parse_file(
            "x.toml",
            "[[providers]]\nname='o'\nkind='ollama'\nbase_url='http://o:11434'\nresponses=true\n",
        )
        .unwrap();
        let err = EdgeConfig::resolve(file, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("providers[0].responses: "), "{err}");
        let file = EdgeConfig::parse_file(
            "x.toml",
            "[[providers]]\nname='v'\nkind='openai'\nbase_url='http://v/v1'\nresponses=true\n",
        )
        .unwrap();
        assert!(EdgeConfig::resolve(file, &env(&[])).unwrap().providers[0].responses);
    }

    #[test]
    fn default_provider_must_exist() {
        let err = EdgeConfig::resolve(FileConfig::default(), &env(&[("DEFAULT_PROVIDER", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("default_provider:"), "{err}");
    }
}
