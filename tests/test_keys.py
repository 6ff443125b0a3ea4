"""Keys and per-client policy (issue 13) through the official `openai` and `ollama` clients.

One edge in front of a fake Ollama (`ollama` provider) and a fake OpenAI-compatible server
(`vllm` provider), with a keys file and `[anonymous]` closed (keys required), as in the bundle.
Keys are made with the real CLI (`edge key add`) while the edge runs: each test's key works on
its first request, without a restart.
"""
from __future__ import annotations

import concurrent.futures
import json
import subprocess
import time

import httpx
import ollama
import openai
import pytest

from conftest import BIN, fake_upstream, start_edge
from test_ollama_surface import AuditRecorder

ADMIN = "admin-token-0123456789abcdef"
CTL_TOKEN = "ctl-token-0123456789"
QWEN = "ollama/qwen2.5:0.5b"


@pytest.fixture(scope="module")
def stack(module_procs, tmp_path_factory):
    o = fake_upstream(module_procs, "ollama", "--slow-ms", "800", name="fake-ollama")
    v = fake_upstream(module_procs, "openai", name="fake-vllm")
    audit = AuditRecorder()
    tmp = tmp_path_factory.mktemp("keys")
    keys_file = tmp / "clients.toml"
    config = f"""
default_provider = "ollama"
clients_file = "{keys_file}"
[controller]
url = "{audit.url}"
[anonymous]
models = []
mcp_servers = []
[[providers]]
name = "ollama"
kind = "ollama"
base_url = "{o.url()}"
[[providers]]
name = "vllm"
kind = "openai"
base_url = "{v.url()}/v1"
"""
    env = {"AIBOX_ADMIN_TOKEN": ADMIN, "OPS_CONTROLLER_TOKEN": CTL_TOKEN}
    edge = start_edge(module_procs, tmp, config, env)
    yield {"edge": edge, "file": keys_file, "audit": audit}
    audit.close()


def key_cli(stack, *args: str, controller: bool = False) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin"}
    if controller:
        env.update({"CONTROLLER_URL": stack["audit"].url, "OPS_CONTROLLER_TOKEN": CTL_TOKEN})
    return subprocess.run([str(BIN / "edge"), "key", *args, "--file", str(stack["file"])],
                          env=env, capture_output=True, text=True, timeout=30)


def new_key(stack, name: str, *policy: str) -> str:
    done = key_cli(stack, "add", name, *policy, "--quiet")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def oa(stack, key: str) -> openai.OpenAI:
    # No retries: the test sees each refusal as the SDK surfaces it.
    return openai.OpenAI(base_url=f"{stack['edge'].url()}/v1", api_key=key, max_retries=0)


def ol(stack, key: str | None) -> ollama.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return ollama.Client(host=stack["edge"].url(), headers=headers)


def chat(client: openai.OpenAI, model: str, text: str = "hello there"):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])


# ----------------------------------------------------------------- no key ----

def test_no_key_or_a_wrong_one_is_401_on_every_surface(stack):
    with pytest.raises(openai.AuthenticationError) as e:
        oa(stack, "not-a-key").models.list()
    assert e.value.status_code == 401
    assert e.value.body["code"] == "invalid_api_key"
    assert "not valid" in e.value.body["message"]

    r = httpx.post(f"{stack['edge'].url()}/v1/chat/completions", json={"model": QWEN, "messages": []})
    assert r.status_code == 401
    assert "API key is required" in r.json()["error"]["message"]

    with pytest.raises(ollama.ResponseError) as e:
        ol(stack, None).list()
    assert e.value.status_code == 401
    assert "API key is required" in e.value.error

    r = httpx.post(f"{stack['edge'].url()}/mcp", json={"jsonrpc": "2.0", "id": 7, "method": "tools/list"},
                   headers={"accept": "application/json, text/event-stream"})
    assert r.status_code == 401
    assert r.json()["id"] == 7 and r.json()["error"]["code"] == -32001
    # Liveness and the Ollama version probe stay open.
    assert httpx.get(f"{stack['edge'].url()}/health").status_code == 200
    assert httpx.get(f"{stack['edge'].url()}/api/version").status_code == 200


# ------------------------------------------------------- models by policy ----

