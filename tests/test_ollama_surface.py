"""The Ollama surface (`/api/...`) through the official `ollama` Python client.

One edge in front of a fake Ollama (`ollama` provider, natively relayed) and a fake
OpenAI-compatible server (`vllm` provider, translated), as Open WebUI or n8n would use it with
`OLLAMA_BASE_URL` pointed at the edge.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import ollama
import pytest

from conftest import fake_upstream, free_port, start_edge

ADMIN = "admin-token-0123456789abcdef"
N8N_KEY = "n8n-key-0123456789"
VLLM_KEY = "vllm-secret-key"
OPENAI_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


class AuditRecorder:
    """Stands in for the controller's `POST /audit`; `fail = True` makes it refuse."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.fail = False
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                ok = self.path == "/audit" and self.headers.get("authorization") == "Bearer ctl-token-0123456789" \
                    and not recorder.fail
                answer = b"{}"
                if ok:
                    recorder.records.append(body)
                    # The stored event, as the controller answers it.
                    answer = json.dumps({
                        "seq": len(recorder.records), "ts": "2026-01-01T00:00:00.000Z",
                        "action": body["action"], "resource": body["resource"],
                        "actor": body.get("actor", "edge"), "result": body.get("result", "ok"),
                        "correlation_id": body.get("correlation_id", ""),
                        "metadata": body.get("metadata", {}), "prev_hash": "0" * 64}).encode()
                self.send_response(201 if ok else 500)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def stack(module_procs, tmp_path_factory):
    o = fake_upstream(module_procs, "ollama", name="fake-ollama")
    v = fake_upstream(module_procs, "openai", "--api-key", VLLM_KEY, name="fake-vllm")
    audit = AuditRecorder()
    config = f"""
default_provider = "ollama"
[timeouts]
first_byte_ms = 500
[controller]
url = "{audit.url}"
[[providers]]
name = "ollama"
kind = "ollama"
base_url = "{o.url()}"
[[providers]]
name = "vllm"
kind = "openai"
base_url = "{v.url()}/v1"
api_key_env = "VLLM_KEY"
[[providers]]
name = "dead"
kind = "ollama"
base_url = "http://127.0.0.1:{free_port()}"
[[clients]]
name = "n8n"
key_env = "N8N_KEY"
"""
    env = {"AIBOX_ADMIN_TOKEN": ADMIN, "VLLM_KEY": VLLM_KEY, "N8N_KEY": N8N_KEY, "OLLAMA_URL": o.url(),
           "OPS_CONTROLLER_TOKEN": "ctl-token-0123456789"}
    edge = start_edge(module_procs, tmp_path_factory.mktemp("ollama-surface"), config, env)
    yield {"edge": edge, "ollama": o, "vllm": v, "audit": audit,
           "client": ollama.Client(host=edge.url()),
           "admin": ollama.Client(host=edge.url(), headers={"Authorization": f"Bearer {ADMIN}"})}
    audit.close()


def last_upstream_request(fake) -> dict:
    return httpx.get(f"{fake.url()}/_fake/last").json()


# ------------------------------------------------------------------ listings ----

def test_list_shows_both_providers_with_honest_fields(stack):
    models = {m.model: m for m in stack["client"].list().models}
    native = models["llama3:8b"]
    assert native.size > 0 and len(native.digest) == 64 and native.details.format == "gguf"
    translated = models[OPENAI_MODEL]
    assert translated.size == 0 and translated.digest == ""
    assert translated.details.format == "openai-compatible"
    # A name both providers serve is listed once per provider, prefixed.
    assert "ollama/fake-slow:latest" in models and "vllm/fake-slow" in models


def test_version_and_running_models(stack):
    v = httpx.get(f"{stack['edge'].url()}/api/version").json()
    assert isinstance(v["version"], str) and v["version"]
    running = stack["client"].ps().models
    assert [m.model for m in running] == ["ollama/fake-drop:latest"]
    assert running[0].size_vram > 0


