"""The OpenAI surface of the edge, driven by the official `openai` SDK, as a user's script would.

The stack: a fake Ollama and a fake vLLM (tests/testkit, written from the published APIs),
and the real `edge` binary in front of both.
"""
from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from conftest import BIN, fake_upstream, start_edge

VLLM_KEY = "upstream-secret-key-7f3a"
CLIENT_KEY = "n8n-client-key-0001"
ADMIN = "admin-token-0123456789abcdef"
DNS_OFF = '[egress]\ndns_servers = ["127.0.0.1:9"]\n'


def edge_config(ollama: str, vllm: str, extra: str = "") -> str:
    return f"""
service_names = ["open-webui"]
max_body_bytes = 65536
[[providers]]
name = "ollama"
kind = "ollama"
base_url = "{ollama}"
[[providers]]
name = "vllm"
kind = "openai"
base_url = "{vllm}/v1"
api_key_env = "VLLM_KEY"
[[clients]]
name = "n8n"
key_env = "N8N_KEY"
[timeouts]
first_byte_ms = 800
first_byte_loading_ms = 800
idle_ms = 3000
{extra}
{DNS_OFF}
"""


@pytest.fixture(scope="module")
def stack(module_procs, tmp_path_factory):
    ollama = fake_upstream(module_procs, "ollama", "--chunk-delay-ms", "2")
    vllm = fake_upstream(module_procs, "openai", "--api-key", VLLM_KEY, "--chunk-delay-ms", "2")
    edge = start_edge(
        module_procs, tmp_path_factory.mktemp("edge"), edge_config(ollama.url(), vllm.url()),
        env={"VLLM_KEY": VLLM_KEY, "N8N_KEY": CLIENT_KEY, "AIBOX_ADMIN_TOKEN": ADMIN},
    )
    wait_ready(edge.url())
    return {"edge": edge, "ollama": ollama, "vllm": vllm}


def wait_ready(base: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(base + "/ready", timeout=2) as r:
                return json.load(r)
        except urllib.error.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def client(stack, key: str = "sk-anything") -> openai.OpenAI:
    return openai.OpenAI(base_url=stack["edge"].url() + "/v1", api_key=key, max_retries=0, timeout=20)


def last_upstream_request(proc) -> dict:
    with urllib.request.urlopen(proc.url() + "/_fake/last") as r:
        return json.load(r)


def raw(stack, path: str, body: bytes | None = None, headers: dict | None = None, method: str | None = None):
    req = urllib.request.Request(stack["edge"].url() + path, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


# ------------------------------------------------------------------ models --

def test_models_lists_every_provider_with_prefixed_ids(stack):
    ids = {m.id for m in client(stack).models.list()}
    assert "ollama/llama3:8b" in ids
    assert "vllm/Qwen/Qwen2.5-0.5B-Instruct" in ids


def test_a_dead_provider_neither_delays_nor_empties_the_list(procs, tmp_path):
    ollama = fake_upstream(procs, "ollama")
    # A listener that accepts and never answers: the worst kind of provider.
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(16)
    try:
        url = f"http://127.0.0.1:{black_hole.getsockname()[1]}"
        edge = start_edge(procs, tmp_path, edge_config(ollama.url(), url), env={"VLLM_KEY": "k", "N8N_KEY": "n"})
        started = time.monotonic()
        ids = {m.id for m in openai.OpenAI(base_url=edge.url() + "/v1", api_key="x", max_retries=0).models.list()}
        assert time.monotonic() - started < 4.0
        assert "ollama/llama3:8b" in ids
        assert not any(i.startswith("vllm/") for i in ids)
    finally:
        black_hole.close()


# -------------------------------------------------------- chat via Ollama --

def test_chat_through_ollama(stack):
    r = client(stack).chat.completions.create(
        model="ollama/llama3:8b", messages=[{"role": "user", "content": "hello edge"}])
    assert r.choices[0].message.content == "You said: hello edge"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 4 and r.usage.total_tokens == r.usage.prompt_tokens + 4
    sent = last_upstream_request(stack["ollama"])["body"]
    assert sent["model"] == "llama3:8b" and sent["stream"] is False


def test_chat_stream_arrives_in_chunks_with_usage_last(stack):
    stream = client(stack).chat.completions.create(
        model="llama3:8b", messages=[{"role": "user", "content": "one two three"}],
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: one two three"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 5
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_options_reach_ollama_natively(stack):
    client(stack).chat.completions.create(
        model="ollama/llama3:8b", messages=[{"role": "user", "content": "x"}], max_tokens=7,
        temperature=0.2, seed=3, stop=["END"], response_format={"type": "json_object"},
        extra_body={"keep_alive": "10m", "options": {"num_ctx": 8192}})
    sent = last_upstream_request(stack["ollama"])["body"]
    assert sent["options"] == {"num_ctx": 8192, "num_predict": 7, "temperature": 0.2, "seed": 3, "stop": ["END"]}
    assert sent["format"] == "json" and sent["keep_alive"] == "10m"


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}]


@pytest.mark.parametrize("model", ["ollama/llama3:8b", "vllm/Qwen/Qwen2.5-0.5B-Instruct"])
def test_two_parallel_tool_calls(stack, model):
    r = client(stack).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "weather in Paris and Berlin?"}], tools=TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [json.loads(c.function.arguments)["location"] for c in calls] == ["Paris", "Berlin"]
    assert len({c.id for c in calls}) == 2


