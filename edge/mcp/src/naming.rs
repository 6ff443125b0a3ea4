//! Tool names clients see: `server__tool`, always matching `^[a-zA-Z0-9_-]{1,64}$`.
//!
//! Server names cannot contain `__` (the registry refuses them), so the first `__` of a
//! plain name separates server and tool. A name that would be too long or carry other
//! characters is sanitised, cut and suffixed with 8 hex digits of SHA-256 over the exact
//! `(server, tool)` pair: stable across restarts and different for every pair.
use sha2::{Digest, Sha256};

pub const SEPARATOR: &str = "__";
pub const MAX_LEN: usize = 64;

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

pub fn exposed_name(server: &str, tool: &str) -> String {
    let plain = format!("{server}{SEPARATOR}{tool}");
    if plain.len() <= MAX_LEN && !tool.is_empty() && plain.chars().all(allowed) {
        return plain;
    }
    let mut hasher = Sha256::new();
    hasher.update(server.as_bytes());
    hasher.update([0u8]);
    hasher.update(tool.as_bytes());
    let digest = hex::encode(hasher.finalize());
    let suffix = &digest[..8];
    let sanitised: String = plain
        .chars()
        .map(|c| if allowed(c) { c } else { '_' })
        .collect();
    // Keep room for "_" + 8 hex digits.
    let keep = MAX_LEN - 1 - suffix.len();
    let head: String = sanitised.chars().take(keep).collect();
    format!("{head}_{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(name: &str) -> bool {
        (1..=64).contains(&name.len()) && name.chars().all(allowed)
    }

    #[test]
    fn short_names_are_plain() {
        assert_eq!(
            exposed_name("time", "get_current_time"),
            "time__get_current_time"
        );
    }

    #[test]
    fn long_or_odd_names_are_hashed_stably_and_distinctly() {
        let long = "x".repeat(80);
        let a = exposed_name("srv", &long);
        let b = exposed_name("srv", &format!("{long}y"));
        assert!(valid(&a) && valid(&b), "{a} {b}");
        assert_ne!(a, b);
        assert_eq!(a, exposed_name("srv", &long));
        let dotted = exposed_name("srv", "files.read");
        assert!(valid(&dotted), "{dotted}");
        assert_ne!(dotted, exposed_name("srv", "files_read"));
        assert!(valid(&exposed_name("srv", "")));
    }
}
