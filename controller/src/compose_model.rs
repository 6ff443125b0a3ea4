//! The compose project as its compose file describes it: the services of every profile, so the
//! controller can list those never created and create one (`up`) the way `docker compose up -d
//! <service>` would.
//!
//! The controller has no compose CLI and never reads the user's compose file with its relative
//! paths and `${VAR}`s: `./aibox up` writes the *resolved* model (`docker compose config`, every
//! profile, paths absolute, variables substituted) to `CONTROLLER_COMPOSE_MODEL`. Both compose
//! generations' output is read (v1's short strings, v2's long forms). A key the controller cannot
//! turn into a container setting is refused with an error naming it, never silently dropped.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bollard::models::{
    ContainerCreateBody, DeviceMapping, DeviceRequest, EndpointSettings, HealthConfig, HostConfig,
    HostConfigLogConfig, Ipam, IpamConfig, NetworkCreateRequest, PortBinding, RestartPolicy,
    RestartPolicyNameEnum, VolumeCreateRequest,
};
use serde_json::{Map, Value};

use crate::engine::{PROJECT_LABEL, SERVICE_LABEL};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("the compose model {path} cannot be read: {why}")]
    Read { path: String, why: String },
    #[error("{key}: {why}")]
    Unsupported { key: String, why: String },
}

fn unsupported(key: impl Into<String>, why: impl Into<String>) -> ModelError {
    ModelError::Unsupported {
        key: key.into(),
        why: why.into(),
    }
}

/// `docker compose config` output, parsed.
#[derive(Debug, Clone, Default)]
pub struct ComposeModel {
    services: BTreeMap<String, Map<String, Value>>,
    networks: Map<String, Value>,
    volumes: Map<String, Value>,
}

/// What creating one service takes: its networks and volumes (created when missing), the
/// container (created on its first network) and the networks it joins before it starts.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub body: ContainerCreateBody,
    pub networks: Vec<NetworkCreateRequest>,
    pub volumes: Vec<VolumeCreateRequest>,
    /// Networks joined after create (the engine takes one endpoint at create before API 1.44).
    pub more_networks: Vec<(String, EndpointSettings)>,
}

/// Keys of a service that the controller does not turn into settings, with the reason.
const IGNORED: &[&str] = &[
    "build",      // images are built by ./aibox up, never by the controller
    "profiles",   // which services exist is the question here, not a setting
    "depends_on", // `up` acts on one service, like `docker compose up -d --no-deps <service>`
    "pull_policy",
];

fn as_object<'a>(v: &'a Value, key: &str) -> Result<&'a Map<String, Value>, ModelError> {
    v.as_object()
        .ok_or_else(|| unsupported(key, "expected a mapping"))
}

fn as_str(v: &Value, key: &str) -> Result<String, ModelError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(unsupported(key, "expected a string")),
    }
}

fn as_bool(v: &Value, key: &str) -> Result<bool, ModelError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" => Ok(true),
        Value::String(s) if s == "false" => Ok(false),
        _ => Err(unsupported(key, "expected true or false")),
    }
}

fn as_i64(v: &Value, key: &str) -> Result<i64, ModelError> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| unsupported(key, "expected a whole number"))
}

fn str_list(v: &Value, key: &str) -> Result<Vec<String>, ModelError> {
    match v {
        Value::Array(a) => a.iter().map(|x| as_str(x, key)).collect(),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Null => Ok(vec![]),
        _ => Err(unsupported(key, "expected a list")),
    }
}

/// A command or entrypoint. Compose splits a string with shell rules; the controller takes the
/// list form only rather than guess.
fn argv(v: &Value, key: &str) -> Result<Vec<String>, ModelError> {
    match v {
        Value::Array(a) => a.iter().map(|x| as_str(x, key)).collect(),
        _ => Err(unsupported(
            key,
            "only the list form is supported (write [\"a\", \"b\"] instead of a string)",
        )),
    }
}

