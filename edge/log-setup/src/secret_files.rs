//! Secrets from files: for each `NAME` a binary reads, `NAME_FILE` may name a file holding the
//! value instead (Docker Swarm and Kubernetes mount secrets as files, e.g.
//! `/run/secrets/ops_controller_token`). The value set directly wins; a trailing newline is
//! not part of the secret, and a file holding nothing else leaves `NAME` unset (Swarm cannot
//! store an empty secret, so "not set" travels as a lone newline).
//!
//! Called first thing in `main`, before any other thread reads the environment.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("{key}: cannot read {path}: {source}")]
    Read {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Sets each unset `NAME` of `names` from the file `NAME_FILE` names.
pub fn load(names: &[&str]) -> Result<(), SecretFileError> {
    for name in names {
        let set = std::env::var(name).is_ok_and(|v| !v.is_empty());
        let key = format!("{name}_FILE");
        let Some(path) = std::env::var_os(&key).filter(|p| !p.is_empty()) else {
            continue;
        };
        if set {
            continue;
        }
        let path = PathBuf::from(path);
        let text = std::fs::read_to_string(&path).map_err(|source| SecretFileError::Read {
            key: key.clone(),
            path: path.clone(),
            source,
        })?;
        let value = text.trim_end_matches(['\n', '\r']);
        if value.is_empty() {
            continue;
        }
        // Before any other thread runs (see the module doc), so nothing reads it meanwhile.
        std::env::set_var(name, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_fills_an_unset_name_and_never_overrides_a_set_one() {
        let dir = std::env::temp_dir().join(format!("aibox-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        std::env::set_var("AIBOX_TEST_SECRET_A_FILE", &file);
        std::env::set_var("AIBOX_TEST_SECRET_B", "direct");
        std::env::set_var("AIBOX_TEST_SECRET_B_FILE", &file);
        load(&["AIBOX_TEST_SECRET_A", "AIBOX_TEST_SECRET_B"]).unwrap();
        assert_eq!(std::env::var("AIBOX_TEST_SECRET_A").unwrap(), "s3cret");
        assert_eq!(std::env::var("AIBOX_TEST_SECRET_B").unwrap(), "direct");

        std::env::set_var("AIBOX_TEST_SECRET_C_FILE", dir.join("missing"));
        let e = load(&["AIBOX_TEST_SECRET_C"]).unwrap_err();
        assert!(
            e.to_string().starts_with("AIBOX_TEST_SECRET_C_FILE: "),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
