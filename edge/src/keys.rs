//! The keys file (`data/edge/clients.toml`): client keys as data, hashes only.
//!
//! Two programs write it, `edge key …` (the CLI) and the edge's admin API (the dashboard's Keys
//! page), both through `add` and `revoke` here: an exclusive lock on `<file>.lock`, read, change,
//! write a temporary file, rename. So there is one writer at a time and a reader (the edge's
//! file watch) never sees half a file. The key itself is printed once and never stored.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::config::{check_client_name, sha256, ClientConfig, ClientsFile, ConfigError};

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("a client named {0:?} already exists; revoke it first")]
    Exists(String),
    #[error("no client named {0:?} in the keys file")]
    Unknown(String),
    #[error("client name: {0}")]
    BadName(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeysError + '_ {
    move |source| KeysError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The file as it is; a missing file is an empty one.
pub fn read(path: &Path) -> Result<ClientsFile, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ClientsFile::default()),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.display().to_string(),
                source,
            })
        }
    };
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.to_string().trim().replace('\n', " "),
    })
}

/// A new key: `aibox-` and 48 hex digits (192 random bits).
pub fn new_key() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!("aibox-{}", hex::encode(bytes))
}

/// Holds `<file>.lock` exclusively while a change is read, made and written.
struct Locked {
    _lock: File,
    path: PathBuf,
}

impl Locked {
    fn open(path: &Path) -> Result<Self, KeysError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let lock_path = path.with_extension("toml.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        Ok(Self {
            _lock: lock,
            path: path.to_owned(),
        })
    }

    fn write(&self, file: &ClientsFile) -> Result<(), KeysError> {
        // Cannot fail for this plain struct; if it did, it is a failed write of the file.
        let body = toml::to_string(file).map_err(|e| io(&self.path)(std::io::Error::other(e)))?;
        let text = format!(
            "# aibox client keys (SHA-256 of each key, never the key) and per-client policy.\n\
             # Written by `./aibox key` and the dashboard's Keys page; the edge re-reads it on change.\n\
             # Fields: docs/keys.md.\n\n{body}"
        );
        let tmp = self.path.with_extension("toml.tmp");
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))
    }
}

/// Adds client `entry.name` with `key` (a new one when `None`); returns the key (shown once,
/// stored as a hash).
pub fn add(path: &Path, mut entry: ClientConfig, key: Option<String>) -> Result<String, KeysError> {
    check_client_name(&entry.name).map_err(KeysError::BadName)?;
    entry.policy().resolve("policy")?;
    let locked = Locked::open(path)?;
    let mut file = read(path)?;
    if file.clients.iter().any(|c| c.name == entry.name) {
        return Err(KeysError::Exists(entry.name));
    }
    let key = key.unwrap_or_else(new_key);
    entry.key_env = None;
    entry.key_sha256 = Some(hex::encode(sha256(key.as_bytes())));
    entry.created.get_or_insert_with(now_rfc3339);
    file.clients.push(entry);
    locked.write(&file)?;
    Ok(key)
}

/// Removes client `name` from the file; its key stops working at the edge's next look.
pub fn revoke(path: &Path, name: &str) -> Result<(), KeysError> {
    let locked = Locked::open(path)?;
    let mut file = read(path)?;
    let before = file.clients.len();
    file.clients.retain(|c| c.name != name);
    if file.clients.len() == before {
        return Err(KeysError::Unknown(name.to_owned()));
    }
    locked.write(&file)
}

/// Sets `[anonymous]`; with `if_unset`, only when the file has none. True when written.
pub fn set_anonymous(
    path: &Path,
    policy: crate::config::PolicyConfig,
    if_unset: bool,
) -> Result<bool, KeysError> {
    let locked = Locked::open(path)?;
    let mut file = read(path)?;
    if if_unset && file.anonymous.is_some() {
        return Ok(false);
    }
    file.anonymous = Some(policy);
    locked.write(&file)?;
    Ok(true)
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The keys file the CLI works on: `--file`, else `EDGE_CLIENTS_FILE`, else the bundle's.
pub fn cli_path(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| std::env::var_os("EDGE_CLIENTS_FILE").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("data/edge/clients.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("aibox-keys-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("clients.toml")
    }

    #[test]
    fn add_stores_only_the_hash_and_revoke_removes_it() {
        let path = tmp("add");
        let key = add(
            &path,
            ClientConfig {
                name: "n8n".into(),
                rpm: Some(10),
                ..Default::default()
            },
            None,
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&key), "the key itself must never be stored");
        assert!(text.contains(&hex::encode(sha256(key.as_bytes()))));
        let file = read(&path).unwrap();
        assert_eq!(file.clients[0].rpm, Some(10));
        assert!(matches!(
            add(
                &path,
                ClientConfig {
                    name: "n8n".into(),
                    ..Default::default()
                },
                None
            ),
            Err(KeysError::Exists(_))
        ));
        revoke(&path, "n8n").unwrap();
        assert!(read(&path).unwrap().clients.is_empty());
        assert!(matches!(revoke(&path, "n8n"), Err(KeysError::Unknown(_))));
    }

    #[test]
    fn bad_names_and_limits_are_refused() {
        let path = tmp("bad");
        let named = |name: &str| ClientConfig {
            name: name.into(),
            ..Default::default()
        };
        assert!(matches!(
            add(&path, named("anonymous"), None),
            Err(KeysError::BadName(_))
        ));
        assert!(matches!(
            add(&path, named("a b"), None),
            Err(KeysError::BadName(_))
        ));
        let zero = ClientConfig {
            rpm: Some(0),
            ..named("ok")
        };
        let err = add(&path, zero, None).unwrap_err().to_string();
        assert!(err.contains("rpm"), "{err}");
    }
}
