//! Anthropic Messages ⇄ OpenAI chat completions, both ways, streaming included.
//!
//! The edge serves `POST /v1/messages` by translating it to an OpenAI chat body and running
//! it through the chat path (so Ollama providers get the existing OpenAI → Ollama translation
//! on top), then translating the OpenAI answer or chunk stream back. Pure functions over JSON
//! values, pinned by the golden files in `edge/tests/golden/anthropic/`.
use serde_json::{json, Map, Value};

use super::TranslateError;

fn bad(param: &str, message: impl Into<String>) -> TranslateError {
    TranslateError {
        message: message.into(),
        param: Some(param.to_owned()),
    }
}

/// Anthropic `POST /v1/messages` body to an OpenAI `POST /v1/chat/completions` body.
pub fn messages_to_chat(req: &Value) -> Result<Value, TranslateError> {
    let obj = req
        .as_object()
        .ok_or_else(|| bad("body", "The request body must be a JSON object"))?;
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(bad("model", "model: Field required (a non-empty string)")),
    };
    let max_tokens = match obj.get("max_tokens") {
        None | Some(Value::Null) => return Err(bad("max_tokens", "max_tokens: Field required")),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| bad("max_tokens", "max_tokens: must be a non-negative integer"))?,
    };
    let mut messages = system_to_chat(obj.get("system"))?;
    messages.extend(conversation_to_chat(obj.get("messages"))?);

    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(messages));
    body.insert("max_tokens".into(), json!(max_tokens));
    for key in ["temperature", "top_p", "top_k"] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            if !v.is_number() {
                return Err(bad(key, format!("{key}: must be a number")));
            }
            body.insert(key.into(), v.clone());
        }
    }
    match obj.get("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            if !a.is_empty() {
                body.insert("stop".into(), Value::Array(a.clone()));
            }
        }
        Some(_) => {
            return Err(bad(
                "stop_sequences",
                "stop_sequences: must be an array of strings",
            ))
        }
    }
    if let Some(effort) = reasoning_effort(obj.get("thinking")) {
        body.insert("reasoning_effort".into(), json!(effort));
        // Ollama takes `think` as it is (levels only for some models, a bool for all);
        // OpenAI-compatible servers ignore it and read `reasoning_effort`.
        body.insert("think".into(), json!(true));
    }
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    body.insert("stream".into(), json!(stream));
    if stream {
        // message_delta carries the final usage, so the chat stream must end with it.
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let tools = tools_to_chat(obj.get("tools"))?;
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = tool_choice_to_chat(obj.get("tool_choice"))? {
            body.insert("tool_choice".into(), choice);
        }
        if req.pointer("/tool_choice/disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            body.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    Ok(Value::Object(body))
}

/// Extended thinking as OpenAI's `reasoning_effort` (which the Ollama translation turns into
/// `think`): the budget picks the level.
fn reasoning_effort(thinking: Option<&Value>) -> Option<&'static str> {
    let thinking = thinking?;
    match thinking.get("type").and_then(Value::as_str)? {
        "enabled" => Some(
            match thinking.get("budget_tokens").and_then(Value::as_u64) {
                Some(b) if b < 4096 => "low",
                Some(b) if b >= 16384 => "high",
                _ => "medium",
            },
        ),
        "adaptive" => Some("medium"),
        _ => None,
    }
}

fn system_to_chat(system: Option<&Value>) -> Result<Vec<Value>, TranslateError> {
    let text = match system {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => {
            let mut parts = Vec::new();
            for b in blocks {
                match b.get("text").and_then(Value::as_str) {
                    Some(t) if b.get("type").and_then(Value::as_str) == Some("text") => {
                        parts.push(t.to_owned())
                    }
                    _ => return Err(bad("system", "system: blocks must be text blocks")),
                }
            }
            parts.join("\n\n")
        }
        Some(_) => {
            return Err(bad(
                "system",
                "system: must be a string or an array of text blocks",
            ))
        }
    };
    Ok(vec![json!({"role": "system", "content": text})])
}

