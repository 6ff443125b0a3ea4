//! Who is calling, and under which policy: the client's key (`Authorization: Bearer`) mapped to
//! a configured name, from the edge's TOML (`[[clients]]`) and the keys file
//! (`data/edge/clients.toml`, re-read whenever it changes, no restart).
//!
//! Architecture Invariant: identity comes from the key alone, compared in constant time against
//! SHA-256 digests. `X-Client-ID` counts only when the config says the network is trusted;
//! `X-Service-Name` only ever labels metrics, and unknown names fold into `other`.
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::config::{sha256, ConfigError, EdgeConfig, ProcessEnv, ResolvedClient};
use crate::keys;
use crate::policy::{Admission, ClientState, Policy, Refusal, Usage};

pub const ANONYMOUS: &str = "anonymous";

/// How often the keys file is looked at; an unknown key also triggers a look (at most every
/// `MISS_RECHECK`), so a key made a moment ago works on its first request.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
const MISS_RECHECK: Duration = Duration::from_millis(20);

/// The clients in force right now; replaced as a whole when the keys file changes.
struct Directory {
    keyed: Vec<([u8; 32], Arc<ClientState>)>,
    by_name: HashMap<String, Arc<ClientState>>,
    anonymous: Arc<ClientState>,
    /// `[anonymous]` was set somewhere (else the zero-config open default applies).
    anonymous_configured: bool,
    label_names: HashSet<String>,
    /// Where each client is defined, for the admin listing.
    from_file: HashSet<String>,
}

pub struct ClientDirectory {
    current: RwLock<Arc<Directory>>,
    toml_clients: Vec<ResolvedClient>,
    toml_anonymous: Option<Policy>,
    service_names: HashSet<String>,
    file: Option<PathBuf>,
    stamp: Mutex<(Option<(SystemTime, u64)>, Instant)>,
    usage: Mutex<HashMap<String, Arc<Usage>>>,
    admin: Option<[u8; 32]>,
    trust_client_id_header: bool,
    /// Limits shared with the other replicas (`AIBOX_REDIS_URL`), handed to every client.
    shared: Option<Arc<aibox_limits::SharedLimits>>,
}

/// The caller of one request, as the edge resolved it.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The configured client name, `admin`, or `anonymous`.
    pub name: String,
    pub admin: bool,
    /// Bounded label for metrics and stats.
    pub label: String,
    /// A bearer key was sent (so a 401 can say "not valid" rather than "missing").
    pub key_presented: bool,
    /// The policy and limiters this request is held to (none for the admin key).
    pub state: Option<Arc<ClientState>>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("name", &self.name)
            .field("admin", &self.admin)
            .finish()
    }
}

impl ClientIdentity {
    /// Whether this caller may use `provider`'s `model` (the provider's own name for it).
    pub fn allows_model(&self, provider: &str, model: &str) -> bool {
        self.state
            .as_ref()
            .is_none_or(|s| s.policy.allows_model(provider, model))
    }

    pub fn allows_alias(&self, alias: &str) -> bool {
        self.state
            .as_ref()
            .is_none_or(|s| s.policy.allows_alias(alias))
    }

    /// Admission to a governed route: 401 when keys are required and this caller has none,
    /// then the client's limits. The admission is held until the response is written.
    pub async fn admit(&self) -> Result<Option<Admission>, Refusal> {
        self.authenticate()?;
        match &self.state {
            Some(state) => state.admit().await.map(Some),
            None => Ok(None),
        }
    }

    /// 401 when this caller is anonymous and anonymous may do nothing (keys are required).
    pub fn authenticate(&self) -> Result<(), Refusal> {
        match &self.state {
            // By the policy's owner, not the name: a trusted `X-Client-ID` naming no configured
            // client still has anonymous's policy, and so still needs a key.
            Some(state) if state.name == ANONYMOUS && state.policy.allows_nothing() => {
                Err(Refusal::Unauthenticated {
                    key_presented: self.key_presented,
                })
            }
            _ => Ok(()),
        }
    }

    /// The MCP servers this caller may use, for the hub (`None`: every server).
    pub fn server_grant(&self) -> Option<Arc<dyn aibox_mcp::ServerGrant>> {
        let state = self.state.as_ref()?;
        state.policy.mcp_servers.as_ref()?;
        Some(state.clone() as Arc<dyn aibox_mcp::ServerGrant>)
    }

    /// Tokens of a finished response, for the token budget and the usage table.
    pub async fn finished(&self, tokens: u64) {
        if let Some(state) = &self.state {
            state.charge(tokens).await;
            state.usage.record(1, tokens);
        }
    }
}

