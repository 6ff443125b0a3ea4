//! Every refusal and failure the hub answers on `/mcp`, and the one place they become JSON-RPC
//! errors (code, message, data). Handlers return `CallError`; rmcp's handler trait wants
//! `ErrorData`, which `From` gives; HTTP answers the hub makes itself (413, 429, 400) go through
//! [`http_answer`] / [`envelope`].
use std::time::Duration;

use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use rmcp::model::{ErrorCode, ErrorData};
use rmcp::service::ServiceError;
use serde_json::{json, Value};

use crate::upstream::HealthState;

/// JSON-RPC error codes of the hub (server-defined range).
pub const CODE_TIMEOUT: i32 = -32001;
pub const CODE_FORBIDDEN: i32 = -32003;
pub const CODE_UNAVAILABLE: i32 = -32004;
pub const CODE_RATE_LIMITED: i32 = -32029;
/// JSON-RPC's "request cancelled" (the code MCP clients know from LSP).
pub const CODE_CANCELLED: i32 = -32800;

/// Why a request to the hub was refused or did not complete. The message (`Display`) is the
/// JSON-RPC error's message.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("unknown tool {0:?}")]
    UnknownTool(String),
    #[error("unknown prompt {0:?}")]
    UnknownPrompt(String),
    #[error("no server offers {0:?}")]
    NoResourceServer(String),
    #[error("client {client:?} may not call tool {tool:?}")]
    Forbidden { client: String, tool: String },
    #[error("rate limit of server {server:?} exceeded for this client; retry after {:.1} s", wait.as_secs_f64().max(0.001))]
    RateLimited { server: String, wait: Duration },
    /// The server is configured but its health keeps its tools out.
    #[error("server {server:?} is {state:?}; its tools are unavailable")]
    ServerDown {
        server: String,
        state: HealthState,
        last_error: Option<String>,
    },
    #[error("server {server:?} is unavailable: {why}")]
    Unavailable { server: String, why: Unavailable },
    #[error("tool call timed out after {:.1} s and was cancelled upstream", timeout.as_secs_f64())]
    ToolTimeout { server: String, timeout: Duration },
    #[error("upstream timed out after {:.1} s", timeout.as_secs_f64())]
    UpstreamTimeout { timeout: Duration },
    #[error("request cancelled")]
    Cancelled,
    /// The upstream answered with a result of another method.
    #[error("{0}")]
    UnexpectedResult(&'static str),
    /// The upstream's own JSON-RPC error, passed through unchanged.
    #[error("{}", .0.message)]
    Upstream(ErrorData),
    /// The request could not be sent to or answered by the upstream's session.
    #[error("{0}")]
    Session(#[source] ServiceError),
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
}

/// Why a reachable-by-name server cannot take a call now.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("server stopped")]
    Stopped,
    #[error("server not connected")]
    NotConnected,
    #[error("{0}")]
    Session(#[source] ServiceError),
}

impl CallError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownTool(_) | Self::UnknownPrompt(_) => ErrorCode::INVALID_PARAMS,
            Self::NoResourceServer(_) => ErrorCode::RESOURCE_NOT_FOUND,
            Self::Forbidden { .. } => ErrorCode(CODE_FORBIDDEN),
            Self::RateLimited { .. } => ErrorCode(CODE_RATE_LIMITED),
            Self::ServerDown { .. } | Self::Unavailable { .. } => ErrorCode(CODE_UNAVAILABLE),
            Self::ToolTimeout { .. } | Self::UpstreamTimeout { .. } => ErrorCode(CODE_TIMEOUT),
            Self::Cancelled => ErrorCode(CODE_CANCELLED),
            Self::UnexpectedResult(_) | Self::Session(_) => ErrorCode::INTERNAL_ERROR,
            Self::Upstream(e) => e.code,
            Self::BodyTooLarge { .. } => ErrorCode::INVALID_REQUEST,
        }
    }

    /// Machine-readable details a client can act on (which server, how long to wait).
    fn data(&self) -> Option<Value> {
        match self {
            Self::Forbidden { client, tool } => Some(json!({"client": client, "tool": tool})),
            Self::RateLimited { server, wait } => {
                Some(json!({"server": server, "retry_after_ms": wait.as_millis() as u64}))
            }
            Self::ServerDown {
                server,
                state,
                last_error,
            } => Some(json!({"server": server, "state": state, "last_error": last_error})),
            Self::Unavailable { server, .. } => Some(json!({"server": server})),
            Self::ToolTimeout { server, timeout } => {
                Some(json!({"server": server, "timeout_sec": timeout.as_secs_f64()}))
            }
            Self::Upstream(e) => e.data.clone(),
            _ => None,
        }
    }

    /// Counted as `timeout` in the calls metric (the hub's own deadline or the server's).
    pub fn is_timeout(&self) -> bool {
        self.code() == ErrorCode(CODE_TIMEOUT)
    }
}

impl From<CallError> for ErrorData {
    fn from(e: CallError) -> ErrorData {
        match e {
            CallError::Upstream(upstream) => upstream,
            other => ErrorData::new(other.code(), other.to_string(), other.data()),
        }
    }
}

/// The JSON-RPC error answer for request `id`.
pub fn envelope(id: Value, error: ErrorData) -> String {
    json!({"jsonrpc": "2.0", "id": id, "error": error}).to_string()
}

/// An HTTP answer the hub makes before rmcp sees the request: `status`, a JSON-RPC error body.
pub fn http_answer(
    status: StatusCode,
    id: Value,
    error: impl Into<ErrorData>,
    headers: &[(HeaderName, String)],
) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        envelope(id, error.into()),
    )
        .into_response();
    for (name, value) in headers {
        if let Ok(value) = value.parse() {
            response.headers_mut().insert(name.clone(), value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_codes_and_data_are_the_clients_contract() {
        let e: ErrorData = CallError::RateLimited {
            server: "s".into(),
            wait: Duration::from_millis(1500),
        }
        .into();
        assert_eq!(e.code, ErrorCode(CODE_RATE_LIMITED));
        assert_eq!(
            e.message,
            "rate limit of server \"s\" exceeded for this client; retry after 1.5 s"
        );
        assert_eq!(e.data, Some(json!({"server": "s", "retry_after_ms": 1500})));

        let e: ErrorData = CallError::Unavailable {
            server: "s".into(),
            why: Unavailable::NotConnected,
        }
        .into();
        assert_eq!(e.code, ErrorCode(CODE_UNAVAILABLE));
        assert_eq!(
            e.message,
            "server \"s\" is unavailable: server not connected"
        );

        let e: ErrorData = CallError::UnknownTool("x__y".into()).into();
        assert_eq!(e.code, ErrorCode::INVALID_PARAMS);
        assert_eq!(e.message, "unknown tool \"x__y\"");
        assert_eq!(e.data, None);

        let upstream = ErrorData::new(ErrorCode(CODE_TIMEOUT), "slow", Some(json!(1)));
        let e = CallError::Upstream(upstream.clone());
        assert!(e.is_timeout());
        assert_eq!(ErrorData::from(e), upstream);
    }
}
