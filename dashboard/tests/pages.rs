//! Each page's handler against fake controller and edge servers on loopback: what a signed-in
//! user sees, what the dashboard sends upstream, and what it refuses.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's helpers too: a failed unwrap is a failed test"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "test fake servers run as tasks of the test's own runtime, which ends with the test"
)]
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dashboard::config::{DashboardConfig, FlagValues};
use dashboard::session::LoginThrottle;
use dashboard::AppState;
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery";
const CTRL_TOKEN: &str = "ctrl-token-0123456789abcdef0123456789";
const EDGE_TOKEN: &str = "edge-admin-token-0123456789";

/// One request a fake received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: String,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
    fn find(&self, method: &str, path_prefix: &str) -> Vec<Seen> {
        self.all()
            .into_iter()
            .filter(|s| s.method == method && s.uri.starts_with(path_prefix))
            .collect()
    }
}

async fn record(State(rec): State<Recorder>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    rec.0.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: String::from_utf8_lossy(&bytes).to_string(),
    });
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    format!("http://{addr}")
}

fn fake_controller(rec: Recorder) -> Router {
    let services = json!({"project": "demo", "services": [
        {"name": "ollama", "allowed": true, "state": "running", "status": "Up 2 minutes (healthy)", "health": "healthy",
         "image": "ollama/ollama:0.5", "image_id": "sha256:aaa", "container": "demo-ollama-1", "container_id": "c1",
         "started_at": "2026-11-26T04:40:01.123Z", "uptime_seconds": 125, "restart_count": 0, "replicas": 1,
         "ports": [{"private": 11434, "public": 11434, "ip": "127.0.0.1", "type": "tcp"}]},
        {"name": "web", "allowed": true, "state": "exited", "status": "Exited (0) 1 minute ago", "health": "none",
         "image": "busybox:1", "image_id": "sha256:bbb", "container": "demo-web-1", "container_id": "c2",
         "started_at": null, "uptime_seconds": null, "restart_count": 0, "replicas": 1, "ports": []},
        {"name": "db", "allowed": false, "state": "running", "status": "Up", "health": "unhealthy", "image": "postgres:16",
         "image_id": "sha256:ccc", "container": "demo-db-1", "container_id": "c3", "started_at": null,
         "uptime_seconds": 5, "restart_count": 0, "replicas": 1, "ports": []}
    ]});
    // The controller's own type reads it back: the fake answers what the controller would.
    let _: aibox_wire::controller::ServiceList =
        serde_json::from_value(services.clone()).expect("the fake matches the controller's type");
    Router::new()
        .route("/services", get(move || { let s = services.clone(); async move { Json(s) } }))
        .route(
            "/services/{name}/{action}",
            post(|Path((name, action)): Path<(String, String)>, body: Json<Value>| async move {
                if name == "nope" {
                    return (StatusCode::NOT_FOUND, Json(json!({"error": {"code": "unknown_service", "message": "no service nope"}}))).into_response();
                }
                if body.get("dry_run") == Some(&json!(true)) {
                    return Json(json!({"ok": true, "dry_run": true, "would": format!("{action} {name}"), "service": name, "action": action, "containers": [format!("demo-{name}-1")], "state": "running"})).into_response();
                }
                Json(json!({"ok": true, "service": name, "action": format!("{action}ed"), "changed": true, "containers": [format!("demo-{name}-1")]})).into_response()
            }),
        )
        .route(
            "/services/{name}/logs",
            get(|Path(name): Path<String>, axum::extract::RawQuery(q): axum::extract::RawQuery| async move {
                let q = q.unwrap_or_default();
                if q.contains("follow=true") {
                    let body = "{\"stream\":\"stdout\",\"line\":\"live one\"}\n{\"stream\":\"stderr\",\"line\":\"live two\"}\n";
                    return ([("content-type", "application/x-ndjson")], body).into_response();
                }
                Json(json!({"service": name, "container": format!("demo-{name}-1"), "tty": false, "lines": [
                    {"stream": "stdout", "line": "hello <b>world</b>", "ts": "2026-11-26T05:00:01.123Z"},
                    {"stream": "stderr", "line": "something failed"}
                ]})).into_response()
            }),
        )
        .route(
            "/audit",
            get(|| async {
                Json(json!({"count": 2, "events": [
                    {"seq": 2, "ts": "2026-11-26T05:10:00.000Z", "action": "restart", "resource": "web", "actor": "dashboard", "result": "ok", "correlation_id": "rid-2", "metadata": {"user": "admin"}, "prev_hash": "ab".repeat(32)},
                    {"seq": 1, "ts": "2026-11-26T04:10:00.000Z", "action": "logs", "resource": "web", "actor": "cli", "result": "error", "correlation_id": "rid-1", "metadata": {}, "prev_hash": "0".repeat(64)}
                ]}))
            })
            .post(|body: Json<Value>| async move { (StatusCode::CREATED, Json(body.0)) }),
        )
        .route(
            "/mcp/containers",
            get(|axum::extract::RawQuery(q): axum::extract::RawQuery| async move {
                let with_logs = q.unwrap_or_default() != "tail=0";
                let list = aibox_wire::mcp::ToolContainerList {
                    enabled: true,
                    containers: vec![aibox_wire::mcp::ToolContainer {
                        server: "time".into(),
                        container: "demo-mcp-time".into(),
                        kind: "command".into(),
                        state: "running".into(),
                        status: "Up 5 seconds".into(),
                        image: "runner:1".into(),
                        log_tail: if with_logs {
                            vec!["mcp-bridge: serving <time>".into(), "second line".into()]
                        } else {
                            Vec::new()
                        },
                    }],
                };
                Json(list)
            }),
        )
        .route(
            "/images/pull",
            post(|| async {
                Json(json!({"ok": true, "note": "...", "results": [{"service": "ollama", "image": "ollama/ollama:0.5", "ok": true,
                    "container_image_id": "sha256:aaa", "pulled_image_id": "sha256:ccc", "drift": true, "progress": []}]}))
            }),
        )
        .layer(axum::middleware::from_fn_with_state(rec, record))
}