/// `KEY=value` pairs from a mapping or a list (a null value means "unset": left out).
fn key_values(v: &Value, key: &str) -> Result<Vec<(String, String)>, ModelError> {
    match v {
        Value::Object(m) => m
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| Ok((k.clone(), as_str(v, &format!("{key}.{k}"))?)))
            .collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(|x| {
                let s = as_str(x, key).ok()?;
                let (k, v) = s.split_once('=')?;
                Some(Ok((k.to_string(), v.to_string())))
            })
            .collect(),
        Value::Null => Ok(vec![]),
        _ => Err(unsupported(
            key,
            "expected a mapping or a list of KEY=value",
        )),
    }
}

/// Go durations as compose writes them (`1m30s`, `90s`, `500ms`), in nanoseconds.
pub fn duration_ns(v: &Value, key: &str) -> Result<i64, ModelError> {
    let s = match v {
        Value::Number(n) => return Ok(n.as_i64().unwrap_or(0) * 1_000_000_000),
        Value::String(s) => s.trim().to_string(),
        _ => return Err(unsupported(key, "expected a duration like 10s")),
    };
    let bad = || unsupported(key, format!("{s:?} is not a duration like 1m30s"));
    let mut total: f64 = 0.0;
    let mut rest = s.as_str();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += number * factor;
    }
    Ok(total as i64)
}

/// Sizes as compose writes them (`512m`, `16g`, `67108864`), in bytes.
pub fn bytes(v: &Value, key: &str) -> Result<i64, ModelError> {
    let s = as_str(v, key)?.trim().to_ascii_lowercase();
    let bad = || unsupported(key, format!("{s:?} is not a size like 512m"));
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    let n: f64 = digits.parse().map_err(|_| bad())?;
    let factor: f64 = match unit.trim_end_matches('b') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    Ok((n * factor) as i64)
}

impl ComposeModel {
    pub fn load(path: &Path) -> Result<ComposeModel, ModelError> {
        let read_err = |why: String| ModelError::Read {
            path: path.display().to_string(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| read_err(e.to_string()))?;
        Self::parse(&text).map_err(|e| match e {
            ModelError::Read { why, .. } => read_err(why),
            other => other,
        })
    }

    /// The text of `docker compose config` (YAML, or JSON from `--format json`).
    pub fn parse(text: &str) -> Result<ComposeModel, ModelError> {
        let mut value: Value = serde_yaml::from_str(text).map_err(|e| ModelError::Read {
            path: String::new(),
            why: e.to_string(),
        })?;
        unescape_dollars(&mut value);
        let top = as_object(&value, "(top level)")?;
        let mut services = BTreeMap::new();
        if let Some(s) = top.get("services") {
            for (name, spec) in as_object(s, "services")? {
                services.insert(
                    name.clone(),
                    as_object(spec, &format!("services.{name}"))?.clone(),
                );
            }
        }
        let section = |key: &str| -> Map<String, Value> {
            top.get(key)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        Ok(ComposeModel {
            services,
            networks: section("networks"),
            volumes: section("volumes"),
        })
    }

    pub fn service_names(&self) -> impl Iterator<Item = &String> {
        self.services.keys()
    }

    pub fn has(&self, service: &str) -> bool {
        self.services.contains_key(service)
    }

    pub fn image(&self, service: &str) -> Option<String> {
        self.services
            .get(service)?
            .get("image")?
            .as_str()
            .map(String::from)
    }

    pub fn profiles(&self, service: &str) -> Vec<String> {
        self.services
            .get(service)
            .and_then(|s| s.get("profiles"))
            .and_then(|p| str_list(p, "profiles").ok())
            .unwrap_or_default()
    }

    fn network_name(&self, project: &str, key: &str) -> String {
        let def = self.networks.get(key).and_then(Value::as_object);
        def.and_then(|d| d.get("name"))
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| format!("{project}_{key}"))
    }

    fn network_request(
        &self,
        project: &str,
        key: &str,
    ) -> Result<Option<NetworkCreateRequest>, ModelError> {
        let path = format!("networks.{key}");
        let empty = Map::new();
        let def = match self.networks.get(key) {
            Some(Value::Object(m)) => m,
            Some(Value::Null) | None => &empty,
            Some(_) => return Err(unsupported(path, "expected a mapping")),
        };
        if def
            .get("external")
            .is_some_and(|e| e.as_bool() == Some(true) || e.is_object())
        {
            return Ok(None); // someone else's network: it must exist
        }
        let mut ipam = None;
        if let Some(i) = def.get("ipam") {
            let i = as_object(i, &format!("{path}.ipam"))?;
            let mut configs = Vec::new();
            for c in i
                .get("config")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let c = as_object(c, &format!("{path}.ipam.config"))?;
                configs.push(IpamConfig {
                    subnet: c.get("subnet").and_then(Value::as_str).map(String::from),
                    gateway: c.get("gateway").and_then(Value::as_str).map(String::from),
                    ip_range: c.get("ip_range").and_then(Value::as_str).map(String::from),
                    ..Default::default()
                });
            }
            ipam = Some(Ipam {
                driver: i.get("driver").and_then(Value::as_str).map(String::from),
                config: Some(configs),
                ..Default::default()
            });
        }
        Ok(Some(NetworkCreateRequest {
            name: self.network_name(project, key),
            driver: def.get("driver").and_then(Value::as_str).map(String::from),
            internal: def
                .get("internal")
                .map(|v| as_bool(v, &format!("{path}.internal")))
                .transpose()?,
            ipam,
            labels: Some(HashMap::from([
                (PROJECT_LABEL.to_string(), project.to_string()),
                ("com.docker.compose.network".to_string(), key.to_string()),
            ])),
            ..Default::default()
        }))
    }