/// One row of the admin listing (`GET /api/edge/keys`).
#[derive(Debug, serde::Serialize)]
pub struct ClientSummary {
    pub name: String,
    /// `file` (the keys file: revocable) or `config` (the edge's TOML).
    pub source: &'static str,
    pub models: Option<Vec<String>>,
    pub mcp_servers: Option<Vec<String>>,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub concurrency: Option<u32>,
    pub requests_hour: u64,
    pub tokens_hour: u64,
    pub requests_day: u64,
    pub tokens_day: u64,
}

impl ClientDirectory {
    /// The TOML's clients plus the keys file's; a broken keys file at start-up is an error.
    pub fn new(config: &EdgeConfig) -> Result<Self, ConfigError> {
        let dir = Self {
            current: RwLock::new(Arc::new(Directory {
                keyed: Vec::new(),
                by_name: HashMap::new(),
                anonymous: Arc::new(ClientState::new(
                    ANONYMOUS.into(),
                    Policy::open(),
                    Arc::default(),
                )),
                anonymous_configured: false,
                label_names: HashSet::new(),
                from_file: HashSet::new(),
            })),
            toml_clients: config.clients.clone(),
            toml_anonymous: config.anonymous.clone(),
            service_names: config.service_names.clone(),
            file: config.clients_file.clone(),
            stamp: Mutex::new((None, Instant::now())),
            usage: Mutex::new(HashMap::new()),
            admin: config.admin_token_sha256,
            trust_client_id_header: config.trust_client_id_header,
            shared: config.shared_limits.clone(),
        };
        let stamp = dir.file_stamp();
        let file = dir.read_file()?;
        dir.install(file);
        dir.stamp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0 = stamp;
        Ok(dir)
    }

    /// `[anonymous]` is set in the TOML or the keys file.
    pub fn anonymous_configured(&self) -> bool {
        self.snapshot().anonymous_configured
    }

    pub fn keys_file(&self) -> Option<&std::path::Path> {
        self.file.as_deref()
    }

    fn snapshot(&self) -> Arc<Directory> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn file_stamp(&self) -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(self.file.as_ref()?).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    fn read_file(&self) -> Result<crate::config::ClientsFile, ConfigError> {
        match &self.file {
            Some(path) => keys::read(path),
            None => Ok(Default::default()),
        }
    }

