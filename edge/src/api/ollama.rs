//! The Ollama surface (`/api/...`), for clients that speak only Ollama's API.
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use http::StatusCode;
use serde_json::json;

use super::EdgeState;

/// Ollama's error shape: `{"error": "..."}` with the status.
#[derive(Debug)]
pub struct OllamaError {
    status: StatusCode,
    message: String,
}

impl OllamaError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.message}))).into_response()
    }
}

pub fn routes() -> Router<Arc<EdgeState>> {
    Router::new()
}