    /// A named volume's engine name and, unless external, how to create it.
    fn volume(&self, project: &str, key: &str) -> (String, Option<VolumeCreateRequest>) {
        let def = self.volumes.get(key).and_then(Value::as_object);
        let external = def
            .and_then(|d| d.get("external"))
            .is_some_and(|e| e.as_bool() == Some(true) || e.is_object());
        let name = def
            .and_then(|d| d.get("name"))
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| {
                if external {
                    key.to_string()
                } else {
                    format!("{project}_{key}")
                }
            });
        let create = (!external).then(|| VolumeCreateRequest {
            name: Some(name.clone()),
            driver: def
                .and_then(|d| d.get("driver"))
                .and_then(Value::as_str)
                .map(String::from),
            labels: Some(HashMap::from([
                (PROJECT_LABEL.to_string(), project.to_string()),
                ("com.docker.compose.volume".to_string(), key.to_string()),
            ])),
            ..Default::default()
        });
        (name, create)
    }

    /// The container `docker compose up -d <service>` would create, as Engine API settings.
    pub fn container_spec(
        &self,
        project: &str,
        service: &str,
    ) -> Result<ContainerSpec, ModelError> {
        let svc = self.services.get(service).ok_or_else(|| {
            unsupported(format!("services.{service}"), "not in the compose model")
        })?;
        let key = |k: &str| format!("services.{service}.{k}");
        let mut body = ContainerCreateBody::default();
        let mut host = HostConfig::default();
        let mut labels = HashMap::from([
            (PROJECT_LABEL.to_string(), project.to_string()),
            (SERVICE_LABEL.to_string(), service.to_string()),
            (
                "com.docker.compose.container-number".to_string(),
                "1".to_string(),
            ),
            ("com.docker.compose.oneoff".to_string(), "False".to_string()),
            // Who made it: compose recreates it at its next `up` (no config-hash), which is harmless.
            ("com.aibox.created-by".to_string(), "controller".to_string()),
        ]);
        let mut name = format!("{project}-{service}-1");
        let mut networks_out = Vec::new();
        let mut volumes_out = Vec::new();
        let mut endpoints: Vec<(String, EndpointSettings)> = Vec::new();
        let mut binds = Vec::new();
        let mut exposed = Vec::new();
        let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        let mut saw_networks = false;
        for (k, v) in svc {
            let path = key(k);
            match k.as_str() {
                k if IGNORED.contains(&k) => {}
                "image" => body.image = Some(as_str(v, &path)?),
                "container_name" => name = as_str(v, &path)?,
                "command" => body.cmd = Some(argv(v, &path)?),
                "entrypoint" => body.entrypoint = Some(argv(v, &path)?),
                "environment" => {
                    body.env = Some(
                        key_values(v, &path)?
                            .into_iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect(),
                    )
                }
                "labels" => labels.extend(key_values(v, &path)?),
                "user" => body.user = Some(as_str(v, &path)?),
                "working_dir" => body.working_dir = Some(as_str(v, &path)?),
                "hostname" => body.hostname = Some(as_str(v, &path)?),
                "tty" => body.tty = Some(as_bool(v, &path)?),
                "stdin_open" => body.open_stdin = Some(as_bool(v, &path)?),
                "stop_grace_period" => {
                    body.stop_timeout = Some(duration_ns(v, &path)? / 1_000_000_000)
                }
                "stop_signal" => body.stop_signal = Some(as_str(v, &path)?),
                "healthcheck" => body.healthcheck = Some(healthcheck(v, &path)?),
                "read_only" => host.readonly_rootfs = Some(as_bool(v, &path)?),
                "cap_drop" => host.cap_drop = Some(str_list(v, &path)?),
                "cap_add" => host.cap_add = Some(str_list(v, &path)?),
                "security_opt" => host.security_opt = Some(str_list(v, &path)?),
                "group_add" => host.group_add = Some(str_list(v, &path)?),
                "init" => host.init = Some(as_bool(v, &path)?),
                "ipc" => host.ipc_mode = Some(as_str(v, &path)?),
                "shm_size" => host.shm_size = Some(bytes(v, &path)?),
                "mem_limit" => host.memory = Some(bytes(v, &path)?),
                "pids_limit" => host.pids_limit = Some(as_i64(v, &path)?),
                "network_mode" => host.network_mode = Some(as_str(v, &path)?),
                "restart" => host.restart_policy = Some(restart(v, &path)?),
                "logging" => host.log_config = Some(logging(v, &path)?),
                "extra_hosts" => {
                    host.extra_hosts = Some(match v {
                        Value::Object(_) => key_values(v, &path)?
                            .into_iter()
                            .map(|(h, ip)| format!("{h}:{ip}"))
                            .collect(),
                        _ => str_list(v, &path)?,
                    })
                }
                "tmpfs" => {
                    let mut map = HashMap::new();
                    for t in str_list(v, &path)? {
                        let (dir, opts) = t.split_once(':').unwrap_or((&t, ""));
                        map.insert(dir.to_string(), opts.to_string());
                    }
                    host.tmpfs = Some(map);
                }
                "devices" => {
                    let mut list = Vec::new();
                    for d in str_list(v, &path)? {
                        let mut parts = d.splitn(3, ':');
                        let on_host = parts.next().unwrap_or_default().to_string();
                        let inside = parts.next().unwrap_or(&on_host).to_string();
                        list.push(DeviceMapping {
                            path_on_host: Some(on_host),
                            path_in_container: Some(inside),
                            cgroup_permissions: Some(parts.next().unwrap_or("rwm").to_string()),
                        });
                    }
                    host.devices = Some(list);
                }
                "deploy" => host.device_requests = deploy_devices(v, &path)?,
                "volumes" => {
                    for (i, vol) in v.as_array().into_iter().flatten().enumerate() {
                        let vpath = format!("{path}[{i}]");
                        let (kind, source, target, ro) = volume_entry(vol, &vpath)?;
                        match kind.as_str() {
                            "bind" => binds.push(bind(&source, &target, ro)),
                            "volume" if source.is_empty() => {
                                // An anonymous volume: the engine makes one.
                                body.volumes = Some(
                                    body.volumes.take().into_iter().flatten().chain([target]).collect(),
                                );
                            }
                            "volume" => {
                                let (vname, create) = self.volume(project, &source);
                                volumes_out.extend(create);
                                binds.push(bind(&vname, &target, ro));
                            }
                            other => {
                                return Err(unsupported(vpath, format!("volume type {other:?} is not supported")))
                            }
                        }
                    }
                }
                "ports" => {
                    for (i, p) in v.as_array().into_iter().flatten().enumerate() {
                        let (container_port, binding) = port_entry(p, &format!("{path}[{i}]"))?;
                        exposed.push(container_port.clone());
                        if let Some(b) = binding {
                            port_bindings
                                .entry(container_port)
                                .or_insert_with(|| Some(vec![]))
                                .get_or_insert_with(Vec::new)
                                .push(b);
                        }
                    }
                }
                "expose" => {
                    for p in str_list(v, &path)? {
                        exposed.push(if p.contains('/') { p } else { format!("{p}/tcp") });
                    }
                }
                "networks" => {
                    saw_networks = true;
                    let entries: Vec<(String, Value)> = match v {
                        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                        Value::Array(a) => a
                            .iter()
                            .filter_map(|x| x.as_str().map(|s| (s.to_string(), Value::Null)))
                            .collect(),
                        _ => return Err(unsupported(path, "expected a mapping or a list")),
                    };
                    for (net, settings) in entries {
                        let npath = format!("{path}.{net}");
                        networks_out.extend(self.network_request(project, &net)?);
                        let mut endpoint = EndpointSettings {
                            aliases: Some(vec![service.to_string()]),
                            ..Default::default()
                        };
                        if let Value::Object(s) = &settings {
                            for (sk, sv) in s {
                                match sk.as_str() {
                                    "aliases" => endpoint
                                        .aliases
                                        .get_or_insert_with(Vec::new)
                                        .extend(str_list(sv, &format!("{npath}.aliases"))?),
                                    "priority" => {}
                                    other => {
                                        return Err(unsupported(
                                            format!("{npath}.{other}"),
                                            "not supported by the controller",
                                        ))
                                    }
                                }
                            }
                        }
                        endpoints.push((self.network_name(project, &net), endpoint));
                    }
                }
                other => {
                    return Err(unsupported(
                        key(other),
                        "not supported by the controller's `up`; start this service with `./aibox up` (AIBOX_PROFILES) instead",
                    ))
                }
            }
        }
        if body.image.is_none() {
            return Err(unsupported(
                key("image"),
                "a service without an image cannot be created here",
            ));
        }
        // Compose's default: the project's `default` network.
        if !saw_networks && host.network_mode.is_none() {
            networks_out.extend(self.network_request(project, "default")?);
            endpoints.push((
                self.network_name(project, "default"),
                EndpointSettings {
                    aliases: Some(vec![service.to_string()]),
                    ..Default::default()
                },
            ));
        }
        if !binds.is_empty() {
            host.binds = Some(binds);
        }
        if !exposed.is_empty() {
            exposed.sort();
            exposed.dedup();
            body.exposed_ports = Some(exposed);
        }
        if !port_bindings.is_empty() {
            host.port_bindings = Some(port_bindings);
        }
        let mut more_networks = endpoints;
        if let Some((first, endpoint)) =
            (!more_networks.is_empty()).then(|| more_networks.remove(0))
        {
            host.network_mode = Some(first.clone());
            body.networking_config = Some(bollard::models::NetworkingConfig {
                endpoints_config: Some(HashMap::from([(first, endpoint)])),
            });
        }
        body.labels = Some(labels);
        body.host_config = Some(host);
        Ok(ContainerSpec {
            name,
            body,
            networks: networks_out,
            volumes: volumes_out,
            more_networks,
        })
    }
}

