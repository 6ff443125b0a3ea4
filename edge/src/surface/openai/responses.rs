//! The OpenAI Responses API: `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`, so
//! Codex and other Responses clients work with every provider.
//!
//! A provider configured with `responses = true` (an OpenAI-compatible server that serves the
//! API itself) gets the request passed through, only `model` rewritten; the edge remembers
//! which provider made which response id, so `GET`/`DELETE` go back there. Every other
//! provider gets the request translated to chat completions (`translate::responses`) and run
//! through the chat path; its answers are kept in a bounded in-memory store (unless the client
//! sent `store: false`) for `GET`, `DELETE` and `previous_response_id`. See
//! `docs/responses-surface.md`.
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use futures::StreamExt;
use http::{header, StatusCode, Uri};
use serde_json::{json, Value};

use crate::config::ProviderKind;
use crate::error::{EdgeError, Shape};
use crate::outcome::Outcome;
use crate::providers::ProviderRoute;
use crate::surface::chat_sse::{self, ChatStreamTranslator, NamedEvent};
use crate::surface::openai;
use crate::surface::stream::LineBuffer;
use crate::surface::{EdgeState, RequestContext};
use crate::translate::responses::{self as tr, ResponseIds, ResponsesStreamTranslator};

/// How many responses the store keeps; the oldest goes first.
const STORE_CAPACITY: usize = 512;
/// A translated response larger than this (serialized) is not kept.
const STORE_ITEM_LIMIT: usize = 1024 * 1024;
/// How much of a passed-through stream is read to find its response id.
const ID_SCAN_LIMIT: usize = 64 * 1024;

/// Where a response id lives.
#[derive(Debug, Clone)]
enum Stored {
    /// Made by translation: the response itself and its conversation as chat messages (the
    /// input of a follow-up `previous_response_id`).
    Translated {
        client: String,
        response: Value,
        conversation: Vec<Value>,
    },
    /// Made by a provider that serves the Responses API: ask it again.
    Upstream {
        client: String,
        provider: String,
        model: String,
    },
}

impl Stored {
    fn client(&self) -> &str {
        match self {
            Stored::Translated { client, .. } | Stored::Upstream { client, .. } => client,
        }
    }
}

/// The recent responses, bounded by count; a response is seen only by the client that made it.
#[derive(Clone, Default)]
pub struct ResponseStore {
    inner: Arc<Mutex<StoreInner>>,
}

#[derive(Default)]
struct StoreInner {
    by_id: HashMap<String, Stored>,
    order: VecDeque<String>,
}

impl ResponseStore {
    fn put(&self, id: String, stored: Stored) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if s.by_id.insert(id.clone(), stored).is_none() {
            s.order.push_back(id);
        }
        while s.order.len() > STORE_CAPACITY {
            if let Some(old) = s.order.pop_front() {
                s.by_id.remove(&old);
            }
        }
    }

    fn get(&self, id: &str, client: &str) -> Option<Stored> {
        let s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.by_id.get(id).filter(|v| v.client() == client).cloned()
    }

    fn remove(&self, id: &str) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if s.by_id.remove(id).is_some() {
            s.order.retain(|o| o != id);
        }
    }

    /// `size` is the upstream answer's size in bytes, a cheap stand-in for the response's.
    fn put_translated(
        &self,
        client: &str,
        response: Value,
        mut conversation: Vec<Value>,
        size: usize,
    ) {
        if size > STORE_ITEM_LIMIT {
            return;
        }
        let Some(id) = response["id"].as_str().map(str::to_owned) else {
            return;
        };
        if let Some(items) = response["output"].as_array() {
            conversation.extend(tr::input_items_to_chat(items).unwrap_or_default());
        }
        self.put(
            id,
            Stored::Translated {
                client: client.to_owned(),
                response,
                conversation,
            },
        );
    }
}

type Result<T> = std::result::Result<T, EdgeError>;

fn not_found(id: &str) -> EdgeError {
    EdgeError::ResponseNotFound(id.to_owned())
}

pub async fn create(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    body: Bytes,
) -> Response {
    let mut seen = Outcome::on("openai");
    let result = async {
        let body = openai::parse_body(&body)?;
        let model = openai::requested_model(&body)?;
        let route = openai::route(&state, &ctx, &model, &mut seen)?;
        if route.provider.kind == ProviderKind::Openai && route.provider.responses {
            passthrough(&state, &ctx, body, &route, &mut seen).await
        } else {
            translated(&state, &ctx, body, model).await
        }
    }
    .await;
    openai::answered(seen, result)
}

