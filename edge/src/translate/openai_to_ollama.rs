//! OpenAI chat and embeddings ⇄ Ollama's native API, both ways, streaming included.
//!
//! Pure functions over JSON values so the golden files in `edge/tests/golden/` pin them down.
//! Ollama's own OpenAI layer drops options (`num_ctx`, `keep_alive`, `think`), which is why the
//! edge speaks `/api/chat` and `/api/embed` instead.
use serde_json::{json, Map, Value};

use super::{bad, TranslateError, SHARED_SAMPLING_OPTIONS};

/// The sampling fields that OpenAI's chat and completions APIs share (SHARED_SAMPLING_OPTIONS,
/// the token cap, `stop`), checked and put into Ollama's `options`. `max_keys` are the request's
/// names for the token cap; the first one present wins.
pub(crate) fn sampling_to_ollama_options(
    obj: &Map<String, Value>,
    max_keys: &[&str],
    options: &mut Map<String, Value>,
) -> Result<(), TranslateError> {
    for key in SHARED_SAMPLING_OPTIONS {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            if !v.is_number() {
                return Err(bad(key, format!("'{key}' must be a number")));
            }
            options.insert(key.into(), v.clone());
        }
    }
    if let Some(v) = max_keys
        .iter()
        .find_map(|k| obj.get(*k))
        .filter(|v| !v.is_null())
    {
        if !v.is_u64() {
            return Err(bad("max_tokens", "'max_tokens' must be a positive integer"));
        }
        options.insert("num_predict".into(), v.clone());
    }
    match obj.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            options.insert("stop".into(), json!([s]));
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            options.insert("stop".into(), Value::Array(a.clone()));
        }
        Some(_) => {
            return Err(bad(
                "stop",
                "'stop' must be a string or an array of strings",
            ))
        }
    }
    Ok(())
}

/// Identity of one OpenAI response: the same in every chunk of a stream.
#[derive(Debug, Clone)]
pub struct ChatIds {
    pub id: String,
    pub created: i64,
    /// The model name as the client asked for it.
    pub model: String,
}

/// OpenAI `POST /v1/chat/completions` body to Ollama `POST /api/chat` body.
pub fn chat_to_ollama(req: &Value, upstream_model: &str) -> Result<Value, TranslateError> {
    let obj = req
        .as_object()
        .ok_or_else(|| bad("body", "The request body must be a JSON object"))?;
    let messages = obj
        .get("messages")
        .ok_or_else(|| bad("messages", "Missing required parameter: 'messages'"))?
        .as_array()
        .ok_or_else(|| bad("messages", "'messages' must be an array"))?;
    if messages.is_empty() {
        return Err(bad(
            "messages",
            "'messages' must contain at least one message",
        ));
    }
    // Tool results name the call by id; Ollama wants the tool's name.
    let mut call_names: Map<String, Value> = Map::new();
    let mut out_messages = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        out_messages.push(message_to_ollama(m, i, &mut call_names)?);
    }

    let mut body = Map::new();
    body.insert("model".into(), json!(upstream_model));
    body.insert("messages".into(), Value::Array(out_messages));
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    body.insert("stream".into(), json!(stream));

    let mut options = match obj.get("options") {
        Some(Value::Object(o)) => o.clone(),
        Some(_) => return Err(bad("options", "'options' must be an object")),
        None => Map::new(),
    };
    sampling_to_ollama_options(obj, &["max_completion_tokens", "max_tokens"], &mut options)?;
    if !options.is_empty() {
        body.insert("options".into(), Value::Object(options));
    }

    match obj.get("response_format") {
        None | Some(Value::Null) => {}
        Some(rf) => match rf.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                body.insert("format".into(), json!("json"));
            }
            Some("json_schema") => {
                let schema = rf
                    .get("json_schema")
                    .and_then(|s| s.get("schema"))
                    .ok_or_else(|| {
                        bad(
                            "response_format",
                            "'response_format.json_schema.schema' is required",
                        )
                    })?;
                body.insert("format".into(), schema.clone());
            }
            _ => {
                return Err(bad(
                    "response_format",
                    "'response_format.type' must be text, json_object or json_schema",
                ))
            }
        },
    }

    if let Some(tools) = obj.get("tools").filter(|v| !v.is_null()) {
        let tools = tools
            .as_array()
            .ok_or_else(|| bad("tools", "'tools' must be an array"))?;
        for (i, t) in tools.iter().enumerate() {
            if t.get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .is_none()
            {
                return Err(bad(
                    &format!("tools[{i}].function.name"),
                    "Each tool needs 'function.name'",
                ));
            }
        }
        body.insert("tools".into(), Value::Array(tools.clone()));
    }

    // Ollama-only knobs pass through when the client sends them.
    for key in ["keep_alive", "think"] {
        if let Some(v) = obj.get(key) {
            body.insert(key.into(), v.clone());
        }
    }
    if !body.contains_key("think") {
        if let Some(effort) = obj.get("reasoning_effort").and_then(Value::as_str) {
            body.insert("think".into(), json!(effort));
        }
    }
    Ok(Value::Object(body))
}

