//! OpenAI Responses ⇄ OpenAI chat completions, both ways, streaming included.
//!
//! The edge serves `POST /v1/responses` for providers without the Responses API by translating
//! the request to a chat body and running it through the chat path (Ollama providers get the
//! chat → Ollama translation on top), then translating the chat answer or chunk stream back
//! into a `response` object or the Responses event sequence. Pure functions over JSON values,
//! pinned by the golden files in `edge/tests/golden/responses/`.
use serde_json::{json, Map, Value};

use super::TranslateError;

fn bad(param: &str, message: impl Into<String>) -> TranslateError {
    TranslateError {
        message: message.into(),
        param: Some(param.to_owned()),
    }
}

/// Responses `POST /v1/responses` body to a chat completions body. `history` is the
/// conversation of `previous_response_id` (chat messages), put before this request's input.
pub fn responses_to_chat(req: &Value, history: &[Value]) -> Result<Value, TranslateError> {
    let obj = req
        .as_object()
        .ok_or_else(|| bad("body", "The request body must be a JSON object"))?;
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        None | Some(Value::Null) => {
            return Err(bad("model", "Missing required parameter: 'model'"))
        }
        _ => return Err(bad("model", "'model' must be a non-empty string")),
    };
    let mut messages = Vec::new();
    match obj.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => return Err(bad("instructions", "'instructions' must be a string")),
    }
    messages.extend(history.iter().cloned());
    match obj.get("input") {
        None | Some(Value::Null) if !history.is_empty() => {}
        None | Some(Value::Null) => {
            return Err(bad("input", "Missing required parameter: 'input'"));
        }
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => messages.extend(input_items_to_chat(items)?),
        Some(_) => {
            return Err(bad(
                "input",
                "'input' must be a string or an array of input items",
            ))
        }
    }

    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(messages));
    match obj.get("max_output_tokens") {
        None | Some(Value::Null) => {}
        Some(v) if v.is_u64() => {
            body.insert("max_tokens".into(), v.clone());
        }
        Some(_) => {
            return Err(bad(
                "max_output_tokens",
                "'max_output_tokens' must be a positive integer",
            ))
        }
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            if !v.is_number() {
                return Err(bad(key, format!("'{key}' must be a number")));
            }
            body.insert(key.into(), v.clone());
        }
    }
    if let Some(effort) = obj
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .and_then(Value::as_str)
    {
        body.insert("reasoning_effort".into(), json!(effort));
    }
    if let Some(format) = response_format(obj.get("text"))? {
        body.insert("response_format".into(), format);
    }
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("stream", "'stream' must be a boolean")),
    };
    body.insert("stream".into(), json!(stream));
    if stream {
        // response.completed carries the usage, so the chat stream must end with it.
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let tools = tools_to_chat(obj.get("tools"))?;
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = tool_choice_to_chat(obj.get("tool_choice"))? {
            body.insert("tool_choice".into(), choice);
        }
        if let Some(p) = obj.get("parallel_tool_calls").filter(|v| v.is_boolean()) {
            body.insert("parallel_tool_calls".into(), p.clone());
        }
    }
    Ok(Value::Object(body))
}

/// `text.format` as chat's `response_format`.
fn response_format(text: Option<&Value>) -> Result<Option<Value>, TranslateError> {
    let Some(format) = text.and_then(|t| t.get("format")).filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    Ok(match format.get("type").and_then(Value::as_str) {
        Some("text") => None,
        Some("json_object") => Some(json!({"type": "json_object"})),
        Some("json_schema") => {
            let mut schema = json!({"name": format.get("name").cloned().unwrap_or(json!("response")),
                                    "schema": format.get("schema").cloned().unwrap_or(json!({}))});
            if let Some(s) = format.get("strict").filter(|s| s.is_boolean()) {
                schema["strict"] = s.clone();
            }
            Some(json!({"type": "json_schema", "json_schema": schema}))
        }
        _ => {
            return Err(bad(
                "text.format.type",
                "'text.format.type' must be text, json_object or json_schema",
            ))
        }
    })
}

