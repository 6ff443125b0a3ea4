//! The edge's configuration: one typed struct, read from the environment and an optional TOML
//! file (`EDGE_CONFIG`), validated once at start-up with errors that name the key.
use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub name: String,
    /// Environment variable holding the client's key.
    pub key_env: Option<String>,
    /// Hex SHA-256 of the client's key, for configs that must not hold the key itself.
    pub key_sha256: Option<String>,
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
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            eject_after: 3,
            eject_ms: 10_000,
            probe_interval_ms: 5_000,
            models_ttl_ms: 60_000,
        }
    }
}

/// The `EDGE_CONFIG` file as written by the user.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
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
    pub controller: Option<ControllerLink>,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
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
}

#[derive(Debug, Clone)]
pub struct ResolvedClient {
    pub name: String,
    pub key_sha256: [u8; 32],
}

/// Everything the edge runs with, after environment and file are merged and checked.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub listen: String,
    pub egress_listen: String,
    pub default_provider: String,
    pub max_body_bytes: usize,
    pub admin_token_sha256: Option<[u8; 32]>,
    pub trust_client_id_header: bool,
    pub service_names: HashSet<String>,
    pub dashboard_url: Option<String>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub controller: Option<(String, String)>,
    pub timeouts: TimeoutConfig,
    pub health: HealthConfig,
    pub providers: Vec<ResolvedProvider>,
    pub clients: Vec<ResolvedClient>,
    pub mcp: aibox_mcp::McpConfig,
    pub egress: egress::EgressConfig,
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
        let egress_listen = env
            .var("EGRESS_LISTEN")
            .or(file.egress.listen.clone())
            .unwrap_or_else(|| "0.0.0.0:3128".into());
        check_socket_addr("EGRESS_LISTEN", &egress_listen)?;

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
                let parsed = reqwest::Url::parse(&u)
                    .map_err(|e| invalid(&ukey, format!("{u:?} is not a URL: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(invalid(&ukey, format!("{u:?} must be http or https")));
                }
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
            providers.push(ResolvedProvider {
                name: p.name.clone(),
                kind: p.kind,
                endpoints,
                api_key,
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

        let mut clients = Vec::new();
        let mut client_names = HashSet::new();
        for (i, c) in file.clients.iter().enumerate() {
            let key = format!("clients[{i}]");
            if c.name.is_empty() || c.name == "anonymous" || c.name == "other" {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("{:?} is reserved or empty", c.name),
                ));
            }
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
                (None, Some(hexed)) => {
                    let bytes = hex::decode(hexed)
                        .ok()
                        .filter(|b| b.len() == 32)
                        .ok_or_else(|| {
                            invalid(format!("{key}.key_sha256"), "must be 64 hex digits")
                        })?;
                    bytes.try_into().expect("length checked")
                }
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
            });
        }

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

        let mut service_names: HashSet<String> = file.service_names.iter().cloned().collect();
        service_names.extend(client_names);

        Ok(Self {
            listen,
            egress_listen,
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
            controller,
            timeouts: file.timeouts.clone(),
            health: file.health.clone(),
            providers,
            clients,
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
                ..file.mcp.clone()
            },
            egress: file.egress.clone(),
        })
    }
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
    fn default_provider_must_exist() {
        let err = EdgeConfig::resolve(FileConfig::default(), &env(&[("DEFAULT_PROVIDER", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("default_provider:"), "{err}");
    }
}