/// `docker compose config` writes a literal `$` as `$$` (its output can be read by compose again);
/// the engine must get the `$` itself.
fn unescape_dollars(v: &mut Value) {
    match v {
        Value::String(s) if s.contains("$$") => *s = s.replace("$$", "$"),
        Value::Array(a) => a.iter_mut().for_each(unescape_dollars),
        Value::Object(m) => m.values_mut().for_each(unescape_dollars),
        _ => {}
    }
}

fn bind(source: &str, target: &str, ro: bool) -> String {
    if ro {
        format!("{source}:{target}:ro")
    } else {
        format!("{source}:{target}")
    }
}

/// One `volumes:` entry: (type, source, target, read only), from v1's `src:dst:mode` or v2's map.
fn volume_entry(v: &Value, key: &str) -> Result<(String, String, String, bool), ModelError> {
    match v {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            let (source, target, mode) = match parts.as_slice() {
                [t] => ("", *t, ""),
                [s, t] => (*s, *t, ""),
                [s, t, m] => (*s, *t, *m),
                _ => {
                    return Err(unsupported(
                        key,
                        format!("{s:?} is not source:target[:mode]"),
                    ))
                }
            };
            let kind = if source.is_empty() || !(source.starts_with('/') || source.starts_with('.'))
            {
                "volume"
            } else {
                "bind"
            };
            let ro = mode.split(',').any(|m| m == "ro");
            Ok((kind.into(), source.into(), target.into(), ro))
        }
        Value::Object(m) => {
            let get = |k: &str| {
                m.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let ro = m
                .get("read_only")
                .is_some_and(|r| r.as_bool() == Some(true));
            Ok((get("type"), get("source"), get("target"), ro))
        }
        _ => Err(unsupported(
            key,
            "expected source:target[:mode] or a mapping",
        )),
    }
}

