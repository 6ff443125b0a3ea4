//! Ollama's native API ⇄ the OpenAI-compatible API, for models on OpenAI-compatible providers
//! (vLLM, llama.cpp, LM Studio, OpenAI) reached through the Ollama surface.
//!
//! Pure functions over JSON values. `generate` goes to `/chat/completions` (prompt as the user
//! message, `system` as the system message): `/completions` is legacy and many servers, OpenAI
//! included, no longer serve it for current models.
use serde_json::{json, Map, Value};

use super::TranslateError;

/// A request the edge cannot translate (answered 400 in Ollama's shape, which names no param).
fn bad(msg: impl Into<String>) -> TranslateError {
    TranslateError {
        message: msg.into(),
        param: None,
    }
}

pub fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// Ollama sends images as bare base64; OpenAI wants a data URL with a media type.
fn image_data_url(b64: &str) -> String {
    let mime = if b64.starts_with("iVBOR") {
        "image/png"
    } else if b64.starts_with("R0lGOD") {
        "image/gif"
    } else if b64.starts_with("UklGR") {
        "image/webp"
    } else {
        "image/jpeg"
    };
    format!("data:{mime};base64,{b64}")
}

fn content_with_images(text: &str, images: Option<&Value>) -> Result<Value, TranslateError> {
    let Some(images) = images.filter(|v| !v.is_null()) else {
        return Ok(json!(text));
    };
    let images = images
        .as_array()
        .ok_or_else(|| bad("images must be an array of base64 strings"))?;
    if images.is_empty() {
        return Ok(json!(text));
    }
    let mut parts = vec![json!({"type": "text", "text": text})];
    for img in images {
        let b64 = img
            .as_str()
            .ok_or_else(|| bad("images must be an array of base64 strings"))?;
        parts.push(json!({"type": "image_url", "image_url": {"url": image_data_url(b64)}}));
    }
    Ok(Value::Array(parts))
}

/// Ollama `options` and `format` onto an OpenAI request body. Knobs OpenAI-compatible servers do
/// not share (`num_ctx`, `top_k`, `repeat_penalty`, `keep_alive`, ...) are dropped, because
/// strict servers reject unknown parameters.
fn apply_options(req: &Value, out: &mut Map<String, Value>) -> Result<(), TranslateError> {
    match req.get("options") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            let shared = crate::translate::SHARED_SAMPLING_OPTIONS.map(|k| (k, k));
            for (from, to) in shared.into_iter().chain([("num_predict", "max_tokens")]) {
                if let Some(v) = o.get(from).filter(|v| !v.is_null()) {
                    if !v.is_number() {
                        return Err(bad(format!("options.{from} must be a number")));
                    }
                    // Ollama's -1 means "no limit", which OpenAI expresses by omission.
                    if from == "num_predict" && v.as_i64().is_some_and(|n| n < 0) {
                        continue;
                    }
                    out.insert(to.into(), v.clone());
                }
            }
            match o.get("stop") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => {
                    out.insert("stop".into(), json!([s]));
                }
                Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
                    out.insert("stop".into(), Value::Array(a.clone()));
                }
                Some(_) => return Err(bad("options.stop must be a list of strings")),
            }
        }
        Some(_) => return Err(bad("options must be an object")),
    }
    match req.get("format") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) if s == "json" => {
            out.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(schema @ Value::Object(_)) => {
            out.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}),
            );
        }
        Some(_) => return Err(bad("format must be \"json\" or a JSON schema object")),
    }
    Ok(())
}

fn stream_flag(req: &Value) -> bool {
    // Ollama streams unless told not to.
    req.get("stream").and_then(Value::as_bool).unwrap_or(true)
}

fn finish_body(mut out: Map<String, Value>, req: &Value) -> Result<Value, TranslateError> {
    apply_options(req, &mut out)?;
    let stream = stream_flag(req);
    out.insert("stream".into(), json!(stream));
    if stream {
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(out))
}

