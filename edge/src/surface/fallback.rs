//! Running one request over a plan's targets (an alias's, or the one route of a model name).
//!
//! Each attempt is a whole surface handler for one `ProviderRoute`, answering a `Response` in
//! the surface's own shape. The next target is tried only while nothing has reached the client:
//! the attempt's response is judged before it is returned, and only error statuses (whose
//! bodies are small and whole, never streams) move on:
//!
//! - a 5xx (the edge's 502/503/504 for connect errors, all-ejected providers and first-byte
//!   timeouts, or an upstream's own 5xx) → the next untried target in plan order;
//! - a 400/413/422 whose body says the context is too long → the untried target with the
//!   smallest `context` larger than the failed one's (`aliases::larger_context`), if any.
//!
//! Anything else, and the last target's answer, goes to the client as it is.
use axum::body::Body;
use axum::response::Response;
use http::StatusCode;

use super::{EdgeState, RequestContext};
use crate::aliases::larger_context;
use crate::providers::{Plan, ProviderRoute};

/// Error bodies are small; a larger one is not a context-length error worth reading.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

pub async fn run<F, Fut>(
    state: &EdgeState,
    ctx: &RequestContext,
    plan: Plan,
    mut attempt: F,
) -> Response
where
    F: FnMut(ProviderRoute) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let n = plan.targets.len();
    let contexts: Vec<Option<u64>> = plan.targets.iter().map(|t| t.context).collect();
    let mut tried = vec![false; n];
    let mut i = 0;
    loop {
        tried[i] = true;
        let route = plan.targets[i].route.clone();
        let target = format!("{}/{}", route.provider.name, route.model);
        let provider = route.provider.name.clone();
        let mut resp = attempt(route).await;
        // Each attempt's answer names its provider, whoever built it.
        crate::outcome::Outcome::of(&mut resp)
            .provider
            .get_or_insert(provider);
        if n == 1 {
            return resp;
        }
        let status = resp.status();
        let (resp, next, why) = if status.is_server_error() {
            let next = (0..n).find(|j| !tried[*j]);
            (resp, next, "upstream_failed")
        } else if matches!(
            status,
            StatusCode::BAD_REQUEST
                | StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::UNPROCESSABLE_ENTITY
        ) && larger_context(&contexts, &tried, i).is_some()
        {
            let (resp, too_long) = read_context_error(resp).await;
            let next = too_long
                .then(|| larger_context(&contexts, &tried, i))
                .flatten();
            (resp, next, "context_length")
        } else {
            (resp, None, "")
        };
        let Some(j) = next else {
            return resp;
        };
        let alias = plan.alias.as_ref().map_or("-", |a| a.name.as_str());
        state.metrics.observe_alias_fallback(alias, why);
        let to = &plan.targets[j].route;
        tracing::warn!(request_id = %ctx.id, alias, target, status = status.as_u16(), reason = why,
            next = %format!("{}/{}", to.provider.name, to.model), "alias target failed; trying the next");
        i = j;
    }
}

/// Reads an error response's body to see whether it is a context-length error, and gives the
/// response back whole either way.
async fn read_context_error(resp: Response) -> (Response, bool) {
    let (parts, body) = resp.into_parts();
    match axum::body::to_bytes(body, ERROR_BODY_LIMIT).await {
        Ok(bytes) => {
            let too_long = is_context_length_error(&bytes);
            (Response::from_parts(parts, Body::from(bytes)), too_long)
        }
        Err(_) => (Response::from_parts(parts, Body::empty()), false),
    }
}

/// How servers say a prompt does not fit: OpenAI's `context_length_exceeded`, vLLM's "maximum
/// context length is", llama.cpp's "exceeds the available context size", Ollama's "exceeds the
/// context length".
pub fn is_context_length_error(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    [
        "context_length_exceeded",
        "context length",
        "context size",
        "context window",
        "exceed_context_size",
    ]
    .iter()
    .any(|s| text.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_length_errors_of_known_servers_are_recognised() {
        for body in [
            r#"{"error":{"message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens","type":"BadRequestError","code":400}}"#,
            r#"{"error":{"code":"context_length_exceeded","message":"too long"}}"#,
            r#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error"}}"#,
            r#"{"error":"the input length exceeds the context length"}"#,
        ] {
            assert!(is_context_length_error(body.as_bytes()), "{body}");
        }
        assert!(!is_context_length_error(
            br#"{"error":{"message":"temperature must be at most 2"}}"#
        ));
    }
}