/// Input items (messages, function calls and their outputs) as chat messages. Consecutive
/// `function_call` items become one assistant message with several `tool_calls`.
pub fn input_items_to_chat(items: &[Value]) -> Result<Vec<Value>, TranslateError> {
    let mut out: Vec<Value> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        match kind {
            "message" => out.push(message_to_chat(item, i)?),
            // Custom (free-form) tool calls, as Codex sends them back, travel as function calls
            // whose arguments are the raw input.
            "function_call" | "custom_tool_call" => {
                let call_id = item
                    .get("call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("input", format!("input[{i}].call_id: required")))?;
                let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
                let arguments = match item.get("arguments").or_else(|| item.get("input")) {
                    Some(Value::String(s)) => s.clone(),
                    Some(v @ Value::Object(_)) => v.to_string(),
                    _ => "{}".to_owned(),
                };
                let call = json!({"id": call_id, "type": "function",
                                  "function": {"name": name, "arguments": arguments}});
                match out.last_mut() {
                    Some(last) if last["role"] == "assistant" && last.get("tool_calls").is_some() => {
                        if let Some(calls) = last["tool_calls"].as_array_mut() {
                            calls.push(call);
                        }
                    }
                    Some(last) if last["role"] == "assistant" => {
                        last["tool_calls"] = json!([call]);
                    }
                    _ => out.push(json!({"role": "assistant", "content": "", "tool_calls": [call]})),
                }
            }
            "function_call_output" | "custom_tool_call_output" => {
                let call_id = item
                    .get("call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("input", format!("input[{i}].call_id: required")))?;
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts_text(parts),
                    Some(v) if !v.is_null() => v.to_string(),
                    _ => String::new(),
                };
                out.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            }
            // A local model cannot read another model's reasoning items (often encrypted).
            "reasoning" => {}
            other => {
                return Err(bad(
                    "input",
                    format!("input[{i}].type: {other:?} is not supported by this provider; use message, function_call or function_call_output"),
                ))
            }
        }
    }
    Ok(out)
}

fn parts_text(parts: &[Value]) -> String {
    parts
        .iter()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("")
}

fn message_to_chat(item: &Value, i: usize) -> Result<Value, TranslateError> {
    let role = match item.get("role").and_then(Value::as_str) {
        Some("developer") | Some("system") => "system",
        Some("user") => "user",
        Some("assistant") => "assistant",
        _ => {
            return Err(bad(
                "input",
                format!("input[{i}].role: must be user, assistant, system or developer"),
            ))
        }
    };
    let content = match item.get("content") {
        Some(Value::String(s)) => json!(s),
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("input_text") | Some("output_text") | Some("text") => out.push(
                        json!({"type": "text", "text": p.get("text").and_then(Value::as_str).unwrap_or_default()}),
                    ),
                    Some("refusal") => out.push(
                        json!({"type": "text", "text": p.get("refusal").and_then(Value::as_str).unwrap_or_default()}),
                    ),
                    Some("input_image") => {
                        let url = p
                            .get("image_url")
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                bad(
                                    "input",
                                    format!("input[{i}]: input_image needs image_url (file ids are not supported)"),
                                )
                            })?;
                        out.push(json!({"type": "image_url", "image_url": {"url": url}}));
                    }
                    other => {
                        return Err(bad(
                            "input",
                            format!("input[{i}].content: part type {other:?} is not supported by this provider"),
                        ))
                    }
                }
            }
            if out.iter().all(|p| p["type"] == "text") {
                json!(out
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(""))
            } else {
                Value::Array(out)
            }
        }
        _ => {
            return Err(bad(
                "input",
                format!("input[{i}].content: must be a string or an array of content parts"),
            ))
        }
    };
    Ok(json!({"role": role, "content": content}))
}