/// One `ports:` entry: the container port (`8080/tcp`) and its host binding, if published.
fn port_entry(v: &Value, key: &str) -> Result<(String, Option<PortBinding>), ModelError> {
    match v {
        Value::Object(m) => {
            let target = m
                .get("target")
                .map(|t| as_str(t, key))
                .transpose()?
                .unwrap_or_default();
            let proto = m.get("protocol").and_then(Value::as_str).unwrap_or("tcp");
            let published = m.get("published").map(|p| as_str(p, key)).transpose()?;
            let binding = published.filter(|p| !p.is_empty()).map(|p| PortBinding {
                host_ip: m.get("host_ip").and_then(Value::as_str).map(String::from),
                host_port: Some(p),
            });
            Ok((format!("{target}/{proto}"), binding))
        }
        _ => {
            let s = as_str(v, key)?;
            let (spec, proto) = s.rsplit_once('/').unwrap_or((&s, "tcp"));
            // ip:host:container, host:container or container (an IPv6 host ip is bracketed).
            let (ip, rest) = match spec.strip_prefix('[') {
                Some(v6) => {
                    let (ip, rest) = v6
                        .split_once("]:")
                        .ok_or_else(|| unsupported(key, format!("{s:?} is not a port mapping")))?;
                    (Some(ip.to_string()), rest.to_string())
                }
                None => {
                    let parts: Vec<&str> = spec.split(':').collect();
                    if parts.len() == 3 {
                        (
                            Some(parts[0].to_string()),
                            format!("{}:{}", parts[1], parts[2]),
                        )
                    } else {
                        (None, spec.to_string())
                    }
                }
            };
            let (host_port, container) = match rest.split_once(':') {
                Some((h, c)) => (Some(h.to_string()), c.to_string()),
                None => (None, rest.clone()),
            };
            if container.contains('-') || host_port.as_deref().is_some_and(|h| h.contains('-')) {
                return Err(unsupported(
                    key,
                    format!("{s:?}: port ranges are not supported"),
                ));
            }
            let binding = host_port.map(|h| PortBinding {
                host_ip: ip,
                host_port: Some(h),
            });
            Ok((format!("{container}/{proto}"), binding))
        }
    }
}

