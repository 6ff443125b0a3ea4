//! Model aliases (`[[models]]` in the edge's TOML): one name a client asks for, several
//! `provider/model` targets tried in order (`fallback`) or spread by load (`balance`).
//!
//! ```toml
//! [[models]]
//! name = "fast"
//! strategy = "fallback"            # or "balance"; default "fallback"
//! targets = ["ollama/llama3.2:3b", { model = "vllm/Qwen/Qwen2.5-7B", context = 32768 }]
//! ```
//!
//! A target's optional `context` (tokens) is what the context-length fallback compares: after a
//! context-length error the edge moves to an untried target with a larger `context`, if the
//! alias names one. Validation happens once at load, with errors naming the key.
use std::collections::HashSet;

use serde::Deserialize;

use crate::config::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Targets in the order written; the next one only when the previous failed.
    #[default]
    Fallback,
    /// The least busy target first (its provider's best endpoint), the others as fallbacks.
    Balance,
}

/// A target as written: `"provider/model"` or `{ model = "provider/model", context = 32768 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TargetConfig {
    Name(String),
    Detailed(DetailedTarget),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetailedTarget {
    pub model: String,
    /// The target's context window in tokens, for the context-length fallback.
    pub context: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasConfig {
    pub name: String,
    pub targets: Vec<TargetConfig>,
    #[serde(default)]
    pub strategy: Strategy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasTarget {
    pub provider: String,
    pub model: String,
    pub context: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelAlias {
    pub name: String,
    pub strategy: Strategy,
    pub targets: Vec<AliasTarget>,
}

impl ModelAlias {
    /// Whether `asked` names this alias (`:latest` is implied, as Open WebUI adds it).
    pub fn answers_to(&self, asked: &str) -> bool {
        asked == self.name || asked.strip_suffix(":latest") == Some(self.name.as_str())
    }
}

fn invalid(key: String, message: String) -> ConfigError {
    ConfigError::Invalid { key, message }
}

/// Checks every `[[models]]` entry against the configured provider names.
pub fn resolve(
    entries: &[AliasConfig],
    providers: &[String],
) -> Result<Vec<ModelAlias>, ConfigError> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, a) in entries.iter().enumerate() {
        let key = format!("models[{i}]");
        if a.name.is_empty()
            || !a
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            return Err(invalid(
                format!("{key}.name"),
                format!(
                    "{:?} must be letters, digits, '-', '_', '.' or ':' (no '/': an alias is not a provider's model)",
                    a.name
                ),
            ));
        }
        if providers.contains(&a.name) {
            return Err(invalid(
                format!("{key}.name"),
                format!(
                    "alias {:?} shadows the provider of the same name (`{0}/…` would be ambiguous)",
                    a.name
                ),
            ));
        }
        if !names.insert(a.name.clone()) {
            return Err(invalid(
                format!("{key}.name"),
                format!("alias {:?} is defined twice", a.name),
            ));
        }
        if a.targets.is_empty() {
            return Err(invalid(
                format!("{key}.targets"),
                "an alias needs at least one target".into(),
            ));
        }
        let mut targets = Vec::new();
        for (j, t) in a.targets.iter().enumerate() {
            let (spec, context) = match t {
                TargetConfig::Name(s) => (s, None),
                TargetConfig::Detailed(d) => (&d.model, d.context),
            };
            let tkey = format!("{key}.targets[{j}]");
            let Some((provider, model)) = spec.split_once('/').filter(|(_, m)| !m.is_empty())
            else {
                return Err(invalid(tkey, format!("{spec:?} must be `provider/model`")));
            };
            if !providers.iter().any(|p| p == provider) {
                return Err(invalid(
                    tkey,
                    format!(
                        "unknown provider {provider:?} (configured: {})",
                        providers.join(", ")
                    ),
                ));
            }
            if context == Some(0) {
                return Err(invalid(
                    format!("{tkey}.context"),
                    "must be at least 1 (leave it out when unknown)".into(),
                ));
            }
            targets.push(AliasTarget {
                provider: provider.to_owned(),
                model: model.to_owned(),
                context,
            });
        }
        out.push(ModelAlias {
            name: a.name.clone(),
            strategy: a.strategy,
            targets,
        });
    }
    Ok(out)
}

