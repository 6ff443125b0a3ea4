//! The JSON-RPC relay between HTTP clients and the one stdio child.
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

/// Largest JSON-RPC message accepted from a client.
const MAX_BODY: usize = 4 * 1024 * 1024;

pub struct Relay {
    to_child: mpsc::Sender<Vec<u8>>,
    next_id: AtomicI64,
    state: Mutex<RelayState>,
    /// Server-initiated messages for every open GET stream.
    listeners: broadcast::Sender<String>,
}

#[derive(Default)]
struct RelayState {
    /// Requests sent to the child, by the bridge's id.
    pending: HashMap<i64, Pending>,
    init: InitState,
    initialized_sent: bool,
}

#[derive(Default)]
enum InitState {
    #[default]
    None,
    Asked(i64),
    Done(Value),
}

struct Pending {
    client_id: Value,
    progress_token: Option<Value>,
    /// A `subscriptions/listen` request: its stream also carries the child's notifications.
    listen: bool,
    tx: mpsc::Sender<Value>,
}

impl Relay {
    pub fn new(to_child: mpsc::Sender<Vec<u8>>) -> Relay {
        Relay {
            to_child,
            next_id: AtomicI64::new(1),
            state: Mutex::new(RelayState::default()),
            listeners: broadcast::channel(256).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RelayState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn send_child(&self, msg: &Value) -> bool {
        self.to_child
            // A `Value` always prints as JSON (its Display is the compact form).
            .send(msg.to_string().into_bytes())
            .await
            .is_ok()
    }

    /// One line of the child's stdout.
    pub async fn on_child_line(&self, line: &str) {
        let Ok(Value::Object(mut msg)) = serde_json::from_str::<Value>(line) else {
            if !line.trim().is_empty() {
                eprintln!("mcp-bridge: ignoring a non-JSON-RPC line on the server's stdout");
            }
            return;
        };
        let is_response = msg.contains_key("result") || msg.contains_key("error");
        let method = msg.get("method").and_then(Value::as_str).map(String::from);
        if is_response {
            let Some(id) = msg.get("id").and_then(Value::as_i64) else {
                return;
            };
            let target = {
                let mut st = self.lock();
                let pending = st.pending.remove(&id);
                if let InitState::Asked(init_id) = st.init {
                    if init_id == id {
                        st.init = match msg.get("result") {
                            Some(r) => InitState::Done(r.clone()),
                            None => InitState::None,
                        };
                    }
                }
                pending
            };
            if let Some(p) = target {
                msg.insert("id".into(), p.client_id);
                let _ = p.tx.send(Value::Object(msg)).await;
            }
            return;
        }
        let Some(method) = method else { return };
        let msg = Value::Object(msg);
        if msg.get("id").is_some() {
            // A request of the server (sampling, roots, elicitation): only a GET stream can carry it.
            if self.listeners.send(msg.to_string()).is_err() {
                let answer = json!({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "no client is listening for server requests"}});
                self.send_child(&answer).await;
            }
            return;
        }
        let targets: Vec<mpsc::Sender<Value>> = {
            let st = self.lock();
            if method == "notifications/progress" {
                let token = msg.pointer("/params/progressToken");
                st.pending
                    .values()
                    .filter(|p| p.progress_token.is_some() && p.progress_token.as_ref() == token)
                    .map(|p| p.tx.clone())
                    .collect()
            } else {
                st.pending
                    .values()
                    .filter(|p| p.listen)
                    .map(|p| p.tx.clone())
                    .collect()
            }
        };
        if method != "notifications/progress" {
            let _ = self.listeners.send(msg.to_string());
        }
        for tx in targets {
            let _ = tx.send(msg.clone()).await;
        }
    }

    /// Sends a client's request on with the bridge's own id; the answer arrives on the receiver.
    async fn forward_request(
        self: &Arc<Self>,
        mut msg: Value,
    ) -> Result<(i64, mpsc::Receiver<Value>), &'static str> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(64);
        {
            let mut st = self.lock();
            if msg["method"] == "initialize" && matches!(st.init, InitState::None) {
                st.init = InitState::Asked(id);
            }
            st.pending.insert(
                id,
                Pending {
                    client_id: msg["id"].clone(),
                    progress_token: msg.pointer("/params/_meta/progressToken").cloned(),
                    listen: msg["method"] == "subscriptions/listen",
                    tx,
                },
            );
        }
        msg["id"] = json!(id);
        if !self.send_child(&msg).await {
            self.lock().pending.remove(&id);
            return Err("the server process has ended");
        }
        Ok((id, rx))
    }

    /// The client stopped waiting: forget the request and tell the child.
    fn abandon(self: &Arc<Self>, id: i64) {
        if self.lock().pending.remove(&id).is_some() {
            let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": id, "reason": "the client went away"}});
            // Advisory: when the child's inbox is full the notice is dropped rather than
            // queued in a task nobody owns (the answer is discarded either way).
            let _ = self.to_child.try_send(cancel.to_string().into_bytes());
        }
    }
}

pub fn router(relay: Arc<Relay>) -> Router {
    Router::new()
        .route("/mcp", post(post_mcp).get(get_mcp).delete(not_allowed))
        .with_state(relay)
}