fn conversation_to_chat(messages: Option<&Value>) -> Result<Vec<Value>, TranslateError> {
    let messages = messages
        .ok_or_else(|| bad("messages", "messages: Field required"))?
        .as_array()
        .ok_or_else(|| bad("messages", "messages: must be an array"))?;
    if messages.is_empty() {
        return Err(bad(
            "messages",
            "messages: must contain at least one message",
        ));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let content = m
            .get("content")
            .ok_or_else(|| bad("messages", format!("messages.{i}.content: Field required")))?;
        match role {
            "user" => user_to_chat(content, i, &mut out)?,
            "assistant" => out.push(assistant_to_chat(content, i)?),
            _ => {
                return Err(bad(
                    "messages",
                    format!("messages.{i}.role: must be \"user\" or \"assistant\""),
                ))
            }
        }
    }
    Ok(out)
}

fn blocks(content: &Value, i: usize) -> Result<&Vec<Value>, TranslateError> {
    content.as_array().ok_or_else(|| {
        bad(
            "messages",
            format!("messages.{i}.content: must be a string or an array of content blocks"),
        )
    })
}

/// A user turn: `tool_result` blocks become `tool` messages (first, as they answer the
/// assistant's calls just before), the rest one user message.
fn user_to_chat(content: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), TranslateError> {
    if let Value::String(s) = content {
        out.push(json!({"role": "user", "content": s}));
        return Ok(());
    }
    let mut parts = Vec::new();
    for b in blocks(content, i)? {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(json!({"type": "text",
                "text": b.get("text").and_then(Value::as_str).unwrap_or_default()})),
            Some("image") => parts.push(image_to_chat(b, i)?),
            Some("tool_result") => {
                let id = b
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        bad(
                            "messages",
                            format!("messages.{i}: tool_result needs tool_use_id"),
                        )
                    })?;
                let mut text = tool_result_text(b.get("content"));
                if b.get("is_error") == Some(&Value::Bool(true)) {
                    text = format!("Error: {text}");
                }
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            // Thinking and documents have no chat equivalent for local models.
            _ => {}
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    let all_text = parts.iter().all(|p| p["type"] == "text");
    let content = if all_text {
        let texts: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        json!(texts.join("\n\n"))
    } else {
        Value::Array(parts)
    };
    out.push(json!({"role": "user", "content": content}));
    Ok(())
}

fn tool_result_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn image_to_chat(b: &Value, i: usize) -> Result<Value, TranslateError> {
    let source = &b["source"];
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => format!(
            "data:{};base64,{}",
            source["media_type"].as_str().unwrap_or("image/png"),
            source["data"].as_str().unwrap_or_default()
        ),
        Some("url") => source["url"].as_str().unwrap_or_default().to_owned(),
        _ => {
            return Err(bad(
                "messages",
                format!("messages.{i}: image source must be base64 or url"),
            ))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn assistant_to_chat(content: &Value, i: usize) -> Result<Value, TranslateError> {
    if let Value::String(s) = content {
        return Ok(json!({"role": "assistant", "content": s}));
    }
    let mut text = Vec::new();
    let mut thinking = Vec::new();
    let mut calls = Vec::new();
    for b in blocks(content, i)? {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push(b["text"].as_str().unwrap_or_default().to_owned()),
            Some("thinking") => {
                thinking.push(b["thinking"].as_str().unwrap_or_default().to_owned())
            }
            Some("tool_use") => {
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({"id": b["id"], "type": "function", "function": {
                    "name": b["name"], "arguments": input.to_string()}}));
            }
            _ => {}
        }
    }
    let mut m = json!({"role": "assistant", "content": text.join("")});
    if !thinking.is_empty() {
        m["reasoning_content"] = json!(thinking.join(""));
    }
    if !calls.is_empty() {
        m["tool_calls"] = Value::Array(calls);
    }
    Ok(m)
}

fn tools_to_chat(tools: Option<&Value>) -> Result<Vec<Value>, TranslateError> {
    let tools = match tools {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(t)) => t,
        Some(_) => return Err(bad("tools", "tools: must be an array")),
    };
    let mut out = Vec::new();
    for t in tools {
        // Anthropic's server tools (web search, code execution, ...) have a versioned `type`;
        // a local model cannot run them, so only client tools are offered.
        if let Some(kind) = t.get("type").and_then(Value::as_str) {
            if kind != "custom" {
                continue;
            }
        }
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("tools", "tools: each tool needs a name"))?;
        let mut function = json!({"name": name,
            "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"}))});
        if let Some(d) = t.get("description").filter(|d| d.is_string()) {
            function["description"] = d.clone();
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(out)
}

