//! multipart/form-data encoding (RFC 7578) for uploads sent upstream (audio transcription):
//! the whole form in one buffer, as the client sent it to the edge in one buffer too.
use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderValue;

pub struct Form {
    boundary: String,
    buf: BytesMut,
}

impl Default for Form {
    fn default() -> Self {
        Self::new()
    }
}

impl Form {
    pub fn new() -> Self {
        Self {
            boundary: format!("aibox-{}", uuid::Uuid::new_v4().simple()),
            buf: BytesMut::new(),
        }
    }

    pub fn text(self, name: &str, value: &str) -> Self {
        self.part(name, None, None, value.as_bytes())
    }

    /// One field; a content type that cannot be a header value is left out.
    pub fn part(
        mut self,
        name: &str,
        file_name: Option<&str>,
        content_type: Option<&str>,
        data: &[u8],
    ) -> Self {
        let b = &mut self.buf;
        b.put_slice(b"--");
        b.put_slice(self.boundary.as_bytes());
        b.put_slice(b"\r\nContent-Disposition: form-data; name=\"");
        b.put_slice(quoted(name).as_bytes());
        b.put_slice(b"\"");
        if let Some(f) = file_name {
            b.put_slice(b"; filename=\"");
            b.put_slice(quoted(f).as_bytes());
            b.put_slice(b"\"");
        }
        if let Some(ct) = content_type.filter(|ct| HeaderValue::from_str(ct).is_ok()) {
            b.put_slice(b"\r\nContent-Type: ");
            b.put_slice(ct.as_bytes());
        }
        b.put_slice(b"\r\n\r\n");
        b.put_slice(data);
        b.put_slice(b"\r\n");
        self
    }

    /// The `Content-Type` header (with the boundary) and the encoded body.
    pub fn finish(mut self) -> (HeaderValue, Bytes) {
        self.buf.put_slice(b"--");
        self.buf.put_slice(self.boundary.as_bytes());
        self.buf.put_slice(b"--\r\n");
        let content_type =
            HeaderValue::from_str(&format!("multipart/form-data; boundary={}", self.boundary))
                .unwrap_or_else(|_| HeaderValue::from_static("multipart/form-data"));
        (content_type, self.buf.freeze())
    }
}

/// A name inside a quoted header parameter, escaped as browsers do (WHATWG HTML form encoding).
fn quoted(s: &str) -> String {
    s.replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn multer_reads_back_what_was_encoded() {
        let (ct, body) = Form::new()
            .text("model", "whisper")
            .part(
                "file",
                Some("a \"b\".wav"),
                Some("audio/wav"),
                b"RIFF\x00\x01",
            )
            .finish();
        let boundary = multer::parse_boundary(ct.to_str().unwrap()).unwrap();
        let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(body) });
        let mut m = multer::Multipart::new(stream, boundary);
        let f = m.next_field().await.unwrap().unwrap();
        assert_eq!(f.name(), Some("model"));
        assert_eq!(&f.bytes().await.unwrap()[..], b"whisper");
        let f = m.next_field().await.unwrap().unwrap();
        assert_eq!(f.file_name(), Some("a %22b%22.wav"));
        assert_eq!(
            f.content_type().map(|m| m.to_string()).as_deref(),
            Some("audio/wav")
        );
        assert_eq!(&f.bytes().await.unwrap()[..], b"RIFF\x00\x01");
        assert!(m.next_field().await.unwrap().is_none());
    }
}
