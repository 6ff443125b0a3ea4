"""The edge's /mcp: one endpoint over real MCP servers, per-client policy, limits, health, registry.

Clients: `cursor` uses the official v2 SDK (2026-07-28, `server/discover`, no session);
`n8n` uses the official v1 SDK (2025-11-25, `initialize`, `MCP-Session-Id`).
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mcp.client.subscriptions import ToolsListChanged
from mcp.shared.exceptions import MCPError

from mcp_fixtures import (
    KEYS,
    SERVERS_DIR,
    V1_PYTHON,
    VENV_BIN,
    McpEdge,
    make_git_repo,
    require,
    start_http_tools,
    start_mcp_edge,
    v1_run,
    v2,
    v2_client,
    wait_served,
)

FORBIDDEN, TIMEOUT, RATE_LIMITED, UNKNOWN = -32003, -32001, -32029, -32602


def tool_text(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


@pytest.fixture
def world(procs, tmp_path):
    """The edge with time (everyone but anonymous), git (cursor only) and web (HTTP; both)."""
    repo = make_git_repo(tmp_path / "repo")
    web = start_http_tools(procs)
    registry = {"servers": {
        "time": {"command": str(require(VENV_BIN / "mcp-server-time")), "args": ["--local-timezone", "UTC"],
                 "allow_clients": ["*"], "deny_clients": ["anonymous"]},
        "git": {"command": str(require(VENV_BIN / "mcp-server-git")), "args": ["--repository", str(repo)],
                "allow_clients": ["cursor"]},
        "web": {"url": web.url() + "/mcp", "allow_clients": ["cursor", "n8n"],
                "rate_limit_rpm": 3, "timeout_sec": 1.5},
    }}
    edge = start_mcp_edge(procs, tmp_path, registry)
    wait_served(edge, ["time", "git", "web"])
    return edge, web, repo


def test_mcp_two_sdk_clients_see_and_call_exactly_their_tools(world):
    edge, _web, repo = world

    async def cursor():
        async with v2_client(edge.url, KEYS["cursor"]) as c:
            assert c.protocol_version == "2026-07-28"
            names = [t.name for t in (await c.list_tools()).tools]
            assert names == sorted(names, key=lambda n: (n.split("__")[0], n)), names
            assert {"time__get_current_time", "time__convert_time", "git__git_status", "git__git_log",
                    "web__echo", "web__sleep", "web__fail"} <= set(names)
            assert all(len(n) <= 64 and n.replace("_", "").replace("-", "").isalnum() for n in names)
            r = await c.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert not r.is_error and "UTC" in tool_text(r)
            r = await c.call_tool("git__git_status", {"repo_path": str(repo)})
            assert not r.is_error and "branch" in tool_text(r).lower()
            r = await c.call_tool("web__echo", {"text": "hello through the edge"})
            assert tool_text(r) == "hello through the edge"
            r = await c.call_tool("web__fail", {"reason": "kaputt"})
            assert r.is_error and "kaputt" in tool_text(r)
            with pytest.raises(MCPError) as e:
                await c.call_tool("nosuch__tool", {})
            assert e.value.code == UNKNOWN
            # Progress notifications come back with the caller's own token.
            seen = []

            async def on_progress(progress, total, message):
                seen.append((progress, total))

            r = await c.call_tool("web__count", {"to": 3}, progress_callback=on_progress)
            assert tool_text(r) == "counted to 3"
            assert seen == [(1, 3), (2, 3), (3, 3)], seen
            # Prompts and resources pass through (prompt names prefixed like tools, URIs unchanged).
            prompts = [p.name for p in (await c.list_prompts()).prompts]
            assert prompts == ["web__greet"], prompts
            got = await c.get_prompt("web__greet", {"name": "Ada"})
            assert "Ada" in got.messages[0].content.text
            uris = [str(r.uri) for r in (await c.list_resources()).resources]
            assert uris == ["note://readme"], uris
            read = await c.read_resource("note://readme")
            assert read.contents[0].text == "the readme note"

    v2(cursor)

    out = v1_run(edge.url, KEYS["n8n"], [
        ["list"],
        ["call", "time__get_current_time", {"timezone": "UTC"}],
        ["call", "web__echo", {"text": "v1 says hi"}],
        ["call", "git__git_status", {"repo_path": str(repo)}],
        ["ping"],
    ])
    assert out["protocol_version"] == "2025-11-25" and out["session_id"], out
    tools, t, echo, forbidden, ping = out["results"]
    assert not any(n.startswith("git__") for n in tools["tools"]), tools
    assert {"time__get_current_time", "web__echo"} <= set(tools["tools"])
    assert t["ok"] and not t["is_error"] and "UTC" in t["text"]
    assert echo["text"] == "v1 says hi"
    assert forbidden["error"]["code"] == FORBIDDEN and "n8n" in forbidden["error"]["message"], forbidden
    assert ping == {"ok": True}

    # Anonymous callers see nothing they may not call (time denies anonymous; git/web do not allow it).
    out = v1_run(edge.url, None, [["list"], ["call", "time__get_current_time", {"timezone": "UTC"}]])
    assert out["results"][0]["tools"] == []
    assert out["results"][1]["error"]["code"] == FORBIDDEN

    # The denial is logged and counted.
    edge.proc.wait_for_line(r"mcp call denied by policy")
    metrics = urllib.request.urlopen(edge.proc.url() + "/metrics", timeout=10).read().decode()
    assert 'aibox_mcp_denials_total{client="n8n",server="git",tool="git__git_status"} 1' in metrics, \
        [line for line in metrics.splitlines() if "aibox_mcp" in line]


def test_mcp_rate_limit_and_slow_tool_timeout(world):
    edge, web, _repo = world

    async def cursor():
        async with v2_client(edge.url, KEYS["cursor"]) as c:
            # 3 per minute (one token back every 20 s, far longer than this burst takes).
            for i in range(3):
                await c.call_tool("web__echo", {"text": str(i)})
            with pytest.raises(MCPError) as e:
                await c.call_tool("web__echo", {"text": "one too many"})
            assert e.value.code == RATE_LIMITED and "retry after" in e.value.message, e.value.error
            assert e.value.data["retry_after_ms"] > 0
            # Other servers are not limited.
            r = await c.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert not r.is_error

    v2(cursor)

    # The limit is per client: n8n still has its own 3 calls (v1 gets the error in-band).
    out = v1_run(edge.url, KEYS["n8n"], [["call", "web__echo", {"text": str(i)}] for i in range(4)]
                 + [["call", "web__sleep", {"seconds": 30}]])
    results = out["results"]
    assert all(r.get("ok") for r in results[:3]), results
    assert results[3]["error"]["code"] == RATE_LIMITED, results[3]

    # n8n's slow call was rate limited too (the limit applies before the timeout).
    assert results[4]["error"]["code"] == RATE_LIMITED
    v2(slow_timeout_only(edge))
    # The timed-out call was cancelled on the server, not left running.
    web.wait_for_line(r"sleep 20(\.0)? started")
    web.wait_for_line(r"sleep 20(\.0)? cancelled", timeout=10)
    assert not re.search(r"sleep 20(\.0)? finished", web.output())


def slow_timeout_only(edge: McpEdge):
    async def run():
        async with v2_client(edge.url, KEYS["cursor"]) as c:
            # cursor's budget on web is spent: raise the limit (a policy-only edit, hot reloaded
            # without restarting the server), then call the tool that sleeps past timeout_sec.
            reg = json.loads(edge.registry.read_text())
            reg["servers"]["web"]["rate_limit_rpm"] = 1000
            edge.registry.write_text(json.dumps(reg))
            deadline = time.monotonic() + 10
            while edge.health()["web"]["policy"]["rate_limit_rpm"] != 1000:
                assert time.monotonic() < deadline, "registry edit not picked up"
                time.sleep(0.1)
            started = time.monotonic()
            with pytest.raises(MCPError) as e:
                await c.call_tool("web__sleep", {"seconds": 20}, read_timeout_seconds=60)
            assert e.value.code == TIMEOUT and "timed out" in e.value.message, e.value.error
            assert time.monotonic() - started < 15
            # The server is still fine afterwards.
            r = await c.call_tool("web__echo", {"text": "still here"})
            assert tool_text(r) == "still here"
            # The policy edit did not restart the server's connection.
            assert edge.health()["web"]["restarts"] == 0
    return run


def test_mcp_dead_server_goes_unhealthy_and_comes_back(world, procs):
    edge, web, _repo = world
    port = int(web.addr().rsplit(":", 1)[1])

    async def kill_while_listening():
        # A 2026-07-28 client hears `notifications/tools/list_changed` on subscriptions/listen.
        async with v2_client(edge.url, KEYS["cursor"]) as c:
            async with c.listen(tools_list_changed=True) as sub:
                web.stop()
                event = await asyncio.wait_for(sub.__anext__(), 30)
                assert isinstance(event, ToolsListChanged), event

    v2(kill_while_listening)
    h = edge.wait_health("web", lambda h: h["state"] == "unhealthy", what="unhealthy")
    assert h["consecutive_failures"] >= 3 and h["last_error"], h
    assert h["tools"] == []

    async def gone():
        async with v2_client(edge.url, KEYS["cursor"]) as c:
            names = [t.name for t in (await c.list_tools()).tools]
            assert not any(n.startswith("web__") for n in names) and "time__get_current_time" in names
            with pytest.raises(MCPError) as e:
                await c.call_tool("web__echo", {"text": "x"})
            assert "unavailable" in e.value.message

    v2(gone)
    out = v1_run(edge.url, KEYS["n8n"], [["list"]])
    assert not any(n.startswith("web__") for n in out["results"][0]["tools"])

    start_http_tools(procs, port=port, name="http-tools-again")
    edge.wait_health("web", lambda h: h["state"] == "healthy" and h["tools"], what="healthy again")

    async def back():
        async with v2_client(edge.url, KEYS["cursor"]) as c:
            r = await c.call_tool("web__echo", {"text": "back"})
            assert tool_text(r) == "back"

    v2(back)


def test_mcp_stdio_server_killed_is_restarted(world):
    edge, _web, repo = world
    pids = [p for p in os.listdir("/proc") if p.isdigit() and str(repo) in _cmdline(p)]
    assert pids, "mcp-server-git child not found"
    for p in pids:
        os.killpg(int(p), signal.SIGKILL)
    h = edge.wait_health("git", lambda h: h["restarts"] >= 1 and h["state"] == "healthy", what="restarted")
    assert h["tools"]


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_mcp_registry_errors_keep_the_last_good_registry(procs, tmp_path):
    time_cmd = str(require(VENV_BIN / "mcp-server-time"))
    good = {"servers": {"time": {"command": time_cmd, "allow_clients": ["*"]}}}
    edge = start_mcp_edge(procs, tmp_path, good)
    wait_served(edge, ["time"])

    def registry_error() -> str | None:
        status, body = edge.admin("GET", "/api/mcp/registry")
        assert status == 200, body
        return body["error"]

    # Bad JSON, unknown field, duplicate names: named in the error, last good registry stays.
    for text, needle in [
        ('{"servers": {', "registry.json"),
        ('{"servers": {"time": {"command": "x", "timeout": 3}}}', "servers.time: unknown field `timeout`"),
        ('{"servers": {"a": {"command": "x"}, "a": {"command": "y"}}}', 'duplicate server name "a"'),
        ('{"servers": {"a": {"command": "x", "rate_limit_rpm": 0}}}', "servers.a.rate_limit_rpm"),
    ]:
        edge.registry.write_text(text)
        deadline = time.monotonic() + 10
        while needle not in (registry_error() or ""):
            assert time.monotonic() < deadline, (needle, registry_error())
            time.sleep(0.1)
        assert edge.health()["time"]["state"] in ("healthy", "degraded")

    # A registry.json that disappears (an editor's delete-and-recreate) does not stop anything.
    edge.registry.unlink()
    deadline = time.monotonic() + 10
    while "file disappeared" not in (registry_error() or ""):
        assert time.monotonic() < deadline, registry_error()
        time.sleep(0.1)
    assert edge.health()["time"]["state"] in ("healthy", "degraded")

    # The same errors through the admin API: 400 problem, nothing written.
    edge.registry.write_text(json.dumps(good))
    status, body = edge.admin("PUT", "/api/mcp/registry",
                              b'{"servers": {"t": {"command": "x", "colour": "red"}}}')
    assert status == 400 and "servers.t: unknown field `colour`" in body["detail"], body
    assert json.loads(edge.registry.read_text()) == good

    # Admin only.
    status, body = edge.admin("GET", "/api/mcp/health", token=KEYS["n8n"])
    assert status == 403, body
    status, body = edge.admin("PUT", "/api/mcp/registry", json.dumps(good).encode(), token=None)
    assert status == 401, body

    # A server whose secret is missing is reported, not started; the others keep running.
    with_secret = {"servers": {
        "time": {"command": time_cmd},
        "github": {"url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "Bearer ${GITHUB_TOKEN}"},
                   "env_schema": {"GITHUB_TOKEN": {"required": True, "description": "a GitHub token"}}},
        "browser": {"image": "aibox/browser-mcp:latest"},
    }}
    status, body = edge.admin("PUT", "/api/mcp/registry", json.dumps(with_secret).encode())
    assert status == 200 and sorted(body["added"]) == ["browser", "github"], body
    h = edge.health()
    assert h["github"]["state"] == "missing_secrets" and h["github"]["missing_secrets"] == ["GITHUB_TOKEN"], h
    assert h["browser"]["state"] == "not_served", h
    assert h["time"]["state"] in ("healthy", "degraded") and h["time"]["restarts"] == 0, h
    assert json.loads(edge.registry.read_text())["servers"]["github"]["env_schema"]

    # servers.txt lists the enabled servers.
    (edge.dir / "servers.txt").write_text("# enabled\ngithub\n")
    edge.wait_health("time", lambda h: h["state"] == "disabled", what="disabled by servers.txt")


def raw_post(url: str, body: dict, headers: dict) -> tuple[int, str, str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def test_mcp_headers_must_match_the_body(world):
    """2026-07-28: `Mcp-Method`/`Mcp-Name` are checked against the JSON-RPC body."""
    edge, _web, _repo = world
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"},
            "io.modelcontextprotocol/clientCapabilities": {}}
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "time__get_current_time", "arguments": {"timezone": "UTC"}, "_meta": meta}}
    base = {"Authorization": f"Bearer {KEYS['cursor']}", "MCP-Protocol-Version": "2026-07-28",
            "Mcp-Method": "tools/call"}
    status, ctype, text = raw_post(edge.url, call, {**base, "Mcp-Name": "time__get_current_time"})
    assert status == 200 and "UTC" in text, (status, text)
    # No notification came before the result, so the answer is plain JSON, not an event stream.
    assert ctype.startswith("application/json"), ctype
    assert json.loads(text)["id"] == 7
    status, _ctype, text = raw_post(edge.url, call, {**base, "Mcp-Name": "time__convert_time"})
    assert status == 400 and "-32020" in text, (status, text)
    status, _ctype, text = raw_post(edge.url, call, {**base, "Mcp-Method": "tools/list",
                                                     "Mcp-Name": "time__get_current_time"})
    assert status == 400 and "-32020" in text, (status, text)


def test_mcp_host_and_origin_are_checked(world):
    edge, _web, _repo = world
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {}}).encode()
    for headers in ({"Origin": "http://evil.example"}, {"Host": "evil.example"}):
        req = urllib.request.Request(edge.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
            "Authorization": f"Bearer {KEYS['cursor']}", **headers})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 403, headers


MALFORMED = [
    # (what, body, JSON-RPC code, id in the answer)
    ("malformed JSON", b'{"jsonrpc": "2.0", "id": 1, "method":', -32700, None),
    ("an empty array", b"[]", -32600, None),
    ("a batch", b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]', -32600, None),
    ("a bare string", b'"tools/list"', -32600, None),
    ("JSON-RPC 1.0", b'{"jsonrpc": "1.0", "id": 9, "method": "tools/list"}', -32600, 9),
    ("an object id", b'{"jsonrpc": "2.0", "id": {"a": 1}, "method": "tools/list"}', -32600, None),
    ("no method", b'{"jsonrpc": "2.0", "id": "q"}', -32600, "q"),
]


@pytest.mark.parametrize("what,body,code,rid", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_mcp_malformed_requests_get_400_and_a_jsonrpc_error(procs, tmp_path, what, body, code, rid):
    edge = start_mcp_edge(procs, tmp_path, {"servers": {}})
    for version in ("2026-07-28", "2025-11-25"):
        req = urllib.request.Request(edge.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": version, "Authorization": f"Bearer {KEYS['cursor']}"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 400, (what, version)
        assert e.value.headers.get("Content-Type", "").startswith("application/json")
        answer = json.loads(e.value.read())
        assert answer["jsonrpc"] == "2.0" and answer["id"] == rid, answer
        assert answer["error"]["code"] == code, answer


def test_mcp_children_are_gone_after_the_edge_stops(world):
    edge, _web, repo = world
    assert any(str(repo) in _cmdline(p) for p in os.listdir("/proc") if p.isdigit())
    edge.proc.stop()
    deadline = time.monotonic() + 10
    while any(str(repo) in _cmdline(p) for p in os.listdir("/proc") if p.isdigit()):
        assert time.monotonic() < deadline, "mcp-server-git outlived the edge"
        time.sleep(0.1)


def test_mcp_modern_client_reaches_a_legacy_server(procs, tmp_path):
    """Bridging the other way: a 2026-07-28 client calls a tool of a 2025-11-25-only server."""
    legacy = procs.start("v1-http-tools", [str(require(V1_PYTHON)), str(SERVERS_DIR / "v1_http_tools.py")])
    edge = start_mcp_edge(procs, tmp_path, {"servers": {"old": {"url": legacy.url() + "/mcp"}}})
    wait_served(edge, ["old"])
    assert edge.health()["old"]["protocol_version"] == "2025-11-25"

    async def call():
        async with v2_client(edge.url, KEYS["cursor"]) as c:
            assert c.protocol_version == "2026-07-28"
            assert [t.name for t in (await c.list_tools()).tools] == ["old__shout"]
            r = await c.call_tool("old__shout", {"text": "bridged"})
            assert tool_text(r) == "BRIDGED"

    v2(call)
    # Probed with ping (the legacy revision's liveness check): still healthy a few probes later.
    time.sleep(1.5)
    h = edge.health()["old"]
    assert h["state"] == "healthy" and h["consecutive_failures"] == 0, h


def test_mcp_legacy_sse_server_is_bridged(procs, tmp_path):
    """Servers on the legacy HTTP+SSE transport (2024-11-05), registered as url servers: the v2
    SDK's MCPServer by its `/sse` path and again by an explicit `"transport": "sse"`, and the v1
    SDK's FastMCP (2025-11-25, probed with `ping`)."""
    sse = start_http_tools(procs, name="sse-tools", transport="sse")
    v1 = procs.start("v1-sse-tools", [str(require(V1_PYTHON)), str(SERVERS_DIR / "v1_http_tools.py"),
                                      "--transport", "sse"])
    edge = start_mcp_edge(procs, tmp_path, {"servers": {
        "old": {"url": sse.url() + "/sse"},
        "named": {"url": sse.url() + "/sse", "transport": "sse", "allow_clients": ["n8n"]},
        "v1": {"url": v1.url() + "/sse"},
    }})
    wait_served(edge, ["old", "named", "v1"])
    assert edge.health()["v1"]["protocol_version"] == "2025-11-25"

    async def call():
        async with v2_client(edge.url, KEYS["cursor"]) as c:
            names = sorted(t.name for t in (await c.list_tools()).tools)
            assert names == ["old__count", "old__echo", "old__fail", "old__sleep", "v1__shout"], names
            r = await c.call_tool("old__echo", {"text": "over sse"})
            assert tool_text(r) == "over sse"
            r = await c.call_tool("old__sleep", {"seconds": 0.1})
            assert tool_text(r) == "slept 0.1"
            r = await c.call_tool("v1__shout", {"text": "legacy"})
            assert tool_text(r) == "LEGACY"

    v2(call)
    # The SDK's SSE server negotiates 2026-07-28, so it is probed like any 2026-07-28 server
    # (`tools/list`; `ping` is gone in that revision): still healthy a few probes later.
    for name in ("old", "named"):
        assert edge.health()[name]["protocol_version"] == "2026-07-28", edge.health()[name]
    time.sleep(1.5)
    for name in ("old", "named", "v1"):
        h = edge.health()[name]
        assert h["state"] == "healthy" and h["consecutive_failures"] == 0, h

    # The event stream is the session: when the server goes, so does the connection; a server
    # back on the same port is reached with a new session.
    port = int(v1.addr().rsplit(":", 1)[1])
    v1.stop()
    edge.wait_health("v1", lambda h: h["state"] == "unhealthy", what="unhealthy")
    procs.start("v1-sse-tools-again", [str(require(V1_PYTHON)), str(SERVERS_DIR / "v1_http_tools.py"),
                                       "--port", str(port), "--transport", "sse"])
    edge.wait_health("v1", lambda h: h["state"] == "healthy" and h["tools"], what="healthy again")

    async def back():
        async with v2_client(edge.url, KEYS["cursor"]) as c:
            r = await c.call_tool("v1__shout", {"text": "again"})
            assert tool_text(r) == "AGAIN"

    v2(back)


