//! The dashboard's settings: one typed struct, read from flags and the environment, validated at
//! start with errors that name the key. Secrets come only from the environment (never from flags,
//! which other users of the host can read in the process list).
use std::path::PathBuf;

use crate::password::{PasswordError, StoredPassword};

/// Why the settings were refused; always names the offending key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: &'static str,
    pub message: String,
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        message: message.into(),
    }
}

/// When the session cookie gets the `Secure` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieSecure {
    /// When the request arrived over HTTPS (`X-Forwarded-Proto: https`, as set by Tailscale Serve
    /// or another TLS proxy in front of the edge).
    Auto,
    Always,
    Never,
}

#[derive(Clone)]
pub struct DashboardConfig {
    pub listen: String,
    /// The sign-in password as stored: argon2id (or, until the first sign-in, the legacy
    /// SHA-256). The password itself is never kept.
    pub password: StoredPassword,
    /// `DASHBOARD_PASSWORD_FILE`, when the stored form came from a file (rewritten on upgrade).
    pub password_file: Option<PathBuf>,
    /// Name shown and recorded in the audit log for password sign-ins.
    pub user: String,
    pub session_key: Vec<u8>,
    /// True when `DASHBOARD_SESSION_KEY` was unset and a random key was made at start.
    pub session_key_generated: bool,
    pub controller_url: Option<String>,
    pub controller_token: Option<String>,
    pub edge_url: Option<String>,
    pub edge_admin_token: Option<String>,
    pub trust_tailscale: bool,
    pub cookie_secure: CookieSecure,
    /// How long a session lasts, in seconds.
    pub session_ttl_secs: i64,
}

impl std::fmt::Debug for DashboardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets, not even in debug output.
        f.debug_struct("DashboardConfig")
            .field("listen", &self.listen)
            .field("user", &self.user)
            .field("controller_url", &self.controller_url)
            .field(
                "controller_token",
                &self.controller_token.as_ref().map(|_| "<set>"),
            )
            .field("edge_url", &self.edge_url)
            .field(
                "edge_admin_token",
                &self.edge_admin_token.as_ref().map(|_| "<set>"),
            )
            .field("trust_tailscale", &self.trust_tailscale)
            .field("cookie_secure", &self.cookie_secure)
            .finish_non_exhaustive()
    }
}

/// The four ways to give the password; exactly one must be set.
const PASSWORD_KEYS: [&str; 4] = [
    "DASHBOARD_PASSWORD_HASH",
    "DASHBOARD_PASSWORD_FILE",
    "DASHBOARD_PASSWORD",
    "DASHBOARD_PASSWORD_SHA256",
];