fn tool_choice_to_chat(choice: Option<&Value>) -> Result<Option<Value>, TranslateError> {
    let Some(choice) = choice.filter(|c| !c.is_null()) else {
        return Ok(None);
    };
    Ok(Some(match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => json!({"type": "function", "function": {"name": choice["name"]}}),
        _ => {
            return Err(bad(
                "tool_choice",
                "tool_choice.type: must be auto, any, tool or none",
            ))
        }
    }))
}

/// OpenAI `finish_reason` to Anthropic `stop_reason`.
fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls") | Some("function_call") => "tool_use",
        _ => "end_turn",
    }
}

fn usage_to_anthropic(usage: Option<&Value>) -> (u64, u64) {
    let get = |k: &str| {
        usage
            .and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    (get("prompt_tokens"), get("completion_tokens"))
}

/// Tool arguments as an object; a model that wrote something else gets it kept, not lost.
fn tool_input(arguments: &Value) -> Value {
    match arguments {
        Value::String(s) if s.trim().is_empty() => json!({}),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => v,
            _ => json!({"_arguments": s}),
        },
        Value::Object(_) => arguments.clone(),
        _ => json!({}),
    }
}

fn reasoning(message_or_delta: &Value) -> Option<&str> {
    message_or_delta["reasoning_content"]
        .as_str()
        .or_else(|| message_or_delta["reasoning"].as_str())
        .filter(|t| !t.is_empty())
}

/// OpenAI chat completion to an Anthropic `message`. `model` is the name the client asked for.
pub fn chat_response_to_message(resp: &Value, id: &str, model: &str) -> Value {
    let choice = &resp["choices"][0];
    let message = &choice["message"];
    let mut content = Vec::new();
    // Reasoning models' thoughts (Ollama `thinking`, vLLM `reasoning_content`) as a thinking
    // block; there is no signature to give, and no one to verify it.
    if let Some(t) = reasoning(message) {
        content.push(json!({"type": "thinking", "thinking": t, "signature": ""}));
    }
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    let mut has_calls = false;
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        has_calls = true;
        content.push(json!({"type": "tool_use", "id": call["id"],
            "name": call["function"]["name"], "input": tool_input(&call["function"]["arguments"])}));
    }
    let reason = if has_calls {
        "tool_use"
    } else {
        stop_reason(choice["finish_reason"].as_str())
    };
    let (tin, tout) = usage_to_anthropic(resp.get("usage"));
    json!({"id": id, "type": "message", "role": "assistant", "model": model,
           "content": content, "stop_reason": reason, "stop_sequence": null,
           "usage": {"input_tokens": tin, "output_tokens": tout}})
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Block {
    None,
    Thinking,
    Text,
    /// A tool call, by its OpenAI `index`.
    Tool(u64),
}

/// OpenAI chat chunks in, Anthropic stream events (`(event name, data)`) out.
#[derive(Debug)]
pub struct MessagesStreamTranslator {
    id: String,
    model: String,
    block: Block,
    /// Index of the next Anthropic content block.
    next_index: u64,
    stop_reason: Option<&'static str>,
    /// (input, output) tokens, from the chunk that carries `usage`.
    pub usage: (u64, u64),
    pub finished: bool,
}

