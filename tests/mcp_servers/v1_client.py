"""Drive the edge's /mcp with the official `mcp` v1 Python SDK (2025-11-25: initialize, session).

Run with the v1 venv (`.venv-mcp-v1/bin/python`), which cannot share a venv with the v2 SDK:

    v1_client.py URL KEY '[["list"], ["call", "time__get_current_time", {"timezone": "UTC"}]]'

Prints one JSON object: the negotiated protocol version, the session id, and one result per
step (`{"tools": [...]}`, `{"ok": true, "is_error": false, "text": "..."}` or
`{"error": {"code": ..., "message": ...}}`).
"""
from __future__ import annotations

import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError


async def run(url: str, key: str, steps: list) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    out: dict = {"results": []}
    async with streamablehttp_client(url, headers=headers) as (read, write, get_session_id):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            out["protocol_version"] = init.protocolVersion
            out["server"] = init.serverInfo.name
            out["session_id"] = get_session_id()
            for step in steps:
                try:
                    if step[0] == "list":
                        tools = await session.list_tools()
                        out["results"].append({"tools": [t.name for t in tools.tools]})
                    elif step[0] == "call":
                        r = await session.call_tool(step[1], step[2] if len(step) > 2 else {})
                        text = " ".join(c.text for c in r.content if getattr(c, "type", "") == "text")
                        out["results"].append({"ok": True, "is_error": bool(r.isError), "text": text})
                    elif step[0] == "ping":
                        await session.send_ping()
                        out["results"].append({"ok": True})
                    else:
                        raise ValueError(f"unknown step {step[0]!r}")
                except McpError as e:
                    out["results"].append({"error": {"code": e.error.code, "message": e.error.message}})
    return out


def main() -> None:
    url, key, steps = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    print(json.dumps(asyncio.run(run(url, key, steps))))


if __name__ == "__main__":
    main()