def test_mcp_transport_field_is_validated(procs, tmp_path):
    edge = start_mcp_edge(procs, tmp_path, {"servers": {}})
    bad = {"servers": {"x": {"url": "http://127.0.0.1:1/mcp", "transport": "websocket"}}}
    status, body = edge.admin("PUT", "/api/mcp/registry", json.dumps(bad).encode())
    assert status == 400 and "servers.x.transport" in body["detail"], body
    status, body = edge.admin("PUT", "/api/mcp/registry", json.dumps(
        {"servers": {"y": {"command": "x", "transport": "sse"}}}).encode())
    assert status == 400 and "servers.y.transport" in body["detail"], body


def test_mcp_secrets_are_written_by_name_and_never_read_back(procs, tmp_path):
    edge = start_mcp_edge(procs, tmp_path, {"servers": {"gh": {
        "url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "Bearer ${GH_TOKEN}"},
        "env_schema": {"GH_TOKEN": "required"}}}})
    edge.wait_health("gh", lambda h: h["state"] == "missing_secrets", what="missing its secret")
    (edge.dir / ".env").write_text("# tool secrets\nOTHER=1\n")
    status, body = edge.admin("PUT", "/api/mcp/secrets", json.dumps({"set": {"GH_TOKEN": "s3cret value"}}).encode())
    assert (status, body) == (200, {"names": ["GH_TOKEN", "OTHER"]}), body
    # Applied at once: the server is no longer waiting for it.
    edge.wait_health("gh", lambda h: h["state"] != "missing_secrets", what="started with its secret")
    env = edge.dir / ".env"
    assert env.read_text() == '# tool secrets\nOTHER=1\nGH_TOKEN="s3cret value"\n'
    assert env.stat().st_mode & 0o777 == 0o600
    # Names come back, values never.
    status, body = edge.admin("GET", "/api/mcp/secrets")
    assert (status, body) == (200, {"names": ["GH_TOKEN", "OTHER"]})
    for bad, why in [({"set": {"A": "x\nB=1"}}, "line break"), ({"set": {"A B": "x"}}, "variable name"),
                     ({"set": {}}, "no variable"), (["GH_TOKEN"], "object"), ({"GH_TOKEN": "x"}, "unknown field")]:
        status, body = edge.admin("PUT", "/api/mcp/secrets", json.dumps(bad).encode())
        assert status == 400 and why in body["detail"], (bad, body)
    assert edge.admin("PUT", "/api/mcp/secrets", b'{"set": {"A": "1"}}', token=KEYS["n8n"])[0] == 403
    assert edge.admin("GET", "/api/mcp/secrets", token=None)[0] == 401
    assert "A=" not in env.read_text()
