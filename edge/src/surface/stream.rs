//! Reading an upstream body chunk by chunk, bounded by the idle and total timeouts, and
//! splitting NDJSON into lines without ever holding more than one partial line.
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};

pub type UpstreamBody = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

/// An upstream response's body, for the relay (the one place that knows the client's body type).
pub fn body(response: reqwest::Response) -> UpstreamBody {
    Box::pin(response.bytes_stream())
}

/// What the next read from upstream gave.
pub enum Read {
    Chunk(Bytes),
    End,
    Failed(String),
}

pub struct TimedBody {
    body: UpstreamBody,
    idle: Duration,
    deadline: Instant,
}

impl TimedBody {
    pub fn new(
        response: reqwest::Response,
        idle: Duration,
        total: Duration,
        started: Instant,
    ) -> Self {
        Self {
            body: Box::pin(response.bytes_stream()),
            idle,
            deadline: started + total,
        }
    }

    pub async fn next(&mut self) -> Read {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let wait = self.idle.min(left);
        match tokio::time::timeout(wait, self.body.next()).await {
            Ok(Some(Ok(b))) => Read::Chunk(b),
            Ok(None) => Read::End,
            Ok(Some(Err(e))) => Read::Failed(format!(
                "upstream connection failed mid-stream: {}",
                crate::providers::describe_reqwest_error(&e)
            )),
            Err(_) if wait == left => {
                Read::Failed("upstream exceeded the total request timeout".into())
            }
            Err(_) => Read::Failed(format!("upstream stalled for {:?} mid-stream", self.idle)),
        }
    }
}

/// The whole upstream body, bounded by the idle and total timeouts; `Err` says why it broke off.
pub async fn read_to_end(
    response: reqwest::Response,
    timeouts: &crate::config::TimeoutConfig,
) -> Result<Bytes, String> {
    let mut timed = TimedBody::new(response, timeouts.idle(), timeouts.total(), Instant::now());
    let mut buf = bytes::BytesMut::new();
    loop {
        match timed.next().await {
            Read::Chunk(c) => buf.extend_from_slice(&c),
            Read::End => return Ok(buf.freeze()),
            Read::Failed(msg) => return Err(msg),
        }
    }
}

/// The upstream's status as the `http` crate's type (reqwest carries its own copy).
pub fn upstream_status(response: &reqwest::Response) -> http::StatusCode {
    http::StatusCode::from_u16(response.status().as_u16()).unwrap_or(http::StatusCode::BAD_GATEWAY)
}

/// Accumulates bytes and yields complete `\n`-terminated lines.
#[derive(Default)]
pub struct LineBuffer {
    partial: Vec<u8>,
}

impl LineBuffer {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&rest[..pos]);
            if line.iter().any(|b| !b.is_ascii_whitespace()) {
                lines.push(line);
            }
            rest = &rest[pos + 1..];
        }
        self.partial.extend_from_slice(rest);
        lines
    }

    /// The last line when the stream ended without a newline.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let line = std::mem::take(&mut self.partial);
        line.iter()
            .any(|b| !b.is_ascii_whitespace())
            .then_some(line)
    }
}

pub fn ndjson(payload: &serde_json::Value) -> Bytes {
    Bytes::from(format!("{payload}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks() {
        let mut b = LineBuffer::default();
        assert!(b.push(b"{\"a\":").is_empty());
        assert_eq!(b.push(b"1}\n{\"b\"").len(), 1);
        assert_eq!(b.push(b":2}\n\n").len(), 1);
        assert!(b.finish().is_none());
        b.push(b"{\"c\":3}");
        assert_eq!(b.finish().unwrap(), b"{\"c\":3}");
    }
}
