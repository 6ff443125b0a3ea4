"""A streamable-HTTP MCP server built with the official SDK (MCPServer, formerly FastMCP).

Tools: `echo` (answers at once), `sleep` (sleeps, for timeouts and cancellation), `count`
(reports progress), `fail`
(raises, for tool errors); prompt `greet`; resource `note://readme`. Binds `--port` (0 = any), prints `api listening on HOST:PORT` once
the socket is bound, then serves `/mcp`; with `--transport sse` it speaks the legacy HTTP+SSE
transport instead (GET `/sse`, POST `/messages/`); with `--transport stdio` it is a stdio
server (its notes then go to stderr, stdout being the protocol), e.g. inside a tool container.
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("http-tools")
# Where the tools' notes go: stdout, except under stdio where stdout carries the protocol.
NOTES = sys.stdout


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
async def sleep(seconds: float) -> str:
    """Sleep for the given number of seconds, then answer."""
    # Printed so tests can see that a timed-out call was cancelled here, not left running.
    print(f"sleep {seconds} started", file=NOTES, flush=True)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        print(f"sleep {seconds} cancelled", file=NOTES, flush=True)
        raise
    print(f"sleep {seconds} finished", file=NOTES, flush=True)
    return f"slept {seconds}"


@server.tool()
async def count(to: int, ctx: Context) -> str:
    """Count to `to`, reporting progress at each step."""
    for i in range(1, to + 1):
        await ctx.report_progress(i, to, f"step {i}")
        await asyncio.sleep(0.05)
    return f"counted to {to}"


@server.tool()
def fail(reason: str = "boom") -> str:
    """Always fail with the given reason."""
    raise ToolError(reason)


@server.prompt()
def greet(name: str) -> str:
    """A greeting prompt."""
    return f"Say hello to {name}."


@server.resource("note://readme")
def readme() -> str:
    """A fixed note."""
    return "the readme note"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--transport", choices=["streamable-http", "sse", "stdio"], default="streamable-http")
    args = ap.parse_args()
    if args.transport == "stdio":
        global NOTES
        NOTES = sys.stderr
        server.run("stdio")
        return
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(64)
    app = server.sse_app() if args.transport == "sse" else server.streamable_http_app()
    config = uvicorn.Config(app, log_level="warning")
    print(f"api listening on 127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
