"""The OpenClaw stand-in of the browser tests, and the two small servers they need.

Runs inside a container of the test (tests/browser_fixtures.py builds it offline), never on the
host:

    standin.py visit --cdp http://browser:9222 URL   what OpenClaw's browser tool does, over CDP:
                                                     open a tab, navigate, read the DOM text, take
                                                     a screenshot, close the tab; prints one JSON
    standin.py origin --port 8080                    the test origin: a page with a known text
    standin.py canary --port 8080                    a TCP listener that logs every connection

The CDP steps follow OpenClaw's own client (src/browser/cdp.ts): `GET /json/version`, take
`webSocketDebuggerUrl` (a loopback host in it is replaced by the cdpUrl's host, as OpenClaw's
normalizeCdpWsUrl does), then Target.createTarget and a flat session on the new target. No Origin
header is sent, like Node's `ws`.
"""
from __future__ import annotations

import argparse
import base64
import http.server
import json
import socket
import sys
import time
import urllib.parse
import urllib.request

PAGE_TEXT = "hello from the test origin"


class Cdp:
    """One browser-level CDP connection with flat sessions."""

    def __init__(self, ws_url: str, timeout: float):
        import websocket  # websocket-client, copied into the image

        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(method)

    def wait_event(self, method: str, session: str, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        for e in self.events:
            if e.get("method") == method and e.get("sessionId") == session:
                return e
        self.ws.settimeout(0.5)
        while time.monotonic() < deadline:
            try:
                e = json.loads(self.ws.recv())
            except Exception:  # noqa: BLE001 (the socket's timeout type differs by version)
                continue
            self.events.append(e)
            if e.get("method") == method and e.get("sessionId") == session:
                return e
        return None


def normalize_ws(ws_url: str, cdp_url: str) -> str:
    ws, cdp = urllib.parse.urlsplit(ws_url), urllib.parse.urlsplit(cdp_url)
    if ws.hostname in ("localhost", "127.0.0.1", "::1") and cdp.hostname not in ("localhost", "127.0.0.1"):
        ws = ws._replace(netloc=cdp.netloc)
    return urllib.parse.urlunsplit(ws)


def visit(cdp_url: str, url: str, timeout: float) -> dict:
    with urllib.request.urlopen(cdp_url.rstrip("/") + "/json/version", timeout=10) as resp:
        version = json.load(resp)
    ws_url = normalize_ws(version["webSocketDebuggerUrl"], cdp_url)
    cdp = Cdp(ws_url, timeout)
    out: dict = {"browser": version.get("Browser"), "ws": ws_url, "url": url}
    target = cdp.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    try:
        session = cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        cdp.send("Page.enable", session=session)
        cdp.send("Network.enable", session=session)
        nav = cdp.send("Page.navigate", {"url": url}, session=session, timeout=timeout)
        out["error_text"] = nav.get("errorText")
        if not nav.get("errorText"):
            out["loaded"] = cdp.wait_event("Page.loadEventFired", session, timeout) is not None
        status = None
        for e in cdp.events:
            if (e.get("method") == "Network.responseReceived" and e.get("sessionId") == session
                    and e["params"].get("type") == "Document"):
                status = e["params"]["response"]["status"]
        out["status"] = status
        text = cdp.send("Runtime.evaluate", {"expression": "document.body ? document.body.innerText : ''",
                                             "returnByValue": True}, session=session)
        out["text"] = text.get("result", {}).get("value", "")
        shot = cdp.send("Page.captureScreenshot", {"format": "png"}, session=session, timeout=timeout)
        png = base64.b64decode(shot.get("data", ""))
        out["screenshot_bytes"] = len(png)
        out["screenshot_png"] = png[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        cdp.send("Target.closeTarget", {"targetId": target})
        cdp.ws.close()
    return out


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = (f"<!doctype html><title>origin</title><h1>{PAGE_TEXT}</h1>"
                f"<p>path {self.path}</p>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:
        print("origin request", self.command, self.path, flush=True)


def origin(port: int) -> None:
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), _Page)
    print(f"origin listening on {port}", flush=True)
    server.serve_forever()


def canary(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(16)
    print(f"canary listening on {port}", flush=True)
    while True:
        conn, peer = sock.accept()
        print(f"canary connection from {peer[0]}", flush=True)
        conn.close()


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("visit")
    v.add_argument("--cdp", default="http://browser:9222")
    v.add_argument("--timeout", type=float, default=20)
    v.add_argument("url")
    for name in ("origin", "canary"):
        s = sub.add_parser(name)
        s.add_argument("--port", type=int, default=8080)
    a = p.parse_args()
    if a.cmd == "visit":
        print(json.dumps(visit(a.cdp, a.url, a.timeout)))
        return 0
    if a.cmd == "origin":
        origin(a.port)
    else:
        canary(a.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