fn message_to_ollama(
    m: &Value,
    index: usize,
    call_names: &mut Map<String, Value>,
) -> Result<Value, TranslateError> {
    let param = format!("messages[{index}]");
    let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
        bad(
            &format!("{param}.role"),
            format!("Missing required parameter: '{param}.role'"),
        )
    })?;
    let role = if role == "developer" { "system" } else { role };
    if !matches!(role, "system" | "user" | "assistant" | "tool") {
        return Err(bad(
            &format!("{param}.role"),
            format!("Invalid role {role:?}"),
        ));
    }
    let mut out = Map::new();
    out.insert("role".into(), json!(role));
    let mut images = Vec::new();
    let content = match m.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => texts.push(
                        part.get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                    ),
                    Some("image_url") => {
                        let url = part
                            .get("image_url")
                            .and_then(|u| u.get("url").or(Some(u)))
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        images.push(json!(data_url_base64(url).ok_or_else(|| bad(
                            &format!("{param}.content[{j}].image_url"),
                            "Only base64 data: URLs are accepted for images (the edge does not fetch URLs)"
                        ))?));
                    }
                    _ => {
                        return Err(bad(
                            &format!("{param}.content[{j}].type"),
                            "Content parts must be of type text or image_url",
                        ))
                    }
                }
            }
            texts.join("\n")
        }
        Some(_) => {
            return Err(bad(
                &format!("{param}.content"),
                "'content' must be a string or an array",
            ))
        }
    };
    out.insert("content".into(), json!(content));
    if !images.is_empty() {
        out.insert("images".into(), Value::Array(images));
    }
    if let Some(thinking) = m.get("reasoning_content").and_then(Value::as_str) {
        out.insert("thinking".into(), json!(thinking));
    }
    if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
        let mut out_calls = Vec::new();
        for (j, c) in calls.iter().enumerate() {
            let f = c.get("function").ok_or_else(|| {
                bad(
                    &format!("{param}.tool_calls[{j}].function"),
                    "Each tool call needs 'function'",
                )
            })?;
            let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
            let args = match f.get("arguments") {
                Some(Value::String(s)) if s.trim().is_empty() => json!({}),
                Some(Value::String(s)) => serde_json::from_str(s).map_err(|_| {
                    bad(
                        &format!("{param}.tool_calls[{j}].function.arguments"),
                        "Tool call arguments must be a JSON object encoded as a string",
                    )
                })?,
                Some(v @ Value::Object(_)) => v.clone(),
                _ => json!({}),
            };
            if let Some(id) = c.get("id").and_then(Value::as_str) {
                call_names.insert(id.to_owned(), json!(name));
            }
            out_calls.push(json!({"function": {"name": name, "arguments": args}}));
        }
        out.insert("tool_calls".into(), Value::Array(out_calls));
    }
    if role == "tool" {
        if let Some(name) = m
            .get("tool_call_id")
            .and_then(Value::as_str)
            .and_then(|id| call_names.get(id))
            .or_else(|| m.get("name"))
        {
            out.insert("tool_name".into(), name.clone());
        }
    }
    Ok(Value::Object(out))
}

fn data_url_base64(url: &str) -> Option<String> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    meta.ends_with(";base64").then(|| data.to_owned())
}

pub(crate) fn finish_reason(done_reason: Option<&str>, made_calls: bool) -> &'static str {
    if made_calls {
        return "tool_calls";
    }
    match done_reason {
        Some("length") => "length",
        _ => "stop",
    }
}

