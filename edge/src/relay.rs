//! The one relay every streamed answer goes through: an upstream body in, the client's body
//! out, frame by frame.
//!
//! A `Relay` reads the upstream under the idle and total timeouts (`Timing`), splits what it
//! reads into frames (`Framing`: NDJSON lines, SSE events, or raw chunks), hands each frame to
//! the surface's `Frames` (which translates it, or only looks at it while the bytes go on as
//! they came), holds the endpoint's in-flight guard until the stream is over, ends a broken
//! stream with the surface's in-stream error event, and at the end hands its `Tally` (tokens,
//! error kind) to the gateway through the response's `Outcome`.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http::{header, HeaderValue, StatusCode};

use crate::error::EdgeError;
use crate::outcome::{Outcome, StreamEnd, Tally};

/// How the upstream body is cut into frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Framing {
    /// `\n`-terminated lines (Ollama's NDJSON); blank lines are skipped, the newline dropped.
    Ndjson,
    /// Server-sent events, each with its closing blank line.
    Sse,
    /// Chunks as they came (audio, images): nothing is looked at.
    Raw,
}

/// The idle and total timeouts of the upstream body.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub idle: Duration,
    pub deadline: Instant,
}

impl Timing {
    pub fn new(idle: Duration, total: Duration, started: Instant) -> Self {
        Self {
            idle,
            deadline: started + total,
        }
    }
}

/// What frames turn into: bytes for the client, and the tally of the stream.
#[derive(Default)]
pub struct Emit {
    out: VecDeque<Bytes>,
    pub tally: Tally,
    /// Set by `cut`: the body ends in an error rather than an event (a raw body has no way to
    /// say what went wrong but to break off).
    cut: Option<String>,
    /// A failure a frame revealed (a line that is not JSON, a stream closed too early), for
    /// the relay to log with the endpoint.
    broke: Option<String>,
    /// Whether the bytes forwarded so far end at a frame boundary (a `\n`), so that an error
    /// line appended to a forwarded NDJSON stream starts on a line of its own.
    pub at_frame_start: bool,
}

impl Emit {
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.out.push_back(bytes);
        }
    }

    /// Ends the client's body with an error instead of an event.
    pub fn cut(&mut self, why: impl Into<String>) {
        self.cut = Some(why.into());
    }

    /// Notes a failure's kind, unless an earlier one was noted.
    pub fn failed(&mut self, kind: &'static str) {
        self.tally.error = self.tally.error.or(Some(kind));
    }

    /// The stream is broken (`why`): noted as `upstream_stream_failed` and logged.
    pub fn broke(&mut self, why: impl Into<String>) {
        self.failed("upstream_stream_failed");
        self.broke = Some(why.into());
    }

    pub fn tokens(&mut self, tokens_in: u64, tokens_out: u64) {
        self.tally.tokens_in = tokens_in;
        self.tally.tokens_out = tokens_out;
    }
}

/// A surface's part of the relay: what each frame becomes.
pub trait Frames: Send + 'static {
    /// One complete frame (an NDJSON line without its newline, or an SSE event with its blank
    /// line). When the relay forwards the upstream's bytes itself, anything pushed is added.
    fn frame(&mut self, frame: &Bytes, out: &mut Emit);
    /// The upstream body ended normally.
    fn end(&mut self, _out: &mut Emit) {}
    /// The upstream broke off (`err` says how): the surface's error event, and the kind noted
    /// (`out.failed(err.kind())`) unless the stream was complete already.
    fn fail(&mut self, err: &EdgeError, out: &mut Emit);
}

/// Bytes passed on untouched, with nothing to look at: a raw body is cut short on failure.
pub struct Untouched;

impl Frames for Untouched {
    fn frame(&mut self, _frame: &Bytes, _out: &mut Emit) {}
    fn fail(&mut self, err: &EdgeError, out: &mut Emit) {
        out.failed(err.kind());
        out.cut(err.to_string());
    }
}

pub struct Relay<S, T> {
    body: S,
    timing: Option<Timing>,
    framing: Framing,
    /// The upstream's bytes go on as they came; frames are only looked at.
    forward: bool,
    frames: T,
    partial: BytesMut,
    emit: Emit,
    done: bool,
    end: StreamEnd,
    /// The endpoint's in-flight count, held until the stream is over.
    _guard: Option<Box<dyn Send>>,
    /// Request id and endpoint, for the log line of a stream that broke.
    log: Option<(String, String)>,
}

