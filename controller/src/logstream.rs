//! Decodes the body of Docker's `GET /containers/{id}/logs` into lines.
//!
//! A container without a TTY answers with the multiplexed format (8-byte frame headers:
//! stream type, 3 zero bytes, big-endian u32 length); a TTY container answers with raw console
//! bytes. Which one is decided by the container's `Config.Tty`, never by peeking at the first
//! byte, because a TTY can legitimately print `\x01`.

use serde::Serialize;

/// A line longer than this is emitted in pieces rather than buffered without bound.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    pub stream: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<String>,
    pub line: String,
}

#[derive(Debug)]
pub struct LogDecoder {
    tty: bool,
    timestamps: bool,
    /// Bytes of an incomplete frame header or payload (multiplexed only).
    pending: Vec<u8>,
    /// Per stream (index = Docker's stream type, 4 = tty): bytes after the last newline.
    partial: [Vec<u8>; 5],
}

fn stream_name(idx: usize) -> &'static str {
    match idx {
        0 => "stdin",
        1 => "stdout",
        2 => "stderr",
        3 => "system",
        _ => "tty",
    }
}

const TTY: usize = 4;

impl LogDecoder {
    pub fn new(tty: bool, timestamps: bool) -> LogDecoder {
        LogDecoder {
            tty,
            timestamps,
            pending: Vec::new(),
            partial: Default::default(),
        }
    }

    /// Feeds one chunk of the HTTP body; returns the lines it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<LogLine> {
        let mut out = Vec::new();
        if self.tty {
            self.take_text(TTY, chunk, &mut out);
            return out;
        }
        self.pending.extend_from_slice(chunk);
        let mut at = 0;
        loop {
            let rest = &self.pending[at..];
            if rest.len() < 8 {
                break;
            }
            let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
            if rest.len() < 8 + len {
                break;
            }
            let idx = match rest[0] {
                n @ 0..=3 => n as usize,
                _ => 2,
            };
            let payload = rest[8..8 + len].to_vec();
            at += 8 + len;
            self.take_text(idx, &payload, &mut out);
        }
        self.pending.drain(..at);
        out
    }

    /// End of body: whatever is left becomes a final line per stream.
    pub fn finish(&mut self) -> Vec<LogLine> {
        let mut out = Vec::new();
        for idx in 0..self.partial.len() {
            if !self.partial[idx].is_empty() {
                let bytes = std::mem::take(&mut self.partial[idx]);
                out.push(self.line(idx, &bytes));
            }
        }
        out
    }

    fn take_text(&mut self, idx: usize, mut data: &[u8], out: &mut Vec<LogLine>) {
        while let Some(nl) = data.iter().position(|b| *b == b'\n') {
            let mut buf = std::mem::take(&mut self.partial[idx]);
            buf.extend_from_slice(&data[..nl]);
            out.push(self.line(idx, &buf));
            data = &data[nl + 1..];
        }
        self.partial[idx].extend_from_slice(data);
        if self.partial[idx].len() >= MAX_LINE {
            let bytes = std::mem::take(&mut self.partial[idx]);
            out.push(self.line(idx, &bytes));
        }
    }

    fn line(&self, idx: usize, bytes: &[u8]) -> LogLine {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let text = String::from_utf8_lossy(bytes).into_owned();
        let (ts, line) = match (self.timestamps, text.split_once(' ')) {
            (true, Some((ts, rest))) if ts.ends_with('Z') || ts.contains('+') => {
                (Some(ts.to_string()), rest.to_string())
            }
            _ => (None, text),
        };
        LogLine {
            stream: stream_name(idx),
            ts,
            line,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind, 0, 0, 0];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn text(lines: &[LogLine]) -> Vec<(&str, &str)> {
        lines.iter().map(|l| (l.stream, l.line.as_str())).collect()
    }

    #[test]
    fn multiplexed_frames_split_by_stream() {
        let mut d = LogDecoder::new(false, false);
        let mut body = frame(1, b"out one\n");
        body.extend(frame(2, b"err one\n"));
        body.extend(frame(1, b"out two\nout three\n"));
        let lines = d.push(&body);
        assert_eq!(
            text(&lines),
            vec![
                ("stdout", "out one"),
                ("stderr", "err one"),
                ("stdout", "out two"),
                ("stdout", "out three")
            ]
        );
        assert!(d.finish().is_empty());
    }

    #[test]
    fn frames_cut_at_any_byte_boundary() {
        let mut body = frame(1, b"hello world\n");
        body.extend(frame(2, b"bad things\n"));
        body.extend(frame(1, b"no newline at end"));
        for cut in 1..body.len() {
            let mut d = LogDecoder::new(false, false);
            let mut lines = d.push(&body[..cut]);
            lines.extend(d.push(&body[cut..]));
            lines.extend(d.finish());
            assert_eq!(
                text(&lines),
                vec![
                    ("stdout", "hello world"),
                    ("stderr", "bad things"),
                    ("stdout", "no newline at end")
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_line_split_across_frames_is_joined_per_stream() {
        let mut d = LogDecoder::new(false, false);
        let mut body = frame(1, b"first ha");
        body.extend(frame(2, b"interleaved\n"));
        body.extend(frame(1, b"lf\n"));
        assert_eq!(
            text(&d.push(&body)),
            vec![("stderr", "interleaved"), ("stdout", "first half")]
        );
    }

    #[test]
    fn tty_bytes_are_never_read_as_frame_headers() {
        // Starts with \x01 and would look like a stdout frame header to a guessing decoder.
        let raw = b"\x01\x00\x00\x00\x00\x00\x00\x05tty line\r\nsecond\r\n";
        let mut d = LogDecoder::new(true, false);
        let lines = d.push(raw);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].stream, "tty");
        assert_eq!(lines[0].line, "\u{1}\0\0\0\0\0\0\u{5}tty line");
        assert_eq!(lines[1].line, "second");
    }

    #[test]
    fn timestamps_are_split_off() {
        let mut d = LogDecoder::new(false, true);
        let lines = d.push(&frame(1, b"2026-11-26T04:00:00.123456789Z hi there\n"));
        assert_eq!(
            lines[0].ts.as_deref(),
            Some("2026-11-26T04:00:00.123456789Z")
        );
        assert_eq!(lines[0].line, "hi there");
    }

    #[test]
    fn unbounded_line_is_cut() {
        let mut d = LogDecoder::new(true, false);
        let lines = d.push(&vec![b'x'; MAX_LINE + 10]);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].line.len(), MAX_LINE + 10);
        assert!(d.finish().is_empty());
    }
}
