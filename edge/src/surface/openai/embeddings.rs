//! `/v1/embeddings`: passed through, or translated to Ollama's `/api/embed`.
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::Value;

use crate::config::ProviderKind;
use crate::providers::ProviderRoute;
use crate::surface::{EdgeState, RequestContext};
use crate::translate::openai_to_ollama::{self as translate};

use super::upstream::{ollama_status_error, passthrough, read_json, send};
use super::{fail, parse_body, plan, requested_model, Result};

pub async fn embeddings(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    body: Bytes,
) -> Response {
    ctx.update(|m| m.surface = "openai");
    let result = async {
        let body = parse_body(&body)?;
        let model = requested_model(&body)?;
        let plan = plan(&state, &ctx, &model)?;
        let (state, ctx, body, model) = (&*state, &ctx, &body, model.as_str());
        let embed = move |route: ProviderRoute| async move {
            match route.provider.kind {
                ProviderKind::Openai => {
                    passthrough(state, ctx, body.clone(), &route, "/embeddings").await
                }
                ProviderKind::Ollama => {
                    let up_body = translate::embeddings_to_ollama(body, &route.model)?;
                    let up = send(state, ctx, &route, "/api/embed", &up_body).await?;
                    if !up.response.status().is_success() {
                        return Err(ollama_status_error(up.response).await);
                    }
                    let v = read_json(state, up).await?;
                    let tin = v
                        .get("prompt_eval_count")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    ctx.update(|m| m.tokens_in = tin);
                    Ok(Json(translate::embeddings_response_to_openai(&v, model)).into_response())
                }
            }
        };
        Ok(
            crate::surface::fallback::run(state, ctx, plan, move |route| async move {
                let r: Result<Response> = embed(route).await;
                r.unwrap_or_else(|e| fail(ctx, e))
            })
            .await,
        )
    }
    .await;
    result.unwrap_or_else(|e| fail(&ctx, e))
}
