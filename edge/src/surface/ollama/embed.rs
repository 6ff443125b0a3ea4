//! `/api/embed` and the legacy `/api/embeddings`: passed to Ollama providers natively,
//! translated to `/embeddings` for OpenAI-compatible ones.
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::Value;

use super::{
    answered, json_bytes_response, model_field, native_body, note_tokens, parse_body, read_all,
    seen, tried, upstream_status_error, Result,
};
use crate::config::ProviderKind;
use crate::error::EdgeError;
use crate::outcome::Outcome;
use crate::providers::ProviderRoute;
use crate::surface::openai::plan;
use crate::surface::openai::upstream::send_json;
use crate::surface::stream;
use crate::surface::{EdgeState, RequestContext};
use crate::translate::ollama_to_openai as translate;

pub async fn embed(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    raw: Bytes,
) -> Response {
    let mut seen = seen();
    let result = embed_any(&state, &ctx, &raw, false, &mut seen).await;
    answered(seen, result)
}

/// The legacy `/api/embeddings` (`prompt` in, one `embedding` out).
pub async fn embeddings(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    raw: Bytes,
) -> Response {
    let mut seen = seen();
    let result = embed_any(&state, &ctx, &raw, true, &mut seen).await;
    answered(seen, result)
}

async fn embed_any(
    state: &EdgeState,
    ctx: &RequestContext,
    raw: &Bytes,
    legacy: bool,
    seen: &mut Outcome,
) -> Result<Response> {
    let body = parse_body(raw)?;
    let model = model_field(&body, &["model"])?;
    let plan = plan(state, ctx, &model, seen)?;
    let (body, model) = (&body, model.as_str());
    Ok(
        crate::surface::fallback::run(state, ctx, plan, move |route| async move {
            let mut tried = tried(&route);
            let result = embed_on(state, ctx, body, &route, model, legacy, &mut tried).await;
            answered(tried, result)
        })
        .await,
    )
}

/// Embeddings on one target.
async fn embed_on(
    state: &EdgeState,
    ctx: &RequestContext,
    body: &Value,
    route: &ProviderRoute,
    model: &str,
    legacy: bool,
    seen: &mut Outcome,
) -> Result<Response> {
    match route.provider.kind {
        ProviderKind::Ollama => {
            let path = if legacy {
                "/api/embeddings"
            } else {
                "/api/embed"
            };
            let up_body = native_body(body.clone(), &route.model);
            let up = send_json(state, ctx, route, path, &up_body, seen).await?;
            if !up.response.status().is_success() {
                return Err(upstream_status_error(state, up.response).await);
            }
            let status = stream::upstream_status(&up.response);
            let bytes = read_all(state, up.response).await?;
            if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                note_tokens(seen, &v);
            }
            Ok(json_bytes_response(status, bytes))
        }
        ProviderKind::Openai => {
            let up_body = translate::embed_to_openai(body, &route.model, legacy)?;
            let up = send_json(state, ctx, route, "/embeddings", &up_body, seen).await?;
            if !up.response.status().is_success() {
                return Err(upstream_status_error(state, up.response).await);
            }
            let bytes = read_all(state, up.response).await?;
            let v: Value =
                serde_json::from_slice(&bytes).map_err(|_| EdgeError::UpstreamBadResponse)?;
            let nanos = ctx.started.elapsed().as_nanos() as u64;
            let out = translate::embed_from_openai(&v, model, legacy, nanos);
            note_tokens(seen, &out);
            Ok(Json(out).into_response())
        }
    }
}
