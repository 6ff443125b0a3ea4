//! Buffered reading for the proxy: request/response heads, then bodies copied by their framing,
//! with an idle timeout on every read and write so a silent peer cannot hold a task forever.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

/// Largest request or response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_CHUNK_LINE: usize = 4096;
const READ_CHUNK: usize = 16 * 1024;

/// How a message body is delimited (RFC 9112 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Response only: the body runs until the server closes.
    UntilClose,
}

#[derive(Debug)]
pub enum HeadReadError {
    /// The peer closed before sending anything.
    Closed,
    TooLarge,
    Malformed,
    Io(io::Error),
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "idle timeout")
}

pub struct Inbound<R> {
    pub reader: R,
    buf: Vec<u8>,
    pos: usize,
    idle: Duration,
}

impl<R: AsyncRead + Unpin> Inbound<R> {
    pub fn new(reader: R, idle: Duration) -> Self {
        Self {
            reader,
            buf: Vec::new(),
            pos: 0,
            idle,
        }
    }

    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Read more bytes into the buffer; `Ok(0)` at end of stream.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.reserve(READ_CHUNK);
        timeout(self.idle, self.reader.read_buf(&mut self.buf))
            .await
            .map_err(|_| timed_out())?
    }

    /// Read until `parse` recognises a complete head in the buffer; `parse` returns the parsed
    /// value and the head's length, `Ok(None)` for "need more", or `Err` for garbage.
    pub async fn read_head<T>(
        &mut self,
        parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, ()>,
    ) -> Result<T, HeadReadError> {
        loop {
            if !self.buffered().is_empty() {
                match parse(self.buffered()) {
                    // The limit is on the whole head, not only on what is still missing: a head
                    // that arrived in one piece is no smaller for it.
                    Ok(Some((_, len))) if len > MAX_HEAD => return Err(HeadReadError::TooLarge),
                    Ok(Some((value, len))) => {
                        self.consume(len);
                        return Ok(value);
                    }
                    Ok(None) => {}
                    Err(()) => return Err(HeadReadError::Malformed),
                }
            }
            if self.buffered().len() > MAX_HEAD {
                return Err(HeadReadError::TooLarge);
            }
            match self.fill().await {
                Ok(0) if self.buffered().is_empty() => return Err(HeadReadError::Closed),
                Ok(0) => return Err(HeadReadError::Malformed),
                Ok(_) => {}
                Err(e) => return Err(HeadReadError::Io(e)),
            }
        }
    }

    async fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buffered().iter().position(|b| *b == b'\n') {
                let line = self.buffered()[..=i].to_vec();
                self.consume(i + 1);
                return Ok(line);
            }
            if self.buffered().len() > MAX_CHUNK_LINE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "chunk line too long",
                ));
            }
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    async fn write_all<W: AsyncWrite + Unpin>(&self, w: &mut W, bytes: &[u8]) -> io::Result<()> {
        timeout(self.idle, w.write_all(bytes))
            .await
            .map_err(|_| timed_out())?
    }

    async fn copy_exact<W: AsyncWrite + Unpin>(&mut self, mut n: u64, w: &mut W) -> io::Result<()> {
        while n > 0 {
            if self.buffered().is_empty() && self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let take = self
                .buffered()
                .len()
                .min(usize::try_from(n).unwrap_or(usize::MAX));
            self.write_all(w, &self.buffered()[..take]).await?;
            self.consume(take);
            n -= take as u64;
        }
        Ok(())
    }

    async fn copy_to_end<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        loop {
            if !self.buffered().is_empty() {
                self.write_all(w, self.buffered()).await?;
                let n = self.buffered().len();
                self.consume(n);
            }
            if self.fill().await? == 0 {
                return Ok(());
            }
        }
    }

    /// Pass a chunked body through unchanged, reading exactly up to its end so nothing after it
    /// (a pipelined request) leaks to the other side.
    async fn copy_chunked<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        loop {
            let line = self.read_line().await?;
            let size = parse_chunk_size(&line)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            self.write_all(w, &line).await?;
            if size == 0 {
                loop {
                    let trailer = self.read_line().await?;
                    self.write_all(w, &trailer).await?;
                    if trailer == b"\r\n" || trailer == b"\n" {
                        return Ok(());
                    }
                }
            }
            self.copy_exact(size.saturating_add(2), w).await?;
        }
    }

    pub async fn copy_body<W: AsyncWrite + Unpin>(
        &mut self,
        framing: Framing,
        w: &mut W,
    ) -> io::Result<()> {
        match framing {
            Framing::None => Ok(()),
            Framing::Length(n) => self.copy_exact(n, w).await,
            Framing::Chunked => self.copy_chunked(w).await,
            Framing::UntilClose => self.copy_to_end(w).await,
        }
    }
}

/// `1a;ext=1\r\n` -> 26.
pub fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.split(|b| *b == b';').next()?;
    let digits = std::str::from_utf8(digits)
        .ok()?
        .trim_matches(|c| c == ' ' || c == '\t');
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a\r\n"), Some(26));
        assert_eq!(parse_chunk_size(b"0;x=y\r\n"), Some(0));
        assert_eq!(parse_chunk_size(b"zz\r\n"), None);
        assert_eq!(parse_chunk_size(b"ffffffffffffffffff\r\n"), None);
        assert_eq!(parse_chunk_size(b"1a"), None);
    }

    #[tokio::test]
    async fn chunked_copy_stops_at_the_end_of_the_body() {
        let data: &[u8] = b"4\r\nWiki\r\n0\r\n\r\nGET http://next/ HTTP/1.1\r\n";
        let mut inbound = Inbound::new(data, Duration::from_secs(1));
        let mut out = Vec::new();
        inbound.copy_body(Framing::Chunked, &mut out).await.unwrap();
        assert_eq!(out, b"4\r\nWiki\r\n0\r\n\r\n");
        assert_eq!(inbound.buffered(), b"GET http://next/ HTTP/1.1\r\n");
    }
}
