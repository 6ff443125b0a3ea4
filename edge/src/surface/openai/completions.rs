//! `/v1/completions` (legacy): passed through, or translated to Ollama's `/api/generate`.
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;

use crate::config::ProviderKind;
use crate::providers::ProviderRoute;
use crate::surface::{EdgeState, RequestContext};
use crate::translate::completions::{self as legacy, CompletionStreamTranslator};
use crate::translate::openai_to_ollama::{self as translate, ChatIds};

use super::chat::sse_from_ndjson;
use super::upstream::{ollama_status_error, passthrough, read_json, send};
use super::{fail, parse_body, plan, requested_model, unix_now, OpenAiError, Result};

pub async fn completions(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    body: Bytes,
) -> Response {
    ctx.update(|m| m.surface = "openai");
    let result = async {
        let body = parse_body(&body)?;
        let model = requested_model(&body)?;
        if body.get("prompt").is_none() {
            return Err(OpenAiError::new(
                StatusCode::BAD_REQUEST,
                "Missing required parameter: 'prompt'",
            )
            .param("prompt"));
        }
        let plan = plan(&state, &ctx, &model)?;
        let (state, ctx, body, model) = (&*state, &ctx, &body, model.as_str());
        Ok(
            crate::surface::fallback::run(state, ctx, plan, move |route| async move {
                match route.provider.kind {
                    ProviderKind::Openai => {
                        passthrough(state, ctx, body.clone(), &route, "/completions").await
                    }
                    ProviderKind::Ollama => {
                        ollama_completion(state, ctx, body, &route, model.to_owned()).await
                    }
                }
                .unwrap_or_else(|e| fail(ctx, e))
            })
            .await,
        )
    }
    .await;
    result.unwrap_or_else(|e| fail(&ctx, e))
}

/// Legacy completions on Ollama: `/api/generate`, translated both ways.
async fn ollama_completion(
    state: &EdgeState,
    ctx: &RequestContext,
    body: &Value,
    route: &ProviderRoute,
    model: String,
) -> Result<Response> {
    let upstream_body = legacy::completion_to_generate(body, &route.model)?;
    let stream = upstream_body["stream"].as_bool().unwrap_or(false);
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let ids = ChatIds {
        id: format!("cmpl-{}", ctx.id.replace('-', "")),
        created: unix_now(),
        model,
    };
    let up = send(state, ctx, route, "/api/generate", &upstream_body).await?;
    if !up.response.status().is_success() {
        return Err(ollama_status_error(up.response).await);
    }
    if !stream {
        let v = read_json(state, up).await?;
        let (tin, tout) = translate::ollama_usage(&v);
        ctx.update(|m| {
            m.tokens_in = tin;
            m.tokens_out = tout;
        });
        return Ok(Json(legacy::generate_response_to_completion(&v, &ids)).into_response());
    }
    let translator = CompletionStreamTranslator::new(ids, include_usage);
    Ok(sse_from_ndjson(state, ctx, up, translator))
}
