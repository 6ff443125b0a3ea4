//! Client side of the legacy HTTP+SSE transport (MCP 2024-11-05), which rmcp 3.11 lacks.
//!
//! The client GETs the SSE URL and keeps the stream open. The server's first event,
//! `endpoint`, carries the URL (relative to the SSE URL) the client POSTs its JSON-RPC
//! messages to; the server's messages come back as `message` events on the stream. The POST
//! endpoint must be on the SSE URL's origin, so configured headers (tokens) never leave it.

use futures::StreamExt;
use reqwest::header::{HeaderMap, ACCEPT};
use rmcp::service::{RoleClient, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use sse_stream::SseStream;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// Why the event stream could not be opened up to its `endpoint` event.
#[derive(Debug, thiserror::Error)]
pub enum SseOpenError {
    #[error("{url}: {source}")]
    BadUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("GET {url} failed: {source}")]
    Get {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url} answered {status}")]
    GetStatus {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("reading {url}: {message}")]
    Read { url: String, message: String },
    #[error("{url}: the event stream ended before the \"endpoint\" event")]
    NoEndpoint { url: String },
    #[error("{url}: bad endpoint {endpoint:?}: {source}")]
    BadEndpoint {
        url: String,
        endpoint: String,
        #[source]
        source: url::ParseError,
    },
    #[error("{url}: endpoint {endpoint} is not on the same origin")]
    CrossOrigin { url: String, endpoint: String },
}

#[derive(Debug, thiserror::Error)]
pub enum SseClientError {
    #[error("POST {url} failed: {source}")]
    Post {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("POST {url} answered {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
}

/// An open legacy-SSE session: the reader task feeds `rx` until the stream ends.
pub struct SseClientTransport {
    client: reqwest::Client,
    post_url: reqwest::Url,
    headers: HeaderMap,
    rx: mpsc::Receiver<RxJsonRpcMessage<RoleClient>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for SseClientTransport {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl SseClientTransport {
    /// Opens the event stream at `url` and waits for the `endpoint` event (callers bound the
    /// time this takes).
    pub async fn connect(
        client: reqwest::Client,
        url: &str,
        headers: HeaderMap,
        tasks: &TaskTracker,
    ) -> Result<Self, SseOpenError> {
        let sse_url = reqwest::Url::parse(url).map_err(|source| SseOpenError::BadUrl {
            url: url.to_string(),
            source,
        })?;
        let resp = client
            .get(sse_url.clone())
            .headers(headers.clone())
            .header(ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|source| SseOpenError::Get {
                url: sse_url.to_string(),
                source,
            })?;
        if !resp.status().is_success() {
            return Err(SseOpenError::GetStatus {
                url: sse_url.to_string(),
                status: resp.status(),
            });
        }
        let mut events = SseStream::from_bytes_stream(resp.bytes_stream());
        let endpoint = loop {
            match events.next().await {
                Some(Ok(ev)) if ev.event.as_deref() == Some("endpoint") => {
                    break ev.data.unwrap_or_default();
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    return Err(SseOpenError::Read {
                        url: sse_url.to_string(),
                        message: e.to_string(),
                    })
                }
                None => {
                    return Err(SseOpenError::NoEndpoint {
                        url: sse_url.to_string(),
                    })
                }
            }
        };
        let post_url =
            sse_url
                .join(endpoint.trim())
                .map_err(|source| SseOpenError::BadEndpoint {
                    url: sse_url.to_string(),
                    endpoint: endpoint.clone(),
                    source,
                })?;
        if post_url.origin() != sse_url.origin() {
            return Err(SseOpenError::CrossOrigin {
                url: sse_url.to_string(),
                endpoint: post_url.to_string(),
            });
        }
        let (tx, rx) = mpsc::channel(64);
        let stream_url = sse_url.to_string();
        let reader = tasks.spawn(async move {
            while let Some(ev) = events.next().await {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::warn!(url = %stream_url, error = %e, "mcp sse stream failed");
                        break;
                    }
                };
                // Events without a type are `message` events (the SSE default).
                if !matches!(ev.event.as_deref(), None | Some("message")) {
                    continue;
                }
                let Some(data) = ev.data else { continue };
                match serde_json::from_str::<RxJsonRpcMessage<RoleClient>>(&data) {
                    Ok(msg) => {
                        if tx.send(msg).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(url = %stream_url, error = %e, "mcp sse: unparsable message")
                    }
                }
            }
        });
        Ok(Self {
            client,
            post_url,
            headers,
            rx,
            reader,
        })
    }
}

impl Transport<RoleClient> for SseClientTransport {
    type Error = SseClientError;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        let req = self
            .client
            .post(self.post_url.clone())
            .headers(self.headers.clone())
            .json(&item);
        let url = self.post_url.to_string();
        async move {
            let resp = req.send().await.map_err(|source| SseClientError::Post {
                url: url.clone(),
                source,
            })?;
            let status = resp.status();
            if !status.is_success() {
                return Err(SseClientError::Status { url, status });
            }
            Ok(())
        }
    }

    fn receive(
        &mut self,
    ) -> impl std::future::Future<Output = Option<RxJsonRpcMessage<RoleClient>>> + Send {
        self.rx.recv()
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.reader.abort();
        self.rx.close();
        Ok(())
    }
}