impl<S, E, T> Relay<S, T>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::error::Error + Send + 'static,
    T: Frames,
{
    /// Frames of `body`, each turned into the client's bytes by `frames`.
    pub fn translate(body: S, framing: Framing, frames: T) -> Self {
        Relay {
            body,
            timing: None,
            framing,
            forward: false,
            frames,
            partial: BytesMut::new(),
            emit: Emit {
                at_frame_start: true,
                ..Emit::default()
            },
            done: false,
            end: StreamEnd::new(),
            _guard: None,
            log: None,
        }
    }

    /// `body` passed on as it came; `frames` only looks at each frame (for tokens, errors).
    pub fn forward(body: S, framing: Framing, frames: T) -> Self {
        let mut relay = Self::translate(body, framing, frames);
        relay.forward = true;
        relay
    }

    /// Reads bounded by the idle and total timeouts.
    pub fn timed(mut self, timing: Timing) -> Self {
        self.timing = Some(timing);
        self
    }

    /// Holds `guard` (the endpoint's in-flight count) until the stream is over.
    pub fn holding(mut self, guard: impl Send + 'static) -> Self {
        self._guard = Some(Box::new(guard));
        self
    }

    /// A broken stream is logged with the request id and the endpoint that broke it.
    pub fn logged(mut self, request_id: &str, endpoint: &str) -> Self {
        self.log = Some((request_id.to_owned(), endpoint.to_owned()));
        self
    }

    /// Bytes to send before the first frame (a translated stream's opening events).
    pub fn first(mut self, bytes: Bytes) -> Self {
        self.emit.push(bytes);
        self
    }

    /// The handoff the gateway reads the final tally from.
    pub fn stream_end(&self) -> StreamEnd {
        self.end.clone()
    }

    /// The client's body.
    pub fn into_body(self) -> Body {
        Body::from_stream(futures::stream::unfold(self, |mut relay| async move {
            let item = relay.next_out().await?;
            Some((item, relay))
        }))
    }

    /// The response streaming this relay, its tally handed over in the response's `Outcome`.
    pub fn respond(self, status: StatusCode, content_type: HeaderValue) -> Response {
        let end = self.stream_end();
        let mut resp = Response::new(self.into_body());
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
        Outcome::of(&mut resp).streams.push(end);
        resp
    }

    async fn next_out(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            if let Some(b) = self.emit.out.pop_front() {
                return Some(Ok(b));
            }
            if let Some(why) = self.emit.cut.take() {
                self.finish();
                return Some(Err(std::io::Error::other(why)));
            }
            if self.done {
                self.finish();
                return None;
            }
            match read(&mut self.body, self.timing).await {
                Ok(Some(chunk)) => self.on_chunk(chunk),
                Ok(None) => {
                    let rest = self.partial.split().freeze();
                    if !is_blank(&rest) && self.framing != Framing::Raw {
                        self.frames.frame(&rest, &mut self.emit);
                    }
                    self.frames.end(&mut self.emit);
                    self.done = true;
                }
                Err(err) => {
                    self.emit.broke = Some(err.to_string());
                    self.frames.fail(&err, &mut self.emit);
                    self.done = true;
                }
            }
            if let Some(why) = self.emit.broke.take() {
                let (id, endpoint) = self
                    .log
                    .as_ref()
                    .map_or(("-", "-"), |(i, e)| (i.as_str(), e.as_str()));
                tracing::warn!(request_id = %id, endpoint = %endpoint, error = %why,
                    "upstream stream failed");
            }
        }
    }

    fn on_chunk(&mut self, chunk: Bytes) {
        if self.forward || self.framing == Framing::Raw {
            if let Some(last) = chunk.last() {
                self.emit.at_frame_start = *last == b'\n';
            }
            self.emit.push(chunk.clone());
            if self.framing == Framing::Raw {
                return;
            }
        }
        self.partial.extend_from_slice(&chunk);
        while let Some(end) = frame_end(&self.partial, self.framing) {
            let frame = self.partial.split_to(end.next).freeze().slice(..end.len);
            if !is_blank(&frame) {
                self.frames.frame(&frame, &mut self.emit);
            }
        }
    }

    fn finish(&mut self) {
        self.done = true;
        self.end.set(self.emit.tally);
    }
}