fn tool_calls_to_openai(calls: &[Value], ids: &ChatIds, first_index: usize) -> Vec<Value> {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let f = c.get("function").cloned().unwrap_or_default();
            let args = match f.get("arguments") {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => "{}".into(),
            };
            let index = first_index + i;
            json!({
                "index": index,
                "id": format!("call_{}_{index}", ids.id.trim_start_matches("chatcmpl-")),
                "type": "function",
                "function": {"name": f.get("name").cloned().unwrap_or(json!("")), "arguments": args},
            })
        })
        .collect()
}

/// Token counts from an Ollama response: `(prompt, completion)`.
pub fn ollama_usage(resp: &Value) -> (u64, u64) {
    (
        resp.get("prompt_eval_count")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        resp.get("eval_count").and_then(Value::as_u64).unwrap_or(0),
    )
}

pub(crate) fn usage_json(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// A whole (non-streamed) Ollama `/api/chat` response to an OpenAI chat completion.
pub fn chat_response_to_openai(resp: &Value, ids: &ChatIds) -> Value {
    let msg = resp.get("message").cloned().unwrap_or_default();
    let content = msg
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let calls = msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    message.insert(
        "content".into(),
        if content.is_empty() && !calls.is_empty() {
            Value::Null
        } else {
            json!(content)
        },
    );
    if let Some(thinking) = msg
        .get("thinking")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        message.insert("reasoning_content".into(), json!(thinking));
    }
    if !calls.is_empty() {
        let mut out = tool_calls_to_openai(&calls, ids, 0);
        // `index` belongs to streamed deltas only.
        for c in &mut out {
            c.as_object_mut().map(|o| o.remove("index"));
        }
        message.insert("tool_calls".into(), Value::Array(out));
    }
    let (prompt, completion) = ollama_usage(resp);
    json!({
        "id": ids.id,
        "object": "chat.completion",
        "created": ids.created,
        "model": ids.model,
        "choices": [{
            "index": 0,
            "message": Value::Object(message),
            "logprobs": null,
            "finish_reason": finish_reason(resp.get("done_reason").and_then(Value::as_str), !calls.is_empty()),
        }],
        "usage": usage_json(prompt, completion),
    })
}

/// An Ollama NDJSON stream turned into OpenAI SSE payloads, one line at a time (chat and
/// legacy completions share the relay that drives it).
pub trait NdjsonTranslator: Send {
    /// One NDJSON line from Ollama in; the SSE `data:` payloads to send out.
    fn on_line(&mut self, line: &Value) -> Vec<Value>;
    /// The last line (`done`, or an error) was seen.
    fn finished(&self) -> bool;
    /// The stream is over (it failed); nothing more is translated.
    fn mark_finished(&mut self);
    /// `(prompt, completion)` tokens, known once finished.
    fn usage(&self) -> (u64, u64);
}