/// Ollama `POST /api/chat` body to OpenAI `POST /chat/completions`.
pub fn chat_to_openai(req: &Value, upstream_model: &str) -> Result<Value, TranslateError> {
    let messages = match req.get("messages") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(bad("messages must be an array")),
    };
    if messages.is_empty() {
        return Err(bad("messages must not be empty"));
    }
    // OpenAI ties a tool result to its call by id; Ollama by the tool's name.
    let mut open_calls: Vec<(String, String)> = Vec::new();
    let mut out_messages = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("messages[{i}].role is required")))?;
        if !matches!(role, "system" | "user" | "assistant" | "tool") {
            return Err(bad(format!("messages[{i}].role {role:?} is not valid")));
        }
        let text = match m.get("content") {
            None | Some(Value::Null) => "",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(bad(format!("messages[{i}].content must be a string"))),
        };
        let mut out = Map::new();
        out.insert("role".into(), json!(role));
        out.insert(
            "content".into(),
            content_with_images(text, m.get("images"))?,
        );
        if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
            let mut out_calls = Vec::new();
            for (j, c) in calls.iter().enumerate() {
                let f = c.get("function").cloned().unwrap_or_default();
                let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
                let args = match f.get("arguments") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) if !v.is_null() => v.to_string(),
                    _ => "{}".into(),
                };
                let id = format!("call_{i}_{j}");
                open_calls.push((id.clone(), name.to_owned()));
                out_calls.push(json!({"id": id, "type": "function",
                                      "function": {"name": name, "arguments": args}}));
            }
            if !out_calls.is_empty() {
                out.insert("tool_calls".into(), Value::Array(out_calls));
                if text.is_empty() {
                    out.insert("content".into(), Value::Null);
                }
            }
        }
        if role == "tool" {
            let name = m
                .get("tool_name")
                .or_else(|| m.get("name"))
                .and_then(Value::as_str);
            let pos = open_calls
                .iter()
                .position(|(_, n)| Some(n.as_str()) == name)
                .or((!open_calls.is_empty()).then_some(0));
            let id = match pos {
                Some(p) => open_calls.remove(p).0,
                None => format!("call_{i}"),
            };
            out.insert("tool_call_id".into(), json!(id));
        }
        out_messages.push(Value::Object(out));
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(upstream_model));
    out.insert("messages".into(), Value::Array(out_messages));
    if let Some(tools) = req.get("tools").filter(|t| !t.is_null()) {
        if !tools.is_array() {
            return Err(bad("tools must be an array"));
        }
        if tools.as_array().is_some_and(|t| !t.is_empty()) {
            out.insert("tools".into(), tools.clone());
        }
    }
    finish_body(out, req)
}

/// Ollama `POST /api/generate` body to OpenAI `POST /chat/completions`.
pub fn generate_to_openai(req: &Value, upstream_model: &str) -> Result<Value, TranslateError> {
    let prompt = match req.get("prompt") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(bad("prompt must be a string")),
    };
    let mut messages = Vec::new();
    match req.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => return Err(bad("system must be a string")),
    }
    messages.push(json!({"role": "user",
                         "content": content_with_images(prompt, req.get("images"))?}));
    let mut out = Map::new();
    out.insert("model".into(), json!(upstream_model));
    out.insert("messages".into(), Value::Array(messages));
    finish_body(out, req)
}

/// Ollama `POST /api/embed` (`input`) or legacy `/api/embeddings` (`prompt`) to OpenAI
/// `POST /embeddings`.
pub fn embed_to_openai(
    req: &Value,
    upstream_model: &str,
    legacy: bool,
) -> Result<Value, TranslateError> {
    let key = if legacy { "prompt" } else { "input" };
    let input = match req.get(key) {
        Some(Value::String(s)) => json!(s),
        Some(Value::Array(a)) if !legacy && a.iter().all(Value::is_string) => json!(a),
        None | Some(Value::Null) => return Err(bad(format!("{key} is required"))),
        Some(_) if legacy => return Err(bad("prompt must be a string")),
        Some(_) => return Err(bad("input must be a string or a list of strings")),
    };
    let mut out = json!({"model": upstream_model, "input": input});
    if let Some(d) = req.get("dimensions").filter(|d| d.is_u64()) {
        out["dimensions"] = d.clone();
    }
    Ok(out)
}