pub type Event = (&'static str, Value);

impl MessagesStreamTranslator {
    pub fn new(id: String, model: String) -> Self {
        Self {
            id,
            model,
            block: Block::None,
            next_index: 0,
            stop_reason: None,
            usage: (0, 0),
            finished: false,
        }
    }

    /// The first event, sent before anything is known of the answer.
    pub fn start(&self) -> Event {
        (
            "message_start",
            json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        )
    }

    fn close_block(&mut self, out: &mut Vec<Event>) {
        if self.block != Block::None {
            out.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": self.next_index - 1}),
            ));
            self.block = Block::None;
        }
    }

    fn open_block(&mut self, block: Block, content_block: Value, out: &mut Vec<Event>) {
        self.close_block(out);
        out.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": self.next_index,
                   "content_block": content_block}),
        ));
        self.next_index += 1;
        self.block = block;
    }

    /// One OpenAI chunk (`data:` payload). An `{"error": …}` payload ends the stream with an
    /// Anthropic `error` event.
    pub fn on_chunk(&mut self, chunk: &Value) -> Vec<Event> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        if let Some(err) = chunk.get("error") {
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .or_else(|| err.as_str())
                .unwrap_or("upstream error");
            out.push((
                "error",
                crate::error::anthropic_body(http::StatusCode::INTERNAL_SERVER_ERROR, message),
            ));
            self.finished = true;
            return out;
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = usage_to_anthropic(Some(u));
        }
        let Some(choice) = chunk["choices"].get(0) else {
            return out;
        };
        let delta = &choice["delta"];
        if let Some(t) = reasoning(delta) {
            if self.block != Block::Thinking {
                self.open_block(
                    Block::Thinking,
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    &mut out,
                );
            }
            out.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": self.next_index - 1,
                       "delta": {"type": "thinking_delta", "thinking": t}}),
            ));
        }
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            if self.block != Block::Text {
                self.open_block(Block::Text, json!({"type": "text", "text": ""}), &mut out);
            }
            out.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": self.next_index - 1,
                       "delta": {"type": "text_delta", "text": text}}),
            ));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().unwrap_or(0);
            if self.block != Block::Tool(index) {
                let id = call["id"].as_str().map(str::to_owned).unwrap_or_else(|| {
                    format!("toolu_{}_{}", self.id.trim_start_matches("msg_"), index)
                });
                self.open_block(
                    Block::Tool(index),
                    json!({"type": "tool_use", "id": id,
                           "name": call["function"]["name"].as_str().unwrap_or_default(),
                           "input": {}}),
                    &mut out,
                );
            }
            if let Some(args) = call["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                out.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": self.next_index - 1,
                           "delta": {"type": "input_json_delta", "partial_json": args}}),
                ));
            }
        }
        if let Some(finish) = choice["finish_reason"].as_str() {
            self.stop_reason = Some(stop_reason(Some(finish)));
        }
        out
    }

    /// The end of the chat stream (`[DONE]`): close the open block, then `message_delta`
    /// (stop reason, usage) and `message_stop`.
    pub fn finish(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        self.close_block(&mut out);
        out.push((
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null},
                   "usage": {"input_tokens": self.usage.0, "output_tokens": self.usage.1}}),
        ));
        out.push(("message_stop", json!({"type": "message_stop"})));
        self.finished = true;
        out
    }

    /// Whether the chat stream said why it stopped (a stream cut short did not).
    pub fn saw_finish(&self) -> bool {
        self.stop_reason.is_some()
    }
}

/// A rough input-token count for `count_tokens`: local models have no shared tokenizer, so
/// this is the usual four characters per token over the text the model would read.
pub fn estimate_input_tokens(chat: &Value) -> u64 {
    fn chars(v: &Value) -> usize {
        match v {
            Value::String(s) => s.chars().count(),
            Value::Array(a) => a.iter().map(chars).sum(),
            Value::Object(o) => o
                .iter()
                .filter(|(k, _)| *k != "model" && *k != "role" && *k != "type")
                .map(|(_, v)| chars(v))
                .sum(),
            _ => 0,
        }
    }
    let text = chars(&chat["messages"]) + chars(&chat["tools"]);
    (text as u64).div_ceil(4).max(1)
}

#[cfg(test)]
mod golden {
    use super::*;

    fn translate_case(case: &Value) -> Value {
        let input = &case["input"];
        match case["kind"].as_str().unwrap() {
            "messages_request" => match messages_to_chat(input) {
                Ok(v) => v,
                Err(e) => json!({"error": e.message, "param": e.param}),
            },
            "chat_response" => chat_response_to_message(input, "msg_golden", "ollama/test-model"),
            "chat_stream" => {
                let mut t = MessagesStreamTranslator::new("msg_golden".into(), "m".into());
                let mut out = vec![t.start()];
                for chunk in input.as_array().unwrap() {
                    if chunk == "[DONE]" {
                        out.extend(t.finish());
                    } else {
                        out.extend(t.on_chunk(chunk));
                    }
                }
                Value::Array(
                    out.into_iter()
                        .map(|(e, d)| json!({"event": e, "data": d}))
                        .collect(),
                )
            }
            other => panic!("unknown golden kind {other}"),
        }
    }

    #[test]
    fn anthropic_golden_files() {
        crate::translate::golden::check_golden_dir("golden/anthropic", 5, translate_case);
    }

    #[test]
    fn count_is_about_four_chars_a_token() {
        let chat = messages_to_chat(&json!({"model": "m", "max_tokens": 1,
            "messages": [{"role": "user", "content": "abcdefgh"}]}))
        .unwrap();
        assert_eq!(estimate_input_tokens(&chat), 2);
    }
}
