//! OpenAI legacy completions (`POST /v1/completions`) ⇄ Ollama `POST /api/generate`, streaming
//! included. OpenAI-compatible providers get `/v1/completions` passed through; only Ollama
//! needs this. Pure functions, pinned by `edge/tests/golden/completions/`.
use serde_json::{json, Map, Value};

use super::bad;
use super::openai_to_ollama::{finish_reason, ollama_usage, stream_error, usage_json, ChatIds};
use super::openai_to_ollama::{sampling_to_ollama_options, NdjsonTranslator};
use super::TranslateError;

/// OpenAI completions body to an Ollama `/api/generate` body. Like Ollama's own OpenAI layer,
/// the prompt goes through the model's template (no `raw`).
pub fn completion_to_generate(req: &Value, upstream_model: &str) -> Result<Value, TranslateError> {
    let obj = req
        .as_object()
        .ok_or_else(|| bad("body", "The request body must be a JSON object"))?;
    let prompt =
        match obj.get("prompt") {
            None | Some(Value::Null) => {
                return Err(bad("prompt", "Missing required parameter: 'prompt'"))
            }
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                a[0].as_str().unwrap_or_default().to_owned()
            }
            Some(_) => return Err(bad(
                "prompt",
                "'prompt' must be a string (one prompt; token arrays are not supported for Ollama)",
            )),
        };
    if obj.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1)
        || obj
            .get("best_of")
            .and_then(Value::as_u64)
            .is_some_and(|n| n > 1)
    {
        return Err(bad(
            "n",
            "Ollama generates one completion per request: 'n' must be 1",
        ));
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(upstream_model));
    body.insert("prompt".into(), json!(prompt));
    if let Some(s) = obj.get("suffix").and_then(Value::as_str) {
        body.insert("suffix".into(), json!(s));
    }
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    body.insert("stream".into(), json!(stream));
    let mut options = Map::new();
    sampling_to_ollama_options(obj, &["max_tokens"], &mut options)?;
    if !options.is_empty() {
        body.insert("options".into(), Value::Object(options));
    }
    Ok(Value::Object(body))
}

fn completion(ids: &ChatIds, text: &str, finish: Option<&str>) -> Value {
    json!({"id": ids.id, "object": "text_completion", "created": ids.created, "model": ids.model,
           "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]})
}

/// A whole Ollama `/api/generate` answer to an OpenAI `text_completion`.
pub fn generate_response_to_completion(resp: &Value, ids: &ChatIds) -> Value {
    let text = resp["response"].as_str().unwrap_or_default();
    let reason = finish_reason(resp["done_reason"].as_str(), false);
    let mut out = completion(ids, text, Some(reason));
    let (p, c) = ollama_usage(resp);
    out["usage"] = usage_json(p, c);
    out
}

/// Ollama's NDJSON generate stream to OpenAI completion chunks.
pub struct CompletionStreamTranslator {
    ids: ChatIds,
    include_usage: bool,
    usage: (u64, u64),
    finished: bool,
}

impl CompletionStreamTranslator {
    pub fn new(ids: ChatIds, include_usage: bool) -> Self {
        Self {
            ids,
            include_usage,
            usage: (0, 0),
            finished: false,
        }
    }
}

impl NdjsonTranslator for CompletionStreamTranslator {
    fn on_line(&mut self, line: &Value) -> Vec<Value> {
        if let Some(err) = line.get("error") {
            self.finished = true;
            return vec![stream_error(err.as_str().unwrap_or("upstream error"))];
        }
        let mut out = Vec::new();
        if let Some(t) = line["response"].as_str().filter(|t| !t.is_empty()) {
            out.push(completion(&self.ids, t, None));
        }
        if line["done"].as_bool().unwrap_or(false) {
            self.finished = true;
            self.usage = ollama_usage(line);
            let reason = finish_reason(line["done_reason"].as_str(), false);
            out.push(completion(&self.ids, "", Some(reason)));
            if self.include_usage {
                out.push(json!({"id": self.ids.id, "object": "text_completion",
                    "created": self.ids.created, "model": self.ids.model, "choices": [],
                    "usage": usage_json(self.usage.0, self.usage.1)}));
            }
        }
        out
    }
    fn finished(&self) -> bool {
        self.finished
    }
    fn mark_finished(&mut self) {
        self.finished = true;
    }
    fn usage(&self) -> (u64, u64) {
        self.usage
    }
}

#[cfg(test)]
mod golden {
    use super::*;

    fn ids() -> ChatIds {
        ChatIds {
            id: "cmpl-golden".into(),
            created: 1_795_000_000,
            model: "ollama/test-model".into(),
        }
    }

    fn translate_case(case: &Value) -> Value {
        let input = &case["input"];
        match case["kind"].as_str().unwrap() {
            "completion_request" => match completion_to_generate(input, "test-model") {
                Ok(v) => v,
                Err(e) => json!({"error": e.message, "param": e.param}),
            },
            "generate_response" => generate_response_to_completion(input, &ids()),
            "generate_stream" => {
                let mut t = CompletionStreamTranslator::new(ids(), case["include_usage"] == true);
                let lines = input.as_array().unwrap();
                Value::Array(lines.iter().flat_map(|l| t.on_line(l)).collect())
            }
            other => panic!("unknown golden kind {other}"),
        }
    }

    #[test]
    fn completions_golden_files() {
        crate::translate::golden::check_golden_dir("golden/completions", 3, translate_case);
    }
}
