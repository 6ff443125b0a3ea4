//! The JSON-RPC 2.0 envelope of a `POST /mcp` body, checked before rmcp's transport sees it:
//! rmcp answers a body it cannot deserialize with HTTP 415 and plain text, while a client needs
//! HTTP 400 and a JSON-RPC error it can read (-32700 parse error, -32600 invalid request).
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rmcp::model::{ErrorCode, ErrorData};
use serde_json::Value;

pub const PARSE_ERROR: i32 = -32700;
pub const INVALID_REQUEST: i32 = -32600;

/// Why a body is not one JSON-RPC message; `id` is the request's when it could be read, else null.
#[derive(Debug, PartialEq)]
pub struct Rejection {
    pub code: i32,
    pub message: String,
    pub id: Value,
}

impl Rejection {
    fn invalid(message: impl Into<String>, id: Value) -> Self {
        Self {
            code: INVALID_REQUEST,
            message: message.into(),
            id,
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let error = ErrorData::new(ErrorCode(self.code), self.message, None);
        crate::rpc_error::http_answer(StatusCode::BAD_REQUEST, self.id, error, &[])
    }
}

/// The parsed message when the body is one well-formed JSON-RPC 2.0 request, notification or
/// response (a client answers the server's requests on the same endpoint).
pub fn check(body: &[u8]) -> Result<Value, Rejection> {
    let msg: Value = serde_json::from_slice(body).map_err(|e| Rejection {
        code: PARSE_ERROR,
        message: format!("parse error: the body is not JSON ({e})"),
        id: Value::Null,
    })?;
    let obj =
        match &msg {
            Value::Object(obj) => obj,
            // MCP removed JSON-RPC batching (2025-06-18), and rmcp never read batches.
            Value::Array(items) if items.is_empty() => {
                return Err(Rejection::invalid(
                    "invalid request: an empty array",
                    Value::Null,
                ))
            }
            Value::Array(_) => return Err(Rejection::invalid(
                "invalid request: JSON-RPC batches are not supported; send one message per request",
                Value::Null,
            )),
            other => {
                return Err(Rejection::invalid(
                    format!(
                        "invalid request: expected a JSON-RPC object, got {}",
                        kind(other)
                    ),
                    Value::Null,
                ))
            }
        };
    // MCP ids are strings or numbers, never null.
    let id = match obj.get("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id.clone()),
        Some(other) => {
            return Err(Rejection::invalid(
                format!(
                    "invalid request: id must be a string or a number, got {}",
                    kind(other)
                ),
                Value::Null,
            ))
        }
    };
    let echo = id.clone().unwrap_or(Value::Null);
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(Rejection::invalid(
            "invalid request: \"jsonrpc\" must be \"2.0\"",
            echo,
        ));
    }
    match obj.get("method") {
        Some(Value::String(_)) => Ok(msg),
        Some(other) => Err(Rejection::invalid(
            format!(
                "invalid request: method must be a string, got {}",
                kind(other)
            ),
            echo,
        )),
        None if id.is_some() && (obj.contains_key("result") ^ obj.contains_key("error")) => Ok(msg),
        None => Err(Rejection::invalid("invalid request: no method", echo)),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rejected(body: &str) -> (i32, Value) {
        let r = check(body.as_bytes()).expect_err(body);
        (r.code, r.id)
    }

    #[test]
    fn well_formed_messages_pass() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":3,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":4,"error":{"code":-1,"message":"no"}}"#,
        ] {
            assert!(check(body.as_bytes()).is_ok(), "{body}");
        }
    }

    #[test]
    fn malformed_json_is_a_parse_error() {
        assert_eq!(rejected("{\"jsonrpc\":"), (PARSE_ERROR, Value::Null));
        assert_eq!(rejected(""), (PARSE_ERROR, Value::Null));
    }

    #[test]
    fn wrong_shapes_are_invalid_requests_with_the_id_when_known() {
        let null = Value::Null;
        assert_eq!(rejected("[]"), (INVALID_REQUEST, null.clone()));
        assert_eq!(
            rejected(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#),
            (INVALID_REQUEST, null.clone())
        );
        assert_eq!(rejected(r#""tools/list""#), (INVALID_REQUEST, null.clone()));
        assert_eq!(rejected("42"), (INVALID_REQUEST, null.clone()));
        assert_eq!(
            rejected(r#"{"jsonrpc":"1.0","id":5,"method":"ping"}"#),
            (INVALID_REQUEST, json!(5))
        );
        assert_eq!(
            rejected(r#"{"id":5,"method":"ping"}"#),
            (INVALID_REQUEST, json!(5))
        );
        assert_eq!(
            rejected(r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#),
            (INVALID_REQUEST, null.clone())
        );
        assert_eq!(
            rejected(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#),
            (INVALID_REQUEST, null.clone())
        );
        assert_eq!(
            rejected(r#"{"jsonrpc":"2.0","id":"x"}"#),
            (INVALID_REQUEST, json!("x"))
        );
        assert_eq!(
            rejected(r#"{"jsonrpc":"2.0","id":1,"method":7}"#),
            (INVALID_REQUEST, json!(1))
        );
        assert_eq!(
            rejected(r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#),
            (INVALID_REQUEST, json!(1))
        );
    }
}