fn tools_to_chat(tools: Option<&Value>) -> Result<Vec<Value>, TranslateError> {
    let tools = match tools {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(t)) => t,
        Some(_) => return Err(bad("tools", "'tools' must be an array")),
    };
    let mut out = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        // Hosted tools (web_search, file_search, ...) run on OpenAI's side; a local model
        // cannot run them, so only function tools are offered.
        if t.get("type").and_then(Value::as_str) != Some("function") {
            continue;
        }
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("tools", format!("tools[{i}].name: required")))?;
        let mut function = json!({"name": name,
            "parameters": t.get("parameters").filter(|p| !p.is_null()).cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}))});
        if let Some(d) = t.get("description").filter(|d| d.is_string()) {
            function["description"] = d.clone();
        }
        if let Some(s) = t.get("strict").filter(|s| s.is_boolean()) {
            function["strict"] = s.clone();
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(out)
}

fn tool_choice_to_chat(choice: Option<&Value>) -> Result<Option<Value>, TranslateError> {
    Ok(match choice {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if matches!(s.as_str(), "auto" | "none" | "required") => {
            Some(json!(s))
        }
        Some(c) if c.get("type").and_then(Value::as_str) == Some("function") => {
            Some(json!({"type": "function", "function": {"name": c["name"]}}))
        }
        Some(_) => return Err(bad(
            "tool_choice",
            "'tool_choice' must be auto, none, required or {\"type\": \"function\", \"name\": …}",
        )),
    })
}

/// Identity of one translated response.
#[derive(Debug, Clone)]
pub struct ResponseIds {
    /// `resp_…`; item ids are derived from it.
    pub id: String,
    pub created_at: i64,
    /// The model name as the client asked for it.
    pub model: String,
}

impl ResponseIds {
    fn suffix(&self) -> &str {
        self.id.trim_start_matches("resp_")
    }
    fn message_id(&self) -> String {
        format!("msg_{}", self.suffix())
    }
    fn reasoning_id(&self) -> String {
        format!("rs_{}", self.suffix())
    }
    fn call_id(&self, n: usize) -> String {
        format!("fc_{}_{n}", self.suffix())
    }
}

/// The request's settings a `response` object echoes back.
fn envelope(ids: &ResponseIds, req: &Value, status: &str) -> Value {
    let get = |k: &str, default: Value| {
        req.get(k)
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or(default)
    };
    json!({
        "id": ids.id, "object": "response", "created_at": ids.created_at, "status": status,
        "background": false, "error": null, "incomplete_details": null,
        "instructions": get("instructions", Value::Null),
        "max_output_tokens": get("max_output_tokens", Value::Null),
        "model": ids.model, "output": [],
        "parallel_tool_calls": get("parallel_tool_calls", json!(true)),
        "previous_response_id": get("previous_response_id", Value::Null),
        "reasoning": get("reasoning", json!({"effort": null, "summary": null})),
        "store": get("store", json!(true)),
        "temperature": get("temperature", json!(1.0)),
        "text": get("text", json!({"format": {"type": "text"}})),
        "tool_choice": get("tool_choice", json!("auto")),
        "tools": get("tools", json!([])),
        "top_p": get("top_p", json!(1.0)),
        "truncation": "disabled", "usage": null, "user": null,
        "metadata": get("metadata", json!({})),
    })
}

fn usage(input: u64, output: u64) -> Value {
    json!({"input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
           "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
           "total_tokens": input + output})
}