/// Which untried target comes after a context-length error on one with `current` context:
/// the smallest context larger than it (an unknown context counts as 0).
pub fn larger_context(contexts: &[Option<u64>], tried: &[bool], current: usize) -> Option<usize> {
    let floor = contexts[current].unwrap_or(0);
    contexts
        .iter()
        .enumerate()
        .filter(|(i, c)| !tried[*i] && c.is_some_and(|c| c > floor))
        .min_by_key(|(_, c)| c.unwrap_or(u64::MAX))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<ModelAlias>, String> {
        #[derive(Deserialize)]
        struct F {
            models: Vec<AliasConfig>,
        }
        let f: F = toml::from_str(text).map_err(|e| e.to_string())?;
        resolve(&f.models, &["ollama".into(), "vllm".into()]).map_err(|e| e.to_string())
    }

    #[test]
    fn targets_are_strings_or_tables_with_a_context() {
        let a = parse(
            r#"[[models]]
name = "fast"
strategy = "balance"
targets = ["ollama/llama3.2:3b", { model = "vllm/Qwen/Qwen2.5-7B", context = 32768 }]"#,
        )
        .unwrap();
        assert_eq!(a[0].strategy, Strategy::Balance);
        assert_eq!(
            a[0].targets[1],
            AliasTarget {
                provider: "vllm".into(),
                model: "Qwen/Qwen2.5-7B".into(),
                context: Some(32768)
            }
        );
        assert!(a[0].answers_to("fast:latest") && !a[0].answers_to("faster"));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                r#"[[models]]
name = "x"
targets = ["nope/m"]"#,
                "models[0].targets[0]: unknown provider \"nope\"",
            ),
            (
                r#"[[models]]
name = "ollama"
targets = ["vllm/m"]"#,
                "models[0].name: alias \"ollama\" shadows the provider",
            ),
            (
                r#"[[models]]
name = "a"
targets = ["vllm/m"]
[[models]]
name = "a"
targets = ["vllm/m"]"#,
                "models[1].name: alias \"a\" is defined twice",
            ),
            (
                r#"[[models]]
name = "a"
targets = []"#,
                "models[0].targets: an alias needs at least one target",
            ),
            (
                r#"[[models]]
name = "a"
targets = ["llama3"]"#,
                "models[0].targets[0]: \"llama3\" must be `provider/model`",
            ),
            (
                r#"[[models]]
name = "a"
targets = [{ model = "vllm/m", context = 0 }]"#,
                "models[0].targets[0].context: must be at least 1",
            ),
            (
                r#"[[models]]
name = "a/b"
targets = ["vllm/m"]"#,
                "models[0].name:",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with(want), "{err}");
        }
        let err = parse(
            r#"[[models]]
name = "a"
strategy = "random"
targets = ["vllm/m"]"#,
        )
        .unwrap_err();
        assert!(err.contains("unknown variant `random`"), "{err}");
    }

    #[test]
    fn context_fallback_takes_the_smallest_larger_window() {
        let contexts = [Some(4096), None, Some(65536), Some(32768)];
        assert_eq!(
            larger_context(&contexts, &[true, false, false, false], 0),
            Some(3)
        );
        assert_eq!(
            larger_context(&contexts, &[true, false, false, true], 3),
            Some(2)
        );
        assert_eq!(
            larger_context(&contexts, &[true, false, true, true], 2),
            None
        );
        // An unknown window: any named one is larger.
        assert_eq!(
            larger_context(&contexts, &[false, true, false, false], 1),
            Some(0)
        );
    }
}
