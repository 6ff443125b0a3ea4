"""Benchmark rows: a tool call through the edge to a bridged server vs the same server over stdio.

Not a test. Starts `mcp-server-time` behind one edge (target/debug, or
AIBOX_BIN_DIR=target/release): as the edge's stdio child, and wrapped by `mcp-bridge`
(stdio → streamable HTTP) on loopback, both registered with the edge; with `--container`, also
in a tool container as the box runs it (the offline `FROM scratch` python image of
tests/test_mcp_containers.py, the bridge mounted read only, hardened, on a network of its own,
reached at its address like the edge reaches `mcp-time`). Then times `get_current_time` with the
official v2 SDK client on one connection each, and the same server spawned by the SDK's own
stdio client with no edge at all ("direct"):

    .venv/bin/python tests/bench_mcp_bridge.py [--calls 200] [--container]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mcp import Client, StdioServerParameters  # noqa: E402

from conftest import Proc, free_port  # noqa: E402
from mcp_fixtures import KEYS, VENV_BIN, edge_config, v2_client  # noqa: E402

BIN = Path(os.environ.get("AIBOX_BIN_DIR", Path(__file__).resolve().parent.parent / "target" / "debug"))


async def timed_calls(url: str, tool: str, n: int) -> list[float]:
    async with v2_client(url, KEYS["cursor"]) as c:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            await c.call_tool(tool, {"timezone": "UTC"})
            out.append((time.perf_counter() - t) * 1000)
        return out


async def interleaved(url: str, servers: list[str], n: int) -> dict[str, list[float]]:
    """One connection per way of calling, the calls taken in turns (direct, then each server
    through the edge, then again), so a machine whose load changes loads every row alike."""
    params = StdioServerParameters(command=str(VENV_BIN / "mcp-server-time"), args=["--local-timezone", "UTC"])
    async with contextlib.AsyncExitStack() as stack:
        # "direct": the SDK's stdio client spawning the server itself: no edge, no HTTP.
        clients = {"direct": (await stack.enter_async_context(Client(params, cache=None)), "get_current_time")}
        for name in servers:
            c = await stack.enter_async_context(v2_client(url, KEYS["cursor"]))
            clients[name] = (c, f"{name}__get_current_time")
        out: dict[str, list[float]] = {name: [] for name in clients}
        for i in range(n + 10):
            for name, (c, tool) in clients.items():
                t = time.perf_counter()
                await c.call_tool(tool, {"timezone": "UTC"})
                if i >= 10:  # after a warm-up
                    out[name].append((time.perf_counter() - t) * 1000)
        return out


def start_container(tmp: Path, name: str) -> tuple[str, list[list[str]]]:
    """A tool container as the controller makes it; returns its address and the clean-up commands."""
    from test_mcp_containers import build_tool_images, ldd_libs
    from compose_fixtures import run

    images = build_tool_images(tmp / "ctx", name)
    cleanup = [["docker", "rmi", images["git"]], ["docker", "rmi", images["time"]]]
    bridge = tmp / "bridge"
    (bridge / "lib").mkdir(parents=True)
    subprocess.run(["cp", str(BIN / "mcp-bridge"), str(bridge / "mcp-bridge")], check=True)
    loader = None
    for lib in ldd_libs([BIN / "mcp-bridge"]):
        dest = bridge / "lib" / Path(lib).name
        subprocess.run(["cp", "-L", lib, str(dest)], check=True)
        if Path(lib).name.startswith("ld-linux"):
            loader = dest.name
    net = f"{name}-net"
    run(["docker", "network", "create", net])
    cleanup.insert(0, ["docker", "network", "rm", net])
    run(["docker", "run", "-d", "--name", name, "--network", net, "--user", "65532:65532", "--read-only",
         "--tmpfs", "/tmp:size=64m,mode=1777", "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
         "--memory", "512m", "--pids-limit", "128", "--init", "-e", "HOME=/tmp",
         "-v", f"{bridge}:/aibox:ro", "--entrypoint", f"/aibox/lib/{loader}", images["time"],
         "--library-path", "/aibox/lib", "/aibox/mcp-bridge", "--listen", "0.0.0.0:8000", "--",
         "/usr/bin/python3.11", "-m", "mcp_server_time", "--local-timezone", "UTC"])
    cleanup.insert(0, ["docker", "rm", "-f", name])
    ip = run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name]).stdout.strip()
    return ip, cleanup


def row(label: str, ms: list[float]) -> str:
    ms = sorted(ms)
    p95 = ms[int(len(ms) * 0.95) - 1]
    return f"{label:<8} median {statistics.median(ms):7.2f} ms   p95 {p95:7.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--container", action="store_true", help="also a real tool container (needs Docker)")
    args = ap.parse_args()
    port = free_port()
    cleanup: list[list[str]] = []
    bridge = subprocess.Popen([str(BIN / "mcp-bridge"), "--listen", f"127.0.0.1:{port}", "--",
                               str(VENV_BIN / "mcp-server-time"), "--local-timezone", "UTC"])
    procs: list[Proc] = []
    try:
        tmp = Path(tempfile.mkdtemp(prefix="aibox-bench-bridge-"))
        servers = {"stdio": {"command": str(VENV_BIN / "mcp-server-time"), "args": ["--local-timezone", "UTC"]},
                   "bridged": {"url": f"http://127.0.0.1:{port}/mcp"}}
        if args.container:
            ip, cleanup = start_container(tmp, f"aibox-bench-{os.getpid()}")
            servers["container"] = {"url": f"http://{ip}:8000/mcp"}
        (tmp / "registry.json").write_text(json.dumps({"servers": servers}))
        cfg = tmp / "edge.toml"
        cfg.write_text(edge_config(tmp).replace("probe_interval_ms = 300", "probe_interval_ms = 5000"))
        edge = Proc("bench-edge", ["edge", "--log-format", "json"], env={
            "EDGE_LISTEN": "127.0.0.1:0", "EGRESS_LISTEN": "127.0.0.1:0", "EDGE_CONFIG": str(cfg),
            "RUST_LOG": "warn", "AIBOX_ADMIN_TOKEN": "bench-admin-token-0123456789", "N8N_KEY": KEYS["n8n"],
            "CURSOR_KEY": KEYS["cursor"]})
        procs.append(edge)
        url = edge.url() + "/mcp"
        deadline = time.monotonic() + 60
        for tool in [f"{name}__get_current_time" for name in servers]:
            while True:
                try:
                    asyncio.run(timed_calls(url, tool, 1))
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
        results = asyncio.run(interleaved(url, list(servers), args.calls))
        print(f"MCP tools/call get_current_time, {args.calls} calls each, taken in turns, one connection each "
              "(direct: the SDK's stdio client, no edge; the others through the edge)")
        for name, ms in results.items():
            print(row(name, ms))

        def ratio(a: str, b: str) -> None:
            ma, mb = statistics.median(results[a]), statistics.median(results[b])
            target = "within" if ma <= 1.2 * mb + 2 else "over"
            print(f"ratio {a}/{b} (median): {ma / mb:.2f} ({ma - mb:+.2f} ms; {target} 1.2x + 2 ms)")

        ratio("bridged", "stdio")
        ratio("bridged", "direct")
        if "container" in results:
            ratio("container", "stdio")
            ratio("container", "direct")
    finally:
        for p in reversed(procs):
            p.stop()
        bridge.terminate()
        bridge.wait(timeout=10)
        for cmd in cleanup:
            subprocess.run(cmd, capture_output=True)


if __name__ == "__main__":
    main()