impl<S, T> Drop for Relay<S, T> {
    /// A client that left before the end still gets its tokens and errors counted.
    fn drop(&mut self) {
        self.end.set(self.emit.tally);
    }
}

fn is_blank(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_whitespace)
}

struct FrameEnd {
    /// The frame's length as handed on.
    len: usize,
    /// Where the next frame starts.
    next: usize,
}

fn frame_end(buf: &[u8], framing: Framing) -> Option<FrameEnd> {
    match framing {
        Framing::Raw => None,
        Framing::Ndjson => memchr(b'\n', buf).map(|i| FrameEnd {
            len: i,
            next: i + 1,
        }),
        Framing::Sse => sse_event_end(buf).map(|i| FrameEnd { len: i, next: i }),
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|b| *b == needle)
}

/// The end of the first complete SSE event in `buf` (after its blank line), if any.
pub fn sse_event_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr(b'\n', &buf[from..]) {
        let nl = from + i;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => from = nl + 1,
        }
    }
    None
}

/// The `data:` payloads of an SSE event, trimmed.
pub fn sse_data(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    event
        .split(|b| *b == b'\n')
        .filter_map(|line| line.strip_prefix(b"data:"))
        .map(<[u8]>::trim_ascii)
}

/// The next chunk of `body`, bounded by `timing`; `Ok(None)` at its end.
async fn read<S, E>(body: &mut S, timing: Option<Timing>) -> Result<Option<Bytes>, EdgeError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::error::Error,
{
    let next = match timing {
        None => body.next().await,
        Some(t) => {
            let left = t.deadline.saturating_duration_since(Instant::now());
            let wait = t.idle.min(left);
            match tokio::time::timeout(wait, body.next()).await {
                Ok(next) => next,
                Err(_) if wait == left => {
                    return Err(EdgeError::UpstreamStreamFailed(
                        "upstream exceeded the total request timeout".into(),
                    ))
                }
                Err(_) => {
                    return Err(EdgeError::UpstreamStreamFailed(format!(
                        "upstream stalled for {:?} mid-stream",
                        t.idle
                    )))
                }
            }
        }
    };
    match next {
        None => Ok(None),
        Some(Ok(b)) => Ok(Some(b)),
        Some(Err(e)) => Err(EdgeError::UpstreamStreamFailed(format!(
            "upstream connection failed mid-stream: {}",
            describe(&e)
        ))),
    }
}

/// An error with its causes, `outer: inner: …`.
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    msg
}