def test_show_native_and_synthesised(stack):
    c = stack["client"]
    native = c.show("llama3:8b")
    assert native.details.format == "gguf" and "completion" in native.capabilities
    assert native.modelinfo["general.architecture"] == "llama"
    translated = c.show(OPENAI_MODEL)
    assert translated.details.format == "openai-compatible"
    assert translated.modelinfo["general.basename"] == OPENAI_MODEL
    with pytest.raises(ollama.ResponseError) as e:
        c.show("no-such-model:1b")
    assert e.value.status_code == 404 and "not found" in e.value.error


# ------------------------------------------------------------- inference ----

@pytest.mark.parametrize("model", ["llama3:8b", OPENAI_MODEL, f"vllm/{OPENAI_MODEL}", f"{OPENAI_MODEL}:latest"])
def test_chat_whole_and_streamed(stack, model):
    c = stack["client"]
    messages = [{"role": "user", "content": "hello there"}]
    whole = c.chat(model=model, messages=messages)
    assert whole.message.content == "You said: hello there"
    assert whole.done and whole.done_reason == "stop" and whole.eval_count == 4
    assert whole.model == model
    parts = list(c.chat(model=model, messages=messages, stream=True))
    assert len(parts) > 2, "the reply arrives in pieces"
    assert "".join(p.message.content for p in parts) == "You said: hello there"
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].done_reason == "stop" and parts[-1].prompt_eval_count == 7 and parts[-1].eval_count == 4


def test_translated_request_reaches_upstream_rewritten(stack):
    list(stack["client"].chat(model=f"vllm/{OPENAI_MODEL}", messages=[{"role": "user", "content": "hi"}],
                              options={"temperature": 0.1, "num_predict": 32, "num_ctx": 4096}, stream=True))
    seen = last_upstream_request(stack["vllm"])
    body = seen["body"]
    assert body["model"] == OPENAI_MODEL
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.1 and body["max_tokens"] == 32 and "num_ctx" not in body
    assert seen["headers"]["authorization"] == f"Bearer {VLLM_KEY}"


def test_native_request_reaches_upstream_with_bare_name(stack):
    stack["client"].chat(model="ollama/llama3:8b", messages=[{"role": "user", "content": "hi"}],
                         options={"num_ctx": 4096}, keep_alive="1m")
    body = last_upstream_request(stack["ollama"])["body"]
    assert body["model"] == "llama3:8b"
    assert body["options"] == {"num_ctx": 4096} and body["keep_alive"] == "1m"


def test_stream_is_the_default_when_absent(stack):
    r = httpx.post(f"{stack['edge'].url()}/api/chat",
                   json={"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "a b"}]})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert len(lines) > 2 and lines[-1]["done"] is True


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_translated(stack, stream):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                               "parameters": {"type": "object",
                                                              "properties": {"location": {"type": "string"}}}}}]
    r = stack["client"].chat(model=f"vllm/{OPENAI_MODEL}", tools=tools, stream=stream,
                             messages=[{"role": "user", "content": "weather in Paris and Berlin?"}])
    parts = list(r) if stream else [r]
    calls = [tc for p in parts for tc in (p.message.tool_calls or [])]
    assert [(tc.function.name, tc.function.arguments) for tc in calls] == [
        ("get_weather", {"location": "Paris"}), ("get_weather", {"location": "Berlin"})]
    assert parts[-1].done and parts[-1].done_reason == "stop"
    # The answer goes back as a tool message, tied to its call by id upstream.
    follow = stack["client"].chat(model=f"vllm/{OPENAI_MODEL}", tools=tools, messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                         "arguments": {"location": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "sunny"}])
    assert follow.done
    sent = last_upstream_request(stack["vllm"])["body"]["messages"]
    assert sent[2]["tool_call_id"] == sent[1]["tool_calls"][0]["id"]