fn chat_usage(usage: Option<&Value>) -> (u64, u64) {
    let get = |k: &str| {
        usage
            .and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    (get("prompt_tokens"), get("completion_tokens"))
}

fn reasoning_text(message_or_delta: &Value) -> Option<&str> {
    message_or_delta["reasoning_content"]
        .as_str()
        .or_else(|| message_or_delta["reasoning"].as_str())
        .filter(|t| !t.is_empty())
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"id": id, "type": "message", "status": status, "role": "assistant",
           "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

fn reasoning_item(id: &str, text: &str) -> Value {
    json!({"id": id, "type": "reasoning", "summary": [],
           "content": [{"type": "reasoning_text", "text": text}]})
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "call_id": call_id,
           "name": name, "arguments": arguments})
}

/// Status and `incomplete_details` for a chat `finish_reason`.
fn status_of(finish: Option<&str>) -> (&'static str, Value) {
    match finish {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// A chat completion as a `response` object. `req` is the Responses request (echoed settings).
pub fn chat_response_to_response(resp: &Value, ids: &ResponseIds, req: &Value) -> Value {
    let choice = &resp["choices"][0];
    let message = &choice["message"];
    let mut output = Vec::new();
    if let Some(t) = reasoning_text(message) {
        output.push(reasoning_item(&ids.reasoning_id(), t));
    }
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        output.push(message_item(&ids.message_id(), text, "completed"));
    }
    for (n, call) in message["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let arguments = match &call["function"]["arguments"] {
            Value::String(s) => s.clone(),
            Value::Null => "{}".to_owned(),
            v => v.to_string(),
        };
        let call_id = call["id"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| ids.call_id(n).replacen("fc_", "call_", 1));
        output.push(call_item(
            &ids.call_id(n),
            &call_id,
            call["function"]["name"].as_str().unwrap_or_default(),
            &arguments,
            "completed",
        ));
    }
    let (status, incomplete) = status_of(choice["finish_reason"].as_str());
    let (tin, tout) = chat_usage(resp.get("usage"));
    let mut out = envelope(ids, req, status);
    out["incomplete_details"] = incomplete;
    out["output"] = Value::Array(output);
    out["usage"] = usage(tin, tout);
    out
}

/// A chat error (OpenAI's `{"error": …}`) as a failed `response`'s `error`.
fn response_error(err: &Value) -> Value {
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| err.as_str())
        .unwrap_or("upstream error");
    json!({"code": "server_error", "message": message})
}