pub fn embed_from_openai(resp: &Value, model: &str, legacy: bool, nanos: u64) -> Value {
    let mut data: Vec<&Value> = resp
        .get("data")
        .and_then(Value::as_array)
        .map(|d| d.iter().collect())
        .unwrap_or_default();
    data.sort_by_key(|d| d.get("index").and_then(Value::as_u64).unwrap_or(0));
    let vectors: Vec<Value> = data
        .iter()
        .map(|d| d.get("embedding").cloned().unwrap_or(json!([])))
        .collect();
    if legacy {
        return json!({"embedding": vectors.into_iter().next().unwrap_or(json!([]))});
    }
    let tokens = resp
        .pointer("/usage/prompt_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    json!({"model": model, "embeddings": vectors, "total_duration": nanos,
           "load_duration": 0, "prompt_eval_count": tokens})
}

/// OpenAI `finish_reason` as Ollama's `done_reason` (tool calls end with `stop` in Ollama).
fn done_reason(finish: Option<&str>) -> &str {
    match finish {
        None | Some("tool_calls") | Some("function_call") | Some("stop") => "stop",
        Some(other) => other,
    }
}

fn tool_calls_from_openai(calls: &[Value]) -> Vec<Value> {
    calls
        .iter()
        .map(|c| {
            let f = c.get("function").cloned().unwrap_or_default();
            let args = match f.get("arguments") {
                Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| json!({})),
                Some(v @ Value::Object(_)) => v.clone(),
                _ => json!({}),
            };
            json!({"function": {"name": f.get("name").cloned().unwrap_or(json!("")),
                                "arguments": args}})
        })
        .collect()
}

/// Which Ollama response shape to write: `/api/chat` (`message`) or `/api/generate` (`response`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Chat,
    Generate,
}

fn piece(shape: Shape, model: &str, content: &str, thinking: Option<&str>) -> Value {
    let mut v = json!({"model": model, "created_at": rfc3339_now(), "done": false});
    match shape {
        Shape::Chat => {
            let mut msg = json!({"role": "assistant", "content": content});
            if let Some(t) = thinking {
                msg["thinking"] = json!(t);
            }
            v["message"] = msg;
        }
        Shape::Generate => {
            v["response"] = json!(content);
            if let Some(t) = thinking {
                v["thinking"] = json!(t);
            }
        }
    }
    v
}

fn final_fields(v: &mut Value, reason: &str, usage: (u64, u64), nanos: u64) {
    v["done"] = json!(true);
    v["done_reason"] = json!(reason);
    v["total_duration"] = json!(nanos);
    v["load_duration"] = json!(0);
    v["prompt_eval_count"] = json!(usage.0);
    v["prompt_eval_duration"] = json!(0);
    v["eval_count"] = json!(usage.1);
    v["eval_duration"] = json!(0);
}

