//! An upstream body as the relay reads it, the upstream's status, and NDJSON line splitting
//! for the few places that read lines outside the relay.
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

pub type UpstreamBody =
    Pin<Box<dyn Stream<Item = Result<Bytes, crate::providers::BodyError>> + Send>>;

/// An upstream response's body, for the relay (the one place that knows the client's body type).
pub fn body(response: crate::providers::Response) -> UpstreamBody {
    Box::pin(response.bytes_stream())
}

/// The upstream's status.
pub fn upstream_status(response: &crate::providers::Response) -> http::StatusCode {
    response.status()
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
    }
}
