//! Fake inference servers for tests and benchmarks, written from the published APIs:
//! Ollama's native API (`--kind ollama`) and the OpenAI-compatible API as vLLM and llama.cpp
//! serve it (`--kind openai`, under `/v1`). Streaming, tool calls and errors included.
//!
//! Behaviour is chosen by model name, so tests read like usage:
//! - `fake-slow` waits `--slow-ms` before answering (slow first byte);
//! - `fake-error` answers 500 before any byte;
//! - `fake-midstream-error` streams two chunks, then an error;
//! - `fake-drop` streams two chunks, then cuts the connection;
//! - any unknown model answers 404 as the real server does.
//!
//! `--loaded` sets what `/api/ps` reports; `--context-length` makes long chats fail as vLLM does.
//! With `--responses` the OpenAI kind serves the Responses API as well; rerank, moderations,
//! images, speech and (multipart) transcriptions are always served, as vLLM and the
//! OpenAI-compatible whisper/TTS servers do.
//!
//! `GET /_fake/stats` counts requests; `GET /_fake/last` shows the last request's headers/body;
//! `GET /_fake/cancelled` lists the `fake-slow` requests whose client (the edge) went away while
//! they waited, as during a model load, with the wall-clock moment the server noticed.
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use clap::Parser;
use futures::StreamExt;
use serde_json::{json, Value};

#[derive(Parser, Clone)]
struct Args {
    #[arg(long, value_parser = ["ollama", "openai"])]
    kind: String,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Comma-separated model names this server has.
    #[arg(long)]
    models: Option<String>,
    /// Delay between streamed chunks.
    #[arg(long, default_value_t = 5)]
    chunk_delay_ms: u64,
    /// Delay before every answer (a slow endpoint).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// How long `fake-slow` waits before its headers.
    #[arg(long, default_value_t = 1500)]
    slow_ms: u64,
    /// Require this bearer key (OpenAI kind).
    #[arg(long)]
    api_key: Option<String>,
    /// Comma-separated models `/api/ps` reports as loaded (default: the first listed one).
    #[arg(long)]
    loaded: Option<String>,
    /// A context window in tokens: a chat whose prompt is longer answers 400 with vLLM's
    /// "maximum context length" error (OpenAI kind).
    #[arg(long)]
    context_length: Option<u64>,
    /// Name reported in `x-fake-upstream` and in `/_fake/stats`.
    #[arg(long, default_value = "fake")]
    name: String,
    /// Serve OpenAI's Responses API too (`/v1/responses`, OpenAI kind), as newer vLLM does.
    #[arg(long)]
    responses: bool,
}

struct Fake {
    args: Args,
    models: Mutex<BTreeSet<String>>,
    requests: AtomicU64,
    last: Mutex<Value>,
    /// Responses made by `/v1/responses`, for GET and DELETE.
    responses: Mutex<std::collections::HashMap<String, Value>>,
    /// `fake-slow` waits cut short by the connection closing.
    cancelled: Mutex<Vec<Value>>,
}

/// Held while `fake-slow` waits for its "model load": dropped before the wait is over, the
/// connection closed under it (hyper drops a request's future when its connection goes).
struct LoadWait {
    fake: Arc<Fake>,
    started: std::time::Instant,
    done: bool,
}

impl LoadWait {
    async fn run(fake: Arc<Fake>) {
        let mut wait = LoadWait {
            started: std::time::Instant::now(),
            fake,
            done: false,
        };
        tokio::time::sleep(Duration::from_millis(wait.fake.args.slow_ms)).await;
        wait.done = true;
    }
}

impl Drop for LoadWait {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.fake.cancelled.lock().unwrap().push(json!({
            "waited_ms": self.started.elapsed().as_secs_f64() * 1000.0,
            "closed_at_unix_ms": at.as_secs_f64() * 1000.0,
        }));
    }
}

type S = State<Arc<Fake>>;

const MAGIC: &[&str] = &[
    "fake-slow",
    "fake-error",
    "fake-midstream-error",
    "fake-drop",
];

fn default_models(kind: &str) -> Vec<String> {
    let base: &[&str] = if kind == "ollama" {
        &["llama3:8b", "qwen2.5:0.5b", "nomic-embed-text:latest"]
    } else {
        &["Qwen/Qwen2.5-0.5B-Instruct", "BAAI/bge-small-en"]
    };
    base.iter()
        .map(|s| s.to_string())
        .chain(MAGIC.iter().map(|m| {
            if kind == "ollama" {
                format!("{m}:latest")
            } else {
                m.to_string()
            }
        }))
        .collect()
}

impl Fake {
    fn has(&self, name: &str) -> Option<String> {
        let models = self.models.lock().unwrap();
        let candidates = [name.to_string(), format!("{name}:latest")];
        candidates.into_iter().find(|c| models.contains(c))
    }

    async fn enter(&self, headers: &HeaderMap, body: &Value) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let hdrs: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
            .collect();
        *self.last.lock().unwrap() = json!({"headers": hdrs, "body": body});
        if self.args.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.args.latency_ms)).await;
        }
    }

    fn behaviour(&self, model: &str) -> &'static str {
        let base = model.split(':').next().unwrap_or(model);
        MAGIC
            .iter()
            .find(|m| **m == base)
            .copied()
            .unwrap_or("normal")
    }
}