def test_each_key_lists_and_calls_only_its_models(stack):
    every = new_key(stack, "every-model")
    qwen = new_key(stack, "qwen-only", "--models", "ollama/qwen2.5*,vllm/Qwen/*")

    all_ids = {m.id for m in oa(stack, every).models.list()}
    assert {"ollama/llama3:8b", QWEN, "vllm/Qwen/Qwen2.5-0.5B-Instruct"} <= all_ids
    qwen_ids = {m.id for m in oa(stack, qwen).models.list()}
    assert qwen_ids == {QWEN, "vllm/Qwen/Qwen2.5-0.5B-Instruct"}
    assert {m.model for m in ol(stack, qwen).list().models} == {"qwen2.5:0.5b", "Qwen/Qwen2.5-0.5B-Instruct"}

    assert chat(oa(stack, qwen), "qwen2.5:0.5b").choices[0].message.content
    assert ol(stack, qwen).chat(model="Qwen/Qwen2.5-0.5B-Instruct",
                                messages=[{"role": "user", "content": "hi"}]).message.content
    assert chat(oa(stack, every), "llama3:8b").choices[0].message.content

    with pytest.raises(openai.PermissionDeniedError) as e:
        chat(oa(stack, qwen), "llama3:8b")
    assert e.value.status_code == 403
    assert e.value.body["code"] == "model_not_allowed"
    assert "llama3:8b" in e.value.body["message"] and "qwen-only" in e.value.body["message"]
    with pytest.raises(ollama.ResponseError) as e:
        ol(stack, qwen).chat(model="llama3:8b", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 403 and "llama3:8b" in e.value.error
    with pytest.raises(openai.PermissionDeniedError):
        oa(stack, qwen).models.retrieve("ollama/llama3:8b")


# ------------------------------------------------------------------ limits ----

def test_requests_per_minute_refused_with_retry_after(stack):
    key = new_key(stack, "two-per-minute", "--rpm", "2")
    client = oa(stack, key)
    chat(client, QWEN)
    chat(client, QWEN)
    with pytest.raises(openai.RateLimitError) as e:
        chat(client, QWEN)
    assert e.value.status_code == 429
    assert e.value.body["code"] == "rate_limit_exceeded"
    assert int(e.value.response.headers["retry-after"]) >= 1
    with pytest.raises(ollama.ResponseError) as e:
        ol(stack, key).chat(model=QWEN, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 429 and "requests-per-minute" in e.value.error


def test_tokens_per_minute_count_after_each_response(stack):
    key = new_key(stack, "few-tokens", "--tpm", "40")
    client = oa(stack, key)
    used, calls = 0, 0
    with pytest.raises(openai.RateLimitError) as e:
        for calls in range(1, 10):
            r = chat(client, QWEN, "count these words please")
            used += r.usage.total_tokens
    # Refused only once the answers so far went over the budget, not before.
    assert used > 40 and calls >= 2, (used, calls)
    assert "tokens-per-minute" in e.value.body["message"]
    assert int(e.value.response.headers["retry-after"]) >= 1
    with pytest.raises(ollama.ResponseError) as e:
        ol(stack, key).chat(model=QWEN, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 429 and "tokens-per-minute" in e.value.error


def test_concurrent_requests_over_the_limit_are_refused(stack):
    key = new_key(stack, "one-at-a-time", "--concurrency", "1")
    client = oa(stack, key)

    def one(_):
        try:
            chat(client, "fake-slow")
            return 200
        except openai.RateLimitError as e:
            assert "concurrent-requests" in e.body["message"]
            return e.status_code

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        statuses = sorted(pool.map(one, range(4)))
    assert statuses.count(200) >= 1 and statuses.count(429) >= 2, statuses
    # The slot comes back when the answer is done.
    assert chat(client, QWEN).choices


# --------------------------------------------------------------- the CLI ----

def test_cli_key_works_at_once_and_revocation_is_immediate(stack):
    made = key_cli(stack, "add", "cli-made", "--models", "ollama/*", "--rpm", "100", controller=True)
    assert made.returncode == 0, made.stderr
    key = next(w for w in made.stdout.split() if w.startswith("aibox-"))
    assert "audited: key_create key:cli-made" in made.stdout
    assert chat(oa(stack, key), QWEN).choices[0].message.content

    text = stack["file"].read_text()
    assert key not in text, "the key itself is never stored"
    listed = key_cli(stack, "list")
    assert "cli-made" in listed.stdout and key not in listed.stdout
    assert "keys are required" in listed.stdout or "anonymous" in listed.stdout
    as_json = json.loads(key_cli(stack, "list", "--json").stdout)
    assert any(c["name"] == "cli-made" and c["rpm"] == 100 for c in as_json["clients"])

    again = key_cli(stack, "add", "cli-made")
    assert again.returncode != 0 and "already exists" in again.stderr

    revoked = key_cli(stack, "revoke", "cli-made")
    assert revoked.returncode == 0, revoked.stderr
    assert "not audited" in revoked.stdout
    t0 = time.monotonic()
    while True:
        try:
            oa(stack, key).models.list()
        except openai.AuthenticationError:
            break
        assert time.monotonic() - t0 < 1.0, "a revoked key must stop working within a second"
        time.sleep(0.05)
    records = [(r["action"], r["resource"], r["actor"]) for r in stack["audit"].records]
    assert ("key_create", "key:cli-made", "cli") in records


# ---------------------------------------------------- the admin keys API ----

def test_admin_api_creates_lists_with_usage_and_revokes(stack):
    admin = {"Authorization": f"Bearer {ADMIN}"}
    base = f"{stack['edge'].url()}/api/edge/keys"
    assert httpx.get(base).status_code == 401
    r = httpx.post(base, headers=admin, json={"name": "from-api", "models": ["ollama/qwen*"], "tpm": 5000})
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    chat(oa(stack, key), QWEN)
    rows = {c["name"]: c for c in httpx.get(base, headers=admin).json()["clients"]}
    row = rows["from-api"]
    assert row["source"] == "file" and row["models"] == ["ollama/qwen*"] and row["tpm"] == 5000
    assert row["requests_hour"] == 1 and row["tokens_hour"] > 0 and row["requests_day"] == 1
    assert "key" not in row and "key_sha256" not in row
    assert rows["anonymous"]["models"] == []

    assert httpx.post(base, headers=admin, json={"name": "from-api"}).status_code == 409
    assert httpx.post(base, headers=admin, json={"name": "bad name"}).status_code == 400
    assert httpx.delete(f"{base}/from-api", headers=admin).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        oa(stack, key).models.list()
    assert httpx.delete(f"{base}/from-api", headers=admin).status_code == 404
    actions = [(r["action"], r["resource"]) for r in stack["audit"].records]
    assert ("key_create", "key:from-api") in actions and ("key_revoke", "key:from-api") in actions


# ---------------------------------------------------------- zero config ----

def test_zero_config_stays_open_with_a_warning(procs, tmp_path):
    o = fake_upstream(procs, "ollama")
    edge = start_edge(procs, tmp_path, "", {"OLLAMA_URL": o.url()})
    models = openai.OpenAI(base_url=f"{edge.url()}/v1", api_key="anything", max_retries=0).models.list()
    assert any(m.id == QWEN for m in models)
    edge.wait_for_line(r"no \[anonymous\] policy is set")


# --------------------------------------------------------------- MCP servers ----

def test_mcp_servers_follow_the_client_policy(procs, tmp_path):
    from mcp.shared.exceptions import MCPError
    from mcp_fixtures import KEYS, VENV_BIN, edge_config, make_git_repo, require, v2, v2_client, wait_served
    from mcp_fixtures import McpEdge

    repo = make_git_repo(tmp_path / "repo")
    mcp_dir = tmp_path / "mcp"
    mcp_dir.mkdir()
    (mcp_dir / "registry.json").write_text(json.dumps({"servers": {
        "time": {"command": str(require(VENV_BIN / "mcp-server-time")), "args": ["--local-timezone", "UTC"]},
        "git": {"command": str(require(VENV_BIN / "mcp-server-git")), "args": ["--repository", str(repo)]},
    }}))
    keys_file = tmp_path / "clients.toml"
    config = f'clients_file = "{keys_file}"\n' + edge_config(mcp_dir) + "\n[anonymous]\nmodels = []\nmcp_servers = []\n"
    proc = start_edge(procs, tmp_path, config, env={
        "AIBOX_ADMIN_TOKEN": "admin-token-for-mcp-tests", "N8N_KEY": KEYS["n8n"], "CURSOR_KEY": KEYS["cursor"]})
    edge = McpEdge(proc=proc, dir=mcp_dir)
    wait_served(edge, ["time", "git"])
    stack = {"file": keys_file}
    time_only = new_key(stack, "time-only", "--mcp-servers", "ti*")

    async def run():
        async with v2_client(edge.url, time_only) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert names and all(n.startswith("time__") for n in names), names
            r = await c.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert not r.is_error
            with pytest.raises(MCPError):
                await c.call_tool("git__git_status", {"repo_path": str(repo)})
        # A client of the edge config without `mcp_servers` keeps every server.
        async with v2_client(edge.url, KEYS["cursor"]) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert any(n.startswith("git__") for n in names) and any(n.startswith("time__") for n in names)

    v2(run)
    # No key while anonymous may use nothing: 401 with a JSON-RPC error, before the hub.
    r = httpx.post(edge.url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
                   headers={"accept": "application/json, text/event-stream"})
    assert r.status_code == 401 and r.json()["error"]["code"] == -32001
