//! `dashboard openclaw-sync`: the one-shot step before OpenClaw starts. It asks the edge for its
//! models, merges aibox's settings into `openclaw.json` (merge.rs), and writes the file only if
//! something changed, after copying the previous file to `openclaw.json.bak`.
//!
//! A file that does not parse is left untouched and the step fails with the line and column, so
//! OpenClaw (which `depends_on` this step) does not start on a config the user is still editing.
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::json5;
use super::merge::{self, Plan};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON5 ({source}); it was left untouched")]
    Malformed {
        path: PathBuf,
        source: json5::ParseError,
    },
    #[error("{path}: {source}")]
    Shape {
        path: PathBuf,
        source: merge::ShapeError,
    },
}

#[derive(Debug, PartialEq)]
pub enum Outcome {
    Unchanged,
    Written {
        changes: Vec<String>,
        backup: Option<PathBuf>,
    },
}

/// Merge `plan` into the file at `path` (created when missing).
pub fn sync_file(path: &Path, plan: &Plan) -> Result<Outcome, SyncError> {
    let io = |source| SyncError::Io {
        path: path.to_owned(),
        source,
    };
    let original = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    let mut doc = match &original {
        Some(text) if !text.trim().is_empty() => {
            json5::parse(text).map_err(|source| SyncError::Malformed {
                path: path.to_owned(),
                source,
            })?
        }
        _ => json5::Value::Object(Vec::new()),
    };
    let changes = merge::apply(&mut doc, plan).map_err(|source| SyncError::Shape {
        path: path.to_owned(),
        source,
    })?;
    if changes.is_empty() {
        return Ok(Outcome::Unchanged);
    }
    let backup = match &original {
        Some(text) => {
            let b = backup_path(path);
            std::fs::write(&b, text).map_err(|source| SyncError::Io {
                path: b.clone(),
                source,
            })?;
            Some(b)
        }
        None => None,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // Write beside, then rename: OpenClaw never reads half a file.
    let tmp = path.with_extension("json.aibox-tmp");
    std::fs::write(&tmp, json5::to_string_pretty(&doc)).map_err(|source| SyncError::Io {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(Outcome::Written { changes, backup })
}

pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".bak");
    path.with_file_name(name)
}

/// The edge's model ids (`GET {edge}/v1/models` with the client's key), or why not.
pub async fn edge_models(
    edge_url: &str,
    key: Option<&str>,
    service_name: &str,
) -> Result<Vec<String>, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let mut req = client
        .get(format!("{}/v1/models", edge_url.trim_end_matches('/')))
        .header("X-Service-Name", service_name);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("the edge did not answer: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("the edge answered {status} to GET /v1/models"));
    }
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| format!("the model list is not JSON: {e}"))?;
    let ids = body
        .get("data")
        .and_then(|d| d.as_array())
        .ok_or("the model list has no data array")?
        .iter()
        .filter_map(|m| m.get("id").and_then(|i| i.as_str()).map(str::to_owned))
        .collect();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(models: Option<&[&str]>) -> Plan {
        Plan {
            models_url: "http://model-gateway:11435/v1".into(),
            mcp_url: "http://model-gateway:11435/mcp".into(),
            service_name: "openclaw".into(),
            models: models.map(|m| m.iter().map(|s| s.to_string()).collect()),
            cdp_url: "http://browser:9222".into(),
            ui_origins: vec!["http://127.0.0.1:6666".into()],
        }
    }

    const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/openclaw");

    /// Each `NAME.in.json5` merged with the edge listing two models must equal `NAME.out.json5`;
    /// merging again changes nothing. `AIBOX_BLESS=1` rewrites the expected files.
    #[test]
    fn golden_files() {
        let mut seen = 0;
        for entry in std::fs::read_dir(GOLDEN).unwrap() {
            let input = entry.unwrap().path();
            let name = input.file_name().unwrap().to_string_lossy().to_string();
            let Some(stem) = name.strip_suffix(".in.json5") else {
                continue;
            };
            seen += 1;
            let dir = tempdir(stem);
            let file = dir.join("openclaw.json");
            std::fs::copy(&input, &file).unwrap();
            let p = plan(Some(&["ollama/llama3:8b", "vllm/qwen2.5"]));
            let outcome = sync_file(&file, &p).unwrap();
            assert!(
                matches!(outcome, Outcome::Written { .. }),
                "{stem}: {outcome:?}"
            );
            let got = std::fs::read_to_string(&file).unwrap();
            let expected_path = input.with_file_name(format!("{stem}.out.json5"));
            if std::env::var("AIBOX_BLESS").is_ok() {
                std::fs::write(&expected_path, &got).unwrap();
            }
            let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
            assert_eq!(
                got,
                expected,
                "{stem}: the merged file differs from {}",
                expected_path.display()
            );
            // The backup is the user's file byte for byte, comments included.
            assert_eq!(
                std::fs::read_to_string(backup_path(&file)).unwrap(),
                std::fs::read_to_string(&input).unwrap()
            );
            // Idempotent: the second run finds nothing to do and writes nothing.
            assert_eq!(sync_file(&file, &p).unwrap(), Outcome::Unchanged, "{stem}");
        }
        assert!(seen >= 3, "golden inputs in {GOLDEN}: {seen}");
    }

    #[test]
    fn a_missing_file_is_created_without_a_backup() {
        let dir = tempdir("missing");
        let file = dir.join("openclaw.json");
        let outcome = sync_file(&file, &plan(Some(&["m1"]))).unwrap();
        assert!(
            matches!(&outcome, Outcome::Written { backup: None, .. }),
            "{outcome:?}"
        );
        let v = json5::parse(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let primary = v
            .get("agents")
            .and_then(|a| a.get("defaults"))
            .and_then(|d| d.get("model"))
            .and_then(|m| m.get("primary"));
        assert_eq!(primary, Some(&json5::Value::str("gateway/m1")));
    }

    #[test]
    fn a_malformed_file_is_left_untouched() {
        let dir = tempdir("malformed");
        let file = dir.join("openclaw.json");
        let text =
            "{\n  // the user is editing\n  models: { providers: { x: { baseUrl: } } },\n}\n";
        std::fs::write(&file, text).unwrap();
        let err = sync_file(&file, &plan(Some(&["m1"])))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3, column"), "{err}");
        assert!(err.contains("left untouched"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
        assert!(!backup_path(&file).exists());
    }

    #[test]
    fn a_wrong_shape_is_named_and_left_untouched() {
        let dir = tempdir("shape");
        let file = dir.join("openclaw.json");
        std::fs::write(&file, "{ models: { providers: [] } }").unwrap();
        let err = sync_file(&file, &plan(None)).unwrap_err().to_string();
        assert!(
            err.contains("models.providers is an array, expected an object"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "{ models: { providers: [] } }"
        );
    }

    #[test]
    fn without_the_edge_the_model_list_is_kept() {
        let dir = tempdir("noedge");
        let file = dir.join("openclaw.json");
        std::fs::write(
            &file,
            "{models: {providers: {gateway: {models: [{id: 'kept', name: 'Kept'}]}}}}",
        )
        .unwrap();
        sync_file(&file, &plan(None)).unwrap();
        let v = json5::parse(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let models = v
            .get("models")
            .and_then(|m| m.get("providers"))
            .and_then(|p| p.get("gateway"))
            .and_then(|g| g.get("models"));
        assert_eq!(
            models,
            Some(&json5::Value::Array(vec![json5::Value::Object(vec![
                ("id".into(), json5::Value::str("kept")),
                ("name".into(), json5::Value::str("Kept")),
            ])]))
        );
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("aibox-openclaw-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
