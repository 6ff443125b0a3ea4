"""docs/ROLLBACK.md, step 3: registry.json removed, the edge falls back to servers.txt.

The real edge binary with a registry.json that defines `time` (the real PyPI mcp-server-time,
stdio) and a servers.txt that names the same server in its migration form (`name command arg…`).
The step as the doc gives it: keep a copy of registry.json, delete it, restart the edge. After the
restart `time` is served from servers.txt alone, and an MCP client (the official v2 SDK) calls
its tool. While the edge runs, removing registry.json changes nothing (the last good registry
stays in force), which is why the doc says to restart it.
"""
from __future__ import annotations

import json
import shutil
import time

from conftest import start_edge
from mcp_fixtures import ADMIN_TOKEN, KEYS, VENV_BIN, McpEdge, edge_config, require, start_mcp_edge, v2, v2_client, \
    wait_served


def _registry_state(edge: McpEdge) -> dict:
    import urllib.request
    req = urllib.request.Request(edge.proc.url() + "/api/mcp/registry",
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_registry_json_removed_falls_back_to_servers_txt(procs, tmp_path):
    server = str(require(VENV_BIN / "mcp-server-time"))
    registry = {"servers": {"time": {"command": server, "args": ["--local-timezone", "UTC"],
                                     "allow_clients": ["*"]}}}
    edge = start_mcp_edge(procs, tmp_path, registry)
    # servers.txt in the migration form: what the edge reads when registry.json is gone.
    (edge.dir / "servers.txt").write_text(f"# rollback: the servers without registry.json\ntime {server} --local-timezone UTC\n")
    wait_served(edge, ["time"])

    # Rollback step: keep a copy, remove registry.json. The running edge keeps the last good one.
    shutil.copy2(edge.dir / "registry.json", tmp_path / "registry.json.bak")
    (edge.dir / "registry.json").unlink()
    time.sleep(1.0)  # several reload intervals (200 ms in this config)
    assert "time" in {s["name"] for s in _registry_state(edge)["servers"]}

    # ... and a restart of the edge reads servers.txt alone.
    edge.proc.stop()
    env = {"AIBOX_ADMIN_TOKEN": ADMIN_TOKEN, "N8N_KEY": KEYS["n8n"], "CURSOR_KEY": KEYS["cursor"]}
    restarted = McpEdge(proc=start_edge(procs, tmp_path, edge_config(edge.dir), env=env, name="edge-rollback"),
                        dir=edge.dir)
    assert not (edge.dir / "registry.json").exists()
    wait_served(restarted, ["time"])
    state = _registry_state(restarted)
    assert [s["name"] for s in state["servers"]] == ["time"], state
    assert not state.get("error"), state

    async def call_the_tool():
        async with v2_client(restarted.url, KEYS["cursor"]) as client:
            tools = await client.list_tools()
            names = [t.name for t in tools.tools]
            assert "time__get_current_time" in names, names
            result = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert not result.is_error, result
            assert "UTC" in " ".join(getattr(c, "text", "") for c in result.content)

    v2(call_the_tool)