fn last_user_text(body: &Value) -> String {
    body.get("messages")
        .and_then(Value::as_array)
        .and_then(|ms| ms.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| match &m["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        })
        .or_else(|| {
            body.get("prompt")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

fn reply_words(body: &Value) -> Vec<String> {
    let text = format!("You said: {}", last_user_text(body));
    let words: Vec<&str> = text.split(' ').collect();
    words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i + 1 < words.len() {
                format!("{w} ")
            } else {
                w.to_string()
            }
        })
        .collect()
}

/// Two parallel calls of the first tool, as a model asked about two cities would make.
fn tool_calls(body: &Value) -> Option<Vec<(String, Value)>> {
    let tools = body.get("tools")?.as_array()?;
    let last_role = body
        .get("messages")?
        .as_array()?
        .last()?
        .get("role")?
        .as_str()?;
    if tools.is_empty() || last_role != "user" {
        return None;
    }
    let name = tools[0]["function"]["name"].as_str()?.to_string();
    Some(vec![
        (name.clone(), json!({"location": "Paris"})),
        (name, json!({"location": "Berlin"})),
    ])
}

fn embedding(text: &str) -> Vec<f64> {
    let mut h: u64 = 1469598103934665603;
    for b in text.bytes() {
        h = (h ^ b as u64).wrapping_mul(1099511628211);
    }
    (0..8)
        .map(|i| (((h >> (i * 8)) & 0xff) as f64) / 255.0)
        .collect()
}

fn ndjson_line(v: &Value) -> Bytes {
    Bytes::from(format!("{v}\n"))
}

/// A streamed body made of `items` with the chunk delay between them; `drop` cuts it short.
fn stream_body(items: Vec<Bytes>, delay: Duration, cut: bool) -> Body {
    let s = futures::stream::iter(items.into_iter().enumerate()).then(move |(i, b)| async move {
        if i > 0 {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, std::io::Error>(b)
    });
    if cut {
        let cut = futures::stream::once(async move {
            tokio::time::sleep(delay).await;
            Err::<Bytes, std::io::Error>(std::io::Error::other("connection cut by fake-drop"))
        });
        Body::from_stream(s.chain(cut))
    } else {
        Body::from_stream(s)
    }
}

fn with_type(body: Body, ct: &'static str) -> Response {
    let mut r = Response::new(body);
    r.headers_mut()
        .insert("content-type", ct.parse().expect("static header"));
    r
}

// ---------------------------------------------------------------- Ollama ----

fn ollama_err(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({"error": msg}))).into_response()
}

fn ollama_not_found(model: &str) -> Response {
    ollama_err(
        StatusCode::NOT_FOUND,
        &format!("model \"{model}\" not found, try pulling it first"),
    )
}

fn now() -> String {
    "2026-11-26T05:00:00.000000000Z".into()
}

fn model_details(name: &str) -> Value {
    json!({"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
           "parameter_size": if name.contains("0.5b") { "494.03M" } else { "8.0B" },
           "quantization_level": "Q4_K_M"})
}

async fn o_version() -> Json<Value> {
    Json(json!({"version": "0.12.6"}))
}

async fn o_tags(State(f): S) -> Json<Value> {
    let models: Vec<Value> = f
        .models
        .lock()
        .unwrap()
        .iter()
        .map(|m| {
            json!({"name": m, "model": m, "modified_at": now(), "size": 4_661_224_676u64,
                   "digest": format!("{:064x}", m.len()), "details": model_details(m)})
        })
        .collect();
    Json(json!({"models": models}))
}

async fn o_ps(State(f): S) -> Json<Value> {
    // `--loaded`, else the first listed model, is "loaded".
    let listed: Vec<String> = f.models.lock().unwrap().iter().cloned().collect();
    let loaded: Vec<String> = match &f.args.loaded {
        Some(l) => l
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect(),
        None => listed.into_iter().take(1).collect(),
    };
    let models: Vec<Value> = loaded
        .iter()
        .map(|m| {
            json!({"name": m, "model": m, "size": 5_137_025_024u64, "digest": format!("{:064x}", m.len()),
                   "details": model_details(m), "expires_at": "2026-11-26T05:10:00Z", "size_vram": 5_137_025_024u64,
                   "context_length": 4096})
        })
        .collect();
    Json(json!({"models": models}))
}

async fn o_show(State(f): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    f.enter(&headers, &body).await;
    let name = body["model"]
        .as_str()
        .or(body["name"].as_str())
        .unwrap_or("");
    let Some(m) = f.has(name) else {
        return ollama_not_found(name);
    };
    Json(json!({
        "modelfile": format!("FROM {m}\n"), "parameters": "stop \"<|eot_id|>\"",
        "template": "{{ .Prompt }}", "details": model_details(&m),
        "model_info": {"general.architecture": "llama", "llama.context_length": 8192},
        "capabilities": if m.contains("embed") { json!(["embedding"]) } else { json!(["completion", "tools"]) },
        "modified_at": now(),
    }))
    .into_response()
}

fn ollama_final(model: &str, reason: &str, prompt_tokens: u64, eval: u64) -> Value {
    json!({"model": model, "created_at": now(), "done": true, "done_reason": reason,
           "total_duration": 1_000_000u64, "load_duration": 1000u64, "prompt_eval_count": prompt_tokens,
           "prompt_eval_duration": 1000u64, "eval_count": eval, "eval_duration": 1000u64})
}

async fn o_chat_or_generate(f: Arc<Fake>, headers: HeaderMap, body: Value, chat: bool) -> Response {
    f.enter(&headers, &body).await;
    let model = body["model"].as_str().unwrap_or("").to_string();
    if model.is_empty() {
        return ollama_err(StatusCode::BAD_REQUEST, "model is required");
    }
    if f.has(&model).is_none() {
        return ollama_not_found(&model);
    }
    if chat && !body["messages"].is_array() {
        return ollama_err(StatusCode::BAD_REQUEST, "messages must be an array");
    }
    let behaviour = f.behaviour(&model);
    match behaviour {
        "fake-slow" => LoadWait::run(f.clone()).await,
        "fake-error" => {
            return ollama_err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "llama runner process has terminated: exit status 2",
            )
        }
        _ => {}
    }
    let stream = body["stream"].as_bool().unwrap_or(true);
    let words = reply_words(&body);
    let prompt_tokens = last_user_text(&body).split_whitespace().count() as u64 + 5;
    let calls = if chat { tool_calls(&body) } else { None };
    let piece = |content: &str, calls: Option<Value>| -> Value {
        if chat {
            let mut msg = json!({"role": "assistant", "content": content});
            if let Some(c) = calls {
                msg["tool_calls"] = c;
            }
            json!({"model": model, "created_at": now(), "message": msg, "done": false})
        } else {
            json!({"model": model, "created_at": now(), "response": content, "done": false})
        }
    };
    let ollama_calls = |cs: &[(String, Value)]| -> Value {
        Value::Array(
            cs.iter()
                .map(|(n, a)| json!({"function": {"name": n, "arguments": a}}))
                .collect(),
        )
    };
    if !stream {
        let mut out = ollama_final(&model, "stop", prompt_tokens, words.len() as u64);
        if chat {
            let mut msg = json!({"role": "assistant", "content": if calls.is_some() { String::new() } else { words.concat() }});
            if let Some(cs) = &calls {
                msg["tool_calls"] = ollama_calls(cs);
            }
            if body["think"] == true {
                msg["thinking"] = json!("Let me think.");
            }
            out["message"] = msg;
        } else {
            out["response"] = json!(words.concat());
            out["context"] = json!([1, 2, 3]);
        }
        return Json(out).into_response();
    }
    let mut items: Vec<Bytes> = Vec::new();
    let delay = Duration::from_millis(f.args.chunk_delay_ms);
    match behaviour {
        "fake-midstream-error" | "fake-drop" => {
            items.push(ndjson_line(&piece("partial ", None)));
            items.push(ndjson_line(&piece("answer ", None)));
            if behaviour == "fake-midstream-error" {
                items.push(ndjson_line(&json!({"error": "an error was encountered while running the model: out of memory"})));
            }
            return with_type(
                stream_body(items, delay, behaviour == "fake-drop"),
                "application/x-ndjson",
            );
        }
        _ => {}
    }
    if let Some(cs) = &calls {
        // Each call in its own chunk, as Ollama does when the model emits them one after another.
        for c in cs {
            items.push(ndjson_line(&piece(
                "",
                Some(ollama_calls(std::slice::from_ref(c))),
            )));
        }
    } else {
        if chat && body["think"] == true {
            let mut p = piece("", None);
            p["message"]["thinking"] = json!("Let me think.");
            items.push(ndjson_line(&p));
        }
        for w in &words {
            items.push(ndjson_line(&piece(w, None)));
        }
    }
    let mut fin = ollama_final(&model, "stop", prompt_tokens, words.len() as u64);
    if chat {
        fin["message"] = json!({"role": "assistant", "content": ""});
    } else {
        fin["response"] = json!("");
        fin["context"] = json!([1, 2, 3]);
    }
    items.push(ndjson_line(&fin));
    with_type(stream_body(items, delay, false), "application/x-ndjson")
}

async fn o_chat(State(f): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    o_chat_or_generate(f, headers, body, true).await
}

async fn o_generate(State(f): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    o_chat_or_generate(f, headers, body, false).await
}

async fn o_embed(State(f): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    f.enter(&headers, &body).await;
    let model = body["model"].as_str().unwrap_or("");
    if f.has(model).is_none() {
        return ollama_not_found(model);
    }
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => return ollama_err(StatusCode::BAD_REQUEST, "invalid input type"),
    };
    let embeddings: Vec<Vec<f64>> = inputs.iter().map(|s| embedding(s)).collect();
    let tokens: usize = inputs.iter().map(|s| s.split_whitespace().count()).sum();
    Json(
        json!({"model": model, "embeddings": embeddings, "total_duration": 1000u64,
                "load_duration": 10u64, "prompt_eval_count": tokens}),
    )
    .into_response()
}