fn password_setting(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<(StoredPassword, Option<PathBuf>), ConfigError> {
    let set: Vec<&'static str> = PASSWORD_KEYS
        .iter()
        .copied()
        .filter(|k| get(k).is_some())
        .collect();
    let key = match set.as_slice() {
        [one] => *one,
        [] => {
            return Err(invalid(
                "DASHBOARD_PASSWORD",
                "no sign-in password is set: set DASHBOARD_PASSWORD_HASH (from `dashboard hash-password`), \
                 DASHBOARD_PASSWORD_FILE or DASHBOARD_PASSWORD; the dashboard refuses to run open",
            ))
        }
        several => {
            return Err(invalid(
                "DASHBOARD_PASSWORD",
                format!("set only one of {}", several.join(", ")),
            ))
        }
    };
    let value = get(key).unwrap_or_default();
    let describe = |e: PasswordError| invalid(key, e.to_string());
    match key {
        "DASHBOARD_PASSWORD" => Ok((StoredPassword::from_password(&value).map_err(describe)?, None)),
        "DASHBOARD_PASSWORD_FILE" => {
            let path = PathBuf::from(value.trim());
            let text = std::fs::read_to_string(&path)
                .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
            Ok((StoredPassword::parse(&text).map_err(describe)?, Some(path)))
        }
        "DASHBOARD_PASSWORD_SHA256" => match StoredPassword::parse(&value) {
            Ok(legacy @ StoredPassword::LegacySha256(_)) => Ok((legacy, None)),
            _ => Err(invalid(
                key,
                "must be 64 hex characters (sha256sum of the password); better: \
                 DASHBOARD_PASSWORD_HASH from `dashboard hash-password`",
            )),
        },
        _ => match StoredPassword::parse(&value) {
            Ok(phc @ StoredPassword::Argon2id(_)) => Ok((phc, None)),
            _ => Err(invalid(
                key,
                "must be an argon2id PHC string ($argon2id$v=19$...), as printed by `dashboard hash-password`",
            )),
        },
    }
}

/// Values that may come from flags (non-secret); each falls back to its environment variable.
#[derive(Debug, Clone, Default)]
pub struct FlagValues {
    pub listen: Option<String>,
    pub controller_url: Option<String>,
    pub edge_url: Option<String>,
}

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_CONTROLLER_URL: &str = "http://controller:9000";
pub const DEFAULT_EDGE_URL: &str = "http://edge:11435";

impl DashboardConfig {
    /// Build the settings from flags and an environment lookup (a closure, so tests need not
    /// touch the process environment).
    pub fn load(
        flags: FlagValues,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());

        let listen = flags
            .listen
            .or_else(|| get("DASHBOARD_LISTEN"))
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        if listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "DASHBOARD_LISTEN",
                format!("{listen:?} is not a socket address like 0.0.0.0:8080"),
            ));
        }

        let (password, password_file) = password_setting(&get)?;

        let user = get("DASHBOARD_USER").unwrap_or_else(|| "admin".to_string());
        if !valid_user(&user) {
            return Err(invalid(
                "DASHBOARD_USER",
                "use 1-64 characters from A-Z a-z 0-9 . _ @ - +",
            ));
        }

        let (session_key, session_key_generated) = match get("DASHBOARD_SESSION_KEY") {
            Some(k) if k.len() >= 32 => (k.into_bytes(), false),
            Some(_) => {
                return Err(invalid(
                    "DASHBOARD_SESSION_KEY",
                    "must be at least 32 characters (e.g. `openssl rand -hex 32`)",
                ))
            }
            None => (rand::random::<[u8; 32]>().to_vec(), true),
        };

        let controller_url = url_setting(
            "CONTROLLER_URL",
            flags.controller_url.or_else(|| get("CONTROLLER_URL")),
            DEFAULT_CONTROLLER_URL,
        )?;
        let edge_url = url_setting(
            "EDGE_URL",
            flags.edge_url.or_else(|| get("EDGE_URL")),
            DEFAULT_EDGE_URL,
        )?;

        let trust_tailscale = bool_setting(
            "DASHBOARD_TRUST_TAILSCALE",
            get("DASHBOARD_TRUST_TAILSCALE"),
        )?;
        let cookie_secure = match get("DASHBOARD_COOKIE_SECURE").as_deref() {
            None | Some("auto") => CookieSecure::Auto,
            Some("always") | Some("1") | Some("true") => CookieSecure::Always,
            Some("never") | Some("0") | Some("false") => CookieSecure::Never,
            Some(other) => {
                return Err(invalid(
                    "DASHBOARD_COOKIE_SECURE",
                    format!("{other:?} is not one of auto, always, never"),
                ))
            }
        };
        let session_ttl_secs = match get("DASHBOARD_SESSION_HOURS") {
            None => 12 * 3600,
            Some(h) => match h.parse::<i64>() {
                Ok(h) if (1..=24 * 30).contains(&h) => h * 3600,
                _ => {
                    return Err(invalid(
                        "DASHBOARD_SESSION_HOURS",
                        "must be a whole number of hours between 1 and 720",
                    ))
                }
            },
        };

        Ok(Self {
            listen,
            password,
            password_file,
            user,
            session_key,
            session_key_generated,
            controller_url,
            controller_token: get("OPS_CONTROLLER_TOKEN"),
            edge_url,
            edge_admin_token: get("EDGE_ADMIN_TOKEN"),
            trust_tailscale,
            cookie_secure,
            session_ttl_secs,
        })
    }
}

