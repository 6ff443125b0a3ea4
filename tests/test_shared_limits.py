"""Two real edges on port 0 sharing their clients' limits in a real `redis-server` (Debian's, started
here on a free loopback port), as two replicas do on Swarm (docs/SCALING.md): one window for both,
a local fallback that is logged when Redis goes, and sharing again when it is back.
"""
from __future__ import annotations

import shutil
import subprocess
import time

import openai
import pytest

from conftest import fake_upstream, free_port, start_edge

KEY = "shared-limits-key-0123456789"
FRESH_KEY = "shared-limits-key-fresh-0123456789"


class RedisServer:
    def __init__(self, port: int | None = None):
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed (Debian: apt-get install redis-server)", pytrace=False)
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True,
                             text=True).stdout.strip() != "PONG":
            assert time.monotonic() < deadline, "redis-server did not answer"
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def redis():
    r = RedisServer()
    yield r
    r.stop()


def edges(procs, tmp_path, redis_port: int, rpm: int):
    ollama = fake_upstream(procs, "ollama")
    config = (f'[[providers]]\nname = "ollama"\nkind = "ollama"\nbase_url = "http://{ollama.addr()}"\n'
              f'[[clients]]\nname = "team"\nkey_env = "SHARED_KEY"\nrpm = {rpm}\n'
              f'[[clients]]\nname = "fresh"\nkey_env = "FRESH_KEY"\nrpm = {rpm}\n'
              '[anonymous]\nmodels = []\nmcp_servers = []\n'
              f'[mcp]\nregistry = "{tmp_path}/none.json"\nservers_txt = "{tmp_path}/none.txt"\n')
    env = {"SHARED_KEY": KEY, "FRESH_KEY": FRESH_KEY, "AIBOX_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
           # A loaded machine must not turn a slow answer into a fallback (a stopped Redis
           # refuses the connection at once).
           "AIBOX_REDIS_TIMEOUT_MS": "3000", "RUST_LOG": "info"}
    return [start_edge(procs, tmp_path, config, env=env, name=f"edge-{i}") for i in (1, 2)]


def status(edge, key: str = KEY) -> int:
    c = openai.OpenAI(base_url=edge.url() + "/v1", api_key=key, max_retries=0, timeout=30)
    try:
        c.chat.completions.create(model="ollama/llama3:8b", messages=[{"role": "user", "content": "hi"}])
        return 200
    except openai.APIStatusError as e:
        return e.status_code
    finally:
        c.close()


def test_two_edges_share_one_window(procs, tmp_path, redis):
    a, b = edges(procs, tmp_path, redis.port, rpm=4)
    statuses = [status((a, b)[i % 2]) for i in range(12)]
    assert statuses.count(200) == 4, statuses


def test_without_redis_each_edge_holds_its_own_limit_and_says_so_then_sharing_resumes(procs, tmp_path, redis):
    a, b = edges(procs, tmp_path, redis.port, rpm=3)
    assert [status(a), status(b)] == [200, 200]
    redis.stop()
    # Never a hard outage, never unlimited: 3 per edge while Redis is away.
    statuses = [status((a, b)[i % 2]) for i in range(10)]
    assert statuses.count(200) == 6, statuses
    for e in (a, b):
        e.wait_for_line("shared limits: Redis is unreachable", timeout=10)

    back = RedisServer(redis.port)
    try:
        deadline = time.monotonic() + 30
        while not all("shared limits: Redis answers again" in e.output() for e in (a, b)):
            assert time.monotonic() < deadline, "sharing did not resume"
            status(a), status(b)
            time.sleep(0.3)
        # Shared again: one window of 3 for both edges.
        statuses = [status((a, b)[i % 2], FRESH_KEY) for i in range(8)]
        assert statuses.count(200) == 3, statuses
    finally:
        back.stop()