async fn o_embeddings_legacy(State(f): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    f.enter(&headers, &body).await;
    let model = body["model"].as_str().unwrap_or("");
    if f.has(model).is_none() {
        return ollama_not_found(model);
    }
    Json(json!({"embedding": embedding(body["prompt"].as_str().unwrap_or(""))})).into_response()
}

async fn o_pull(State(f): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    f.enter(&headers, &body).await;
    let model = body["model"]
        .as_str()
        .or(body["name"].as_str())
        .unwrap_or("")
        .to_string();
    if model.is_empty() || model.contains("does-not-exist") {
        return ollama_err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "pull model manifest: file does not exist",
        );
    }
    let full = if model.contains(':') {
        model.clone()
    } else {
        format!("{model}:latest")
    };
    f.models.lock().unwrap().insert(full);
    if body["stream"] == false {
        return Json(json!({"status": "success"})).into_response();
    }
    let digest = format!("sha256:{:064x}", model.len());
    let mut items = vec![ndjson_line(&json!({"status": "pulling manifest"}))];
    for completed in [0u64, 500, 1000] {
        items.push(ndjson_line(
            &json!({"status": format!("pulling {}", &digest[7..19]), "digest": digest,
                                         "total": 1000, "completed": completed}),
        ));
    }
    for s in ["verifying sha256 digest", "writing manifest", "success"] {
        items.push(ndjson_line(&json!({"status": s})));
    }
    with_type(
        stream_body(items, Duration::from_millis(f.args.chunk_delay_ms), false),
        "application/x-ndjson",
    )
}