/// `none` (or `off`) turns an upstream off explicitly; anything else must be an http(s) URL.
fn url_setting(
    key: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<Option<String>, ConfigError> {
    let v = value.unwrap_or_else(|| default.to_string());
    let v = v.trim().trim_end_matches('/').to_string();
    if v == "none" || v == "off" {
        return Ok(None);
    }
    if !(v.starts_with("http://") || v.starts_with("https://")) || v.len() < 10 {
        return Err(invalid(
            key,
            format!("{v:?} is not an http:// or https:// URL (use `none` to turn it off)"),
        ));
    }
    Ok(Some(v))
}

fn bool_setting(key: &'static str, value: Option<String>) -> Result<bool, ConfigError> {
    match value.as_deref() {
        None | Some("0") | Some("false") | Some("no") => Ok(false),
        Some("1") | Some("true") | Some("yes") => Ok(true),
        Some(other) => Err(invalid(key, format!("{other:?} is not 1/0 or true/false"))),
    }
}

/// Users come from our own setting or from Tailscale's identity header; keep them printable and
/// short so they are safe in headers and the audit log.
pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 64
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-' | '+'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)]) -> Result<DashboardConfig, ConfigError> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DashboardConfig::load(FlagValues::default(), move |k| env.get(k).cloned())
    }

    #[test]
    fn refuses_to_start_without_a_password() {
        let err = load(&[]).unwrap_err();
        assert_eq!(err.key, "DASHBOARD_PASSWORD");
        assert!(err.to_string().contains("refuses to run open"));
    }

    #[test]
    fn accepts_a_password_hash_and_defaults() {
        let phc = crate::password::hash_password("correct horse").unwrap();
        let c = load(&[("DASHBOARD_PASSWORD_HASH", &phc)]).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.controller_url.as_deref(), Some(DEFAULT_CONTROLLER_URL));
        assert_eq!(c.edge_url.as_deref(), Some(DEFAULT_EDGE_URL));
        assert!(c.session_key_generated);
        assert!(!c.trust_tailscale);
        assert_eq!(c.password, StoredPassword::Argon2id(phc));
    }

    #[test]
    fn every_password_form_is_stored_as_argon2id_except_the_legacy_one() {
        let c = load(&[("DASHBOARD_PASSWORD", "correct horse")]).unwrap();
        assert!(matches!(&c.password, StoredPassword::Argon2id(p) if p.starts_with("$argon2id$")));
        let legacy = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"correct horse"));
        let c = load(&[("DASHBOARD_PASSWORD_SHA256", &legacy)]).unwrap();
        assert!(c.password.is_legacy());
        let c = load(&[(
            "DASHBOARD_PASSWORD_HASH",
            "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2doYXNo",
        )]);
        assert_eq!(c.unwrap_err().key, "DASHBOARD_PASSWORD_HASH");
        let err = load(&[("DASHBOARD_PASSWORD_FILE", "/nonexistent/aibox-pw")]).unwrap_err();
        assert_eq!(err.key, "DASHBOARD_PASSWORD_FILE");
    }

    #[test]
    fn errors_name_the_key() {
        let pw = ("DASHBOARD_PASSWORD", "long enough pw");
        assert_eq!(
            load(&[pw, ("DASHBOARD_SESSION_KEY", "short")])
                .unwrap_err()
                .key,
            "DASHBOARD_SESSION_KEY"
        );
        assert_eq!(
            load(&[pw, ("CONTROLLER_URL", "controller:9000")])
                .unwrap_err()
                .key,
            "CONTROLLER_URL"
        );
        assert_eq!(
            load(&[pw, ("DASHBOARD_TRUST_TAILSCALE", "maybe")])
                .unwrap_err()
                .key,
            "DASHBOARD_TRUST_TAILSCALE"
        );
        assert_eq!(
            load(&[pw, ("DASHBOARD_PASSWORD_SHA256", "ab")])
                .unwrap_err()
                .key,
            "DASHBOARD_PASSWORD"
        );
        assert_eq!(
            load(&[("DASHBOARD_PASSWORD_SHA256", "xyz")])
                .unwrap_err()
                .key,
            "DASHBOARD_PASSWORD_SHA256"
        );
        assert_eq!(
            load(&[pw, ("DASHBOARD_PASSWORD_HASH", "$argon2id$x")])
                .unwrap_err()
                .key,
            "DASHBOARD_PASSWORD"
        );
        assert_eq!(
            load(&[pw, ("DASHBOARD_LISTEN", "nowhere")])
                .unwrap_err()
                .key,
            "DASHBOARD_LISTEN"
        );
        assert_eq!(
            load(&[("DASHBOARD_PASSWORD", "short")]).unwrap_err().key,
            "DASHBOARD_PASSWORD"
        );
    }

    #[test]
    fn none_turns_an_upstream_off() {
        let c = load(&[
            ("DASHBOARD_PASSWORD", "long enough pw"),
            ("CONTROLLER_URL", "none"),
        ])
        .unwrap();
        assert_eq!(c.controller_url, None);
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = load(&[
            ("DASHBOARD_PASSWORD", "long enough pw"),
            (
                "OPS_CONTROLLER_TOKEN",
                "tok-0123456789abcdef0123456789abcdef",
            ),
        ])
        .unwrap();
        let s = format!("{c:?}");
        assert!(!s.contains("tok-0123"));
        assert!(!s.contains("long enough"));
    }
}