/// One item of the streamed answer, open or done.
#[derive(Debug)]
enum Open {
    None,
    Reasoning {
        index: usize,
        text: String,
    },
    Text {
        index: usize,
        text: String,
    },
    Call {
        index: usize,
        chat_index: u64,
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

pub type Event = (&'static str, Value);

/// Chat chunks in, the Responses event sequence out: `response.created`,
/// `response.in_progress`, then per output item `response.output_item.added`, its deltas
/// and `…done` events, `response.output_item.done`, and finally `response.completed` (or
/// `response.incomplete` / `response.failed`) carrying the whole response.
#[derive(Debug)]
pub struct ResponsesStreamTranslator {
    ids: ResponseIds,
    /// The Responses request, for the echoed settings.
    request: Value,
    sequence: u64,
    open: Open,
    /// Finished output items, in order.
    output: Vec<Value>,
    finish_reason: Option<String>,
    calls: usize,
    /// (input, output) tokens from the chunk that carries `usage`.
    pub usage: (u64, u64),
    pub finished: bool,
    /// The final `response` object, once the stream is over.
    pub final_response: Option<Value>,
}

impl ResponsesStreamTranslator {
    pub fn new(ids: ResponseIds, request: Value) -> Self {
        Self {
            ids,
            request,
            sequence: 0,
            open: Open::None,
            output: Vec::new(),
            finish_reason: None,
            calls: 0,
            usage: (0, 0),
            finished: false,
            final_response: None,
        }
    }

    fn event(&mut self, name: &'static str, mut data: Value) -> Event {
        data["type"] = json!(name);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        (name, data)
    }

    /// `response.created` and `response.in_progress`, sent before anything is known.
    pub fn start(&mut self) -> Vec<Event> {
        let r = envelope(&self.ids, &self.request, "in_progress");
        vec![
            self.event("response.created", json!({"response": r.clone()})),
            self.event("response.in_progress", json!({"response": r})),
        ]
    }

    fn close(&mut self, out: &mut Vec<Event>) {
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => {}
            Open::Reasoning { index, text } => {
                let id = self.ids.reasoning_id();
                let e = self.event(
                    "response.reasoning_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text}),
                );
                out.push(e);
                let item = reasoning_item(&id, &text);
                let e = self.event(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item.clone()}),
                );
                out.push(e);
                self.output.push(item);
            }
            Open::Text { index, text } => {
                let id = self.ids.message_id();
                let e = self.event("response.output_text.done", json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}));
                out.push(e);
                let e = self.event("response.content_part.done", json!({"item_id": id, "output_index": index, "content_index": 0,
                    "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}));
                out.push(e);
                let item = message_item(&id, &text, "completed");
                let e = self.event(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item.clone()}),
                );
                out.push(e);
                self.output.push(item);
            }
            Open::Call {
                index,
                id,
                call_id,
                name,
                arguments,
                ..
            } => {
                let e = self.event("response.function_call_arguments.done", json!({"item_id": id, "output_index": index, "name": name, "arguments": arguments}));
                out.push(e);
                let item = call_item(&id, &call_id, &name, &arguments, "completed");
                let e = self.event(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item.clone()}),
                );
                out.push(e);
                self.output.push(item);
            }
        }
    }

    /// One chat chunk (`data:` payload). An `{"error": …}` payload ends the stream with
    /// `response.failed`.
    pub fn on_chunk(&mut self, chunk: &Value) -> Vec<Event> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        if let Some(err) = chunk.get("error") {
            self.close(&mut out);
            let mut r = envelope(&self.ids, &self.request, "failed");
            r["error"] = response_error(err);
            r["output"] = Value::Array(self.output.clone());
            let e = self.event("response.failed", json!({"response": r.clone()}));
            out.push(e);
            self.final_response = Some(r);
            self.finished = true;
            return out;
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = chat_usage(Some(u));
        }
        let Some(choice) = chunk["choices"].get(0) else {
            return out;
        };
        let delta = &choice["delta"];
        if let Some(t) = reasoning_text(delta) {
            if !matches!(self.open, Open::Reasoning { .. }) {
                self.close(&mut out);
                let index = self.output.len();
                let id = self.ids.reasoning_id();
                let e = self.event(
                    "response.output_item.added",
                    json!({"output_index": index,
                    "item": {"id": id, "type": "reasoning", "summary": [], "content": []}}),
                );
                out.push(e);
                self.open = Open::Reasoning {
                    index,
                    text: String::new(),
                };
            }
            if let Open::Reasoning { index, text } = &mut self.open {
                text.push_str(t);
                let index = *index;
                let id = self.ids.reasoning_id();
                let e = self.event(
                    "response.reasoning_text.delta",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "delta": t}),
                );
                out.push(e);
            }
        }
        if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            if !matches!(self.open, Open::Text { .. }) {
                self.close(&mut out);
                let index = self.output.len();
                let id = self.ids.message_id();
                let e = self.event("response.output_item.added", json!({"output_index": index,
                    "item": {"id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}));
                out.push(e);
                let e = self.event("response.content_part.added", json!({"item_id": id, "output_index": index, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}));
                out.push(e);
                self.open = Open::Text {
                    index,
                    text: String::new(),
                };
            }
            if let Open::Text { index, text } = &mut self.open {
                text.push_str(t);
                let index = *index;
                let id = self.ids.message_id();
                let e = self.event("response.output_text.delta", json!({"item_id": id, "output_index": index, "content_index": 0, "delta": t, "logprobs": []}));
                out.push(e);
            }
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let chat_index = call["index"].as_u64().unwrap_or(0);
            let same = matches!(&self.open, Open::Call { chat_index: c, .. } if *c == chat_index);
            if !same {
                self.close(&mut out);
                let index = self.output.len();
                let id = self.ids.call_id(self.calls);
                let call_id = call["id"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| id.replacen("fc_", "call_", 1));
                self.calls += 1;
                let name = call["function"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let e = self.event(
                    "response.output_item.added",
                    json!({"output_index": index,
                    "item": call_item(&id, &call_id, &name, "", "in_progress")}),
                );
                out.push(e);
                self.open = Open::Call {
                    index,
                    chat_index,
                    id,
                    call_id,
                    name,
                    arguments: String::new(),
                };
            }
            let args = match &call["function"]["arguments"] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                v => v.to_string(),
            };
            if let (
                Open::Call {
                    index,
                    id,
                    arguments,
                    ..
                },
                false,
            ) = (&mut self.open, args.is_empty())
            {
                arguments.push_str(&args);
                let (index, id) = (*index, id.clone());
                let e = self.event(
                    "response.function_call_arguments.delta",
                    json!({"item_id": id, "output_index": index, "delta": args}),
                );
                out.push(e);
            }
        }
        if let Some(finish) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(finish.to_owned());
        }
        out
    }

    /// The end of the chat stream (`[DONE]`): close the open item, then `response.completed`
    /// (or `response.incomplete` when the token cap cut the answer).
    pub fn finish(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        self.close(&mut out);
        let (status, incomplete) = status_of(self.finish_reason.as_deref());
        let mut r = envelope(&self.ids, &self.request, status);
        r["incomplete_details"] = incomplete;
        r["output"] = Value::Array(self.output.clone());
        r["usage"] = usage(self.usage.0, self.usage.1);
        let name = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        let e = self.event(name, json!({"response": r.clone()}));
        out.push(e);
        self.final_response = Some(r);
        self.finished = true;
        out
    }

    /// Whether the chat stream said why it stopped (a stream cut short did not).
    pub fn saw_finish(&self) -> bool {
        self.finish_reason.is_some()
    }
}