fn fake_edge(rec: Recorder, registry: Arc<Mutex<Value>>) -> Router {
    let reg_get = registry.clone();
    let reg_put = registry;
    // The secrets file as the edge keeps it: values in, names out.
    let secrets: Arc<Mutex<std::collections::BTreeMap<String, String>>> = Arc::default();
    let (sec_get, sec_put) = (secrets.clone(), secrets);
    Router::new()
        .route(
            "/api/mcp/secrets",
            get(move || {
                let s = sec_get.clone();
                async move { Json(aibox_wire::mcp::McpSecretNames { names: s.lock().unwrap().keys().cloned().collect() }) }
            })
            .put(move |body: Bytes| {
                let s = sec_put.clone();
                async move {
                    let u: aibox_wire::mcp::McpSecretsUpdate = aibox_wire::body::from_slice(&body).unwrap();
                    let mut s = s.lock().unwrap();
                    s.extend(u.set);
                    Json(aibox_wire::mcp::McpSecretNames { names: s.keys().cloned().collect() })
                }
            }),
        )
        .route("/v1/models", get(|| async { Json(json!({"object": "list", "data": [
            {"id": "ollama/llama3:8b", "object": "model", "owned_by": "ollama"},
            {"id": "vllm/qwen2.5", "object": "model", "owned_by": "vllm"}]})) }))
        .route("/ready", get(|| async { (StatusCode::SERVICE_UNAVAILABLE, Json(fake_readiness())) }))
        .route("/api/ps", get(|| async { Json(json!({"models": [
            {"name": "llama3:8b", "model": "llama3:8b", "size": 6_000_000_000u64, "size_vram": 4_500_000_000u64, "expires_at": "2099-01-01T00:00:00Z"}]})) }))
        .route("/api/edge/stats", get(|| async { Json(json!({"window_minutes": 60, "series": [
            {"client": "n8n", "model": "ollama/llama3:8b", "minutes": [
                {"t": "2026-11-26T05:00:00Z", "requests": 3, "errors": 1, "tokens_in": 10, "tokens_out": 20},
                {"t": "2026-11-26T05:01:00Z", "requests": 5, "errors": 0, "tokens_in": 12, "tokens_out": 40}]},
            {"client": "webui", "model": "vllm/qwen2.5", "minutes": [
                {"t": "2026-11-26T05:01:00Z", "requests": 1, "errors": 0, "tokens_in": 1, "tokens_out": 2}]}]})) }))
        .route("/api/mcp/health", get(|| async { Json(json!({"registry_error": null, "servers": [
            {"name": "time", "transport": "stdio", "target": "mcp-server-time", "state": "healthy", "last_error": null, "latency_ms": 4,
             "consecutive_failures": 0, "tools": ["time__now"], "policy": {"allow_clients": ["*"], "deny_clients": [], "rate_limit_rpm": null, "timeout_sec": 30.0}},
            {"name": "git", "transport": "http", "target": "http://git:8000/mcp", "state": "unhealthy", "last_error": "connect refused", "latency_ms": null,
             "consecutive_failures": 3, "tools": [], "policy": {"allow_clients": ["n8n"], "deny_clients": ["webui"], "rate_limit_rpm": 30, "timeout_sec": 10.0}}]})) }))
        .route(
            "/api/mcp/registry",
            get(move || { let r = reg_get.clone(); async move { Json(json!({"path": "data/mcp/registry.json", "registry": r.lock().unwrap().clone(), "servers": [], "error": null})) } })
                .put(move |body: Bytes| {
                    let r = reg_put.clone();
                    async move {
                        let v: Value = serde_json::from_slice(&body).unwrap();
                        if v["servers"].get("bad").is_some() {
                            return (StatusCode::BAD_REQUEST, [("content-type", "application/problem+json")],
                                Json(json!({"title": "Invalid registry", "detail": "servers.bad: nope", "status": 400}))).into_response();
                        }
                        *r.lock().unwrap() = v;
                        Json(json!({"ok": true})).into_response()
                    }
                }),
        )
        .route("/api/pull", post(|| async {
            let body = "{\"status\":\"pulling manifest\"}\n{\"status\":\"downloading\",\"digest\":\"sha256:1\",\"total\":100,\"completed\":50}\n{\"status\":\"success\"}\n";
            ([("content-type", "application/x-ndjson")], body)
        }))
        .route("/api/delete", axum::routing::delete(|body: Json<Value>| async move {
            if body["model"] == "missing:1" {
                return (StatusCode::NOT_FOUND, Json(json!({"error": "model 'missing:1' not found"}))).into_response();
            }
            StatusCode::OK.into_response()
        }))
        .layer(axum::middleware::from_fn_with_state(rec, record))
}

