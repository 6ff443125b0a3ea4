//! The sign-in password as the dashboard keeps it: an argon2id hash in a PHC string
//! (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`: salted, slow on purpose, self-describing).
//!
//! The old form, an unsalted SHA-256 of the password (`DASHBOARD_PASSWORD_SHA256`, or 64 hex
//! characters in `DASHBOARD_PASSWORD_FILE`), is still accepted once: the first sign-in that
//! matches it replaces it with the argon2id form, in memory and, when it came from a file, in the
//! file itself. From then on only the argon2id form is checked.
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest password accepted anywhere (environment, file, `hash-password`).
pub const MIN_PASSWORD_CHARS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("must be at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    #[error(
        "not an argon2id PHC string ($argon2id$v=19$...) nor 64 hex characters (legacy SHA-256)"
    )]
    Unrecognised,
    #[error("argon2: {0}")]
    Hash(String),
}

/// A stored password in one of the forms the dashboard accepts.
#[derive(Clone, PartialEq, Eq)]
pub enum StoredPassword {
    /// A PHC string whose algorithm is argon2id.
    Argon2id(String),
    /// The old unsalted SHA-256, accepted until the first sign-in that matches it.
    LegacySha256([u8; 32]),
}

impl std::fmt::Debug for StoredPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A hash is not the password, but it is what an offline guesser wants: never printed.
        f.write_str(match self {
            StoredPassword::Argon2id(_) => "Argon2id(<hash>)",
            StoredPassword::LegacySha256(_) => "LegacySha256(<hash>)",
        })
    }
}

impl StoredPassword {
    /// Read a stored form: a PHC string (argon2id only) or 64 hex characters (legacy SHA-256).
    pub fn parse(stored: &str) -> Result<Self, PasswordError> {
        let stored = stored.trim();
        if stored.starts_with('$') {
            let phc = PasswordHash::new(stored).map_err(|_| PasswordError::Unrecognised)?;
            if phc.algorithm != Algorithm::Argon2id.ident() || phc.hash.is_none() {
                return Err(PasswordError::Unrecognised);
            }
            return Ok(StoredPassword::Argon2id(stored.to_string()));
        }
        let bytes = hex::decode(stored).map_err(|_| PasswordError::Unrecognised)?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(StoredPassword::LegacySha256)
            .map_err(|_| PasswordError::Unrecognised)
    }

    /// Hash a password the way it is stored from now on.
    pub fn from_password(password: &str) -> Result<Self, PasswordError> {
        hash_password(password).map(StoredPassword::Argon2id)
    }

    pub fn is_legacy(&self) -> bool {
        matches!(self, StoredPassword::LegacySha256(_))
    }

    fn matches(&self, presented: &str) -> bool {
        match self {
            StoredPassword::Argon2id(phc) => PasswordHash::new(phc).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(presented.as_bytes(), &parsed)
                    .is_ok()
            }),
            StoredPassword::LegacySha256(stored) => {
                let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
                bool::from(digest.ct_eq(stored))
            }
        }
    }
}

/// argon2id with the crate's defaults (19 MiB, 2 passes, 1 lane: OWASP's first recommendation)
/// and a fresh 16-byte salt; the PHC string carries all of them.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort);
    }
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| PasswordError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// What a sign-in attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Wrong,
    Right,
    /// Right, and the legacy form was replaced by argon2id; `rewritten` names the file that now
    /// holds it, if the form came from one.
    RightAndUpgraded {
        rewritten: Option<PathBuf>,
    },
}

/// The stored password of a running dashboard.
pub struct PasswordStore {
    current: RwLock<StoredPassword>,
    /// Where the stored form came from, when that is a file the dashboard may rewrite.
    file: Option<PathBuf>,
}

impl PasswordStore {
    pub fn new(stored: StoredPassword, file: Option<PathBuf>) -> Self {
        Self {
            current: RwLock::new(stored),
            file,
        }
    }

    pub fn current(&self) -> StoredPassword {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Check a presented password (slow on purpose: call it off the async runtime). A match
    /// against the legacy form replaces it with argon2id before returning.
    pub fn check(&self, presented: &str) -> Check {
        let stored = self.current();
        if !stored.matches(presented) {
            return Check::Wrong;
        }
        if !stored.is_legacy() {
            return Check::Right;
        }
        let Ok(upgraded) = StoredPassword::from_password(presented) else {
            // Too short for today's rule: still the operator's password; keep accepting it.
            return Check::Right;
        };
        let StoredPassword::Argon2id(phc) = &upgraded else {
            return Check::Right;
        };
        let rewritten = match &self.file {
            Some(path) => match write_atomically(path, phc) {
                Ok(()) => Some(path.clone()),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "could not rewrite the password file with its argon2id form; it stays upgraded in memory only");
                    None
                }
            },
            None => None,
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = upgraded;
        Check::RightAndUpgraded { rewritten }
    }
}

/// Replace a file's contents so a crash leaves either the old or the new form, never half.
fn write_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(pw: &str) -> String {
        hex::encode(Sha256::digest(pw.as_bytes()))
    }

    #[test]
    fn argon2id_is_salted_and_verifies() {
        let a = hash_password("hunter22!").unwrap();
        let b = hash_password("hunter22!").unwrap();
        assert!(a.starts_with("$argon2id$v=19$"), "{a}");
        assert_ne!(a, b, "a fresh salt every time");
        let stored = StoredPassword::parse(&a).unwrap();
        let store = PasswordStore::new(stored, None);
        assert_eq!(store.check("hunter22!"), Check::Right);
        assert_eq!(store.check("hunter23!"), Check::Wrong);
        assert!(matches!(
            hash_password("short"),
            Err(PasswordError::TooShort)
        ));
    }

    #[test]
    fn only_argon2id_and_legacy_hex_are_stored_forms() {
        assert!(StoredPassword::parse(&sha256_hex("hunter22"))
            .unwrap()
            .is_legacy());
        for bad in [
            "xyz",
            "ab",
            "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2doYXNo",
            "$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA",
        ] {
            assert!(StoredPassword::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_legacy_form_is_accepted_once_and_replaced_in_memory() {
        let store = PasswordStore::new(
            StoredPassword::parse(&sha256_hex("hunter22")).unwrap(),
            None,
        );
        assert_eq!(store.check("wrong-one"), Check::Wrong);
        assert!(
            store.current().is_legacy(),
            "a wrong password upgrades nothing"
        );
        assert_eq!(
            store.check("hunter22"),
            Check::RightAndUpgraded { rewritten: None }
        );
        assert!(matches!(store.current(), StoredPassword::Argon2id(_)));
        assert_eq!(store.check("hunter22"), Check::Right);
        assert_eq!(store.check("hunter23"), Check::Wrong);
    }

    #[test]
    fn the_legacy_form_in_a_file_is_rewritten_there() {
        let dir = std::env::temp_dir().join(format!("aibox-pw-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, format!("{}\n", sha256_hex("hunter22"))).unwrap();
        let stored = StoredPassword::parse(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let store = PasswordStore::new(stored, Some(file.clone()));
        assert_eq!(
            store.check("hunter22"),
            Check::RightAndUpgraded {
                rewritten: Some(file.clone())
            }
        );
        let on_disk = std::fs::read_to_string(&file).unwrap();
        assert!(on_disk.starts_with("$argon2id$"), "{on_disk}");
        // A restart reads the new form, and the old hash is gone from the file.
        let again = PasswordStore::new(StoredPassword::parse(&on_disk).unwrap(), None);
        assert_eq!(again.check("hunter22"), Check::Right);
        assert!(!on_disk.contains(&sha256_hex("hunter22")));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