fn healthcheck(v: &Value, key: &str) -> Result<HealthConfig, ModelError> {
    let m = as_object(v, key)?;
    let mut h = HealthConfig::default();
    if m.get("disable").is_some_and(|d| d.as_bool() == Some(true)) {
        h.test = Some(vec!["NONE".into()]);
        return Ok(h);
    }
    for (k, v) in m {
        let path = format!("{key}.{k}");
        match k.as_str() {
            "test" => {
                h.test = Some(match v {
                    Value::String(s) => vec!["CMD-SHELL".into(), s.clone()],
                    _ => argv(v, &path)?,
                })
            }
            "interval" => h.interval = Some(duration_ns(v, &path)?),
            "timeout" => h.timeout = Some(duration_ns(v, &path)?),
            "start_period" => h.start_period = Some(duration_ns(v, &path)?),
            "start_interval" => h.start_interval = Some(duration_ns(v, &path)?),
            "retries" => h.retries = Some(as_i64(v, &path)?),
            "disable" => {}
            other => {
                return Err(unsupported(
                    format!("{key}.{other}"),
                    "not supported by the controller",
                ))
            }
        }
    }
    Ok(h)
}

fn restart(v: &Value, key: &str) -> Result<RestartPolicy, ModelError> {
    let s = as_str(v, key)?;
    let (name, retries) = s.split_once(':').unwrap_or((&s, ""));
    let name = match name {
        "no" | "" => RestartPolicyNameEnum::NO,
        "always" => RestartPolicyNameEnum::ALWAYS,
        "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
        "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
        other => {
            return Err(unsupported(
                key,
                format!("unknown restart policy {other:?}"),
            ))
        }
    };
    Ok(RestartPolicy {
        name: Some(name),
        maximum_retry_count: retries.parse().ok(),
    })
}