/// The whole of a body that is not streamed on (a JSON answer), under the same timeouts.
pub async fn read_to_end<S, E>(mut body: S, timing: Option<Timing>) -> Result<Bytes, EdgeError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::error::Error,
{
    let mut buf = BytesMut::new();
    while let Some(chunk) = read(&mut body, timing).await? {
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::sse_error_event;
    use futures::stream;
    use http_body_util::BodyExt;

    type Chunk = Result<Bytes, std::io::Error>;

    fn body(chunks: &[&'static str]) -> stream::Iter<std::vec::IntoIter<Chunk>> {
        stream::iter(
            chunks
                .iter()
                .map(|c| Ok(Bytes::from_static(c.as_bytes())))
                .collect::<Vec<_>>(),
        )
    }

    async fn collect(b: Body) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut s = b.into_data_stream();
        while let Some(c) = s.next().await {
            match c {
                Ok(c) => out.extend_from_slice(&c),
                Err(_) => return (out, true),
            }
        }
        (out, false)
    }

    /// Uppercases each NDJSON line; counts lines as tokens out.
    struct Upper;
    impl Frames for Upper {
        fn frame(&mut self, frame: &Bytes, out: &mut Emit) {
            out.push(Bytes::from(frame.to_ascii_uppercase()));
            out.push(Bytes::from_static(b"\n"));
            out.tally.tokens_out += 1;
        }
        fn end(&mut self, out: &mut Emit) {
            out.push(Bytes::from_static(b"END\n"));
        }
        fn fail(&mut self, err: &EdgeError, out: &mut Emit) {
            out.failed(err.kind());
            out.push(err.ndjson_line());
        }
    }

    #[tokio::test]
    async fn ndjson_lines_split_across_chunks_are_translated_whole() {
        let relay = Relay::translate(
            body(&["{\"a\":", "1}\n{\"b\"", ":2}\n\n{\"c\":3}"]),
            Framing::Ndjson,
            Upper,
        );
        let end = relay.stream_end();
        let (out, cut) = collect(relay.into_body()).await;
        assert!(!cut);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"A\":1}\n{\"B\":2}\n{\"C\":3}\nEND\n"
        );
        assert_eq!(end.get().unwrap().tokens_out, 3);
    }

    /// Counts `usage` events while the bytes go on as they came.
    struct CountUsage;
    impl Frames for CountUsage {
        fn frame(&mut self, frame: &Bytes, out: &mut Emit) {
            if sse_data(frame).any(|d| d.starts_with(b"{\"usage\"")) {
                out.tally.tokens_in += 1;
            }
        }
        fn fail(&mut self, err: &EdgeError, out: &mut Emit) {
            out.failed(err.kind());
            out.push(err.sse_event());
        }
    }

    #[tokio::test]
    async fn forwarded_sse_goes_on_byte_for_byte() {
        let chunks = [
            "data: {\"x\":1}\r\n\r\nda",
            "ta: {\"usage\":{}}\n",
            "\ndata: [DONE]\n\n",
        ];
        let relay = Relay::forward(body(&chunks), Framing::Sse, CountUsage);
        let end = relay.stream_end();
        let (out, _) = collect(relay.into_body()).await;
        assert_eq!(out, chunks.concat().as_bytes());
        assert_eq!(end.get().unwrap().tokens_in, 1);
    }

    #[tokio::test]
    async fn a_broken_stream_ends_with_the_surface_error_event() {
        let failing = stream::iter(vec![
            Ok(Bytes::from_static(b"data: {}\n\n")),
            Err(std::io::Error::other("reset")),
        ]);
        let relay = Relay::forward(failing, Framing::Sse, CountUsage);
        let end = relay.stream_end();
        let (out, cut) = collect(relay.into_body()).await;
        assert!(!cut);
        let msg = "upstream connection failed mid-stream: reset";
        assert_eq!(
            out,
            [b"data: {}\n\n".as_slice(), &sse_error_event(msg)].concat()
        );
        assert_eq!(end.get().unwrap().error, Some("upstream_stream_failed"));
    }

    #[tokio::test]
    async fn a_raw_body_is_cut_short_on_failure() {
        let failing = stream::iter(vec![
            Ok(Bytes::from_static(b"RIFF")),
            Err(std::io::Error::other("reset")),
        ]);
        let (out, cut) =
            collect(Relay::translate(failing, Framing::Raw, Untouched).into_body()).await;
        assert_eq!((out.as_slice(), cut), (b"RIFF".as_slice(), true));
    }

    #[tokio::test]
    async fn a_stalled_upstream_ends_the_stream_after_the_idle_timeout() {
        let stalled = stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from_static(b"{}\n"))])
            .chain(stream::pending());
        let relay = Relay::translate(Box::pin(stalled), Framing::Ndjson, Upper).timed(Timing::new(
            Duration::from_millis(50),
            Duration::from_secs(60),
            Instant::now(),
        ));
        let end = relay.stream_end();
        let (out, _) = collect(relay.into_body()).await;
        assert!(String::from_utf8(out).unwrap().contains("stalled for 50ms"));
        assert_eq!(end.get().unwrap().error, Some("upstream_stream_failed"));
    }

    #[tokio::test]
    async fn a_dropped_relay_still_hands_over_its_tally() {
        let relay = Relay::translate(body(&["{}\n"]), Framing::Ndjson, Upper);
        let end = relay.stream_end();
        let mut b = relay.into_body();
        let _ = b.frame().await;
        drop(b);
        assert_eq!(end.get().unwrap().tokens_out, 1);
    }

    #[test]
    fn sse_events_end_at_a_blank_line() {
        assert_eq!(sse_event_end(b"data: 1\n\ndata: 2"), Some(9));
        assert_eq!(sse_event_end(b"data: 1\r\n\r\n"), Some(11));
        assert_eq!(sse_event_end(b"data: 1\n"), None);
    }
}