/// A provider that serves Responses: the body as it came, `model` rewritten; the response id
/// is read from the answer (or the stream's `response.created`) and remembered.
async fn passthrough(
    state: &EdgeState,
    ctx: &RequestContext,
    body: Value,
    route: &ProviderRoute,
    seen: &mut Outcome,
) -> Result<Response> {
    let resp = openai::upstream::passthrough(state, ctx, body, route, "/responses", seen).await?;
    let remember = {
        let store = state.responses.clone();
        let client = ctx.client.name.clone();
        let provider = route.provider.name.clone();
        let model = route.model.clone();
        move |id: String| {
            store.put(
                id,
                Stored::Upstream {
                    client,
                    provider,
                    model,
                },
            )
        }
    };
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let (parts, body) = resp.into_parts();
    if !is_sse {
        // relay() read a JSON answer whole already; this only takes it back out of the Body.
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(|e| EdgeError::UpstreamStreamFailed(e.to_string()))?;
        if let Some(id) = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
        {
            remember(id);
        }
        return Ok(Response::from_parts(parts, Body::from(bytes)));
    }
    let mut scan = IdScan {
        seen: Vec::new(),
        remember: Some(remember),
    };
    let stream = body.into_data_stream().map(move |chunk| {
        if let Ok(c) = &chunk {
            scan.push(c);
        }
        chunk
    });
    Ok(Response::from_parts(parts, Body::from_stream(stream)))
}

/// Finds the response id in the first event of a passed-through stream.
struct IdScan<F: FnOnce(String)> {
    seen: Vec<u8>,
    remember: Option<F>,
}

impl<F: FnOnce(String)> IdScan<F> {
    fn push(&mut self, chunk: &[u8]) {
        if self.remember.is_none() {
            return;
        }
        self.seen.extend_from_slice(chunk);
        let mut lines = LineBuffer::default();
        for line in lines.push(&self.seen) {
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<Value>(data.trim_ascii()) else {
                continue;
            };
            if let Some(id) = v.pointer("/response/id").and_then(Value::as_str) {
                if let Some(remember) = self.remember.take() {
                    remember(id.to_owned());
                }
                self.seen = Vec::new();
                return;
            }
        }
        if self.seen.len() > ID_SCAN_LIMIT {
            self.remember = None;
            self.seen = Vec::new();
        }
    }
}

/// A chat-only provider: Responses → chat → the chat path → back.
async fn translated(
    state: &EdgeState,
    ctx: &RequestContext,
    body: Value,
    model: String,
) -> Result<Response> {
    let history = match body.get("previous_response_id") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(id)) => match state.responses.get(id, &ctx.client.name) {
            Some(Stored::Translated { conversation, .. }) => conversation,
            _ => return Err(EdgeError::PreviousResponseNotFound(id.clone())),
        },
        Some(_) => {
            return Err(EdgeError::invalid_param(
                "previous_response_id",
                "'previous_response_id' must be a string",
            ))
        }
    };
    let chat = tr::responses_to_chat(&body, &history)?;
    let stream = chat["stream"] == true;
    // Instructions are not carried over to a follow-up response (as OpenAI documents).
    let conversation: Vec<Value> = chat["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] != "system")
        .cloned()
        .collect();
    let ids = ResponseIds {
        id: format!("resp_{}", uuid::Uuid::new_v4().simple()),
        created_at: time::OffsetDateTime::now_utc().unix_timestamp(),
        model,
    };
    let store = (body.get("store") != Some(&Value::Bool(false))).then(|| Keep {
        store: state.responses.clone(),
        client: ctx.client.name.clone(),
        conversation,
    });
    let resp = openai::chat::chat_translated(state, ctx, chat, &Shape::OpenAi).await;
    if !resp.status().is_success() {
        return Ok(resp);
    }
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !stream || !is_sse {
        let chat_outcome = resp
            .extensions()
            .get::<Outcome>()
            .cloned()
            .unwrap_or_default();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .map_err(|e| EdgeError::UpstreamStreamFailed(e.to_string()))?;
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|_| EdgeError::UpstreamBadResponse)?;
        let out = tr::chat_response_to_response(&v, &ids, &body);
        if let Some(keep) = store {
            keep.keep(out.clone(), bytes.len());
        }
        return Ok(chat_outcome.attach(Json(out).into_response()));
    }
    let mut translator = ResponsesStreamTranslator::new(ids, body);
    let first = translator.start();
    let on_complete = store.map(|keep| -> chat_sse::OnComplete<ResponsesStreamTranslator> {
        Box::new(move |t, read| {
            if let Some(r) = t.final_response.take() {
                keep.keep(r, read);
            }
        })
    });
    Ok(chat_sse::translated(resp, translator, first, on_complete))
}

impl ChatStreamTranslator for ResponsesStreamTranslator {
    fn on_chunk(&mut self, chunk: &Value) -> Vec<NamedEvent> {
        ResponsesStreamTranslator::on_chunk(self, chunk)
    }
    fn finish(&mut self) -> Vec<NamedEvent> {
        ResponsesStreamTranslator::finish(self)
    }
    fn finished(&self) -> bool {
        self.finished
    }
    fn saw_finish(&self) -> bool {
        ResponsesStreamTranslator::saw_finish(self)
    }
}