async fn o_delete(State(f): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    f.enter(&headers, &body).await;
    let model = body["model"]
        .as_str()
        .or(body["name"].as_str())
        .unwrap_or("");
    match f.has(model) {
        Some(m) => {
            f.models.lock().unwrap().remove(&m);
            StatusCode::OK.into_response()
        }
        None => ollama_err(StatusCode::NOT_FOUND, &format!("model '{model}' not found")),
    }
}

async fn o_copy(State(f): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    f.enter(&headers, &body).await;
    let src = body["source"].as_str().unwrap_or("");
    let dst = body["destination"].as_str().unwrap_or("");
    if f.has(src).is_none() {
        return ollama_err(StatusCode::NOT_FOUND, &format!("model '{src}' not found"));
    }
    let dst = if dst.contains(':') {
        dst.to_string()
    } else {
        format!("{dst}:latest")
    };
    f.models.lock().unwrap().insert(dst);
    StatusCode::OK.into_response()
}

async fn o_create(State(f): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    f.enter(&headers, &body).await;
    let model = body["model"].as_str().unwrap_or("");
    let full = if model.contains(':') {
        model.to_string()
    } else {
        format!("{model}:latest")
    };
    f.models.lock().unwrap().insert(full);
    let items = [
        "reading model metadata",
        "creating system layer",
        "writing manifest",
        "success",
    ]
    .iter()
    .map(|s| ndjson_line(&json!({"status": s})))
    .collect();
    if body["stream"] == false {
        return Json(json!({"status": "success"})).into_response();
    }
    with_type(
        stream_body(items, Duration::from_millis(f.args.chunk_delay_ms), false),
        "application/x-ndjson",
    )
}

// ---------------------------------------------------------------- OpenAI ----

fn openai_err(status: StatusCode, msg: &str, kind: &str) -> Response {
    (
        status,
        Json(json!({"error": {"message": msg, "type": kind, "param": null, "code": status.as_u16()}})),
    )
        .into_response()
}

fn check_key(f: &Fake, headers: &HeaderMap) -> Option<Response> {
    let want = f.args.api_key.as_ref()?;
    let got = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    (got != format!("Bearer {want}")).then(|| {
        openai_err(
            StatusCode::UNAUTHORIZED,
            "Invalid API key",
            "AuthenticationError",
        )
    })
}

async fn v_models(State(f): S, headers: HeaderMap) -> Response {
    if let Some(r) = check_key(&f, &headers) {
        return r;
    }
    let data: Vec<Value> = f
        .models
        .lock()
        .unwrap()
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 1_764_000_000, "owned_by": "vllm", "max_model_len": 4096}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