@pytest.mark.parametrize("model", ["llama3:8b", OPENAI_MODEL])
def test_generate_whole_and_streamed(stack, model):
    c = stack["client"]
    whole = c.generate(model=model, prompt="tell me")
    assert whole.response == "You said: tell me" and whole.done and whole.done_reason == "stop"
    parts = list(c.generate(model=model, prompt="tell me", stream=True))
    assert len(parts) > 2
    assert "".join(p.response for p in parts) == "You said: tell me"
    assert parts[-1].done and parts[-1].eval_count == 4


def test_generate_without_prompt_loads_nothing_upstream(stack):
    before = httpx.get(f"{stack['vllm'].url()}/_fake/stats").json()["requests"]
    r = stack["client"].generate(model=OPENAI_MODEL, prompt="")
    assert r.done and r.done_reason == "load" and r.response == ""
    assert httpx.get(f"{stack['vllm'].url()}/_fake/stats").json()["requests"] == before


@pytest.mark.parametrize("model", ["nomic-embed-text", "nomic-embed-text:latest", "BAAI/bge-small-en"])
def test_embed_and_legacy_embeddings(stack, model):
    c = stack["client"]
    r = c.embed(model=model, input=["first text", "second"])
    assert len(r.embeddings) == 2 and all(len(e) == 8 for e in r.embeddings)
    assert r.embeddings[0] != r.embeddings[1]
    single = c.embed(model=model, input="first text")
    assert single.embeddings[0] == r.embeddings[0]
    legacy = c.embeddings(model=model, prompt="first text")
    assert legacy.embedding == r.embeddings[0]


# ----------------------------------------------------------------- errors ----

def test_bad_requests_get_ollama_errors(stack):
    url = stack["edge"].url()
    r = httpx.post(f"{url}/api/chat", content=b"{not json")
    assert r.status_code == 400 and "invalid JSON" in r.json()["error"]
    r = httpx.post(f"{url}/api/chat", json={"messages": []})
    assert r.status_code == 400 and r.json() == {"error": "model is required"}
    r = httpx.post(f"{url}/api/chat", json={"model": OPENAI_MODEL, "messages": "hi"})
    assert r.status_code == 400 and "messages" in r.json()["error"]
    r = httpx.get(f"{url}/api/nothing-here")
    assert r.status_code == 404 and "error" in r.json()
    with pytest.raises(ollama.ResponseError) as e:
        stack["client"].chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404


@pytest.mark.parametrize("model,status", [("fake-error", 500), ("vllm/fake-error", 500),
                                          ("dead/llama3:8b", 503), ("vllm/fake-slow", 504)])
