//! `/v1/embeddings`: passed through, or translated to Ollama's `/api/embed`.
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::Value;

use super::upstream::{ollama_status_error, passthrough, read_json, send_json};
use super::{answered, fail, parse_body, plan, requested_model, Result};
use crate::config::ProviderKind;
use crate::outcome::Outcome;
use crate::providers::ProviderRoute;
use crate::surface::{EdgeState, RequestContext};
use crate::translate::openai_to_ollama as translate;

pub async fn embeddings(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    body: Bytes,
) -> Response {
    let mut seen = Outcome::on("openai");
    let result = async {
        let body = parse_body(&body)?;
        let model = requested_model(&body)?;
        let plan = plan(&state, &ctx, &model, &mut seen)?;
        let (state, ctx, body, model) = (&*state, &ctx, &body, model.as_str());
        Ok(
            crate::surface::fallback::run(state, ctx, plan, move |route| async move {
                let mut tried = Outcome {
                    provider: Some(route.provider.name.clone()),
                    ..Outcome::default()
                };
                let r = embed_on(state, ctx, body, &route, model, &mut tried).await;
                tried.attach(r.unwrap_or_else(fail))
            })
            .await,
        )
    }
    .await;
    answered(seen, result)
}

/// One attempt on one target.
async fn embed_on(
    state: &EdgeState,
    ctx: &RequestContext,
    body: &Value,
    route: &ProviderRoute,
    model: &str,
    seen: &mut Outcome,
) -> Result<Response> {
    match route.provider.kind {
        ProviderKind::Openai => {
            passthrough(state, ctx, body.clone(), route, "/embeddings", seen).await
        }
        ProviderKind::Ollama => {
            let up_body = translate::embeddings_to_ollama(body, &route.model)?;
            let up = send_json(state, ctx, route, "/api/embed", &up_body, seen).await?;
            if !up.response.status().is_success() {
                return Err(ollama_status_error(up.response).await);
            }
            let v = read_json(state, up).await?;
            seen.tokens_in = v
                .get("prompt_eval_count")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            Ok(Json(translate::embeddings_response_to_openai(&v, model)).into_response())
        }
    }
}