fn sse_line(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

async fn v_chat(State(f): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    f.enter(&headers, &body).await;
    if let Some(r) = check_key(&f, &headers) {
        return r;
    }
    let model = body["model"].as_str().unwrap_or("").to_string();
    if f.has(&model).is_none() {
        return openai_err(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist."),
            "NotFoundError",
        );
    }
    let behaviour = f.behaviour(&model);
    match behaviour {
        "fake-slow" => LoadWait::run(f.clone()).await,
        "fake-error" => {
            return openai_err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "engine crashed",
                "InternalServerError",
            )
        }
        _ => {}
    }
    let words = reply_words(&body);
    let prompt_tokens = last_user_text(&body).split_whitespace().count() as u64 + 5;
    if let Some(limit) = f.args.context_length.filter(|l| prompt_tokens > *l) {
        // vLLM's wording for a prompt over `max_model_len`, in its error shape.
        return openai_err(
            StatusCode::BAD_REQUEST,
            &format!("This model's maximum context length is {limit} tokens. However, you requested {prompt_tokens} tokens in the messages, Please reduce the length of the messages."),
            "BadRequestError",
        );
    }
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": words.len(),
                       "total_tokens": prompt_tokens + words.len() as u64});
    let calls = tool_calls(&body);
    let id = "chatcmpl-fake0001";
    if body["stream"] != true {
        let mut message = json!({"role": "assistant", "content": words.concat()});
        let mut finish = "stop";
        if let Some(cs) = &calls {
            message["content"] = Value::Null;
            message["tool_calls"] = Value::Array(
                cs.iter()
                    .enumerate()
                    .map(|(i, (n, a))| {
                        json!({
                "id": format!("chatcmpl-tool-{i}"), "type": "function",
                "function": {"name": n, "arguments": a.to_string()}})
                    })
                    .collect(),
            );
            finish = "tool_calls";
        }
        return Json(json!({"id": id, "object": "chat.completion", "created": 1_764_000_000, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": usage}))
        .into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        sse_line(
            &json!({"id": id, "object": "chat.completion.chunk", "created": 1_764_000_000, "model": model,
                         "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]}),
        )
    };
    let mut items = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    let delay = Duration::from_millis(f.args.chunk_delay_ms);
    if matches!(behaviour, "fake-midstream-error" | "fake-drop") {
        items.push(chunk(json!({"content": "partial "}), Value::Null));
        if behaviour == "fake-midstream-error" {
            items.push(sse_line(&json!({"error": {"message": "engine died mid-stream", "type": "InternalServerError", "code": 500}})));
        }
        return with_type(
            stream_body(items, delay, behaviour == "fake-drop"),
            "text/event-stream",
        );
    }
    let mut finish = "stop";
    if let Some(cs) = &calls {
        for (i, (n, a)) in cs.iter().enumerate() {
            items.push(chunk(json!({"tool_calls": [{"index": i, "id": format!("chatcmpl-tool-{i}"), "type": "function",
                                                     "function": {"name": n, "arguments": ""}}]}), Value::Null));
            let args = a.to_string();
            let (a1, a2) = args.split_at(args.len() / 2);
            for part in [a1, a2] {
                items.push(chunk(
                    json!({"tool_calls": [{"index": i, "function": {"arguments": part}}]}),
                    Value::Null,
                ));
            }
        }
        finish = "tool_calls";
    } else {
        for w in &words {
            items.push(chunk(json!({"content": w}), Value::Null));
        }
    }
    items.push(chunk(json!({}), json!(finish)));
    if body["stream_options"]["include_usage"] == true {
        items.push(sse_line(
            &json!({"id": id, "object": "chat.completion.chunk", "created": 1_764_000_000,
                                     "model": model, "choices": [], "usage": usage}),
        ));
    }
    items.push(Bytes::from_static(b"data: [DONE]\n\n"));
    with_type(stream_body(items, delay, false), "text/event-stream")
}

/// Legacy completions (`POST /v1/completions`), as vLLM and llama.cpp still serve them.
async fn v_completions(State(f): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    f.enter(&headers, &body).await;
    if let Some(r) = check_key(&f, &headers) {
        return r;
    }
    let model = body["model"].as_str().unwrap_or("").to_string();
    if f.has(&model).is_none() {
        return openai_err(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist."),
            "NotFoundError",
        );
    }
    let words = reply_words(&body);
    let prompt_tokens = last_user_text(&body).split_whitespace().count() as u64 + 5;
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": words.len(),
                       "total_tokens": prompt_tokens + words.len() as u64});
    let id = "cmpl-fake0001";
    let choice = |text: &str, finish: Value| {
        json!({"id": id, "object": "text_completion", "created": 1_764_000_000, "model": model,
               "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}]})
    };
    if body["stream"] != true {
        let mut out = choice(&words.concat(), json!("stop"));
        out["usage"] = usage;
        return Json(out).into_response();
    }
    let mut items: Vec<Bytes> = words
        .iter()
        .map(|w| sse_line(&choice(w, Value::Null)))
        .collect();
    items.push(sse_line(&choice("", json!("stop"))));
    if body["stream_options"]["include_usage"] == true {
        items.push(sse_line(
            &json!({"id": id, "object": "text_completion", "created": 1_764_000_000,
                    "model": model, "choices": [], "usage": usage}),
        ));
    }
    items.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let delay = Duration::from_millis(f.args.chunk_delay_ms);
    with_type(stream_body(items, delay, false), "text/event-stream")
}

async fn v_embeddings(State(f): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    f.enter(&headers, &body).await;
    if let Some(r) = check_key(&f, &headers) {
        return r;
    }
    let model = body["model"].as_str().unwrap_or("");
    if f.has(model).is_none() {
        return openai_err(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist."),
            "NotFoundError",
        );
    }
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => {
            return openai_err(
                StatusCode::BAD_REQUEST,
                "input must be a string or array",
                "BadRequestError",
            )
        }
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"object": "embedding", "index": i, "embedding": embedding(s)}))
        .collect();
    Json(json!({"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": inputs.len(), "total_tokens": inputs.len()}}))
    .into_response()
}