    fn usage_of(&self, name: &str) -> Arc<Usage> {
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Builds and swaps in the directory for `file`; fails (keeping the old one) on a bad file.
    fn install(&self, file: crate::config::ClientsFile) {
        self.try_install(file)
            .unwrap_or_else(|e| tracing::error!(error = %e, "keys file not applied"));
    }

    fn try_install(&self, file: crate::config::ClientsFile) -> Result<(), ConfigError> {
        let from_file_clients =
            crate::config::resolve_clients(&file.clients, &ProcessEnv, "clients")
                .map_err(|e| self.in_file(e))?;
        let file_anonymous = file
            .anonymous
            .as_ref()
            .map(|p| p.resolve("anonymous"))
            .transpose()
            .map_err(|e| self.in_file(e))?;
        let old = self.snapshot();
        let state_for = |name: &str, policy: &Policy| -> Arc<ClientState> {
            let reuse = if name == ANONYMOUS {
                Some(old.anonymous.clone())
            } else {
                old.by_name.get(name).cloned()
            };
            match reuse {
                Some(s) if &s.policy == policy => s,
                _ => Arc::new(ClientState::with_shared(
                    name.to_owned(),
                    policy.clone(),
                    self.usage_of(name),
                    self.shared.clone(),
                )),
            }
        };
        let mut keyed = Vec::new();
        let mut by_name = HashMap::new();
        let mut from_file = HashSet::new();
        for (c, in_file) in self
            .toml_clients
            .iter()
            .map(|c| (c, false))
            .chain(from_file_clients.iter().map(|c| (c, true)))
        {
            if by_name.contains_key(&c.name) {
                tracing::warn!(client = %c.name, "client defined in both the edge config and the keys file; the edge config's entry counts");
                continue;
            }
            let state = state_for(&c.name, &c.policy);
            keyed.push((c.key_sha256, state.clone()));
            by_name.insert(c.name.clone(), state);
            if in_file {
                from_file.insert(c.name.clone());
            }
        }
        let anonymous_policy = file_anonymous.or(self.toml_anonymous.clone());
        let anonymous_configured = anonymous_policy.is_some();
        let anonymous = state_for(ANONYMOUS, &anonymous_policy.unwrap_or_default());
        let mut label_names = self.service_names.clone();
        label_names.extend(by_name.keys().cloned());
        let dir = Directory {
            keyed,
            by_name,
            anonymous,
            anonymous_configured,
            label_names,
            from_file,
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(dir);
        Ok(())
    }

    fn in_file(&self, e: ConfigError) -> ConfigError {
        match e {
            ConfigError::Invalid { key, message } => ConfigError::Invalid {
                key: format!(
                    "{}: {key}",
                    self.file
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ),
                message,
            },
            e => e,
        }
    }

    /// Re-reads the keys file if it changed since the last look. True when it was applied.
    pub fn reload_if_changed(&self) -> bool {
        if self.file.is_none() {
            return false;
        }
        let now = self.file_stamp();
        {
            let mut stamp = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            stamp.1 = Instant::now();
            if stamp.0 == now {
                return false;
            }
            stamp.0 = now;
        }
        match self.read_file().and_then(|f| self.try_install(f)) {
            Ok(()) => {
                tracing::info!(clients = self.snapshot().keyed.len(), "keys file reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "keys file not applied; the previous keys stay in force");
                false
            }
        }
    }

    /// Looks at the keys file every `WATCH_INTERVAL` for the life of the process.
    pub async fn run_file_watch(self: Arc<Self>) {
        if self.file.is_none() {
            return;
        }
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            self.reload_if_changed();
        }
    }

    pub fn identify(&self, headers: &HeaderMap) -> ClientIdentity {
        let presented = presented_key(headers).map(|k| sha256(k.as_bytes()));
        let mut dir = self.snapshot();
        let mut found = presented.and_then(|d| self.match_key(&dir, &d));
        if found.is_none() && presented.is_some() && self.file.is_some() {
            // Maybe a key made a moment ago: look at the file now (rate-bounded).
            let due = self
                .stamp
                .lock()
                .map(|s| s.1.elapsed() >= MISS_RECHECK)
                .unwrap_or(false);
            if due && self.reload_if_changed() {
                dir = self.snapshot();
                found = presented.and_then(|d| self.match_key(&dir, &d));
            }
        }
        let (mut name, admin, mut state) = match found {
            Some(Matched::Admin) => ("admin".to_owned(), true, None),
            Some(Matched::Client(s)) => (s.name.clone(), false, Some(s)),
            None => (ANONYMOUS.to_owned(), false, Some(dir.anonymous.clone())),
        };
        if name == ANONYMOUS && self.trust_client_id_header {
            if let Some(claimed) = header(headers, "x-client-id") {
                state = Some(
                    dir.by_name
                        .get(claimed)
                        .cloned()
                        .unwrap_or_else(|| dir.anonymous.clone()),
                );
                name = claimed.to_owned();
            }
        }
        let label = if name != ANONYMOUS {
            bounded(&dir, &name)
        } else {
            match header(headers, "x-service-name") {
                Some(s) => bounded(&dir, s),
                None => ANONYMOUS.to_owned(),
            }
        };
        ClientIdentity {
            name,
            admin,
            label,
            key_presented: presented.is_some(),
            state,
        }
    }

    fn match_key(&self, dir: &Directory, digest: &[u8; 32]) -> Option<Matched> {
        // Compare against every key so the time taken does not say which one matched.
        let mut found: Option<Matched> = None;
        for (key, state) in &dir.keyed {
            if bool::from(digest.ct_eq(key)) && found.is_none() {
                found = Some(Matched::Client(state.clone()));
            }
        }
        if let Some(admin_key) = &self.admin {
            if bool::from(digest.ct_eq(admin_key)) {
                found = Some(Matched::Admin);
            }
        }
        found
    }

    /// Every client with its policy and use over the last hour and day (anonymous last).
    pub fn summaries(&self) -> Vec<ClientSummary> {
        let dir = self.snapshot();
        let mut names: Vec<&String> = dir.by_name.keys().collect();
        names.sort();
        let row = |name: &str, state: &ClientState, source| {
            let (requests_hour, tokens_hour) = state.usage.total(60);
            let (requests_day, tokens_day) = state.usage.total(24 * 60);
            let p = &state.policy;
            ClientSummary {
                name: name.to_owned(),
                source,
                models: p.models.clone(),
                mcp_servers: p.mcp_servers.clone(),
                rpm: p.rpm.map(|n| n.get()),
                tpm: p.tpm.map(|n| n.get()),
                concurrency: p.concurrency.map(|n| n.get()),
                requests_hour,
                tokens_hour,
                requests_day,
                tokens_day,
            }
        };
        let mut out: Vec<ClientSummary> = names
            .into_iter()
            .map(|n| {
                let source = if dir.from_file.contains(n) {
                    "file"
                } else {
                    "config"
                };
                row(n, &dir.by_name[n], source)
            })
            .collect();
        out.push(row(ANONYMOUS, &dir.anonymous, "policy"));
        out
    }

    /// Whether `name` comes from the edge's TOML (so the keys file cannot revoke it).
    pub fn defined_in_config(&self, name: &str) -> bool {
        self.toml_clients.iter().any(|c| c.name == name)
    }
}

enum Matched {
    Admin,
    Client(Arc<ClientState>),
}

fn bounded(dir: &Directory, name: &str) -> String {
    if name == "admin" || dir.label_names.contains(name) {
        name.to_owned()
    } else {
        "other".to_owned()
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The key a client presents: `Authorization: Bearer` (OpenAI and Ollama clients), else
/// `x-api-key` (Anthropic's SDKs and Claude Code send the key there).
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    bearer(headers).or_else(|| header(headers, "x-api-key"))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = header(headers, "authorization")?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EdgeConfig, Env, FileConfig};

    struct E;
    impl Env for E {
        fn var(&self, key: &str) -> Option<String> {
            match key {
                "N8N_KEY" => Some("n8n-secret-key".into()),
                "AIBOX_ADMIN_TOKEN" => Some("admin-token-0123456789".into()),
                _ => None,
            }
        }
    }

    fn dir(trust: bool) -> ClientDirectory {
        let mut file: FileConfig = toml::from_str(
            "service_names=['open-webui']\n[[clients]]\nname='n8n'\nkey_env='N8N_KEY'\n",
        )
        .unwrap();
        file.trust_client_id_header = trust;
        ClientDirectory::new(&EdgeConfig::resolve(file, &E).unwrap()).unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_key_names_the_client() {
        let id = dir(false).identify(&headers(&[("authorization", "Bearer n8n-secret-key")]));
        assert_eq!((id.name.as_str(), id.admin), ("n8n", false));
    }

    #[test]
    fn an_anthropic_x_api_key_names_the_client() {
        let id = dir(false).identify(&headers(&[("x-api-key", "n8n-secret-key")]));
        assert_eq!((id.name.as_str(), id.admin), ("n8n", false));
    }

    #[test]
    fn admin_token_is_admin() {
        let id = dir(false).identify(&headers(&[(
            "authorization",
            "Bearer admin-token-0123456789",
        )]));
        assert!(id.admin);
    }

    #[test]
    fn client_id_header_is_ignored_unless_trusted() {
        let h = headers(&[("x-client-id", "n8n")]);
        assert_eq!(dir(false).identify(&h).name, ANONYMOUS);
        assert_eq!(dir(true).identify(&h).name, "n8n");
    }

    #[test]
    fn an_unknown_claimed_client_id_is_still_anonymous_for_policy() {
        let mut file: FileConfig = toml::from_str(
            "trust_client_id_header = true\n[anonymous]\nmodels = []\nmcp_servers = []\n",
        )
        .unwrap();
        file.trust_client_id_header = true;
        let d = ClientDirectory::new(&EdgeConfig::resolve(file, &E).unwrap()).unwrap();
        let id = d.identify(&headers(&[("x-client-id", "made-up")]));
        assert_eq!(id.name, "made-up");
        assert!(id.authenticate().is_err());
    }

    #[test]
    fn service_names_are_bounded_labels() {
        let d = dir(false);
        let known = d.identify(&headers(&[("x-service-name", "open-webui")]));
        let unknown = d.identify(&headers(&[("x-service-name", "made-up-123")]));
        assert_eq!(
            (known.name.as_str(), known.label.as_str()),
            (ANONYMOUS, "open-webui")
        );
        assert_eq!(unknown.label, "other");
    }

    #[tokio::test]
    async fn the_keys_file_is_reread_and_policy_follows() {
        let dir = std::env::temp_dir().join(format!("aibox-clients-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("clients.toml");
        let mut file: FileConfig =
            toml::from_str("[anonymous]\nmodels = []\nmcp_servers = []\n").unwrap();
        file.clients_file = Some(path.display().to_string());
        let d = ClientDirectory::new(&EdgeConfig::resolve(file, &E).unwrap()).unwrap();
        let anon = d.identify(&headers(&[]));
        assert!(matches!(
            anon.admit().await,
            Err(Refusal::Unauthenticated {
                key_presented: false
            })
        ));

        let key = crate::keys::add(
            &path,
            crate::config::ClientConfig {
                name: "fresh".into(),
                models: Some(vec!["ollama/llama3*".into()]),
                ..Default::default()
            },
            None,
        )
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {key}").parse().unwrap());
        // A key made a moment ago is found on its first request (the miss triggers a look).
        std::thread::sleep(MISS_RECHECK);
        let id = d.identify(&h);
        assert_eq!(id.name, "fresh");
        assert!(id.admit().await.is_ok());
        assert!(id.allows_model("ollama", "llama3:8b") && !id.allows_model("ollama", "qwen2.5"));
        assert_eq!(d.summaries()[0].name, "fresh");

        crate::keys::revoke(&path, "fresh").unwrap();
        d.reload_if_changed();
        let gone = d.identify(&h);
        assert_eq!(gone.name, ANONYMOUS);
        assert!(matches!(
            gone.admit().await,
            Err(Refusal::Unauthenticated {
                key_presented: true
            })
        ));
    }
}