/// What is needed to keep a translated response once it is complete.
struct Keep {
    store: ResponseStore,
    client: String,
    conversation: Vec<Value>,
}

impl Keep {
    fn keep(self, response: Value, size: usize) {
        self.store
            .put_translated(&self.client, response, self.conversation, size);
    }
}

/// `GET /v1/responses/{id}`: a translated response from the store, a passed-through one from
/// the provider that made it.
pub async fn retrieve(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    Path(id): Path<String>,
    uri: Uri,
) -> Response {
    let mut seen = Outcome::on("openai");
    let result = match state.responses.get(&id, &ctx.client.name) {
        Some(Stored::Translated { response, .. }) => Ok(Json(response).into_response()),
        Some(Stored::Upstream {
            provider, model, ..
        }) => {
            let get = http::Method::GET;
            ask_provider(&state, &ctx, &provider, &model, get, &id, &uri, &mut seen).await
        }
        None => Err(not_found(&id)),
    };
    openai::answered(seen, result)
}

/// `DELETE /v1/responses/{id}`, answered as OpenAI does (`{"id", "object", "deleted"}`).
pub async fn delete(
    State(state): State<Arc<EdgeState>>,
    Extension(ctx): Extension<RequestContext>,
    Path(id): Path<String>,
    uri: Uri,
) -> Response {
    let mut seen = Outcome::on("openai");
    let result = match state.responses.get(&id, &ctx.client.name) {
        Some(Stored::Translated { .. }) => {
            state.responses.remove(&id);
            Ok(Json(json!({"id": id, "object": "response", "deleted": true})).into_response())
        }
        Some(Stored::Upstream {
            provider, model, ..
        }) => {
            let delete = http::Method::DELETE;
            let resp = ask_provider(
                &state, &ctx, &provider, &model, delete, &id, &uri, &mut seen,
            )
            .await;
            // Gone there (or never there): forgotten here too.
            let gone = match &resp {
                Ok(r) => r.status().is_success(),
                Err(e) => e.status() == StatusCode::NOT_FOUND,
            };
            if gone {
                state.responses.remove(&id);
            }
            resp
        }
        None => Err(not_found(&id)),
    };
    openai::answered(seen, result)
}

#[allow(clippy::too_many_arguments)] // the stored response's whereabouts and the request's own
async fn ask_provider(
    state: &EdgeState,
    ctx: &RequestContext,
    provider: &str,
    model: &str,
    method: http::Method,
    id: &str,
    uri: &Uri,
    seen: &mut Outcome,
) -> Result<Response> {
    let Some(provider) = state.providers.get(provider).cloned() else {
        return Err(not_found(id));
    };
    seen.provider = Some(provider.name.clone());
    seen.model = Some(format!("{}/{model}", provider.name));
    let route = ProviderRoute {
        provider,
        model: model.to_owned(),
    };
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let request = crate::providers::UpstreamRequest::new(method, format!("/responses/{id}{query}"));
    let up = openai::upstream::send_req(state, ctx, &route, request, seen).await?;
    openai::upstream::relay(state, ctx, up, false, seen).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(client: &str) -> Stored {
        Stored::Upstream {
            client: client.into(),
            provider: "p".into(),
            model: "m".into(),
        }
    }

    #[test]
    fn the_store_is_bounded_and_per_client() {
        let store = ResponseStore::default();
        for i in 0..STORE_CAPACITY + 10 {
            store.put(format!("resp_{i}"), upstream("a"));
        }
        assert!(store.get("resp_0", "a").is_none(), "the oldest went first");
        assert!(store
            .get(&format!("resp_{}", STORE_CAPACITY + 9), "a")
            .is_some());
        assert!(
            store.get("resp_100", "b").is_none(),
            "another client sees nothing"
        );
        store.remove("resp_100");
        assert!(store.get("resp_100", "a").is_none());
        assert_eq!(store.inner.lock().unwrap().order.len(), STORE_CAPACITY - 1);
    }

    #[test]
    fn a_kept_response_carries_its_conversation_on() {
        let store = ResponseStore::default();
        let response = json!({"id": "resp_x", "output": [{"type": "message", "role": "assistant",
            "content": [{"type": "output_text", "text": "hi"}]}]});
        store.put_translated(
            "a",
            response,
            vec![json!({"role": "user", "content": "hello"})],
            100,
        );
        store.put_translated("a", json!({"id": "resp_big"}), vec![], STORE_ITEM_LIMIT + 1);
        assert!(store.get("resp_big", "a").is_none(), "too big to keep");
        let Some(Stored::Translated { conversation, .. }) = store.get("resp_x", "a") else {
            panic!("kept");
        };
        assert_eq!(
            conversation,
            vec![
                json!({"role": "user", "content": "hello"}),
                json!({"role": "assistant", "content": "hi"})
            ]
        );
    }
}