/// The model check every OpenAI route starts with: 404 as vLLM answers an unknown model.
fn known_model(f: &Fake, headers: &HeaderMap, model: &str) -> Option<Response> {
    if let Some(r) = check_key(f, headers) {
        return Some(r);
    }
    f.has(model).is_none().then(|| {
        openai_err(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist."),
            "NotFoundError",
        )
    })
}

/// `POST /v1/rerank` as vLLM, Jina and Cohere answer it: documents by relevance.
async fn v_rerank(State(f): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    f.enter(&headers, &body).await;
    let model = body["model"].as_str().unwrap_or("").to_string();
    if let Some(r) = known_model(&f, &headers, &model) {
        return r;
    }
    let query = body["query"].as_str().unwrap_or("");
    let docs: Vec<String> = body["documents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| d.as_str().or(d["text"].as_str()).unwrap_or("").to_owned())
        .collect();
    // Relevance: shared words with the query, so the order is predictable.
    let mut results: Vec<Value> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let shared = d
                .split_whitespace()
                .filter(|w| query.split_whitespace().any(|q| q.eq_ignore_ascii_case(w)))
                .count();
            json!({"index": i, "document": {"text": d}, "relevance_score": shared as f64 / 10.0})
        })
        .collect();
    results.sort_by(|a, b| {
        b["relevance_score"]
            .as_f64()
            .partial_cmp(&a["relevance_score"].as_f64())
            .unwrap()
    });
    if let Some(n) = body["top_n"].as_u64() {
        results.truncate(n as usize);
    }
    Json(json!({"id": "rerank-fake0001", "model": model,
                "usage": {"total_tokens": docs.len() * 4}, "results": results}))
    .into_response()
}

async fn v_moderations(State(f): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    f.enter(&headers, &body).await;
    let model = body["model"].as_str().unwrap_or("").to_string();
    if let Some(r) = known_model(&f, &headers, &model) {
        return r;
    }
    let flagged = body["input"].to_string().contains("kill");
    Json(json!({"id": "modr-fake0001", "model": model, "results": [{
        "flagged": flagged,
        "categories": {"violence": flagged, "harassment": false, "hate": false, "self-harm": false, "sexual": false},
        "category_scores": {"violence": if flagged { 0.9 } else { 0.01 }, "harassment": 0.0, "hate": 0.0, "self-harm": 0.0, "sexual": 0.0}}]}))
    .into_response()
}

async fn v_images(State(f): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    f.enter(&headers, &body).await;
    let model = body["model"].as_str().unwrap_or("").to_string();
    if let Some(r) = known_model(&f, &headers, &model) {
        return r;
    }
    // A 1×1 PNG.
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
    let n = body["n"].as_u64().unwrap_or(1);
    let data: Vec<Value> = (0..n)
        .map(|_| json!({"b64_json": png, "revised_prompt": body["prompt"]}))
        .collect();
    Json(json!({"created": 1_764_000_000, "data": data})).into_response()
}

/// `POST /v1/audio/speech`: audio bytes in several chunks, as a TTS server streams them.
async fn v_speech(State(f): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    f.enter(&headers, &body).await;
    let model = body["model"].as_str().unwrap_or("").to_string();
    if let Some(r) = known_model(&f, &headers, &model) {
        return r;
    }
    let text = body["input"].as_str().unwrap_or("");
    // "ID3" and then one byte per character of the input, in 4 chunks.
    let mut audio = b"ID3".to_vec();
    audio.extend(text.bytes());
    let quarter = audio.len().div_ceil(4).max(1);
    let items: Vec<Bytes> = audio.chunks(quarter).map(Bytes::copy_from_slice).collect();
    let ct = match body["response_format"].as_str() {
        Some("wav") => "audio/wav",
        Some("opus") => "audio/ogg",
        _ => "audio/mpeg",
    };
    with_type(
        stream_body(items, Duration::from_millis(f.args.chunk_delay_ms), false),
        ct,
    )
}

/// `POST /v1/audio/transcriptions` and `/translations`: multipart/form-data, as whisper
/// servers take it. The "transcript" names the file and its size.
async fn v_transcribe(State(f): S, headers: HeaderMap, body: Bytes) -> Response {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Ok(boundary) = multer::parse_boundary(ct) else {
        return openai_err(
            StatusCode::BAD_REQUEST,
            "expected multipart/form-data",
            "BadRequestError",
        );
    };
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut fields = serde_json::Map::new();
    let mut file: Option<(String, usize, String)> = None;
    while let Ok(Some(field)) = form.next_field().await {
        let name = field.name().unwrap_or("").to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let mime = field
            .content_type()
            .map(|m| m.to_string())
            .unwrap_or_default();
        let data = field.bytes().await.unwrap_or_default();
        match file_name {
            Some(n) => file = Some((n, data.len(), mime)),
            None => {
                fields.insert(name, json!(String::from_utf8_lossy(&data)));
            }
        }
    }
    let (file_name, size, mime) = file.unwrap_or_default();
    let recorded =
        json!({"fields": fields, "file": {"name": file_name, "size": size, "content_type": mime}});
    f.enter(&headers, &recorded).await;
    let model = fields
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if let Some(r) = known_model(&f, &headers, &model) {
        return r;
    }
    if size == 0 {
        return openai_err(
            StatusCode::BAD_REQUEST,
            "file is required",
            "BadRequestError",
        );
    }
    let text = format!("heard {size} bytes of {file_name}");
    if fields.get("response_format").and_then(Value::as_str) == Some("text") {
        return with_type(Body::from(text), "text/plain; charset=utf-8");
    }
    Json(json!({"text": text, "usage": {"type": "duration", "seconds": 1}})).into_response()
}

