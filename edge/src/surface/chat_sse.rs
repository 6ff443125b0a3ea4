//! The chat path's OpenAI SSE in, another API's named events out: Anthropic Messages and the
//! Responses API are both served by translating onto chat completions, so both read the same
//! chat stream the same way; only the translator differs. The chat path already bounds the
//! upstream with its timeouts and turns failures into an `{"error": …}` chunk, so this relay
//! reads it untimed.
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};

use crate::error::EdgeError;
use crate::outcome::Outcome;
use crate::relay::{sse_data, Emit, Frames, Framing, Relay};

/// An event of the translated stream: its `event:` name and its `data:` JSON.
pub type NamedEvent = (&'static str, Value);

/// Turns chat completion chunks into another API's events.
pub trait ChatStreamTranslator: Send + 'static {
    fn on_chunk(&mut self, chunk: &Value) -> Vec<NamedEvent>;
    /// The closing events; called once, at `[DONE]` or at a stream end after a finish reason.
    fn finish(&mut self) -> Vec<NamedEvent>;
    /// The closing events went out (or an error event ended the stream).
    fn finished(&self) -> bool;
    /// The chat stream gave a finish reason, so an end without `[DONE]` is still complete.
    fn saw_finish(&self) -> bool;
}

/// Called once when the translated stream completed normally, with the translator and the
/// bytes of chat stream read (the Responses store keeps the final response this way).
pub type OnComplete<T> = Box<dyn FnOnce(&mut T, usize) + Send>;

pub fn encode((name, data): NamedEvent) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The SSE response that relays `chat` (the chat path's streamed answer) through `translator`,
/// after the `first` events. The chat path's `Outcome` (provider, endpoint, its stream's
/// tally) goes on with it.
pub fn translated<T: ChatStreamTranslator>(
    chat: Response,
    translator: T,
    first: Vec<NamedEvent>,
    on_complete: Option<OnComplete<T>>,
) -> Response {
    let (parts, body) = chat.into_parts();
    let inner = parts
        .extensions
        .get::<Outcome>()
        .cloned()
        .unwrap_or_default();
    let first: Vec<u8> = first.into_iter().flat_map(|e| encode(e).to_vec()).collect();
    let relay = Relay::translate(
        body.into_data_stream(),
        Framing::Sse,
        ChatEvents {
            translator,
            on_complete,
            read: 0,
        },
    )
    .first(Bytes::from(first));
    let mut resp = relay.respond(
        StatusCode::OK,
        HeaderValue::from_static("text/event-stream"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    inner.attach(resp)
}

struct ChatEvents<T: ChatStreamTranslator> {
    translator: T,
    on_complete: Option<OnComplete<T>>,
    /// Bytes of the chat stream read so far.
    read: usize,
}

impl<T: ChatStreamTranslator> Frames for ChatEvents<T> {
    fn frame(&mut self, event: &Bytes, out: &mut Emit) {
        self.read += event.len();
        for data in sse_data(event) {
            if data == b"[DONE]" {
                self.finish(out);
                continue;
            }
            match serde_json::from_slice::<Value>(data) {
                Ok(v) => self.on_chunk(&v, out),
                Err(_) => self.on_chunk(
                    &json!({"error": {"message": "the model's stream sent data that is not JSON"}}),
                    out,
                ),
            }
        }
    }

    fn end(&mut self, out: &mut Emit) {
        if self.translator.finished() {
            return;
        }
        if self.translator.saw_finish() {
            self.finish(out);
        } else {
            out.failed("upstream_stream_failed");
            self.on_chunk(
                &json!({"error": {"message": "the model's stream ended before it was done"}}),
                out,
            );
        }
    }

    fn fail(&mut self, err: &EdgeError, out: &mut Emit) {
        out.failed(err.kind());
        self.on_chunk(&json!({"error": {"message": err.to_string()}}), out);
    }
}

impl<T: ChatStreamTranslator> ChatEvents<T> {
    fn on_chunk(&mut self, chunk: &Value, out: &mut Emit) {
        for e in self.translator.on_chunk(chunk) {
            out.push(encode(e));
        }
    }

    fn finish(&mut self, out: &mut Emit) {
        for e in self.translator.finish() {
            out.push(encode(e));
        }
        if let Some(done) = self.on_complete.take() {
            done(&mut self.translator, self.read);
        }
    }
}