@pytest.mark.parametrize("model", ["ollama/llama3:8b", "vllm/Qwen/Qwen2.5-0.5B-Instruct"])
def test_streamed_tool_calls_each_have_their_own_index(stack, model):
    stream = client(stack).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "weather?"}], tools=TOOLS, stream=True)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for tc in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": None, "args": ""})
            entry["id"] = entry["id"] or tc.id
            entry["args"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert sorted(calls) == [0, 1]
    assert {json.loads(c["args"])["location"] for c in calls.values()} == {"Paris", "Berlin"}
    assert finish == "tool_calls"


def test_tool_results_go_back_with_the_tool_name(stack):
    client(stack).chat.completions.create(model="ollama/llama3:8b", messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ])
    sent = last_upstream_request(stack["ollama"])["body"]["messages"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == {"location": "Paris"}
    assert sent[2] == {"role": "tool", "content": "sunny", "tool_name": "get_weather"}


def test_embeddings_through_ollama(stack):
    r = client(stack).embeddings.create(model="ollama/nomic-embed-text", input=["a b", "c"])
    assert [d.index for d in r.data] == [0, 1] and len(r.data[0].embedding) == 8
    single = client(stack).embeddings.create(model="nomic-embed-text", input="a b")
    assert single.data[0].embedding == r.data[0].embedding


# ------------------------------------------------- OpenAI-compatible pass --

def test_passthrough_rewrites_model_and_uses_the_providers_key(stack):
    c = client(stack, key="the-clients-own-key")
    r = c.chat.completions.create(model="vllm/Qwen/Qwen2.5-0.5B-Instruct", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "You said: hi"
    seen = last_upstream_request(stack["vllm"])
    assert seen["body"]["model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert seen["headers"]["authorization"] == f"Bearer {VLLM_KEY}"
    assert "the-clients-own-key" not in json.dumps(seen)


def test_passthrough_stream_and_bare_name_routing(stack):
    stream = client(stack).chat.completions.create(
        model="Qwen/Qwen2.5-0.5B-Instruct", messages=[{"role": "user", "content": "a b"}],
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: a b"
    assert chunks[-1].usage.total_tokens > 0


def test_embeddings_passthrough(stack):
    r = client(stack).embeddings.create(model="vllm/BAAI/bge-small-en", input="x")
    assert len(r.data[0].embedding) == 8


# ------------------------------------------------------------------ errors --

def test_unknown_model_is_404_model_not_found(stack):
    with pytest.raises(openai.NotFoundError) as e:
        client(stack).chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client(stack).chat.completions.create(model="ollama/no-such-model", messages=[{"role": "user", "content": "x"}])


def test_bad_requests_get_openai_shaped_400s(stack):
    status, _, body = raw(stack, "/v1/chat/completions", b"{not json", {"content-type": "application/json"})
    err = json.loads(body)["error"]
    assert status == 400 and err["type"] == "invalid_request_error" and err["code"] == "invalid_json"
    with pytest.raises(openai.BadRequestError) as e:
        client(stack).chat.completions.create(model="llama3:8b", messages=[])
    assert e.value.param == "messages"
    status, _, body = raw(stack, "/v1/chat/completions", b'{"messages": []}')
    assert status == 400 and json.loads(body)["error"]["param"] == "model"


def test_body_over_the_limit_is_413(stack):
    with pytest.raises(openai.APIStatusError) as e:
        client(stack).chat.completions.create(model="llama3:8b", messages=[{"role": "user", "content": "x" * 70000}])
    assert e.value.status_code == 413


def test_upstream_status_errors_pass_through(stack):
    with pytest.raises(openai.InternalServerError) as e:
        client(stack).chat.completions.create(model="ollama/fake-error", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 500 and "llama runner" in e.value.message


def test_slow_first_byte_is_504(stack):
    with pytest.raises(openai.APIStatusError) as e:
        client(stack).chat.completions.create(model="ollama/fake-slow", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 504


def test_unreachable_upstream_is_503_with_retry_after(procs, tmp_path):
    """The probe found the only endpoint dead, so it rests: answered at once, no connect try."""
    dead = f"http://127.0.0.1:{_closed_port()}"
    edge = start_edge(procs, tmp_path, edge_config(dead, dead), env={"VLLM_KEY": "k", "N8N_KEY": "n"})
    deadline = time.monotonic() + 10
    while not all(e["ejected"] for p in _ready(edge)["providers"] for e in p["endpoints"]):
        assert time.monotonic() < deadline, "the probes never found the endpoints dead"
        time.sleep(0.05)
    with pytest.raises(openai.APIStatusError) as e:
        openai.OpenAI(base_url=edge.url() + "/v1", api_key="x", max_retries=0).chat.completions.create(
            model="ollama/llama3:8b", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 503
    assert e.value.body["code"] == "upstream_unavailable", e.value.body
    assert int(e.value.response.headers["retry-after"]) >= 1


def _ready(edge) -> dict:
    try:
        with urllib.request.urlopen(edge.url() + "/ready", timeout=5) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("model", ["ollama/fake-midstream-error", "ollama/fake-drop", "vllm/fake-drop"])
def test_mid_stream_failure_ends_the_stream_with_an_error(stack, model):
    stream = client(stack).chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], stream=True)
    got = ""
    with pytest.raises(openai.APIError):
        for chunk in stream:
            got += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert got.startswith("partial")


def edge_log(stack, request_id: str, message: str, timeout: float = 10.0) -> dict:
    """The edge's JSON log line with this request id and message."""
    deadline = time.monotonic() + timeout
    while True:
        for line in stack["edge"].output().splitlines():
            if request_id in line and line.startswith("{"):
                obj = json.loads(line)
                if obj.get("request_id") == request_id and obj.get("message") == message:
                    return obj
        if time.monotonic() > deadline:
            raise AssertionError(f"no {message!r} line for {request_id}")
        time.sleep(0.05)


@pytest.mark.parametrize("model", ["ollama/fake-drop", "vllm/fake-drop"])
def test_a_broken_stream_is_logged_with_its_endpoint(stack, model):
    """An operator can tell which host broke a stream: the failure and the request line name it."""
    request_id = f"broken-{model.split('/')[0]}-{time.time_ns()}"
    stream = client(stack).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "x"}], stream=True,
        extra_headers={"X-Request-ID": request_id})
    with pytest.raises(openai.APIError):
        for _chunk in stream:
            pass
    upstream = stack[model.split("/")[0]].url()
    failed = edge_log(stack, request_id, "upstream stream failed")
    assert failed["level"] == "WARN" and failed["endpoint"].startswith(upstream), failed
    request = edge_log(stack, request_id, "request")
    assert request["endpoint"].startswith(upstream) and request["error"] == "upstream_stream_failed", request


def test_client_leaving_mid_stream_cancels_the_upstream(procs, tmp_path):
    ollama = fake_upstream(procs, "ollama", "--chunk-delay-ms", "300")
    edge = start_edge(procs, tmp_path, edge_config(ollama.url(), ollama.url()),
                      env={"VLLM_KEY": "k", "N8N_KEY": "n"})
    wait_ready(edge.url())
    host, port = edge.addr().rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    body = json.dumps({"model": "ollama/llama3:8b", "stream": True,
                       "messages": [{"role": "user", "content": " ".join(["w"] * 50)}]}).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert b"200 OK" in sock.recv(4096)

    def in_flight() -> int:
        ready = wait_ready(edge.url())
        return sum(e["in_flight"] for p in ready["providers"] for e in p["endpoints"])

    assert in_flight() == 1
    sock.close()
    deadline = time.monotonic() + 5
    while in_flight() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert in_flight() == 0
    edge.wait_for_line(r'"client_gone":true')


# -------------------------------------------------------------- operations --

def test_request_id_and_server_timing(stack):
    status, headers, _ = raw(stack, "/v1/chat/completions",
                             json.dumps({"model": "llama3:8b", "messages": [{"role": "user", "content": "x"}]}).encode(),
                             {"X-Request-ID": "req-abc-123", "content-type": "application/json"})
    assert status == 200 and headers["x-request-id"] == "req-abc-123"
    assert "edge;dur=" in headers["server-timing"] and "upstream;dur=" in headers["server-timing"]
    assert last_upstream_request(stack["ollama"])["headers"]["x-request-id"] == "req-abc-123"
    _, headers, _ = raw(stack, "/health")
    assert len(headers["x-request-id"]) == 36


def test_health_ready_and_metrics_by_client(stack):
    assert json.loads(raw(stack, "/health")[2]) == {"status": "ok"}
    ready = json.loads(raw(stack, "/ready")[2])
    assert ready["ready"] is True and {p["name"] for p in ready["providers"]} == {"ollama", "vllm"}
    client(stack, key=CLIENT_KEY).chat.completions.create(model="llama3:8b", messages=[{"role": "user", "content": "x"}])
    raw(stack, "/v1/chat/completions", json.dumps({"model": "llama3:8b", "messages": [{"role": "user", "content": "x"}]}).encode(),
        {"X-Service-Name": "open-webui"})
    raw(stack, "/v1/chat/completions", json.dumps({"model": "llama3:8b", "messages": [{"role": "user", "content": "x"}]}).encode(),
        {"X-Service-Name": "someone-else-" + str(time.time())})
    # The edge counts a request in Pingora's logging phase, after the response went out: under
    # load the last request may be counted a moment after the client has its answer.
    deadline = time.monotonic() + 3
    while True:
        metrics = raw(stack, "/metrics")[2].decode()
        if ('client="open-webui"' in metrics and 'client="other"' in metrics) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert 'aibox_requests_total{client="n8n",provider="ollama",status="200",surface="openai"}' in metrics
    assert 'client="open-webui"' in metrics and 'client="other"' in metrics
    assert "aibox_upstream_duration_seconds_bucket" in metrics and 'aibox_tokens_total{client="n8n",direction="out",provider="ollama"}' in metrics
    stats_status, _, _ = raw(stack, "/api/edge/stats")
    assert stats_status == 401
    stats = json.loads(raw(stack, "/api/edge/stats", headers={"Authorization": f"Bearer {ADMIN}"})[2])
    assert any(s["client"] == "n8n" and s["model"] == "llama3:8b" for s in stats["series"])


def test_logs_are_json_lines_without_secrets(stack):
    client(stack).chat.completions.create(model="vllm/Qwen/Qwen2.5-0.5B-Instruct", messages=[{"role": "user", "content": "x"}])
    out = stack["edge"].output()
    assert VLLM_KEY not in out and CLIENT_KEY not in out and ADMIN not in out
    request_lines = [json.loads(l) for l in out.splitlines() if l.startswith("{") and '"message":"request"' in l]
    line = request_lines[-1]
    for field in ("request_id", "client", "provider", "model", "status", "tokens_in", "tokens_out", "total_ms", "upstream_ms"):
        assert field in line


def test_config_errors_name_the_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[providers]]\nname = "x"\nkind = "openai"\nbase_url = "http://127.0.0.1:1/v1"\nbogus_key = 1\n')
    r = subprocess.run([str(BIN / "edge")], env={"EDGE_CONFIG": str(cfg), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "bogus_key" in r.stderr
    cfg.write_text('[[providers]]\nname = "x"\nkind = "openai"\nbase_url = "http://127.0.0.1:1/v1"\napi_key_env = "MISSING_KEY"\n')
    r = subprocess.run([str(BIN / "edge")], env={"EDGE_CONFIG": str(cfg), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "providers[0].api_key_env: environment variable MISSING_KEY is not set" in r.stderr


def test_concurrent_streams_do_not_mix(stack):
    c = client(stack)
    results: dict[int, str] = {}

    def run(i: int) -> None:
        s = c.chat.completions.create(model="llama3:8b", messages=[{"role": "user", "content": f"n{i}"}], stream=True)
        results[i] = "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {i: f"You said: n{i}" for i in range(16)}