// -------------------------------------------------------- OpenAI Responses ----

/// The last user text of a Responses `input` (a string, or items with text parts).
fn responses_user_text(body: &Value) -> String {
    match &body["input"] {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .rev()
            .find(|i| i["role"] == "user")
            .map(|i| match &i["content"] {
                Value::String(s) => s.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            })
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn response_object(
    id: &str,
    model: &str,
    body: &Value,
    status: &str,
    output: Vec<Value>,
    usage: Value,
) -> Value {
    json!({"id": id, "object": "response", "created_at": 1_764_000_000, "status": status,
           "background": false, "error": null, "incomplete_details": null,
           "instructions": body.get("instructions").cloned().unwrap_or(Value::Null),
           "max_output_tokens": body.get("max_output_tokens").cloned().unwrap_or(Value::Null),
           "model": model, "output": output, "parallel_tool_calls": true,
           "previous_response_id": body.get("previous_response_id").cloned().unwrap_or(Value::Null),
           "reasoning": {"effort": null, "summary": null}, "store": true, "temperature": 1.0,
           "text": {"format": {"type": "text"}}, "tool_choice": "auto",
           "tools": body.get("tools").cloned().unwrap_or(json!([])), "top_p": 1.0,
           "truncation": "disabled", "usage": usage, "user": null, "metadata": {}})
}

/// `POST /v1/responses`, written from OpenAI's API reference: a message answer (or two
/// function calls when tools are offered and the last item is the user's), streamed as the
/// documented event sequence when `stream` is set.
async fn v_responses(State(f): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    f.enter(&headers, &body).await;
    let model = body["model"].as_str().unwrap_or("").to_string();
    if let Some(r) = known_model(&f, &headers, &model) {
        return r;
    }
    if f.behaviour(&model) == "fake-error" {
        return openai_err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "engine crashed",
            "InternalServerError",
        );
    }
    let n = f.requests.load(Ordering::Relaxed);
    let id = format!("resp_fake{n:04}");
    let text = format!("You said: {}", responses_user_text(&body));
    let last_is_user = match &body["input"] {
        Value::String(_) => true,
        Value::Array(items) => items.last().is_some_and(|i| i["role"] == "user"),
        _ => false,
    };
    let tool = body["tools"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["type"] == "function"))
        .and_then(|t| t["name"].as_str())
        .filter(|_| last_is_user)
        .map(str::to_owned);
    let output: Vec<Value> = match &tool {
        Some(name) => ["Paris", "Berlin"]
            .iter()
            .enumerate()
            .map(|(i, city)| json!({"id": format!("fc_fake{n}_{i}"), "type": "function_call", "status": "completed",
                                     "call_id": format!("call_fake{n}_{i}"), "name": name,
                                     "arguments": json!({"location": city}).to_string()}))
            .collect(),
        None => vec![json!({"id": format!("msg_fake{n}"), "type": "message", "status": "completed", "role": "assistant",
                             "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})],
    };
    let words = text.split(' ').count() as u64;
    let input_tokens = responses_user_text(&body).split_whitespace().count() as u64 + 5;
    let usage = json!({"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
                       "output_tokens": words, "output_tokens_details": {"reasoning_tokens": 0},
                       "total_tokens": input_tokens + words});
    let done = response_object(&id, &model, &body, "completed", output.clone(), usage);
    f.responses.lock().unwrap().insert(id.clone(), done.clone());
    if body["stream"] != true {
        return Json(done).into_response();
    }
    let mut seq = 0u64;
    let mut items = Vec::new();
    let mut ev = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        seq += 1;
        Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
    };
    let pending = response_object(&id, &model, &body, "in_progress", vec![], Value::Null);
    items.push(ev("response.created", json!({"response": pending})));
    items.push(ev("response.in_progress", json!({"response": pending})));
    for (i, item) in output.iter().enumerate() {
        let mut added = item.clone();
        added["status"] = json!("in_progress");
        if item["type"] == "message" {
            added["content"] = json!([]);
            items.push(ev(
                "response.output_item.added",
                json!({"output_index": i, "item": added}),
            ));
            let part =
                json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
            items.push(ev(
                "response.content_part.added",
                json!({"item_id": item["id"], "output_index": i, "content_index": 0, "part": part}),
            ));
            for w in reply_words(
                &json!({"messages": [{"role": "user", "content": responses_user_text(&body)}]}),
            ) {
                items.push(ev("response.output_text.delta", json!({"item_id": item["id"], "output_index": i, "content_index": 0, "delta": w, "logprobs": []})));
            }
            items.push(ev("response.output_text.done", json!({"item_id": item["id"], "output_index": i, "content_index": 0, "text": text, "logprobs": []})));
            items.push(ev("response.content_part.done", json!({"item_id": item["id"], "output_index": i, "content_index": 0, "part": item["content"][0]})));
        } else {
            added["arguments"] = json!("");
            items.push(ev(
                "response.output_item.added",
                json!({"output_index": i, "item": added}),
            ));
            let args = item["arguments"].as_str().unwrap_or("").to_owned();
            let (a1, a2) = args.split_at(args.len() / 2);
            for part in [a1, a2] {
                items.push(ev(
                    "response.function_call_arguments.delta",
                    json!({"item_id": item["id"], "output_index": i, "delta": part}),
                ));
            }
            items.push(ev("response.function_call_arguments.done", json!({"item_id": item["id"], "output_index": i, "name": item["name"], "arguments": args})));
        }
        items.push(ev(
            "response.output_item.done",
            json!({"output_index": i, "item": item}),
        ));
    }
    items.push(ev("response.completed", json!({"response": done})));
    with_type(
        stream_body(items, Duration::from_millis(f.args.chunk_delay_ms), false),
        "text/event-stream",
    )
}

fn response_not_found(id: &str) -> Response {
    openai_err(
        StatusCode::NOT_FOUND,
        &format!("Response with id '{id}' not found."),
        "invalid_request_error",
    )
}

async fn v_response_get(
    State(f): S,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    f.enter(&headers, &json!({"get": id})).await;
    if let Some(r) = check_key(&f, &headers) {
        return r;
    }
    match f.responses.lock().unwrap().get(&id) {
        Some(r) => Json(r.clone()).into_response(),
        None => response_not_found(&id),
    }
}

async fn v_response_delete(
    State(f): S,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    f.enter(&headers, &json!({"delete": id})).await;
    if let Some(r) = check_key(&f, &headers) {
        return r;
    }
    match f.responses.lock().unwrap().remove(&id) {
        Some(_) => Json(json!({"id": id, "object": "response", "deleted": true})).into_response(),
        None => response_not_found(&id),
    }
}

// ------------------------------------------------------------- test hooks ----

async fn stats(State(f): S) -> Json<Value> {
    Json(json!({"name": f.args.name, "requests": f.requests.load(Ordering::Relaxed)}))
}

async fn cancelled(State(f): S) -> Json<Value> {
    Json(Value::Array(f.cancelled.lock().unwrap().clone()))
}

async fn last(State(f): S) -> Json<Value> {
    Json(f.last.lock().unwrap().clone())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let models = args
        .models
        .as_deref()
        .map(|m| m.split(',').map(str::to_owned).collect::<Vec<_>>())
        .unwrap_or_else(|| default_models(&args.kind));
    let fake = Arc::new(Fake {
        models: Mutex::new(models.into_iter().collect()),
        requests: AtomicU64::new(0),
        last: Mutex::new(Value::Null),
        responses: Mutex::new(Default::default()),
        cancelled: Mutex::new(Vec::new()),
        args: args.clone(),
    });
    let app = if args.kind == "ollama" {
        Router::new()
            .route("/", get(|| async { "Ollama is running" }))
            .route("/api/version", get(o_version))
            .route("/api/tags", get(o_tags))
            .route("/api/ps", get(o_ps))
            .route("/api/show", post(o_show))
            .route("/api/chat", post(o_chat))
            .route("/api/generate", post(o_generate))
            .route("/api/embed", post(o_embed))
            .route("/api/embeddings", post(o_embeddings_legacy))
            .route("/api/pull", post(o_pull))
            .route("/api/delete", delete(o_delete))
            .route("/api/copy", post(o_copy))
            .route("/api/create", post(o_create))
    } else {
        Router::new()
            .route("/v1/models", get(v_models))
            .route("/v1/chat/completions", post(v_chat))
            .route("/v1/completions", post(v_completions))
            .route("/v1/embeddings", post(v_embeddings))
            .route("/v1/rerank", post(v_rerank))
            .route("/v1/moderations", post(v_moderations))
            .route("/v1/images/generations", post(v_images))
            .route("/v1/audio/speech", post(v_speech))
            .route("/v1/audio/transcriptions", post(v_transcribe))
            .route("/v1/audio/translations", post(v_transcribe))
    };
    let app = if args.kind == "openai" && args.responses {
        app.route("/v1/responses", post(v_responses)).route(
            "/v1/responses/{id}",
            get(v_response_get).delete(v_response_delete),
        )
    } else {
        app
    };
    let name = args.name.clone();
    let app = app
        .route("/_fake/stats", get(stats))
        .route("/_fake/last", get(last))
        .route("/_fake/cancelled", get(cancelled))
        .layer(axum::middleware::map_response(move |mut r: Response| {
            let name = name.clone();
            async move {
                r.headers_mut()
                    .insert("x-fake-upstream", name.parse().expect("ascii name"));
                r
            }
        }))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    eprintln!("api listening on {}", listener.local_addr()?);
    // Streams are written chunk by chunk; without TCP_NODELAY, Nagle holds each small chunk.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}