def test_upstream_failures_before_the_first_byte(stack, model, status):
    # `dead` never answered its probe, so its only endpoint rests: 503 at once, not a connect try.
    with pytest.raises(ollama.ResponseError) as e:
        stack["client"].chat(model=model, messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == status and e.value.error


@pytest.mark.parametrize("model,text", [("fake-midstream-error", "out of memory"),
                                        ("vllm/fake-midstream-error", "engine died"),
                                        ("fake-drop", "mid-stream"),
                                        ("vllm/fake-drop", "mid-stream")])
def test_midstream_errors_arrive_as_error_lines(stack, model, text):
    got = []
    with pytest.raises(ollama.ResponseError) as e:
        for part in stack["client"].chat(model=model, messages=[{"role": "user", "content": "x"}], stream=True):
            got.append(part.message.content)
    assert text in e.value.error
    assert "partial " in got, "what arrived before the error reached the client"


# ------------------------------------------------------------ admin calls ----

def test_admin_calls_need_the_admin_key(stack):
    with pytest.raises(ollama.ResponseError) as e:
        list(stack["client"].pull("mistral:7b", stream=True))
    assert e.value.status_code == 401
    n8n = ollama.Client(host=stack["edge"].url(), headers={"Authorization": f"Bearer {N8N_KEY}"})
    for call in (lambda: n8n.delete("llama3:8b"), lambda: n8n.copy("llama3:8b", "x"),
                 lambda: n8n.create(model="x", from_="llama3:8b")):
        with pytest.raises(ollama.ResponseError) as e:
            call()
        assert e.value.status_code == 403
    names = {m.model for m in stack["client"].list().models}
    assert "llama3:8b" in names and "x:latest" not in names


def test_pull_copy_create_delete_with_admin_key(stack):
    admin, audit = stack["admin"], stack["audit"]
    progress = list(admin.pull("mistral:7b", stream=True))
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert any(p.total == 1000 and p.completed == 500 for p in progress)
    assert "mistral:7b" in {m.model for m in admin.list().models}
    # Not streamed to the client, still streamed upstream (a long pull outlives any timeout).
    assert admin.pull("phi3:mini").status == "success"
    assert last_upstream_request(stack["ollama"])["body"]["stream"] is True
    assert "phi3:mini" in {m.model for m in admin.list().models}
    assert admin.copy("mistral:7b", "mistral-copy").status == "success"
    assert admin.create(model="mine", from_="llama3:8b", stream=False).status == "success"
    names = {m.model for m in admin.list().models}
    assert {"mistral-copy:latest", "mine:latest"} <= names
    assert admin.delete("mistral-copy").status == "success"
    assert "mistral-copy:latest" not in {m.model for m in admin.list().models}
    with pytest.raises(ollama.ResponseError) as e:
        admin.delete("mistral-copy")
    assert e.value.status_code == 404

    # Each action: an intent before it starts, an outcome naming the intent's seq after it ends.
    actions = [(r["action"], r["metadata"]["model"], r["result"]) for r in audit.records]
    for action, model in (("model_pull", "mistral:7b"), ("model_copy", "mistral:7b"),
                          ("model_create", "mine"), ("model_delete", "mistral-copy")):
        assert (action, model, "intent") in actions and (action, model, "ok") in actions, actions
    assert ("model_delete", "mistral-copy", "error") in actions, "the refused second delete"
    for seq, r in enumerate(audit.records, start=1):
        if r["result"] != "intent":
            intent = audit.records[r["metadata"]["intent_seq"] - 1]
            assert intent["result"] == "intent" and intent["correlation_id"] == r["correlation_id"]
            assert (intent["action"], intent["resource"]) == (r["action"], r["resource"])
    pull = next(r for r in audit.records if r["action"] == "model_pull")
    assert pull["actor"] == "edge" and pull["metadata"]["client"] == "admin"
    assert pull["resource"] == "model:ollama/mistral:7b" and pull["correlation_id"]


def test_admin_errors(stack):
    admin = stack["admin"]
    with pytest.raises(ollama.ResponseError) as e:
        list(admin.pull("does-not-exist:1b", stream=True))
    assert e.value.status_code == 500 and "file does not exist" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        admin.pull("does-not-exist:1b")
    assert e.value.status_code == 500 and "file does not exist" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        admin.pull(f"vllm/{OPENAI_MODEL}")
    assert e.value.status_code == 400 and "only on Ollama providers" in e.value.error


def test_admin_call_refused_when_audit_fails(stack):
    stack["audit"].fail = True
    try:
        with pytest.raises(ollama.ResponseError) as e:
            list(stack["admin"].pull("unaudited:1b", stream=True))
        assert e.value.status_code == 503 and "audited" in e.value.error
    finally:
        stack["audit"].fail = False
    upstream = httpx.get(f"{stack['ollama'].url()}/api/tags").json()
    assert "unaudited:1b" not in {m["name"] for m in upstream["models"]}


def test_requests_are_counted_for_the_ollama_surface(stack):
    stack["client"].chat(model="llama3:8b", messages=[{"role": "user", "content": "count me"}])
    metrics = httpx.get(f"{stack['edge'].url()}/metrics").text
    assert any('surface="ollama"' in line and 'provider="ollama"' in line for line in metrics.splitlines())
    stack["edge"].wait_for_line(r'"path":"/api/chat".*"provider":"ollama"|"provider":"ollama".*"path":"/api/chat"')
