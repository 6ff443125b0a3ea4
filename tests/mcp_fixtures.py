"""MCP fixtures: real MCP servers, the edge configured with an MCP registry, and both SDK clients.

- `mcp-server-time` / `mcp-server-git` (PyPI, in .venv) run as `command` servers of the edge.
- `tests/mcp_servers/http_tools.py` (official SDK, MCPServer) is the `url` server (streamable
  HTTP, or legacy HTTP+SSE with `--transport sse`).
- The v2 SDK client runs in-process (`mcp.Client`, opens with `server/discover`); the v1 SDK
  client runs as a subprocess from `.venv-mcp-v1` (opens with `initialize`).
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import ROOT, start_edge

VENV_BIN = ROOT / ".venv" / "bin"
V1_PYTHON = ROOT / ".venv-mcp-v1" / "bin" / "python"
SERVERS_DIR = Path(__file__).resolve().parent / "mcp_servers"

ADMIN_TOKEN = "admin-token-for-mcp-tests"
KEYS = {"n8n": "n8n-key-for-mcp-tests", "cursor": "cursor-key-for-mcp-tests"}


def require(path: Path) -> Path:
    if not path.exists():
        raise AssertionError(f"{path} is missing: ./aibox pytest builds the venvs from tests/requirements*.txt")
    return path


def start_http_tools(procs, port: int = 0, name: str = "http-tools", transport: str = "streamable-http"):
    """The FastMCP server: `p.url() + "/mcp"` (streamable HTTP) or `p.url() + "/sse"`
    (`transport="sse"`, the legacy HTTP+SSE transport) is its endpoint."""
    return procs.start(name, [str(require(VENV_BIN / "python")), str(SERVERS_DIR / "http_tools.py"),
                              "--port", str(port), "--transport", transport])


def make_git_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    subprocess.run(["git", "init", "-q", str(path)], check=True, env=env)
    (path / "README.md").write_text("hello\n")
    subprocess.run(["git", "-C", str(path), "add", "README.md"], check=True, env=env)
    subprocess.run(["git", "-C", str(path), "commit", "-qm", "first"], check=True, env=env)
    return path


@dataclass
class McpEdge:
    proc: object
    dir: Path

    @property
    def url(self) -> str:
        return self.proc.url() + "/mcp"

    @property
    def registry(self) -> Path:
        return self.dir / "registry.json"

    def admin(self, method: str, path: str, body: bytes | None = None, token: str | None = ADMIN_TOKEN,
              headers: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(self.proc.url() + path, data=body, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if body is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, {"raw": raw.decode(errors="replace")}

    def health(self) -> dict:
        status, body = self.admin("GET", "/api/mcp/health")
        assert status == 200, body
        return {s["name"]: s for s in body["servers"]}

    def wait_health(self, server: str, pred, timeout: float = 30.0, what: str = "") -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.health().get(server)
            if last is not None and pred(last):
                return last
            time.sleep(0.1)
        raise AssertionError(f"{server}: {what or 'condition'} not reached; last health: {last}")


def edge_config(dir: Path, extra_mcp: str = "") -> str:
    return f"""
admin_token_env = "AIBOX_ADMIN_TOKEN"

[[clients]]
name = "n8n"
key_env = "N8N_KEY"

[[clients]]
name = "cursor"
key_env = "CURSOR_KEY"

[mcp]
registry = "{dir / 'registry.json'}"
servers_txt = "{dir / 'servers.txt'}"
env_file = "{dir / '.env'}"
probe_interval_ms = 300
probe_timeout_ms = 2000
unhealthy_after = 3
reload_interval_ms = 200
max_backoff_ms = 600
{extra_mcp}
"""


def start_mcp_edge(procs, tmp_path: Path, registry: dict, extra_mcp: str = "") -> McpEdge:
    dir = tmp_path / "mcp"
    dir.mkdir(parents=True, exist_ok=True)
    (dir / "registry.json").write_text(json.dumps(registry, indent=2))
    env = {"AIBOX_ADMIN_TOKEN": ADMIN_TOKEN, "N8N_KEY": KEYS["n8n"], "CURSOR_KEY": KEYS["cursor"],
           "RUST_LOG": "info,aibox_mcp=debug"}
    proc = start_edge(procs, tmp_path, edge_config(dir, extra_mcp), env=env)
    return McpEdge(proc=proc, dir=dir)


def wait_served(edge: McpEdge, servers: list[str], timeout: float = 60.0) -> None:
    for s in servers:
        edge.wait_health(s, lambda h: h["state"] in ("healthy", "degraded") and h["tools"], timeout,
                         "served with tools")


@asynccontextmanager
async def v2_client(url: str, key: str | None):
    """The official v2 SDK client (`mode="auto"`: `server/discover`, then 2026-07-28)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0)) as http:
        async with Client(streamable_http_client(url, http_client=http), cache=None) as client:
            yield client


def v2(coro_fn):
    """Run an async test body with asyncio (no pytest plugin needed)."""
    return asyncio.run(coro_fn())


def v1_run(url: str, key: str | None, steps: list, timeout: float = 90.0) -> dict:
    """The official v1 SDK client in its own venv; returns its JSON report."""
    out = subprocess.run([str(require(V1_PYTHON)), str(SERVERS_DIR / "v1_client.py"), url, key or "",
                          json.dumps(steps)], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"v1 client failed:\n{out.stdout}\n{out.stderr[-4000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])
