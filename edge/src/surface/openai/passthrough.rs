//! OpenAI-shaped routes the edge only passes through, routed by `model` like chat (same
//! request id, policy, failover, log line and metrics): `/v1/rerank`, `/v1/moderations`,
//! `/v1/images/generations`, `/v1/audio/speech` (audio streamed back as it comes), and the
//! multipart uploads `/v1/audio/transcriptions` and `/v1/audio/translations`.
//!
//! Only OpenAI-compatible providers serve them; Ollama has none of these APIs, so a model on an
//! Ollama provider gets a 404 in OpenAI's shape naming the model and the route, as OpenAI
//! answers a model used on an endpoint it does not serve.
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use http::{header, HeaderMap, Uri};

use crate::config::ProviderKind;
use crate::error::EdgeError;
use crate::outcome::Outcome;
use crate::providers::multipart::Form;
use crate::providers::{ProviderRoute, UpstreamRequest};
use crate::surface::openai::{self, upstream};
use crate::surface::{EdgeState, RequestContext};

pub fn routes() -> Router<Arc<EdgeState>> {
    Router::new()
        .route("/v1/rerank", post(json_route))
        .route("/v1/moderations", post(json_route))
        .route("/v1/images/generations", post(json_route))
        .route("/v1/audio/speech", post(json_route))
        .route("/v1/audio/transcriptions", post(multipart_route))
        .route("/v1/audio/translations", post(multipart_route))
}

type Result<T> = std::result::Result<T, EdgeError>;

/// The path under the provider's base URL (which ends in `/v1`).
fn upstream_path(uri: &Uri) -> &str {
    uri.path().strip_prefix("/v1").unwrap_or(uri.path())
}

/// Route by model; a provider kind without the API answers 404 naming model and route.
fn route_for(
    state: &EdgeState,
    ctx: &RequestContext,
    model: &str,
    uri: &Uri,
    seen: &mut Outcome,
) -> Result<ProviderRoute> {
    let route = openai::route(state, ctx, model, seen)?;
    if route.provider.kind != ProviderKind::Openai {
        return Err(EdgeError::RouteNotSupported {
            model: model.to_owned(),
            provider: route.provider.name.clone(),
            provider_kind: route.provider.kind.as_str(),
            path: uri.path().to_owned(),
        });
    }
    Ok(route)
}

/// JSON bodies: `model` rewritten in place (`model_field`), everything else as it came; the answer (JSON, SSE or
/// audio bytes) streamed back.
async fn json_route(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    uri: Uri,
    body: Bytes,
) -> Response {
    let mut seen = Outcome::on("openai");
    let result = async {
        // Only `model` changes: the rest goes on as the client sent it, never parsed.
        let field = openai::model_of(&body)?;
        let route = route_for(&state, &ctx, field.value(), &uri, &mut seen)?;
        let path = upstream_path(&uri);
        let rewritten = Bytes::from(field.replaced(&route.model));
        let up = upstream::send_bytes(&state, &ctx, &route, path, rewritten, &mut seen).await?;
        upstream::relay(&state, &ctx, up, false, &mut seen).await
    }
    .await;
    openai::answered(seen, result)
}

/// One field of a multipart form, kept to be sent again.
struct FormField {
    name: String,
    file_name: Option<String>,
    content_type: Option<String>,
    data: Bytes,
}

fn bad_form(message: impl Into<String>) -> EdgeError {
    EdgeError::invalid(message)
}

/// The form's fields in order, read with multer from the body the gateway already bounded.
async fn read_form(headers: &HeaderMap, body: Bytes) -> Result<Vec<FormField>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        bad_form(format!(
            "This endpoint takes multipart/form-data, not {:?}",
            content_type
        ))
    })?;
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut fields = Vec::new();
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(bad_form(format!("The multipart body is malformed: {e}"))),
        };
        let name = field.name().unwrap_or_default().to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(|m| m.to_string());
        let data = field
            .bytes()
            .await
            .map_err(|e| bad_form(format!("The multipart body is malformed: {e}")))?;
        fields.push(FormField {
            name,
            file_name,
            content_type,
            data,
        });
    }
    Ok(fields)
}

/// The form again, `model` replaced by the provider's name for it: the content type (with its
/// boundary) and the encoded body.
fn form_for(fields: &[FormField], model: &str) -> (http::HeaderValue, Bytes) {
    let mut form = Form::new();
    for f in fields {
        form = if f.name == "model" {
            form.text("model", model)
        } else {
            form.part(
                &f.name,
                f.file_name.as_deref(),
                f.content_type.as_deref(),
                &f.data,
            )
        };
    }
    form.finish()
}

/// multipart/form-data uploads (audio): `model` found among the fields and rewritten, the
/// other fields (the file included) sent as they came.
async fn multipart_route(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut seen = Outcome::on("openai");
    let result = async {
        let fields = read_form(&headers, body).await?;
        let model = fields
            .iter()
            .find(|f| f.name == "model")
            .map(|f| String::from_utf8_lossy(&f.data).trim().to_owned())
            .filter(|m| !m.is_empty())
            .ok_or(EdgeError::MissingParam("model"))?;
        let route = route_for(&state, &ctx, &model, &uri, &mut seen)?;
        let path = upstream_path(&uri);
        let (content_type, form) = form_for(&fields, &route.model);
        let request = UpstreamRequest::new(http::Method::POST, path)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(form);
        let up = upstream::send_req(&state, &ctx, &route, request, &mut seen).await?;
        upstream::relay(&state, &ctx, up, false, &mut seen).await
    }
    .await;
    openai::answered(seen, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_form_comes_back_with_only_model_changed() {
        let body = Bytes::from_static(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nvllm/whisper\r\n\
              --XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
              Content-Type: audio/wav\r\n\r\nRIFF\x00\x01\r\n--XyZ--\r\n",
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "multipart/form-data; boundary=XyZ".parse().unwrap(),
        );
        let fields = read_form(&headers, body).await.unwrap();
        assert_eq!(fields.len(), 2);
        assert_eq!(&fields[0].data[..], b"vllm/whisper");
        assert_eq!(fields[1].file_name.as_deref(), Some("a.wav"));
        assert_eq!(fields[1].content_type.as_deref(), Some("audio/wav"));
        assert_eq!(&fields[1].data[..], b"RIFF\x00\x01");
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(read_form(&headers, Bytes::new()).await.is_err());
    }
}
