"""A 2025-11-25 streamable-HTTP MCP server built with the v1 SDK (FastMCP), for bridging tests.

Run with the v1 venv: `.venv-mcp-v1/bin/python v1_http_tools.py [--port N] [--transport sse]`.
Tool: `shout`. Serves `/mcp`, or with `--transport sse` the legacy HTTP+SSE transport (`/sse`).
Prints `api listening on HOST:PORT` once bound.
"""
from __future__ import annotations

import argparse
import socket

import uvicorn
from mcp.server.fastmcp import FastMCP

server = FastMCP("legacy-tools")


@server.tool()
def shout(text: str) -> str:
    """Return the text in capitals."""
    return text.upper()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--transport", choices=["streamable-http", "sse"], default="streamable-http")
    args = ap.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(64)
    config = uvicorn.Config(server.sse_app() if args.transport == "sse" else server.streamable_http_app(),
                            log_level="warning")
    print(f"api listening on 127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
