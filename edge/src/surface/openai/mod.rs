//! The OpenAI surface: `/v1/models`, `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, the Responses API and the pass-through routes.
//!
//! Request path: parse the body → route by model name → Ollama (translated) or an
//! OpenAI-compatible server (passed through, only `model` rewritten) → stream back through the
//! relay (`frames`). Errors are `EdgeError`s rendered in OpenAI's shape; what a handler learned
//! goes back to the gateway as the response's `Outcome`.
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;

use crate::error::{EdgeError, Shape};
use crate::model_field::{ModelField, ModelFieldError};
use crate::outcome::Outcome;
use crate::providers::{Plan, ProviderRoute};
use crate::surface::{EdgeState, RequestContext};

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod frames;
pub mod models;
pub mod passthrough;
pub mod responses;
pub mod upstream;

pub type Result<T> = std::result::Result<T, EdgeError>;

/// An error in OpenAI's shape.
pub fn fail(e: EdgeError) -> Response {
    e.render(&Shape::OpenAi)
}

/// A handler's answer (or its error, in OpenAI's shape) with what it learned on the way.
pub fn answered(seen: Outcome, result: Result<Response>) -> Response {
    seen.attach(result.unwrap_or_else(fail))
}

pub(crate) fn parse_body(body: &Bytes) -> Result<Value> {
    if body.is_empty() {
        return Err(EdgeError::EmptyBody);
    }
    Ok(aibox_wire::body::from_slice::<Value>(body)?)
}

/// The body's `model`, found without parsing the rest (for routes that forward the body as
/// sent with only that value rewritten); a bad body fails as `parse_body` and
/// `requested_model` would have it.
pub(crate) fn model_of(body: &Bytes) -> Result<ModelField<'_>> {
    match ModelField::find(body) {
        Ok(field) if !field.value().is_empty() => Ok(field),
        Ok(_) | Err(ModelFieldError::NotAString) => Err(EdgeError::invalid_param(
            "model",
            "'model' must be a non-empty string",
        )),
        Err(ModelFieldError::Missing) => Err(EdgeError::MissingParam("model")),
        Err(e @ ModelFieldError::Duplicate) => {
            Err(EdgeError::invalid_param("model", e.to_string()))
        }
        Err(e) => Err(parse_body(body)
            .err()
            .unwrap_or_else(|| EdgeError::InvalidJson(e.to_string()))),
    }
}

pub(crate) fn requested_model(body: &Value) -> Result<String> {
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m.clone()),
        None | Some(Value::Null) => Err(EdgeError::MissingParam("model")),
        _ => Err(EdgeError::invalid_param(
            "model",
            "'model' must be a non-empty string",
        )),
    }
}

/// The first target of `model`'s plan (for routes without fallback), policy checked.
pub fn route(
    state: &EdgeState,
    ctx: &RequestContext,
    model: &str,
    seen: &mut Outcome,
) -> Result<ProviderRoute> {
    Ok(plan(state, ctx, model, seen)?.targets.swap_remove(0).route)
}

/// Where `model` may go, in order (an alias's targets, or one route), after the client's
/// policy: an alias by its own name, a model by `provider/model`.
pub fn plan(
    state: &EdgeState,
    ctx: &RequestContext,
    model: &str,
    seen: &mut Outcome,
) -> Result<Plan> {
    let plan = state.providers.plan(model)?;
    let first = plan.first();
    seen.provider = Some(first.provider.name.clone());
    seen.model = Some(model.to_owned());
    let allowed = match &plan.alias {
        Some(alias) => ctx.client.allows_alias(&alias.name),
        None => ctx.client.allows_model(&first.provider.name, &first.model),
    };
    if !allowed {
        return Err(forbidden_model(&ctx.client.name, model));
    }
    Ok(plan)
}

/// 403 naming the model (the client's policy does not list it).
pub fn forbidden_model(client: &str, model: &str) -> EdgeError {
    EdgeError::ModelForbidden {
        client: client.to_owned(),
        model: model.to_owned(),
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