#[cfg(test)]
mod golden {
    use super::*;

    fn ids() -> ResponseIds {
        ResponseIds {
            id: "resp_golden".into(),
            created_at: 1_741_476_542,
            model: "ollama/test-model".into(),
        }
    }

    fn translate_case(case: &Value) -> Value {
        let input = &case["input"];
        let request = case.get("request").cloned().unwrap_or_else(|| json!({}));
        match case["kind"].as_str().unwrap() {
            "responses_request" => match responses_to_chat(input, &[]) {
                Ok(v) => v,
                Err(e) => json!({"error": e.message, "param": e.param}),
            },
            "chat_response" => chat_response_to_response(input, &ids(), &request),
            "chat_stream" => {
                let mut t = ResponsesStreamTranslator::new(ids(), request);
                let mut out = t.start();
                for chunk in input.as_array().unwrap() {
                    if chunk == "[DONE]" {
                        out.extend(t.finish());
                    } else {
                        out.extend(t.on_chunk(chunk));
                    }
                }
                Value::Array(out.into_iter().map(|(_, d)| d).collect())
            }
            other => panic!("unknown golden kind {other}"),
        }
    }

    #[test]
    fn responses_golden_files() {
        crate::translate::golden::check_golden_dir("golden/responses", 5, translate_case);
    }

    #[test]
    fn output_items_read_back_as_the_same_conversation() {
        let r = chat_response_to_response(
            &json!({"choices": [{"message": {"content": "hi", "tool_calls": [
                {"id": "call_1", "function": {"name": "f", "arguments": "{}"}}]},
                "finish_reason": "tool_calls"}]}),
            &ids(),
            &json!({}),
        );
        let back = input_items_to_chat(r["output"].as_array().unwrap()).unwrap();
        assert_eq!(
            back,
            vec![json!({"role": "assistant", "content": "hi", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})]
        );
    }
}
