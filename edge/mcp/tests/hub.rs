//! The hub's router served on a loopback port, with the edge's `Caller` faked by a layer
//! (the `x-test-client` header names the client), talked to with rmcp's own client over both
//! protocol revisions, against the real `mcp-server-time` from the test venv.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "test fixtures: a failed unwrap is a failed test, and their tasks end with the test's runtime"
)]
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aibox_mcp::{Caller, McpConfig, McpHub};
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, Implementation, InitializeRequestParams,
    ProtocolVersion,
};
use rmcp::service::{
    ClientLifecycleMode, ClientServiceExt, NotificationContext, RoleClient, RunningService,
};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ClientHandler;

fn venv_bin(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = root.join(".venv/bin").join(name);
    assert!(
        p.exists(),
        "{} missing: run ./aibox pytest --co -q once to build the test venv",
        p.display()
    );
    p
}

struct Served {
    addr: std::net::SocketAddr,
    hub: Arc<McpHub>,
    dir: PathBuf,
}

async fn serve(registry_json: &str) -> Served {
    serve_with_audit(registry_json, None).await
}

async fn serve_with_audit(
    registry_json: &str,
    audit: Option<Arc<dyn aibox_mcp::AuditSink>>,
) -> Served {
    let dir = std::env::temp_dir().join(format!("aibox-mcp-test-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("registry.json"), registry_json).unwrap();
    let config: McpConfig = toml_like(&dir);
    let registry = prometheus::Registry::new();
    let hub = McpHub::start(config, &registry, audit).await.unwrap();
    let app = hub.router().layer(axum::middleware::from_fn(
        |mut req: axum::extract::Request, next: axum::middleware::Next| async move {
            let client = req
                .headers()
                .get("x-test-client")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if let Some(client) = client {
                req.extensions_mut().insert(Caller {
                    admin: client == "admin",
                    client,
                    request_id: "test".into(),
                    servers: None,
                });
            }
            next.run(req).await
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Served { addr, hub, dir }
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn toml_like(dir: &std::path::Path) -> McpConfig {
    McpConfig {
        registry: Some(dir.join("registry.json").display().to_string()),
        servers_txt: Some(dir.join("servers.txt").display().to_string()),
        env_file: Some(dir.join(".env").display().to_string()),
        probe_interval_ms: Some(200),
        reload_interval_ms: Some(100),
        max_backoff_ms: Some(1000),
        ..Default::default()
    }
}

#[derive(Clone, Default)]
struct TestClient {
    list_changed: Arc<tokio::sync::Notify>,
}
impl ClientHandler for TestClient {
    fn get_info(&self) -> InitializeRequestParams {
        InitializeRequestParams::new(
            ClientCapabilities::default(),
            Implementation::new("hub-test", "0"),
        )
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.list_changed.notify_one();
    }
}

async fn connect(
    addr: std::net::SocketAddr,
    client: &str,
    lifecycle: ClientLifecycleMode,
) -> RunningService<RoleClient, TestClient> {
    let mut cfg = StreamableHttpClientTransportConfig::with_uri(format!("http://{addr}/mcp"));
    cfg.custom_headers.insert(
        http::HeaderName::from_static("x-test-client"),
        http::HeaderValue::from_str(client).unwrap(),
    );
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), cfg);
    TestClient::default()
        .serve_with_lifecycle(transport, lifecycle)
        .await
        .expect("connect to hub")
}

async fn wait_for_tools(svc: &RunningService<RoleClient, TestClient>, want: usize) -> Vec<String> {
    for _ in 0..150 {
        let tools = svc.peer().list_tools(None).await.unwrap().tools;
        if tools.len() >= want {
            return tools.iter().map(|t| t.name.to_string()).collect();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("tools never appeared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_revisions_see_policy_filtered_tools_and_call_them() {
    let time = venv_bin("mcp-server-time");
    let registry = serde_json::json!({
        "servers": {
            "time": {"command": time, "args": ["--local-timezone", "UTC"], "allow_clients": ["*"], "deny_clients": ["blocked"], "rate_limit_rpm": 3},
            "time2": {"command": time, "args": ["--local-timezone", "UTC"], "allow_clients": ["cursor"]},
        }
    });
    let s = serve(&registry.to_string()).await;

    let modern = connect(
        s.addr,
        "cursor",
        ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        },
    )
    .await;
    let names = wait_for_tools(&modern, 4).await;
    assert_eq!(
        names,
        vec![
            "time__convert_time",
            "time__get_current_time",
            "time2__convert_time",
            "time2__get_current_time"
        ]
    );
    let mut call = CallToolRequestParams::new("time__get_current_time");
    call.arguments = Some(
        serde_json::json!({"timezone": "UTC"})
            .as_object()
            .unwrap()
            .clone(),
    );
    let result = modern.peer().call_tool(call.clone()).await.unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");

    let legacy = connect(s.addr, "n8n", ClientLifecycleMode::Initialize).await;
    let names = wait_for_tools(&legacy, 2).await;
    assert_eq!(names, vec!["time__convert_time", "time__get_current_time"]);
    // Forbidden: time2 is for cursor only.
    let mut forbidden = call.clone();
    forbidden.name = "time2__get_current_time".into();
    let err = legacy.peer().call_tool(forbidden).await.unwrap_err();
    assert!(err.to_string().contains("may not call"), "{err}");
    // Rate limit 3/min per client: n8n has 3, the 4th is refused.
    for _ in 0..3 {
        legacy.peer().call_tool(call.clone()).await.unwrap();
    }
    // A session client gets the JSON-RPC error in a 200 answer...
    let err = legacy.peer().call_tool(call.clone()).await.unwrap_err();
    assert!(err.to_string().contains("rate limit"), "{err}");
    // ...a 2026-07-28 client gets HTTP 429 (with the JSON-RPC error body and Retry-After).
    // (cursor made one call above: two left.)
    for _ in 0..2 {
        modern.peer().call_tool(call.clone()).await.unwrap();
    }
    let err = modern.peer().call_tool(call.clone()).await.unwrap_err();
    assert!(err.to_string().contains("429"), "{err}");

    let blocked = connect(s.addr, "blocked", ClientLifecycleMode::Initialize).await;
    assert!(blocked
        .peer()
        .list_tools(None)
        .await
        .unwrap()
        .tools
        .is_empty());

    s.hub.shutdown().await;
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// Records audit entries, or refuses them while `fail` is set.
#[derive(Default)]
struct RecordingAudit {
    records: std::sync::Mutex<Vec<aibox_mcp::AuditRecord>>,
    fail: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl aibox_mcp::AuditSink for RecordingAudit {
    async fn record(&self, record: aibox_mcp::AuditRecord) -> Result<u64, String> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("controller unreachable".into());
        }
        let mut records = self.records.lock().unwrap();
        records.push(record);
        Ok(records.len() as u64)
    }
}

async fn put(addr: std::net::SocketAddr, who: &str, body: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .put(format!("http://{addr}/api/mcp/registry"))
        .header("x-test-client", who)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_put_is_validated_audited_and_fails_closed() {
    let audit = Arc::new(RecordingAudit::default());
    let s = serve_with_audit(
        r#"{"servers": {"a": {"image": "x/a"}, "b": {"image": "x/b"}}}"#,
        Some(audit.clone()),
    )
    .await;
    let next = r#"{"servers": {"a": {"image": "x/a2"}, "c": {"image": "x/c"}}}"#;

    let (status, body) = put(s.addr, "n8n", next).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = put(
        s.addr,
        "admin",
        r#"{"servers": {"a": {"image": "x", "colour": 1}}}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("servers.a: unknown field `colour`"),
        "{body}"
    );

    audit.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = put(s.addr, "admin", next).await;
    assert_eq!(status, 503, "{body}");
    let on_disk = std::fs::read_to_string(s.dir.join("registry.json")).unwrap();
    assert!(
        on_disk.contains("x/b"),
        "refused change must not be written: {on_disk}"
    );

    audit.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = put(s.addr, "admin", next).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["added"], serde_json::json!(["c"]));
    assert_eq!(body["removed"], serde_json::json!(["b"]));
    assert_eq!(body["updated"], serde_json::json!(["a"]));
    // Each change: an intent before the file is written, an outcome after.
    let mut actions: Vec<(String, String, String)> = audit
        .records
        .lock()
        .unwrap()
        .iter()
        .map(|r| {
            let result = r.result.clone().unwrap_or_default();
            (r.action.clone(), r.resource.clone(), result)
        })
        .collect();
    actions.sort();
    let expected: Vec<(String, String, String)> = [
        ("mcp_add", "mcp:c", "intent"),
        ("mcp_add", "mcp:c", "ok"),
        ("mcp_remove", "mcp:b", "intent"),
        ("mcp_remove", "mcp:b", "ok"),
        ("mcp_update", "mcp:a", "intent"),
        ("mcp_update", "mcp:a", "ok"),
    ]
    .iter()
    .map(|(a, r, x)| (a.to_string(), r.to_string(), x.to_string()))
    .collect();
    assert_eq!(actions, expected);
    let health: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{}/api/mcp/health", s.addr))
        .header("x-test-client", "admin")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = health["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["a", "c"]);
    assert_eq!(health["servers"][0]["state"], "not_served");
    s.hub.shutdown().await;
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_come_from_the_secrets_file_never_from_the_edge_environment() {
    // The edge's own environment holds its admin and controller tokens; a registry entry must
    // not be able to send them to a tool server.
    std::env::set_var("AIBOX_LEAK_TEST_TOKEN", "the-edge-own-secret");
    let s = serve(
        r#"{"servers": {
            "leak": {"url": "http://127.0.0.1:9/mcp",
                     "headers": {"Authorization": "Bearer ${AIBOX_LEAK_TEST_TOKEN}"}},
            "ok": {"url": "http://127.0.0.1:9/mcp",
                   "headers": {"Authorization": "Bearer ${FROM_FILE}"}}}}"#,
    )
    .await;
    std::fs::write(s.dir.join(".env"), "FROM_FILE=file-value\n").unwrap();
    let health = || async {
        let r: serde_json::Value = reqwest::Client::new()
            .get(format!("http://{}/api/mcp/health", s.addr))
            .header("x-test-client", "admin")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["name"].as_str().unwrap().to_string(), v.clone()))
            .collect::<std::collections::HashMap<_, _>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let h = health().await;
        if h["ok"]["state"] != "missing_secrets" {
            assert_eq!(h["leak"]["state"], "missing_secrets", "{h:?}");
            assert_eq!(
                h["leak"]["missing_secrets"],
                serde_json::json!(["AIBOX_LEAK_TEST_TOKEN"])
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{h:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = &s.hub;
}