fn rpc_error(status: StatusCode, id: Value, code: i64, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
            .to_string(),
    )
        .into_response()
}

async fn not_allowed() -> Response {
    rpc_error(
        StatusCode::METHOD_NOT_ALLOWED,
        Value::Null,
        -32600,
        "this server keeps no sessions",
    )
}

fn accepts_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

async fn post_mcp(State(relay): State<Arc<Relay>>, headers: HeaderMap, body: Bytes) -> Response {
    if body.len() > MAX_BODY {
        return rpc_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            Value::Null,
            -32600,
            "request body too large",
        );
    }
    let msg: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(m)) => Value::Object(m),
        Ok(Value::Array(_)) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                -32600,
                "JSON-RPC batches are not supported",
            )
        }
        Ok(_) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                -32600,
                "a JSON-RPC message is an object",
            )
        }
        Err(e) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                -32700,
                &format!("parse error: {e}"),
            )
        }
    };
    let has_id = msg.get("id").is_some_and(|i| !i.is_null());
    let method = msg.get("method").and_then(Value::as_str).map(String::from);
    match (method, has_id) {
        (Some(method), true) => request(relay, headers, msg, &method).await,
        (Some(method), false) => {
            notification(&relay, msg, &method).await;
            StatusCode::ACCEPTED.into_response()
        }
        (None, true) if msg.get("result").is_some() || msg.get("error").is_some() => {
            // The client's answer to a server request: ids are the child's own.
            relay.send_child(&msg).await;
            StatusCode::ACCEPTED.into_response()
        }
        _ => rpc_error(
            StatusCode::BAD_REQUEST,
            msg.get("id").cloned().unwrap_or(Value::Null),
            -32600,
            "not a JSON-RPC request, notification or response",
        ),
    }
}

async fn notification(relay: &Arc<Relay>, mut msg: Value, method: &str) {
    match method {
        "notifications/initialized" => {
            let mut st = relay.lock();
            if st.initialized_sent {
                return; // the child was initialised once; later clients share it
            }
            st.initialized_sent = true;
        }
        "notifications/cancelled" => {
            let wanted = msg.pointer("/params/requestId").cloned();
            let found = {
                let mut st = relay.lock();
                let id = st
                    .pending
                    .iter()
                    .filter(|(_, p)| Some(&p.client_id) == wanted.as_ref())
                    .map(|(id, _)| *id)
                    .max();
                if let Some(id) = id {
                    st.pending.remove(&id);
                }
                id
            };
            let Some(id) = found else { return };
            msg["params"]["requestId"] = json!(id);
        }
        _ => {}
    }
    relay.send_child(&msg).await;
}

async fn request(relay: Arc<Relay>, headers: HeaderMap, msg: Value, method: &str) -> Response {
    let client_id = msg["id"].clone();
    // An event stream only when something may come before the answer (progress, a listen);
    // a plain JSON answer is cheaper for both sides.
    let stream = accepts_sse(&headers)
        && (msg.pointer("/params/_meta/progressToken").is_some()
            || method == "subscriptions/listen");
    if method == "initialize" {
        if let InitState::Done(result) = &relay.lock().init {
            let answer = json!({"jsonrpc": "2.0", "id": client_id, "result": result});
            return (
                [(header::CONTENT_TYPE, "application/json")],
                answer.to_string(),
            )
                .into_response();
        }
    }
    let (id, rx) = match relay.forward_request(msg).await {
        Ok(x) => x,
        Err(why) => return rpc_error(StatusCode::BAD_GATEWAY, client_id, -32603, why),
    };
    let guard = Abandon { relay, id };
    if stream {
        return Sse::new(events(rx, guard))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response();
    }
    let mut rx = rx;
    while let Some(m) = rx.recv().await {
        if m.get("result").is_some() || m.get("error").is_some() {
            drop(guard);
            return ([(header::CONTENT_TYPE, "application/json")], m.to_string()).into_response();
        }
    }
    drop(guard);
    rpc_error(
        StatusCode::BAD_GATEWAY,
        client_id,
        -32603,
        "the server process ended before answering",
    )
}

/// Forgets a request whose client is gone (its HTTP response was dropped).
struct Abandon {
    relay: Arc<Relay>,
    id: i64,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        self.relay.abandon(self.id);
    }
}

/// The SSE body of one request: related notifications, then its answer, then the end.
fn events(
    rx: mpsc::Receiver<Value>,
    guard: Abandon,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(Some((rx, guard)), |st| async move {
        let (mut rx, guard) = st?;
        let m = rx.recv().await?;
        let last = m.get("result").is_some() || m.get("error").is_some();
        let event = Event::default().event("message").data(m.to_string());
        Some((Ok(event), (!last).then_some((rx, guard))))
    })
}

async fn get_mcp(State(relay): State<Arc<Relay>>, headers: HeaderMap) -> Response {
    if !accepts_sse(&headers) {
        return not_allowed().await;
    }
    let stream = tokio_stream::wrappers::BroadcastStream::new(relay.listeners.subscribe())
        .filter_map(|m| async move { m.ok() })
        .map(|m| Ok::<_, Infallible>(Event::default().event("message").data(m)));
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
