//! What the relay does with each frame on the OpenAI surface: Ollama's NDJSON translated to
//! OpenAI SSE, an OpenAI-compatible server's SSE passed on (usage read on the side, the usage
//! chunk the edge asked for taken out again).
use axum::response::Response;
use bytes::Bytes;
use futures::Stream;
use http::{header, HeaderValue, StatusCode};
use serde_json::Value;

use crate::error::{sse_error_event, EdgeError};
use crate::relay::{sse_data, Emit, Frames, Relay};
use crate::translate::openai_to_ollama::NdjsonTranslator;

pub fn sse(payload: &Value) -> Bytes {
    Bytes::from(format!("data: {payload}\n\n"))
}

/// The SSE response streaming `relay`.
pub fn event_stream<S, E, T>(relay: Relay<S, T>) -> Response
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::error::Error + Send + 'static,
    T: Frames,
{
    let mut resp = relay.respond(
        StatusCode::OK,
        HeaderValue::from_static("text/event-stream"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Ollama NDJSON in, OpenAI SSE out, through `translator`.
pub struct SseFromNdjson<T>(pub T);

impl<T: NdjsonTranslator + 'static> SseFromNdjson<T> {
    /// Ends the stream with an error event (once).
    fn broke(&mut self, why: &str, out: &mut Emit) {
        if !self.0.finished() {
            out.broke(why);
            out.push(sse_error_event(why));
            self.0.mark_finished();
        }
    }

    /// `[DONE]` unless the stream failed; the tokens the translator counted.
    fn close(&mut self, out: &mut Emit) {
        if out.tally.error.is_none() {
            out.push(Bytes::from_static(b"data: [DONE]\n\n"));
        }
        let (tokens_in, tokens_out) = self.0.usage();
        out.tokens(tokens_in, tokens_out);
    }
}

impl<T: NdjsonTranslator + 'static> Frames for SseFromNdjson<T> {
    fn frame(&mut self, line: &Bytes, out: &mut Emit) {
        if self.0.finished() {
            return;
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(v) => {
                if v.get("error").is_some() {
                    out.failed("upstream_error");
                }
                for payload in self.0.on_line(&v) {
                    out.push(sse(&payload));
                }
            }
            Err(_) => self.broke("upstream sent a line that is not JSON", out),
        }
    }

    fn end(&mut self, out: &mut Emit) {
        self.broke("upstream closed the stream before it was done", out);
        self.close(out);
    }

    fn fail(&mut self, err: &EdgeError, out: &mut Emit) {
        if !self.0.finished() {
            out.failed(err.kind());
            out.push(err.sse_event());
            self.0.mark_finished();
        }
        self.close(out);
    }
}

/// An OpenAI-compatible server's SSE. The relay forwards the bytes as they came, except when
/// the edge asked for the usage chunk on the client's behalf (`strip_usage`): then events go
/// out whole, and that one is left out.
pub struct SsePassthrough {
    pub strip_usage: bool,
}

impl Frames for SsePassthrough {
    fn frame(&mut self, event: &Bytes, out: &mut Emit) {
        if contains(event, b"\"usage\"") {
            for data in sse_data(event) {
                if let Some((tin, tout)) = serde_json::from_slice::<Value>(data)
                    .ok()
                    .and_then(|v| openai_usage(&v))
                {
                    out.tokens(tin, tout);
                }
            }
        }
        if self.strip_usage && !is_usage_only_event(event) {
            out.push(event.clone());
        }
    }

    fn fail(&mut self, err: &EdgeError, out: &mut Emit) {
        out.failed(err.kind());
        out.push(err.sse_event());
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The chunk `include_usage` adds at the end: `choices` empty, `usage` set.
pub fn is_usage_only_event(event: &[u8]) -> bool {
    let Some(data) = sse_data(event).next() else {
        return false;
    };
    // Every event of the stream comes through here, so the probe skips the content instead of
    // building a `Value` tree of each chunk: only `usage` (an object) and `choices` (an array,
    // its items ignored) are read.
    #[derive(serde::Deserialize)]
    struct Probe {
        usage: Option<serde_json::Map<String, Value>>,
        choices: Option<Vec<serde::de::IgnoredAny>>,
    }
    serde_json::from_slice::<Probe>(data)
        .is_ok_and(|p| p.usage.is_some() && p.choices.is_some_and(|c| c.is_empty()))
}

/// Tokens from an answer's `usage`: chat and completions name them `prompt_tokens` and
/// `completion_tokens`; Responses `input_tokens` and `output_tokens`, and a Responses stream
/// carries them in `response.completed`'s `response.usage`.
pub fn openai_usage(v: &Value) -> Option<(u64, u64)> {
    let u = v
        .get("usage")
        .filter(|u| u.is_object())
        .or_else(|| v.pointer("/response/usage").filter(|u| u.is_object()))?;
    let get = |a: &str, b: &str| {
        u.get(a)
            .or_else(|| u.get(b))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Some((
        get("prompt_tokens", "input_tokens"),
        get("completion_tokens", "output_tokens"),
    ))
}

/// `usage` of a whole JSON answer (chat, completions, embeddings; Responses' `response.usage`),
/// read without building a tree of the rest: the answer goes to the client as it came.
pub fn usage_of(body: &[u8]) -> Option<(u64, u64)> {
    #[derive(serde::Deserialize)]
    struct Counts {
        prompt_tokens: Option<u64>,
        input_tokens: Option<u64>,
        completion_tokens: Option<u64>,
        output_tokens: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct Nested {
        usage: Option<Counts>,
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        usage: Option<Counts>,
        response: Option<Nested>,
    }
    let answer: Answer = serde_json::from_slice(body).ok()?;
    let u = answer.usage.or(answer.response.and_then(|r| r.usage))?;
    Some((
        u.prompt_tokens.or(u.input_tokens).unwrap_or(0),
        u.completion_tokens.or(u.output_tokens).unwrap_or(0),
    ))
}
