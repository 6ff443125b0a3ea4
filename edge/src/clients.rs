//! Who is calling: the client's key (`Authorization: Bearer`) mapped to a configured name.
//!
//! Architecture Invariant: identity comes from the key alone, compared in constant time against
//! SHA-256 digests. `X-Client-ID` counts only when the config says the network is trusted;
//! `X-Service-Name` only ever labels metrics, and unknown names fold into `other`.
use std::collections::HashSet;

use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::config::{sha256, EdgeConfig};

pub const ANONYMOUS: &str = "anonymous";

pub struct ClientDirectory {
    clients: Vec<(String, [u8; 32])>,
    admin: Option<[u8; 32]>,
    trust_client_id_header: bool,
    label_names: HashSet<String>,
}

/// The caller of one request, as the edge resolved it.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// The configured client name, `admin`, or `anonymous`.
    pub name: String,
    pub admin: bool,
    /// Bounded label for metrics and stats.
    pub label: String,
}

impl ClientDirectory {
    pub fn new(config: &EdgeConfig) -> Self {
        Self {
            clients: config
                .clients
                .iter()
                .map(|c| (c.name.clone(), c.key_sha256))
                .collect(),
            admin: config.admin_token_sha256,
            trust_client_id_header: config.trust_client_id_header,
            label_names: config.service_names.clone(),
        }
    }

    pub fn identify(&self, headers: &HeaderMap) -> ClientIdentity {
        let presented = bearer(headers).map(|k| sha256(k.as_bytes()));
        let mut name: Option<String> = None;
        let mut admin = false;
        if let Some(digest) = presented {
            // Compare against every key so the time taken does not say which one matched.
            for (client, key) in &self.clients {
                if bool::from(digest.ct_eq(key)) && name.is_none() {
                    name = Some(client.clone());
                }
            }
            if let Some(admin_key) = &self.admin {
                if bool::from(digest.ct_eq(admin_key)) {
                    admin = true;
                    name.get_or_insert_with(|| "admin".to_owned());
                }
            }
        }
        if name.is_none() && self.trust_client_id_header {
            name = header(headers, "x-client-id").map(str::to_owned);
        }
        let name = name.unwrap_or_else(|| ANONYMOUS.to_owned());
        let label = if name != ANONYMOUS {
            self.bounded(&name)
        } else {
            match header(headers, "x-service-name") {
                Some(s) => self.bounded(s),
                None => ANONYMOUS.to_owned(),
            }
        };
        ClientIdentity { name, admin, label }
    }

    fn bounded(&self, name: &str) -> String {
        if name == "admin" || self.label_names.contains(name) {
            name.to_owned()
        } else {
            "other".to_owned()
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
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
        ClientDirectory::new(&EdgeConfig::resolve(file, &E).unwrap())
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
}
