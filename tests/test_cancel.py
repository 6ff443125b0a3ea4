"""A client that leaves while its model loads: the edge drops the upstream request at once.

Ollama answers a chat for a model that is not in memory only after loading it (seconds to
minutes); the edge waits up to `first_byte_loading_ms` for those headers. A client that gives up
meanwhile must not leave the upstream generating for nobody: the edge watches the client's
connection while it waits, as Pingora's own proxy loop does, and closes the upstream connection
the moment the client's closes. The fake upstream's `fake-slow` model stands for the load and
records when its connection was closed under it.
"""
from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from conftest import fake_upstream, start_edge

LOAD_MS = 30_000


@pytest.fixture
def stack(procs, tmp_path):
    fake = fake_upstream(procs, "ollama", "--slow-ms", str(LOAD_MS))
    edge = start_edge(procs, tmp_path, "", {"OLLAMA_URL": fake.url(), "CONTROLLER_URL": ""})
    deadline = time.monotonic() + 10
    while not httpx.get(f"{edge.url()}/ready").json()["ready"]:
        assert time.monotonic() < deadline, "the edge never saw the fake's models"
        time.sleep(0.05)
    return edge, fake


def requests_seen(fake) -> int:
    return httpx.get(f"{fake.url()}/_fake/stats").json()["requests"]


@pytest.mark.parametrize("path, body", [
    ("/api/chat", {"model": "fake-slow", "messages": [{"role": "user", "content": "hi"}], "stream": False}),
    ("/v1/chat/completions", {"model": "fake-slow", "messages": [{"role": "user", "content": "hi"}],
                              "stream": True}),
])
def test_the_upstream_sees_the_client_leave_within_100_ms(stack, path, body):
    edge, fake = stack
    before = requests_seen(fake)
    host, port = edge.addr().rsplit(":", 1)
    payload = json.dumps(body).encode()
    client = socket.create_connection((host, int(port)))
    client.sendall(f"POST {path} HTTP/1.1\r\nHost: {edge.addr()}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    # The request reached the upstream, which now "loads the model".
    deadline = time.monotonic() + 10
    while requests_seen(fake) == before:
        assert time.monotonic() < deadline, "the request never reached the upstream"
        time.sleep(0.01)
    time.sleep(0.3)
    left_at = time.time() * 1000
    client.close()

    deadline = time.monotonic() + 5
    while not (cancelled := httpx.get(f"{fake.url()}/_fake/cancelled").json()):
        assert time.monotonic() < deadline, "the upstream request outlived its client"
        time.sleep(0.01)
    latency_ms = cancelled[0]["closed_at_unix_ms"] - left_at
    print(f"{path}: upstream saw the close {latency_ms:.1f} ms after the client left")
    assert latency_ms <= 100, f"the upstream saw the close {latency_ms:.0f} ms after the client left"
    assert cancelled[0]["waited_ms"] < LOAD_MS

    # The edge logs the request as the client's leaving, with the status nginx gives it.
    line = edge.wait_for_line(r'"client_gone":true', timeout=5)
    assert '"status":499' in line