struct Harness {
    url: String,
    http: reqwest::Client,
    cookie: Option<String>,
    controller: Recorder,
    edge: Recorder,
    registry: Arc<Mutex<Value>>,
}

struct Options {
    controller: bool,
    edge: bool,
    tailscale: bool,
    throttle: Option<LoginThrottle>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            controller: true,
            edge: true,
            tailscale: false,
            throttle: None,
        }
    }
}

async fn start(opts: Options) -> Harness {
    let controller = Recorder::default();
    let edge = Recorder::default();
    let registry = Arc::new(Mutex::new(json!({"servers": {
        "time": {"command": "mcp-server-time"},
        "git": {"url": "http://git:8000/mcp", "allow_clients": ["n8n"], "deny_clients": ["webui"], "rate_limit_rpm": 30}}})));
    let ctrl_url = if opts.controller {
        serve(fake_controller(controller.clone())).await
    } else {
        // A port nothing listens on: the controller is down.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        url
    };
    let edge_url = if opts.edge {
        serve(fake_edge(edge.clone(), registry.clone())).await
    } else {
        "none".into()
    };
    let mut env = vec![
        ("DASHBOARD_PASSWORD", PASSWORD.to_string()),
        ("OPS_CONTROLLER_TOKEN", CTRL_TOKEN.to_string()),
        ("EDGE_ADMIN_TOKEN", EDGE_TOKEN.to_string()),
        ("CONTROLLER_URL", ctrl_url),
        ("EDGE_URL", edge_url),
    ];
    if opts.tailscale {
        env.push(("DASHBOARD_TRUST_TAILSCALE", "1".into()));
    }
    let config = DashboardConfig::load(
        FlagValues {
            listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        },
        |k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()),
    )
    .unwrap();
    let state = match opts.throttle {
        Some(t) => AppState::with_throttle(config, t),
        None => AppState::new(config),
    };
    let url = serve(dashboard::router(state)).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    Harness {
        url,
        http,
        cookie: None,
        controller,
        edge,
        registry,
    }
}