fn logging(v: &Value, key: &str) -> Result<HostConfigLogConfig, ModelError> {
    let m = as_object(v, key)?;
    Ok(HostConfigLogConfig {
        typ: m.get("driver").and_then(Value::as_str).map(String::from),
        config: m
            .get("options")
            .map(|o| key_values(o, &format!("{key}.options")))
            .transpose()?
            .map(|kv| kv.into_iter().collect()),
    })
}

/// `deploy.resources.reservations.devices` (the NVIDIA override); any other `deploy` key is
/// refused, since it would change what the service gets.
fn deploy_devices(v: &Value, key: &str) -> Result<Option<Vec<DeviceRequest>>, ModelError> {
    let m = as_object(v, key)?;
    let mut out = Vec::new();
    for (k, v) in m {
        if k != "resources" {
            return Err(unsupported(
                format!("{key}.{k}"),
                "not supported by the controller",
            ));
        }
        for (rk, rv) in as_object(v, &format!("{key}.resources"))? {
            if rk != "reservations" {
                return Err(unsupported(
                    format!("{key}.resources.{rk}"),
                    "not supported by the controller",
                ));
            }
            for (dk, dv) in as_object(rv, &format!("{key}.resources.reservations"))? {
                let dpath = format!("{key}.resources.reservations.{dk}");
                if dk != "devices" {
                    return Err(unsupported(dpath, "not supported by the controller"));
                }
                for d in dv.as_array().into_iter().flatten() {
                    let d = as_object(d, &dpath)?;
                    let count = match d.get("count") {
                        Some(Value::String(s)) if s == "all" => Some(-1),
                        Some(c) => Some(as_i64(c, &format!("{dpath}.count"))?),
                        None => None,
                    };
                    out.push(DeviceRequest {
                        driver: d.get("driver").and_then(Value::as_str).map(String::from),
                        count,
                        device_ids: d
                            .get("device_ids")
                            .map(|x| str_list(x, &dpath))
                            .transpose()?,
                        capabilities: d
                            .get("capabilities")
                            .map(|c| str_list(c, &dpath).map(|c| vec![c]))
                            .transpose()?,
                        options: None,
                    });
                }
            }
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"
networks:
  front:
    internal: true
    ipam:
      config:
      - subnet: 10.213.0.0/24
services:
  a:
    cap_drop: [ALL]
    command: [sh, -c, 'echo $$HOME']
    environment: {A: '1', B: ''}
    healthcheck: {interval: 5s, start_period: 1m30s, test: [CMD, "true"]}
    image: aibox-test/busybox:1
    mem_limit: 64m
    networks:
      front:
        aliases: [x]
      other: {}
    ports: [127.0.0.1:3000:8080/tcp]
    read_only: true
    restart: unless-stopped
    tmpfs: [/tmp:size=8m]
    volumes: [/srv/data:/data:ro, vol:/v:rw]
    profiles: [extra]
  b:
    image: x
    secrets: [s]
volumes:
  vol: {}
"#;

    #[test]
    fn a_v1_model_becomes_engine_settings() {
        let m = ComposeModel::parse(V1).unwrap();
        assert_eq!(m.profiles("a"), vec!["extra"]);
        let spec = m.container_spec("p", "a").unwrap();
        assert_eq!(spec.name, "p-a-1");
        let host = spec.body.host_config.as_ref().unwrap();
        assert_eq!(host.memory, Some(64 * 1024 * 1024));
        assert_eq!(
            host.binds.as_ref().unwrap(),
            &vec!["/srv/data:/data:ro".to_string(), "p_vol:/v".to_string()]
        );
        assert_eq!(host.tmpfs.as_ref().unwrap()["/tmp"], "size=8m");
        let bound = &host.port_bindings.as_ref().unwrap()["8080/tcp"]
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            (bound.host_ip.as_deref(), bound.host_port.as_deref()),
            (Some("127.0.0.1"), Some("3000"))
        );
        assert_eq!(
            spec.body.healthcheck.as_ref().unwrap().start_period,
            Some(90_000_000_000)
        );
        assert_eq!(host.network_mode.as_deref(), Some("p_front"));
        let first = &spec
            .body
            .networking_config
            .as_ref()
            .unwrap()
            .endpoints_config
            .as_ref()
            .unwrap()["p_front"];
        assert_eq!(
            first.aliases.as_ref().unwrap(),
            &vec!["a".to_string(), "x".to_string()]
        );
        assert_eq!(spec.more_networks[0].0, "p_other");
        let front = spec.networks.iter().find(|n| n.name == "p_front").unwrap();
        assert_eq!(front.internal, Some(true));
        assert_eq!(
            front.ipam.as_ref().unwrap().config.as_ref().unwrap()[0]
                .subnet
                .as_deref(),
            Some("10.213.0.0/24")
        );
        assert_eq!(spec.volumes[0].name.as_deref(), Some("p_vol"));
        assert_eq!(spec.body.labels.as_ref().unwrap()[SERVICE_LABEL], "a");
        assert_eq!(
            spec.body.env.as_ref().unwrap(),
            &vec!["A=1".to_string(), "B=".to_string()]
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let m = ComposeModel::parse(V1).unwrap();
        let e = m.container_spec("p", "b").unwrap_err().to_string();
        assert!(e.starts_with("services.b.secrets:"), "{e}");
    }

    #[test]
    fn v2_long_forms() {
        let m = ComposeModel::parse(r#"{"services": {"a": {"image": "i", "command": "sh -c x",
            "volumes": [{"type": "bind", "source": "/s", "target": "/t", "read_only": true}],
            "ports": [{"target": 8080, "published": "3000", "host_ip": "127.0.0.1", "protocol": "tcp"}],
            "deploy": {"resources": {"reservations": {"devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}}}}}}"#).unwrap();
        let e = m.container_spec("p", "a").unwrap_err().to_string();
        assert!(
            e.contains("services.a.command") && e.contains("list form"),
            "{e}"
        );
        let m = ComposeModel::parse(r#"{"services": {"a": {"image": "i",
            "volumes": [{"type": "bind", "source": "/s", "target": "/t", "read_only": true}],
            "ports": [{"target": 8080, "published": "3000", "host_ip": "127.0.0.1", "protocol": "tcp"}],
            "deploy": {"resources": {"reservations": {"devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}}}}}}"#).unwrap();
        let spec = m.container_spec("p", "a").unwrap();
        let host = spec.body.host_config.unwrap();
        assert_eq!(host.binds.unwrap(), vec!["/s:/t:ro".to_string()]);
        assert_eq!(host.device_requests.unwrap()[0].count, Some(-1));
        assert_eq!(host.network_mode.as_deref(), Some("p_default"));
        assert!(host.port_bindings.unwrap().contains_key("8080/tcp"));
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(
            duration_ns(&Value::from("1m30s"), "k").unwrap(),
            90_000_000_000
        );
        assert_eq!(
            duration_ns(&Value::from("500ms"), "k").unwrap(),
            500_000_000
        );
        assert!(duration_ns(&Value::from("5 minutes"), "k").is_err());
        assert_eq!(bytes(&Value::from("16g"), "k").unwrap(), 16 << 30);
        assert_eq!(bytes(&Value::from(1024), "k").unwrap(), 1024);
    }
}
