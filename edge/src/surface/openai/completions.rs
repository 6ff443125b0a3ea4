//! `/v1/completions` (legacy): passed through, or translated to Ollama's `/api/generate`.
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::Value;

use super::chat::sse_from_ndjson;
use super::upstream::{ollama_status_error, passthrough, read_json, send_json};
use super::{answered, fail, parse_body, plan, requested_model, unix_now, Result};
use crate::config::ProviderKind;
use crate::error::EdgeError;
use crate::outcome::Outcome;
use crate::providers::ProviderRoute;
use crate::surface::{EdgeState, RequestContext};
use crate::translate::completions::{self as legacy, CompletionStreamTranslator};
use crate::translate::openai_to_ollama::{self as translate, ChatIds};

pub async fn completions(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    body: Bytes,
) -> Response {
    let mut seen = Outcome::on("openai");
    let result = async {
        let body = parse_body(&body)?;
        let model = requested_model(&body)?;
        if body.get("prompt").is_none() {
            return Err(EdgeError::MissingParam("prompt"));
        }
        let plan = plan(&state, &ctx, &model, &mut seen)?;
        let (state, ctx, body, model) = (&*state, &ctx, &body, model.as_str());
        Ok(
            crate::surface::fallback::run(state, ctx, plan, move |route| async move {
                let mut tried = Outcome {
                    provider: Some(route.provider.name.clone()),
                    ..Outcome::default()
                };
                let result = match route.provider.kind {
                    ProviderKind::Openai => {
                        let body = body.clone();
                        passthrough(state, ctx, body, &route, "/completions", &mut tried).await
                    }
                    ProviderKind::Ollama => {
                        let model = model.to_owned();
                        ollama_completion(state, ctx, body, &route, model, &mut tried).await
                    }
                };
                tried.attach(result.unwrap_or_else(fail))
            })
            .await,
        )
    }
    .await;
    answered(seen, result)
}

/// Legacy completions on Ollama: `/api/generate`, translated both ways.
async fn ollama_completion(
    state: &EdgeState,
    ctx: &RequestContext,
    body: &Value,
    route: &ProviderRoute,
    model: String,
    seen: &mut Outcome,
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
    let up = send_json(state, ctx, route, "/api/generate", &upstream_body, seen).await?;
    if !up.response.status().is_success() {
        return Err(ollama_status_error(up.response).await);
    }
    if !stream {
        let v = read_json(state, up).await?;
        (seen.tokens_in, seen.tokens_out) = translate::ollama_usage(&v);
        return Ok(Json(legacy::generate_response_to_completion(&v, &ids)).into_response());
    }
    let translator = CompletionStreamTranslator::new(ids, include_usage);
    Ok(sse_from_ndjson(state, ctx, up, translator))
}
