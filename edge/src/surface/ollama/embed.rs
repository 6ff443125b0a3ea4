//! `/api/embed` and the legacy `/api/embeddings`.
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;

use super::{
    answer, fail, json_bytes_response, model_field, native_body, parse_body, plan, read_all,
    record_ollama_tokens, send, upstream_status_error, OllamaError, Result,
};
use crate::config::ProviderKind;
use crate::providers::ProviderRoute;
use crate::surface::stream::{self};
use crate::surface::{EdgeState, RequestContext};
use crate::translate::ollama_to_openai::{self as translate};

pub async fn embed(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    raw: Bytes,
) -> Response {
    answer(&ctx, embed_any(&state, &ctx, &raw, false)).await
}

/// The legacy `/api/embeddings` (`prompt` in, one `embedding` out).
pub async fn embeddings(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    raw: Bytes,
) -> Response {
    answer(&ctx, embed_any(&state, &ctx, &raw, true)).await
}

async fn embed_any(
    state: &EdgeState,
    ctx: &RequestContext,
    raw: &Bytes,
    legacy: bool,
) -> Result<Response> {
    let body = parse_body(raw)?;
    let model = model_field(&body, &["model"])?;
    let plan = plan(state, ctx, &model)?;
    let attempt = async |route: ProviderRoute| -> Result<Response> {
        match route.provider.kind {
            ProviderKind::Ollama => {
                let path = if legacy {
                    "/api/embeddings"
                } else {
                    "/api/embed"
                };
                let up = send(
                    state,
                    ctx,
                    &route,
                    path,
                    &native_body(body.clone(), &route.model),
                )
                .await?;
                if !up.response.status().is_success() {
                    return Err(upstream_status_error(state, up.response).await);
                }
                let status = stream::upstream_status(&up.response);
                let bytes = read_all(state, up.response).await?;
                if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                    record_ollama_tokens(ctx, &v);
                }
                Ok(json_bytes_response(status, bytes))
            }
            ProviderKind::Openai => {
                let up_body = translate::embed_to_openai(&body, &route.model, legacy)?;
                let up = send(state, ctx, &route, "/embeddings", &up_body).await?;
                if !up.response.status().is_success() {
                    return Err(upstream_status_error(state, up.response).await);
                }
                let bytes = read_all(state, up.response).await?;
                let v: Value = serde_json::from_slice(&bytes).map_err(|_| {
                    OllamaError::new(
                        StatusCode::BAD_GATEWAY,
                        "the upstream answered with a body that is not JSON",
                    )
                })?;
                let nanos = ctx.started.elapsed().as_nanos() as u64;
                let out = translate::embed_from_openai(&v, &model, legacy, nanos);
                record_ollama_tokens(ctx, &out);
                Ok(Json(out).into_response())
            }
        }
    };
    Ok(
        crate::surface::fallback::run(state, ctx, plan, move |route| async move {
            let r: Result<Response> = attempt(route).await;
            r.unwrap_or_else(|e| fail(ctx, e))
        })
        .await,
    )
}