impl Harness {
    async fn sign_in(&mut self) {
        let resp = self
            .http
            .post(format!("{}/login", self.url))
            .form_body(&[("password", PASSWORD), ("next", "/")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        let set = resp.headers()["set-cookie"].to_str().unwrap().to_string();
        self.cookie = Some(set.split(';').next().unwrap().to_string());
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{path}", self.url));
        if let Some(c) = &self.cookie {
            rb = rb.header("cookie", c);
        }
        rb
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let r = self.req(reqwest::Method::GET, path).send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.req(reqwest::Method::POST, path)
            .form_body(form)
            .send()
            .await
            .unwrap()
    }

    /// The CSRF token of the signed-in session, as a page's forms carry it.
    async fn csrf(&self) -> String {
        let (_, body) = self.get("/").await;
        let at = body
            .find("name=\"csrf\" value=\"")
            .expect("page has a CSRF field")
            + 19;
        body[at..].split('"').next().unwrap().to_string()
    }
}

/// `application/x-www-form-urlencoded`, as a browser sends a form.
trait FormBody {
    fn form_body(self, pairs: &[(&str, &str)]) -> Self;
}

impl FormBody for reqwest::RequestBuilder {
    fn form_body(self, pairs: &[(&str, &str)]) -> Self {
        let enc = |s: &str| {
            s.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    b' ' => "+".to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        };
        let body: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect();
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(body.join("&"))
    }
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn pages_need_a_signed_in_user() {
    let h = start(Options::default()).await;
    let (status, body) = h.get("/healthz").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, r#"{"ok":true}"#));
    for path in [
        "/",
        "/models",
        "/tools",
        "/audit",
        "/services/web/logs",
        "/audit/export",
    ] {
        let r = h.req(reqwest::Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
        assert!(location(&r).starts_with("/login?next="), "{path}");
    }
    let r = h.post("/services/web/restart", &[("confirm", "yes")]).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        h.controller.all().is_empty(),
        "nothing reached the controller"
    );
    // A forged cookie is no session.
    let r = h
        .http
        .get(format!("{}/", h.url))
        .header(
            "cookie",
            "aibox_session=eyJzaWQiOiJ4IiwidXNlciI6ImFkbWluIiwiZXhwIjo5OTk5OTk5OTk5fQ.AAAA",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    // Static files and the sign-in page are open; every response has the security headers.
    let r = h
        .http
        .get(format!("{}/static/app.js", h.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = h.http.get(format!("{}/login", h.url)).send().await.unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert!(r.text().await.unwrap().contains("type=\"password\""));
}

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_cookie_and_refuses_wrong_passwords() {
    let mut h = start(Options {
        throttle: Some(LoginThrottle::new(
            3,
            Duration::from_secs(60),
            Duration::from_secs(60),
        )),
        ..Default::default()
    })
    .await;
    let r = h
        .http
        .post(format!("{}/login", h.url))
        .form_body(&[("password", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get("set-cookie").is_none());
    assert!(r.text().await.unwrap().contains("Wrong password."));

    let r = h
        .http
        .post(format!("{}/login", h.url))
        .form_body(&[("password", PASSWORD), ("next", "/models")])
        .send()
        .await
        .unwrap();
    assert_eq!(location(&r), "/models");
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    for attr in ["aibox_session=", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    // Behind TLS (Tailscale Serve), the cookie is Secure.
    let r = h
        .http
        .post(format!("{}/login", h.url))
        .header("x-forwarded-proto", "https")
        .form_body(&[("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("; Secure"));
    // An open redirect through `next` is not possible.
    let r = h
        .http
        .post(format!("{}/login", h.url))
        .form_body(&[("password", PASSWORD), ("next", "//evil.example/")])
        .send()
        .await
        .unwrap();
    assert_eq!(location(&r), "/");

    h.sign_in().await;
    let (status, body) = h.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("Signed in as <strong>admin</strong>"));
}

#[tokio::test]
async fn repeated_failures_lock_sign_in() {
    let h = start(Options {
        throttle: Some(LoginThrottle::new(
            3,
            Duration::from_secs(60),
            Duration::from_secs(60),
        )),
        ..Default::default()
    })
    .await;
    for _ in 0..2 {
        let r = h
            .http
            .post(format!("{}/login", h.url))
            .form_body(&[("password", "nope")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = h
        .http
        .post(format!("{}/login", h.url))
        .form_body(&[("password", "nope")])
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("locked for 60 seconds"));
    // Even the right password waits out the lock.
    let r = h
        .http
        .post(format!("{}/login", h.url))
        .form_body(&[("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("set-cookie").is_none());
    assert!(r.text().await.unwrap().contains("Too many failed sign-ins"));
}

#[tokio::test]
async fn services_page_shows_docker_state_beside_model_readiness() {
    let mut h = start(Options::default()).await;
    h.sign_in().await;
    let (status, body) = h.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("id=\"svc-ollama\""), "{body}");
    assert!(body.contains("Compose project <code>demo</code>"));
    assert!(body.contains(">running<") && body.contains(">exited<"));
    assert!(body.contains(">healthy<") && body.contains(">unhealthy<"));
    assert!(
        body.contains(">ready<"),
        "edge readiness of the ollama service"
    );
    assert!(body.contains("2m 5s"), "uptime");
    assert!(body.contains("127.0.0.1:11434→11434"));
    assert!(
        body.contains("href=\"/services/web/start\""),
        "a stopped service offers Start"
    );
    assert!(
        !body.contains("href=\"/services/db/restart\""),
        "no actions outside the allowlist"
    );
    assert!(body.contains("Read-only"));
    // Every controller call says who is asking.
    let seen = h.controller.find("GET", "/services");
    assert_eq!(seen.len(), 1);
    let hd = &seen[0].headers;
    assert_eq!(hd["authorization"], format!("Bearer {CTRL_TOKEN}").as_str());
    assert_eq!(hd["x-actor"], "dashboard");
    assert_eq!(hd["x-actor-user"], "admin");
    assert_eq!(hd["x-request-id"].to_str().unwrap().len(), 36);
}

#[tokio::test]
async fn restart_asks_with_a_dry_run_then_needs_the_csrf_token() {
    let mut h = start(Options::default()).await;
    h.sign_in().await;
    let (status, body) = h.get("/services/web/restart").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("would: <strong>restart web</strong>"),
        "{body}"
    );
    assert!(body.contains("demo-web-1"));
    let dry = h.controller.find("POST", "/services/web/restart");
    assert_eq!(
        serde_json::from_str::<Value>(&dry[0].body).unwrap(),
        json!({"dry_run": true})
    );

    // No token, or a wrong one: refused, and the controller never hears of it.
    for form in [
        vec![("confirm", "yes")],
        vec![("confirm", "yes"), ("csrf", "forged")],
    ] {
        let r = h.post("/services/web/restart", &form).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.text().await.unwrap().contains("security token"));
    }
    assert_eq!(h.controller.find("POST", "/services/web/restart").len(), 1);

    let csrf = h.csrf().await;
    let r = h
        .post(
            "/services/web/restart",
            &[("confirm", "yes"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/");
    let acted = h.controller.find("POST", "/services/web/restart");
    assert_eq!(acted.len(), 2);
    assert_eq!(
        serde_json::from_str::<Value>(&acted[1].body).unwrap(),
        json!({"confirm": true})
    );
    let rid = acted[1].headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let (_, body) = h.get("/").await;
    assert!(body.contains("Restarted web."), "flash after the redirect");
    assert!(body.contains(&rid), "the flash names the request id");
    let (_, body) = h.get("/").await;
    assert!(!body.contains("Restarted web."), "flashes show once");

    // A token from another session does not work either.
    let mut other = start(Options::default()).await;
    other.sign_in().await;
    let r = other
        .post(
            "/services/web/restart",
            &[("confirm", "yes"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Unknown service and unknown action.
    let r = h
        .post(
            "/services/nope/restart",
            &[("confirm", "yes"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(h
        .get("/")
        .await
        .1
        .contains("Could not restart nope: no service nope"));
    assert_eq!(
        h.get("/services/web/explode").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.get("/services/..%2Faudit/restart").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn controller_down_means_operations_unavailable_and_the_rest_works() {
    let mut h = start(Options {
        controller: false,
        ..Default::default()
    })
    .await;
    h.sign_in().await;
    let (status, body) = h.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("Operations unavailable"), "{body}");
    let (status, body) = h.get("/audit").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("Operations unavailable"));
    let (status, body) = h.get("/models").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("ollama/llama3:8b") && !body.contains("unavailable"));
    let (status, _) = h.get("/tools").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn logs_page_and_follow_stream() {
    let mut h = start(Options::default()).await;
    h.sign_in().await;
    let (status, body) = h.get("/services/web/logs?tail=50").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("hello &lt;b&gt;world&lt;/b&gt;"),
        "log text is escaped"
    );
    assert!(body.contains("class=\"s-stderr\""));
    assert!(body.contains("05:00:01"));
    assert!(
        h.controller
            .find("GET", "/services/web/logs?tail=50&follow=false")
            .len()
            == 1
    );
    let (_, body) = h.get("/services/web/logs?tail=50&follow=1").await;
    assert!(body.contains("data-follow-url=\"/services/web/logs/stream?tail=50\""));
    assert!(
        body.contains("<noscript><meta http-equiv=\"refresh\""),
        "follow without JavaScript reloads"
    );
    let r = h
        .req(reqwest::Method::GET, "/services/web/logs/stream?tail=50")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(text.contains("live two"));
}

#[tokio::test]
async fn pulling_an_image_shows_drift() {
    let mut h = start(Options::default()).await;
    h.sign_in().await;
    let csrf = h.csrf().await;
    let r = h.post("/services/ollama/pull", &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let seen = h.controller.find("POST", "/images/pull");
    assert_eq!(
        serde_json::from_str::<Value>(&seen[0].body).unwrap(),
        json!({"services": ["ollama"], "confirm": true})
    );
    let (_, body) = h.get("/").await;
    assert!(body.contains("a newer image is ready"));
    assert!(
        body.contains("newer image pulled"),
        "drift badge on the card"
    );
}

#[tokio::test]
async fn models_page_shows_models_memory_and_traffic() {
    let mut h = start(Options::default()).await;
    h.sign_in().await;
    let (status, body) = h.get("/models").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("ollama/llama3:8b") && body.contains("vllm/qwen2.5"));
    assert!(
        body.contains("4.2 GB"),
        "VRAM held by the loaded model: {body}"
    );
    assert!(body.contains("75% on GPU"));
    assert!(
        body.contains("connection refused"),
        "unhealthy endpoint's last error"
    );
    assert!(body.contains(">served<") && body.contains(">endpoint down<"));
    assert!(body.contains("<svg"), "traffic charts");
    assert!(body.contains("n8n: 8 requests, 1 errors, 22 tokens in, 60 tokens out"));
    assert!(body.contains("ollama/llama3:8b: 8 requests"));
    assert!(
        h.edge.find("GET", "/api/edge/stats")[0].headers["authorization"]
            == format!("Bearer {EDGE_TOKEN}").as_str()
    );
}

#[tokio::test]
async fn model_pull_runs_with_progress_and_is_audited() {
    let mut h = start(Options::default()).await;
    h.sign_in().await;
    let csrf = h.csrf().await;
    let r = h
        .post("/models/pull", &[("csrf", &csrf), ("model", "bad model!")])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(h.get("/models").await.1.contains("is not a model name"));
    assert!(h.edge.find("POST", "/api/pull").is_empty());

    let r = h
        .post("/models/pull", &[("csrf", &csrf), ("model", "llama3.2:1b")])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let mut body = String::new();
    for _ in 0..50 {
        body = h.get("/models").await.1;
        if body.contains(">pulled<") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        body.contains("<strong>llama3.2:1b</strong> — <span class=\"badge good\">pulled</span>"),
        "{body}"
    );
    let pull = &h.edge.find("POST", "/api/pull")[0];
    assert_eq!(
        serde_json::from_str::<Value>(&pull.body).unwrap()["model"],
        "llama3.2:1b"
    );
    let audit = h.controller.find("POST", "/audit");
    let ev: Value = serde_json::from_str(&audit[0].body).unwrap();
    assert_eq!(ev["action"], "model_pull");
    assert_eq!(ev["actor"], "dashboard");
    assert_eq!(ev["result"], "ok");
    assert_eq!(
        ev["correlation_id"],
        pull.headers["x-request-id"].to_str().unwrap()
    );
    assert_eq!(audit[0].headers["x-actor-user"], "admin");
}

#[tokio::test]
async fn model_delete_confirms_then_deletes() {
    let mut h = start(Options::default()).await;
    h.sign_in().await;
    let (_, body) = h.get("/models/delete?model=ollama%2Fllama3%3A8b").await;
    assert!(body.contains("Yes, delete ollama/llama3:8b"));
    let csrf = h.csrf().await;
    let r = h
        .post(
            "/models/delete",
            &[("csrf", &csrf), ("model", "ollama/llama3:8b")],
        )
        .await;
    assert!(
        location(&r).starts_with("/models/delete?model="),
        "no confirm: back to the question"
    );
    assert!(h.edge.find("DELETE", "/api/delete").is_empty());
    h.post(
        "/models/delete",
        &[
            ("csrf", &csrf),
            ("model", "ollama/llama3:8b"),
            ("confirm", "yes"),
        ],
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&h.edge.find("DELETE", "/api/delete")[0].body).unwrap(),
        json!({"model": "ollama/llama3:8b"})
    );
    assert!(h
        .get("/models")
        .await
        .1
        .contains("Deleted ollama/llama3:8b."));
    h.post(
        "/models/delete",
        &[("csrf", &csrf), ("model", "missing:1"), ("confirm", "yes")],
    )
    .await;
    let body = h.get("/models").await.1;
    assert!(
        body.contains("Could not delete missing:1: model 'missing:1' not found"),
        "{body}"
    );
    let audit = h.controller.find("POST", "/audit");
    assert_eq!(audit.len(), 2);
    assert_eq!(
        serde_json::from_str::<Value>(&audit[1].body).unwrap()["result"],
        "error"
    );
}

#[tokio::test]
async fn tools_page_health_badges_and_registry_edits() {
    let mut h = start(Options::default()).await;
    h.sign_in().await;
    let (status, body) = h.get("/tools").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("id=\"tool-time\"") && body.contains("id=\"tool-git\""));
    assert!(
        body.contains("class=\"badge good\">healthy<")
            && body.contains("class=\"badge bad\">unhealthy<")
    );
    assert!(body.contains("connect refused"));
    assert!(body.contains("30 calls/min"));
    let csrf = h.csrf().await;

    h.post(
        "/tools/git/enabled",
        &[("csrf", &csrf), ("enabled", "false")],
    )
    .await;
    assert_eq!(
        h.registry.lock().unwrap()["servers"]["git"]["enabled"],
        json!(false)
    );
    assert!(h.get("/tools").await.1.contains("Disabled git."));

    h.post(
        "/tools/git/policy",
        &[
            ("csrf", &csrf),
            ("allow_clients", "n8n, cursor"),
            ("deny_clients", ""),
            ("rate_limit_rpm", "90"),
            ("timeout_sec", "12.5"),
        ],
    )
    .await;
    let git = h.registry.lock().unwrap()["servers"]["git"].clone();
    assert_eq!(git["allow_clients"], json!(["n8n", "cursor"]));
    assert!(git.get("deny_clients").is_none());
    assert_eq!(git["rate_limit_rpm"], json!(90));
    assert_eq!(git["timeout_sec"], json!(12.5));

    h.post(
        "/tools/add",
        &[
            ("csrf", &csrf),
            ("name", "search"),
            ("source", "image"),
            ("target", "mcp/search:1"),
            ("env_schema", "API_KEY required The key"),
            ("env", ""),
        ],
    )
    .await;
    assert_eq!(
        h.registry.lock().unwrap()["servers"]["search"]["env_schema"]["API_KEY"]["required"],
        json!(true)
    );
    assert!(h
        .get("/tools")
        .await
        .1
        .contains("It needs API_KEY from the secrets file"));

    // A bad env_schema never reaches the edge; the edge's own refusal is shown.
    let puts = h.edge.find("PUT", "/api/mcp/registry").len();
    h.post(
        "/tools/add",
        &[
            ("csrf", &csrf),
            ("name", "x"),
            ("source", "image"),
            ("target", "a:1"),
            ("env_schema", "bad-name"),
        ],
    )
    .await;
    assert_eq!(h.edge.find("PUT", "/api/mcp/registry").len(), puts);
    assert!(h.get("/tools").await.1.contains("not a variable name"));
    h.post(
        "/tools/add",
        &[
            ("csrf", &csrf),
            ("name", "bad"),
            ("source", "url"),
            ("target", "http://bad:1/mcp"),
        ],
    )
    .await;
    assert!(h
        .get("/tools")
        .await
        .1
        .contains("The edge refused the change: servers.bad: nope"));

    let actions: Vec<String> = h
        .controller
        .find("POST", "/audit")
        .iter()
        .map(|s| {
            serde_json::from_str::<Value>(&s.body).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(actions, ["mcp_disable", "mcp_update", "mcp_add", "mcp_add"]);
    // Without a CSRF token nothing changes.
    let r = h.post("/tools/time/enabled", &[("enabled", "false")]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(h.registry.lock().unwrap()["servers"]["time"]
        .get("enabled")
        .is_none());
}

#[tokio::test]
async fn tools_page_keeps_secrets_masked_and_shows_tool_container_logs() {
    let mut h = start(Options::default()).await;
    h.sign_in().await;
    let (_, body) = h.get("/tools").await;
    // The container's state on the card, its last log lines below (read with a tail, escaped).
    assert!(
        body.contains("demo-mcp-time") && body.contains("data-state=\"running\""),
        "{body}"
    );
    assert!(
        body.contains("id=\"tool-log-time\"") && body.contains("mcp-bridge: serving &lt;time&gt;")
    );
    assert!(h.controller.find("GET", "/mcp/containers?tail=12").len() == 1);
    // The live refresh reads no logs (one audited log read per page view).
    let refresh = h
        .req(reqwest::Method::GET, "/tools")
        .header("X-Dashboard-Refresh", "1")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(refresh.contains("demo-mcp-time") && !refresh.contains("tool-log-time"));
    assert_eq!(h.controller.find("GET", "/mcp/containers?tail=0").len(), 1);

    let csrf = h.csrf().await;
    h.post(
        "/tools/add",
        &[
            ("csrf", &csrf),
            ("name", "github"),
            ("source", "image"),
            ("target", "mcp/github"),
            ("secrets", "GITHUB_PERSONAL_ACCESS_TOKEN=ghp_very_secret"),
        ],
    )
    .await;
    // The value went to the edge's secrets API; the registry only names it.
    let put = &h.edge.find("PUT", "/api/mcp/secrets")[0];
    assert_eq!(
        serde_json::from_str::<Value>(&put.body).unwrap(),
        json!({"set": {"GITHUB_PERSONAL_ACCESS_TOKEN": "ghp_very_secret"}})
    );
    let entry = h.registry.lock().unwrap()["servers"]["github"].clone();
    assert_eq!(
        entry,
        json!({"image": "mcp/github", "env_schema": {"GITHUB_PERSONAL_ACCESS_TOKEN": {"required": true}}})
    );
    assert!(!h.edge.find("PUT", "/api/mcp/registry")[0]
        .body
        .contains("ghp_very_secret"));
    let page = h.get("/tools").await.1;
    assert!(
        page.contains("Added github.") && !page.contains("ghp_very_secret"),
        "{page}"
    );
    assert!(
        page.contains("data-secret=\"GITHUB_PERSONAL_ACCESS_TOKEN\">••••••••<"),
        "{page}"
    );

    // Set again from the card: only the variables the entry declares.
    h.post(
        "/tools/github/secrets",
        &[("csrf", &csrf), ("GITHUB_PERSONAL_ACCESS_TOKEN", "ghp_new")],
    )
    .await;
    assert_eq!(h.edge.find("PUT", "/api/mcp/secrets").len(), 2);
    h.post(
        "/tools/github/secrets",
        &[("csrf", &csrf), ("OPS_CONTROLLER_TOKEN", "x")],
    )
    .await;
    assert_eq!(h.edge.find("PUT", "/api/mcp/secrets").len(), 2);
    assert!(h
        .get("/tools")
        .await
        .1
        .contains("OPS_CONTROLLER_TOKEN is not a variable github declares."));

    // A command entry, in the registry's own form.
    h.post(
        "/tools/add",
        &[
            ("csrf", &csrf),
            ("name", "clock"),
            ("source", "command"),
            ("target", "uvx"),
            ("args", "mcp-server-time\n--local-timezone\nUTC"),
        ],
    )
    .await;
    assert_eq!(
        h.registry.lock().unwrap()["servers"]["clock"],
        json!({"command": "uvx", "args": ["mcp-server-time", "--local-timezone", "UTC"]})
    );
}

#[tokio::test]
async fn audit_page_filters_and_exports() {
    let mut h = start(Options::default()).await;
    h.sign_in().await;
    let (status, body) = h
        .get("/audit?action=restart&actor=dashboard&since=2026-11-26T04%3A00&limit=20")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("rid-2") && body.contains("rid-1"));
    assert!(
        body.find("rid-2").unwrap() < body.find("rid-1").unwrap(),
        "newest first"
    );
    assert!(
        body.contains("data-label=\"User\">admin</td>"),
        "the signed-in user of the event"
    );
    let q = &h.controller.find("GET", "/audit")[0].uri;
    for part in [
        "limit=20",
        "format=json",
        "action=restart",
        "actor=dashboard",
        "since=2026-11-26T04%3A00%3A00Z",
    ] {
        assert!(q.contains(part), "{q}");
    }
    let (_, body) = h.get("/audit?until=2026-11-26T05%3A00").await;
    assert!(
        !body.contains("rid-2") && body.contains("rid-1"),
        "until is applied"
    );

    let r = h
        .req(reqwest::Method::GET, "/audit/export?action=restart")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment; filename=\"aibox-audit-"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn tailscale_identity_is_trusted_only_when_configured() {
    let h = start(Options {
        tailscale: true,
        ..Default::default()
    })
    .await;
    let r = h
        .http
        .get(format!("{}/", h.url))
        .header("tailscale-user-login", "alice@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.text().await.unwrap();
    assert!(body.contains("Signed in as <strong>alice@example.com</strong>"));
    assert!(body.contains("(Tailscale)"));
    assert_eq!(
        h.controller.find("GET", "/services")[0].headers["x-actor-user"],
        "alice@example.com"
    );
    // Forms still need the CSRF token bound to that identity.
    let r = h
        .http
        .post(format!("{}/services/web/stop", h.url))
        .header("tailscale-user-login", "alice@example.com")
        .form_body(&[("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let h = start(Options::default()).await;
    let r = h
        .http
        .get(format!("{}/", h.url))
        .header("tailscale-user-login", "alice@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "the header means nothing unless trusted"
    );
}

#[tokio::test]
async fn sign_out_ends_the_session() {
    let mut h = start(Options::default()).await;
    h.sign_in().await;
    let csrf = h.csrf().await;
    let r = h.post("/logout", &[]).await;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "sign-out needs the token too"
    );
    let r = h.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(location(&r), "/login");
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    // The old cookie no longer works even if kept.
    assert_eq!(h.get("/").await.0, StatusCode::SEE_OTHER);
}

/// Issue 13: the legacy unsalted SHA-256 in a password file is accepted once, at the first
/// sign-in, and the file is rewritten with the argon2id form the dashboard reads from then on.
#[tokio::test]
async fn a_legacy_password_file_is_upgraded_to_argon2id_at_the_first_sign_in() {
    use sha2::Digest;
    let dir = std::env::temp_dir().join(format!("aibox-dash-pw-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("password");
    std::fs::write(
        &file,
        hex::encode(sha2::Sha256::digest(PASSWORD.as_bytes())),
    )
    .unwrap();
    let start_with_file = || {
        let env = [
            ("DASHBOARD_PASSWORD_FILE", file.display().to_string()),
            ("CONTROLLER_URL", "none".to_string()),
            ("EDGE_URL", "none".to_string()),
        ];
        let config = DashboardConfig::load(FlagValues::default(), |k| {
            env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        })
        .unwrap();
        serve(dashboard::router(AppState::new(config)))
    };
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let sign_in = |url: String, password: &'static str| {
        let http = http.clone();
        async move {
            http.post(format!("{url}/login"))
                .form_body(&[("password", password), ("next", "/")])
                .send()
                .await
                .unwrap()
                .status()
        }
    };

    let url = start_with_file().await;
    assert_eq!(
        sign_in(url.clone(), "not the password").await,
        StatusCode::UNAUTHORIZED
    );
    assert!(
        !std::fs::read_to_string(&file).unwrap().starts_with('$'),
        "a wrong password upgrades nothing"
    );
    assert_eq!(sign_in(url.clone(), PASSWORD).await, StatusCode::SEE_OTHER);
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(stored.starts_with("$argon2id$v=19$"), "{stored}");
    assert!(!stored.contains(&hex::encode(sha2::Sha256::digest(PASSWORD.as_bytes()))));
    // The same process and a restarted one both check the argon2id form now.
    assert_eq!(sign_in(url, PASSWORD).await, StatusCode::SEE_OTHER);
    let restarted = start_with_file().await;
    assert_eq!(
        sign_in(restarted.clone(), PASSWORD).await,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        sign_in(restarted, "not the password").await,
        StatusCode::UNAUTHORIZED
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// The edge's `/ready` body, built from the type the edge answers with.
fn fake_readiness() -> aibox_wire::edge::Readiness {
    use aibox_wire::edge::{EndpointReadiness, ProviderReadiness, Readiness};
    Readiness {
        ready: false,
        providers: vec![
            ProviderReadiness {
                name: "ollama".into(),
                kind: "ollama".into(),
                healthy: true,
                endpoints: vec![EndpointReadiness {
                    url: "http://ollama:11434".into(),
                    healthy: true,
                    models: Some(vec!["llama3:8b".into()]),
                    in_flight: 1,
                    weight: 1,
                    ..Default::default()
                }],
            },
            ProviderReadiness {
                name: "vllm".into(),
                kind: "openai".into(),
                healthy: false,
                endpoints: vec![EndpointReadiness {
                    url: "http://vllm:8000/v1".into(),
                    models: Some(vec!["qwen2.5".into()]),
                    weight: 1,
                    last_error: Some("connection refused".into()),
                    ..Default::default()
                }],
            },
        ],
    }
}