impl NdjsonTranslator for ChatStreamTranslator {
    fn on_line(&mut self, line: &Value) -> Vec<Value> {
        ChatStreamTranslator::on_line(self, line)
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

/// Turns Ollama's NDJSON chat stream into OpenAI SSE chunks, one line at a time.
pub struct ChatStreamTranslator {
    ids: ChatIds,
    include_usage: bool,
    sent_role: bool,
    next_tool_index: usize,
    pub usage: (u64, u64),
    pub finished: bool,
}

impl ChatStreamTranslator {
    pub fn new(ids: ChatIds, include_usage: bool) -> Self {
        Self {
            ids,
            include_usage,
            sent_role: false,
            next_tool_index: 0,
            usage: (0, 0),
            finished: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.ids.id,
            "object": "chat.completion.chunk",
            "created": self.ids.created,
            "model": self.ids.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    }

    /// One NDJSON line from Ollama in; the SSE `data:` payloads to send out.
    pub fn on_line(&mut self, line: &Value) -> Vec<Value> {
        if let Some(err) = line.get("error") {
            self.finished = true;
            return vec![stream_error(err.as_str().unwrap_or("upstream error"))];
        }
        let mut out = Vec::new();
        let msg = line.get("message").cloned().unwrap_or_default();
        let mut delta = Map::new();
        if !self.sent_role {
            delta.insert("role".into(), json!("assistant"));
            delta.insert("content".into(), json!(""));
            self.sent_role = true;
        }
        if let Some(c) = msg
            .get("content")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
        {
            delta.insert("content".into(), json!(c));
        }
        if let Some(t) = msg
            .get("thinking")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            delta.insert("reasoning_content".into(), json!(t));
        }
        if let Some(calls) = msg
            .get("tool_calls")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty())
        {
            let converted = tool_calls_to_openai(calls, &self.ids, self.next_tool_index);
            self.next_tool_index += converted.len();
            delta.insert("tool_calls".into(), Value::Array(converted));
        }
        let done = line.get("done").and_then(Value::as_bool).unwrap_or(false);
        if !delta.is_empty() {
            out.push(self.chunk(Value::Object(delta), None));
        }
        if done {
            self.finished = true;
            self.usage = ollama_usage(line);
            let reason = finish_reason(
                line.get("done_reason").and_then(Value::as_str),
                self.next_tool_index > 0,
            );
            out.push(self.chunk(json!({}), Some(reason)));
            if self.include_usage {
                out.push(json!({
                    "id": self.ids.id,
                    "object": "chat.completion.chunk",
                    "created": self.ids.created,
                    "model": self.ids.model,
                    "choices": [],
                    "usage": usage_json(self.usage.0, self.usage.1),
                }));
            }
        }
        out
    }
}

/// The SSE payload that ends a stream whose upstream failed (the openai SDK raises on it).
pub fn stream_error(message: &str) -> Value {
    json!({"error": {"message": message, "type": "upstream_error", "param": null, "code": "upstream_error"}})
}

/// OpenAI `POST /v1/embeddings` body to Ollama `POST /api/embed` body.
pub fn embeddings_to_ollama(req: &Value, upstream_model: &str) -> Result<Value, TranslateError> {
    let input = req
        .get("input")
        .ok_or_else(|| bad("input", "Missing required parameter: 'input'"))?;
    let ok = match input {
        Value::String(_) => true,
        Value::Array(items) => !items.is_empty() && items.iter().all(Value::is_string),
        _ => false,
    };
    if !ok {
        return Err(bad(
            "input",
            "'input' must be a string or a non-empty array of strings (token arrays are not supported by Ollama)",
        ));
    }
    let mut body = json!({"model": upstream_model, "input": input});
    if let Some(d) = req.get("dimensions").filter(|v| !v.is_null()) {
        body["dimensions"] = d.clone();
    }
    for key in ["keep_alive", "truncate", "options"] {
        if let Some(v) = req.get(key) {
            body[key] = v.clone();
        }
    }
    Ok(body)
}

/// Ollama `/api/embed` response to OpenAI's embeddings list.
pub fn embeddings_response_to_openai(resp: &Value, model: &str) -> Value {
    let data: Vec<Value> = resp
        .get("embeddings")
        .and_then(Value::as_array)
        .map(|es| {
            es.iter()
                .enumerate()
                .map(|(i, e)| json!({"object": "embedding", "index": i, "embedding": e}))
                .collect()
        })
        .unwrap_or_default();
    let prompt = resp
        .get("prompt_eval_count")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    })
}

/// Golden files in `edge/tests/golden/`: each holds an input and the expected translation.
/// `UPDATE_GOLDEN=1 cargo test -p edge golden` rewrites the expectations (review the diff).
#[cfg(test)]
mod golden {
    use super::*;
    use crate::translate::golden::check_golden_dir;

    fn ids() -> ChatIds {
        ChatIds {
            id: "chatcmpl-golden".into(),
            created: 1_795_000_000,
            model: "ollama/test-model".into(),
        }
    }

    fn translate_case(case: &Value) -> Value {
        let model = case["model"].as_str().unwrap_or("m");
        let input = &case["input"];
        let result = |r: Result<Value, TranslateError>| match r {
            Ok(v) => v,
            Err(e) => json!({"error": e.message, "param": e.param}),
        };
        match case["kind"].as_str().unwrap() {
            "chat_request" => result(chat_to_ollama(input, model)),
            "chat_response" => chat_response_to_openai(input, &ids()),
            "chat_stream" => {
                let mut t = ChatStreamTranslator::new(ids(), case["include_usage"] == true);
                let mut out = Vec::new();
                for line in input.as_array().unwrap() {
                    out.extend(t.on_line(line));
                }
                Value::Array(out)
            }
            "embeddings_request" => result(embeddings_to_ollama(input, model)),
            "embeddings_response" => embeddings_response_to_openai(input, model),
            other => panic!("unknown golden kind {other}"),
        }
    }

    #[test]
    fn golden_files() {
        check_golden_dir("golden", 10, translate_case);
    }
}
