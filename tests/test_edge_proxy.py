"""The edge in front of the dashboard: every path the edge does not own is proxied by Pingora."""
from __future__ import annotations

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import start_edge

DNS_OFF = '[egress]\ndns_servers = ["127.0.0.1:9"]\n'


class Echo(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        body = json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_dashboard():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def get(url: str, headers: dict) -> tuple[dict, dict]:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        return json.load(r), dict(r.headers)


@pytest.mark.parametrize("trusted", [False, True])
def test_dashboard_paths_are_proxied_and_identity_headers_need_a_trusted_proxy(procs, tmp_path, echo_dashboard, trusted):
    config = ('trusted_proxies = ["127.0.0.1/32"]\n' if trusted else "") + DNS_OFF
    edge = start_edge(procs, tmp_path, config, env={"DASHBOARD_URL": echo_dashboard, "OLLAMA_URL": "http://127.0.0.1:9"})
    seen, headers = get(edge.url() + "/services?x=1", {"Tailscale-User-Login": "alice@example.com", "X-Request-ID": "rid-1"})
    assert seen["path"] == "/services?x=1"
    assert seen["headers"]["x-request-id"] == "rid-1" and headers["x-request-id"] == "rid-1"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert seen["headers"].get("tailscale-user-login") == ("alice@example.com" if trusted else None)


def test_edge_paths_never_reach_the_dashboard(procs, tmp_path, echo_dashboard):
    edge = start_edge(procs, tmp_path, DNS_OFF, env={"DASHBOARD_URL": echo_dashboard, "OLLAMA_URL": "http://127.0.0.1:9"})
    with urllib.request.urlopen(edge.url() + "/health", timeout=10) as r:
        assert json.load(r) == {"status": "ok"}
    try:
        urllib.request.urlopen(edge.url() + "/v1/nothing-here", timeout=10)
    except urllib.error.HTTPError as e:
        assert e.code == 404 and json.load(e)["error"]["code"] == "unknown_url"
    else:
        raise AssertionError("expected 404")
