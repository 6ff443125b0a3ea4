//! The chat path's OpenAI SSE in, another API's named events out: Anthropic Messages and the
//! Responses API are both served by translating onto chat completions, so both read the same
//! chat stream the same way; only the translator differs. The chat path already bounds the
//! upstream with its timeouts and turns failures into an `{"error": …}` chunk.
use std::collections::VecDeque;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};

use super::stream::LineBuffer;
use super::{openai, RequestContext};

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
/// after the `first` events.
pub fn translated<T: ChatStreamTranslator>(
    chat: Response,
    translator: T,
    first: Vec<NamedEvent>,
    ctx: &RequestContext,
    on_complete: Option<OnComplete<T>>,
) -> Response {
    let relay = ChatSse {
        chunks: chat.into_body().into_data_stream(),
        lines: LineBuffer::default(),
        translator,
        pending: first.into_iter().map(encode).collect(),
        done: false,
        ctx: ctx.clone(),
        on_complete,
        read: 0,
    };
    openai::event_stream(Body::from_stream(futures::stream::unfold(
        relay,
        ChatSse::step,
    )))
}

struct ChatSse<T: ChatStreamTranslator> {
    chunks: axum::body::BodyDataStream,
    lines: LineBuffer,
    translator: T,
    pending: VecDeque<Bytes>,
    done: bool,
    ctx: RequestContext,
    on_complete: Option<OnComplete<T>>,
    /// Bytes of the chat stream read so far.
    read: usize,
}

impl<T: ChatStreamTranslator> ChatSse<T> {
    async fn step(
        mut self,
    ) -> Option<(std::result::Result<Bytes, std::convert::Infallible>, Self)> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Some((Ok(b), self));
            }
            if self.done {
                return None;
            }
            match self.chunks.next().await {
                Some(Ok(chunk)) => {
                    self.read += chunk.len();
                    for line in self.lines.push(&chunk) {
                        self.on_line(&line);
                    }
                }
                Some(Err(e)) => {
                    self.on_chunk(&json!({"error": {"message": e.to_string()}}));
                    self.done = true;
                }
                None => {
                    if let Some(line) = self.lines.finish() {
                        self.on_line(&line);
                    }
                    if !self.translator.finished() {
                        if self.translator.saw_finish() {
                            self.finish();
                        } else {
                            self.ctx
                                .update(|m| m.error = Some("upstream_stream_failed"));
                            self.on_chunk(&json!({"error": {"message":
                                "the model's stream ended before it was done"}}));
                        }
                    }
                    self.done = true;
                }
            }
        }
    }

    fn on_line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            self.finish();
            return;
        }
        match serde_json::from_slice::<Value>(data) {
            Ok(v) => self.on_chunk(&v),
            Err(_) => self.on_chunk(&json!({"error": {"message":
                "the model's stream sent data that is not JSON"}})),
        }
    }

    fn on_chunk(&mut self, chunk: &Value) {
        for e in self.translator.on_chunk(chunk) {
            self.pending.push_back(encode(e));
        }
    }

    fn finish(&mut self) {
        for e in self.translator.finish() {
            self.pending.push_back(encode(e));
        }
        if let Some(done) = self.on_complete.take() {
            done(&mut self.translator, self.read);
        }
    }
}
