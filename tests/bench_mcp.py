"""Benchmark row: MCP tool-call latency through the edge vs direct to the same server.

Not a test. Starts the FastMCP streamable-HTTP server (tests/mcp_servers/http_tools.py) and the
edge (target/debug, or AIBOX_BIN_DIR=target/release) with that server registered, then times
`echo` calls with the official v2 SDK client on one connection each way:

    .venv/bin/python tests/bench_mcp.py [--calls 200]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import Proc  # noqa: E402
from mcp_fixtures import KEYS, SERVERS_DIR, VENV_BIN, edge_config, v2_client  # noqa: E402


async def timed_calls(url: str, key: str | None, n: int) -> list[float]:
    async with v2_client(url, key) as c:
        name = "web__echo" if key else "echo"  # via the edge the tool is server__tool
        for _ in range(10):  # warm-up
            await c.call_tool(name, {"text": "x"})
        out = []
        for i in range(n):
            t = time.perf_counter()
            await c.call_tool(name, {"text": str(i)})
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
    procs: list[Proc] = []
    try:
        web = Proc("bench-http-tools", [str(VENV_BIN / "python"), str(SERVERS_DIR / "http_tools.py")])
        procs.append(web)
        tmp = Path(tempfile.mkdtemp(prefix="aibox-bench-mcp-"))
        (tmp / "registry.json").write_text(
            '{"servers": {"web": {"url": "%s/mcp", "timeout_sec": 30}}}' % web.url())
        cfg = tmp / "edge.toml"
        cfg.write_text(edge_config(tmp).replace("probe_interval_ms = 300", "probe_interval_ms = 5000"))
        edge = Proc("bench-edge", ["edge", "--log-format", "json"], env={
            "EDGE_LISTEN": "127.0.0.1:0", "EGRESS_LISTEN": "127.0.0.1:0", "EDGE_CONFIG": str(cfg),
            "RUST_LOG": "warn", "AIBOX_ADMIN_TOKEN": "bench-admin-token-0123456789", "N8N_KEY": KEYS["n8n"],
            "CURSOR_KEY": KEYS["cursor"]})
        procs.append(edge)
        deadline = time.monotonic() + 60
        while True:
            try:
                asyncio.run(timed_calls(edge.url() + "/mcp", KEYS["cursor"], 1))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        direct = asyncio.run(timed_calls(web.url() + "/mcp", None, args.calls))
        via = asyncio.run(timed_calls(edge.url() + "/mcp", KEYS["cursor"], args.calls))
        print(f"MCP tools/call echo, {args.calls} calls, one client connection each way")
        print(row("direct", direct))
        print(row("edge", via))
        print(f"ratio edge/direct (median): {statistics.median(via) / statistics.median(direct):.2f}")
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    main()
