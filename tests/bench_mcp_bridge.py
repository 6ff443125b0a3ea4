"""Benchmark row: a tool call through the edge to a bridged server vs the same server over stdio.

Not a test. Starts `mcp-server-time` twice behind one edge (target/debug, or
AIBOX_BIN_DIR=target/release): once as the edge's stdio child, once wrapped by `mcp-bridge`
(stdio → streamable HTTP, as in a tool container, here on loopback) registered as a `url`
server; then times `get_current_time` with the official v2 SDK client on one connection:

    .venv/bin/python tests/bench_mcp_bridge.py [--calls 200]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import Proc, free_port  # noqa: E402
from mcp_fixtures import KEYS, VENV_BIN, edge_config, v2_client  # noqa: E402

BIN = Path(os.environ.get("AIBOX_BIN_DIR", Path(__file__).resolve().parent.parent / "target" / "debug"))


async def timed_calls(url: str, tool: str, n: int) -> list[float]:
    async with v2_client(url, KEYS["cursor"]) as c:
        for _ in range(10):  # warm-up
            await c.call_tool(tool, {"timezone": "UTC"})
        out = []
        for _ in range(n):
            t = time.perf_counter()
            await c.call_tool(tool, {"timezone": "UTC"})
            out.append((time.perf_counter() - t) * 1000)
        return out


def row(label: str, ms: list[float]) -> str:
    ms = sorted(ms)
    p95 = ms[int(len(ms) * 0.95) - 1]
    return f"{label:<8} median {statistics.median(ms):7.2f} ms   p95 {p95:7.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    port = free_port()
    bridge = subprocess.Popen([str(BIN / "mcp-bridge"), "--listen", f"127.0.0.1:{port}", "--",
                               str(VENV_BIN / "mcp-server-time"), "--local-timezone", "UTC"])
    procs: list[Proc] = []
    try:
        tmp = Path(tempfile.mkdtemp(prefix="aibox-bench-bridge-"))
        (tmp / "registry.json").write_text(
            '{"servers": {"stdio": {"command": "%s", "args": ["--local-timezone", "UTC"]},'
            ' "bridged": {"url": "http://127.0.0.1:%d/mcp"}}}' % (VENV_BIN / "mcp-server-time", port))
        cfg = tmp / "edge.toml"
        cfg.write_text(edge_config(tmp).replace("probe_interval_ms = 300", "probe_interval_ms = 5000"))
        edge = Proc("bench-edge", ["edge", "--log-format", "json"], env={
            "EDGE_LISTEN": "127.0.0.1:0", "EGRESS_LISTEN": "127.0.0.1:0", "EDGE_CONFIG": str(cfg),
            "RUST_LOG": "warn", "AIBOX_ADMIN_TOKEN": "bench-admin-token-0123456789", "N8N_KEY": KEYS["n8n"],
            "CURSOR_KEY": KEYS["cursor"]})
        procs.append(edge)
        url = edge.url() + "/mcp"
        deadline = time.monotonic() + 60
        for tool in ("stdio__get_current_time", "bridged__get_current_time"):
            while True:
                try:
                    asyncio.run(timed_calls(url, tool, 1))
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
        stdio = asyncio.run(timed_calls(url, "stdio__get_current_time", args.calls))
        bridged = asyncio.run(timed_calls(url, "bridged__get_current_time", args.calls))
        print(f"MCP tools/call get_current_time through the edge, {args.calls} calls, one connection")
        print(row("stdio", stdio))
        print(row("bridged", bridged))
        ratio = statistics.median(bridged) / statistics.median(stdio)
        extra = statistics.median(bridged) - statistics.median(stdio)
        print(f"ratio bridged/stdio (median): {ratio:.2f} ({extra:+.2f} ms)")
    finally:
        for p in reversed(procs):
            p.stop()
        bridge.terminate()
        bridge.wait(timeout=10)


if __name__ == "__main__":
    main()