fn openai_usage(v: &Value) -> Option<(u64, u64)> {
    let u = v.get("usage").filter(|u| u.is_object())?;
    Some((
        u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
        u.get("completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    ))
}

/// A whole OpenAI chat completion as one Ollama response (`stream: false`).
pub fn response_from_openai(resp: &Value, shape: Shape, model: &str, nanos: u64) -> Value {
    let choice = resp.pointer("/choices/0").cloned().unwrap_or_default();
    let msg = choice.get("message").cloned().unwrap_or_default();
    let content = msg
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let thinking = msg
        .get("reasoning_content")
        .or_else(|| msg.get("reasoning"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty());
    let mut out = piece(shape, model, content, thinking);
    if shape == Shape::Chat {
        if let Some(calls) = msg.get("tool_calls").and_then(Value::as_array) {
            out["message"]["tool_calls"] = Value::Array(tool_calls_from_openai(calls));
        }
    }
    let reason = done_reason(choice.get("finish_reason").and_then(Value::as_str));
    final_fields(
        &mut out,
        reason,
        openai_usage(resp).unwrap_or((0, 0)),
        nanos,
    );
    out
}

/// Partial tool call assembled from streamed deltas.
#[derive(Default, Debug)]
struct PendingCall {
    name: String,
    arguments: String,
}

/// OpenAI SSE `data:` payloads in, Ollama NDJSON objects out, one event at a time. Tool calls
/// stream in fragments in OpenAI's API but whole in Ollama's, so they are held until the choice
/// finishes and then written in one chunk.
pub struct StreamTranslator {
    shape: Shape,
    model: String,
    calls: Vec<PendingCall>,
    finish: Option<String>,
    pub usage: (u64, u64),
    /// The final (`done`) line or an error line was written.
    pub finished: bool,
}

impl StreamTranslator {
    pub fn new(shape: Shape, model: String) -> Self {
        Self {
            shape,
            model,
            calls: Vec::new(),
            finish: None,
            usage: (0, 0),
            finished: false,
        }
    }

    /// One `data:` payload (already parsed; `[DONE]` goes to `finish`).
    pub fn on_event(&mut self, event: &Value) -> Vec<Value> {
        if self.finished {
            return Vec::new();
        }
        if let Some(err) = event.get("error") {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .or(err.as_str())
                .unwrap_or("upstream error");
            self.finished = true;
            return vec![json!({"error": msg})];
        }
        if let Some(u) = openai_usage(event) {
            self.usage = u;
        }
        let mut out = Vec::new();
        let Some(choice) = event.pointer("/choices/0") else {
            return out;
        };
        let delta = choice.get("delta").cloned().unwrap_or_default();
        let content = delta
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let thinking = delta
            .get("reasoning_content")
            .or_else(|| delta.get("reasoning"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty());
        if !content.is_empty() || thinking.is_some() {
            out.push(piece(self.shape, &self.model, content, thinking));
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for c in calls {
                let index = c
                    .get("index")
                    .and_then(Value::as_u64)
                    .unwrap_or(self.calls.len().saturating_sub(1) as u64)
                    as usize;
                while self.calls.len() <= index {
                    self.calls.push(PendingCall::default());
                }
                let pending = &mut self.calls[index];
                if let Some(n) = c.pointer("/function/name").and_then(Value::as_str) {
                    pending.name.push_str(n);
                }
                if let Some(a) = c.pointer("/function/arguments").and_then(Value::as_str) {
                    pending.arguments.push_str(a);
                }
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(f.to_owned());
            out.extend(self.flush_calls());
        }
        out
    }

    fn flush_calls(&mut self) -> Option<Value> {
        if self.calls.is_empty() || self.shape != Shape::Chat {
            return None;
        }
        let calls: Vec<Value> = std::mem::take(&mut self.calls)
            .into_iter()
            .map(|c| {
                let args = serde_json::from_str::<Value>(&c.arguments)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({}));
                json!({"function": {"name": c.name, "arguments": args}})
            })
            .collect();
        let mut v = piece(self.shape, &self.model, "", None);
        v["message"]["tool_calls"] = Value::Array(calls);
        Some(v)
    }

    /// The stream ended (`[DONE]` or end of body): the final line, or an error line when the
    /// upstream never said the choice was finished.
    pub fn finish(&mut self, nanos: u64) -> Vec<Value> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        let mut out: Vec<Value> = self.flush_calls().into_iter().collect();
        match self.finish.as_deref() {
            Some(f) => {
                let mut last = piece(self.shape, &self.model, "", None);
                final_fields(&mut last, done_reason(Some(f)), self.usage, nanos);
                out.push(last);
            }
            None => out.push(json!({"error": "upstream closed the stream before it was done"})),
        }
        out
    }

    /// The upstream failed mid-stream (connection cut, idle timeout).
    pub fn fail(&mut self, msg: &str) -> Vec<Value> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        vec![json!({"error": msg})]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_request_maps_options_tools_and_images() {
        let req = json!({
            "model": "vllm/qwen", "stream": false,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "look", "images": ["iVBORw0KGgo="]},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "tool_name": "weather", "content": "sunny"}
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
            "options": {"temperature": 0.2, "num_predict": 64, "num_ctx": 8192, "stop": ["\n"]},
            "format": "json", "keep_alive": "5m"
        });
        let out = chat_to_openai(&req, "Qwen/Qwen2.5").unwrap();
        assert_eq!(out["model"], "Qwen/Qwen2.5");
        assert_eq!(out["stream"], false);
        assert!(out.get("stream_options").is_none());
        assert_eq!(out["temperature"], 0.2);
        assert_eq!(out["max_tokens"], 64);
        assert_eq!(out["stop"], json!(["\n"]));
        assert!(out.get("num_ctx").is_none() && out.get("keep_alive").is_none());
        assert_eq!(out["response_format"], json!({"type": "json_object"}));
        assert_eq!(
            out["messages"][1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,iVBORw0KGgo="
        );
        let call = &out["messages"][2]["tool_calls"][0];
        assert_eq!(call["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(out["messages"][2]["content"], Value::Null);
        assert_eq!(out["messages"][3]["tool_call_id"], call["id"]);
    }

    #[test]
    fn stream_is_the_default_and_asks_for_usage() {
        let out = generate_to_openai(&json!({"prompt": "hi", "system": "s"}), "m").unwrap();
        assert_eq!(out["stream"], true);
        assert_eq!(out["stream_options"]["include_usage"], true);
        assert_eq!(out["messages"][0]["role"], "system");
        assert_eq!(out["messages"][1]["content"], "hi");
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(chat_to_openai(&json!({"messages": "hi"}), "m").is_err());
        assert!(chat_to_openai(&json!({"messages": []}), "m").is_err());
        assert!(embed_to_openai(&json!({"input": 3}), "m", false).is_err());
        assert!(embed_to_openai(&json!({}), "m", true).is_err());
    }

    #[test]
    fn whole_response_has_done_reason_and_counts() {
        let resp = json!({"choices": [{"message": {"role": "assistant", "content": "hello"},
                                       "finish_reason": "length"}],
                          "usage": {"prompt_tokens": 7, "completion_tokens": 2}});
        let out = response_from_openai(&resp, Shape::Generate, "vllm/m", 5);
        assert_eq!(out["response"], "hello");
        assert_eq!(out["done"], true);
        assert_eq!(out["done_reason"], "length");
        assert_eq!(
            (out["prompt_eval_count"].clone(), out["eval_count"].clone()),
            (json!(7), json!(2))
        );
    }

    #[test]
    fn stream_assembles_tool_calls_and_ends_with_usage() {
        let mut t = StreamTranslator::new(Shape::Chat, "m".into());
        let ev = |v: Value| json!({"choices": [v]});
        assert!(t
            .on_event(&ev(json!({"delta": {"role": "assistant", "content": ""}})))
            .is_empty());
        let first = t.on_event(&ev(json!({"delta": {"content": "Hi"}})));
        assert_eq!(first[0]["message"]["content"], "Hi");
        assert_eq!(first[0]["done"], false);
        t.on_event(&ev(json!({"delta": {"tool_calls": [
            {"index": 0, "id": "a", "function": {"name": "w", "arguments": "{\"ci"}}]}})));
        t.on_event(&ev(json!({"delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "ty\":\"Paris\"}"}}]}})));
        let calls = t.on_event(&ev(json!({"delta": {}, "finish_reason": "tool_calls"})));
        assert_eq!(
            calls[0]["message"]["tool_calls"][0]["function"]["arguments"]["city"],
            "Paris"
        );
        t.on_event(&json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}));
        let end = t.finish(9);
        assert_eq!(end.len(), 1);
        assert_eq!(end[0]["done"], true);
        assert_eq!(end[0]["done_reason"], "stop");
        assert_eq!(end[0]["eval_count"], 4);
        assert!(t.finish(9).is_empty());
    }

    #[test]
    fn stream_errors_become_error_lines() {
        let mut t = StreamTranslator::new(Shape::Generate, "m".into());
        let out = t.on_event(&json!({"error": {"message": "engine died"}}));
        assert_eq!(out, vec![json!({"error": "engine died"})]);
        assert!(t.finish(1).is_empty());
        let mut t = StreamTranslator::new(Shape::Generate, "m".into());
        let out = t.finish(1);
        assert!(out[0]["error"]
            .as_str()
            .unwrap()
            .contains("before it was done"));
    }
}
