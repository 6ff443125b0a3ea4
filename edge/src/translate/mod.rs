//! Translations between the APIs the edge speaks and the ones its providers speak. Pure
//! functions over JSON values, pinned down by the golden files in `edge/tests/golden/`.
//!
//! - `openai_to_ollama`: OpenAI chat and embeddings ⇄ Ollama's native API (the OpenAI surface
//!   in front of an Ollama provider); `completions` does the same for legacy completions.
//! - `ollama_to_openai`: Ollama's native API ⇄ OpenAI-compatible providers (the Ollama surface
//!   in front of vLLM, llama.cpp, OpenAI).
//! - `anthropic`, `responses`: Anthropic Messages and OpenAI Responses ⇄ OpenAI chat.

pub mod anthropic;
pub mod completions;
pub mod ollama_to_openai;
pub mod openai_to_ollama;
pub mod responses;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TranslateError {
    pub message: String,
    pub param: Option<String>,
}

pub(crate) fn bad(param: &str, message: impl Into<String>) -> TranslateError {
    TranslateError {
        message: message.into(),
        param: Some(param.to_owned()),
    }
}

/// Sampling parameters both APIs name alike (Ollama keeps them under `options`).
pub const SHARED_SAMPLING_OPTIONS: [&str; 5] = [
    "temperature",
    "top_p",
    "seed",
    "frequency_penalty",
    "presence_penalty",
];

/// Golden files in `edge/tests/golden/`: each holds an input and the expected translation.
#[cfg(test)]
pub(crate) mod golden {
    use serde_json::Value;
    use std::path::PathBuf;

    /// Runs every golden file (`{"kind", "input", ..., "expected"}`) in `edge/tests/<subdir>`
    /// through `translate`; `UPDATE_GOLDEN=1 cargo test -p edge golden` rewrites the expectations
    /// (review the diff). Shared by the translation modules' golden tests.
    pub(crate) fn check_golden_dir(
        subdir: &str,
        at_least: usize,
        translate: impl Fn(&Value) -> Value,
    ) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join(subdir);
        let update = std::env::var_os("UPDATE_GOLDEN").is_some();
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        for path in &paths {
            let mut case: Value =
                serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            let got = translate(&case);
            if update {
                case["expected"] = got;
                std::fs::write(path, serde_json::to_string_pretty(&case).unwrap() + "\n").unwrap();
            } else {
                assert_eq!(
                    got,
                    case["expected"],
                    "golden mismatch in {}",
                    path.display()
                );
            }
        }
        assert!(
            paths.len() >= at_least,
            "golden files missing in {}",
            dir.display()
        );
    }
}
