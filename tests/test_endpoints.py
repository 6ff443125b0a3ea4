"""Many inference hosts behind one provider: balancing, passive ejection, failover.

Three fake Ollama endpoints serve one provider, `pool`. Clients never see a host fail: a load
keeps going with zero failures while one endpoint is killed, a slow endpoint gets less of the
traffic, and a model that only one endpoint has always goes there.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import ollama
import openai
import pytest

from conftest import fake_upstream, start_edge

ADMIN = "admin-token-0123456789abcdef"
HEALTH = """
[health]
probe_interval_ms = 200
eject_ms = 1000
eject_after = 2
"""


def pool_edge(procs, tmp_path, fakes, health: str = HEALTH):
    endpoints = "".join(f'[[providers.endpoints]]\nurl = "{f.url()}"\n' for f in fakes)
    config = f"{health}\n[[providers]]\nname = \"pool\"\nkind = \"ollama\"\n{endpoints}"
    edge = start_edge(procs, tmp_path, config, {"AIBOX_ADMIN_TOKEN": ADMIN, "OLLAMA_URL": "",
                                                "CONTROLLER_URL": ""})
    wait_until(lambda: all(e["healthy"] for e in endpoints_of(edge)), "every endpoint listed its models")
    return edge


def endpoints_of(edge) -> list[dict]:
    ready = httpx.get(f"{edge.url()}/ready").json()
    return next(p for p in ready["providers"] if p["name"] == "pool")["endpoints"]


def wait_until(check, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def served(fake) -> int:
    return httpx.get(f"{fake.url()}/_fake/stats").json()["requests"]


def test_killing_an_endpoint_mid_load_fails_no_request(procs, tmp_path):
    # Each fake takes 20 ms per answer, so requests are in flight at every endpoint at any time.
    fakes = [fake_upstream(procs, "ollama", "--name", f"e{i}", "--latency-ms", "20", name=f"fake-e{i}")
             for i in range(3)]
    # Probes are slow here so that requests, not a probe, are what meet the dead endpoint.
    edge = pool_edge(procs, tmp_path, fakes, HEALTH.replace("probe_interval_ms = 200", "probe_interval_ms = 1500")
                     .replace("eject_ms = 1000", "eject_ms = 3000"))
    client = openai.OpenAI(base_url=f"{edge.url()}/v1", api_key="unused", max_retries=0, timeout=30)
    victim = fakes[1]
    hundred_done = threading.Event()
    done = [0]
    lock = threading.Lock()

    def kill_while_busy() -> None:
        # SIGKILL once a third of the load is through, at a moment the victim holds requests:
        # no goodbye, its connections just die under them.
        hundred_done.wait(timeout=60)
        wait_until(lambda: next(e for e in endpoints_of(edge) if e["url"] == victim.url())["in_flight"] > 0,
                   "the victim holds requests", timeout=20)
        victim.signal(9)

    def one(i: int) -> str:
        r = client.chat.completions.create(model="pool/llama3:8b",
                                           messages=[{"role": "user", "content": f"request {i}"}])
        with lock:
            done[0] += 1
            if done[0] == 100:
                hundred_done.set()
        return r.choices[0].message.content

    killer = threading.Thread(target=kill_while_busy)
    killer.start()
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(one, range(300)))  # an exception in any request fails the test
    killer.join()

    assert replies == [f"You said: request {i}" for i in range(300)]
    assert victim.proc.wait(timeout=5) is not None
    assert served(fakes[0]) + served(fakes[2]) > 150, "the survivors carried the rest"

    # The dead endpoint is reported on /ready and in the metrics; the provider stays ready.
    wait_until(lambda: next(e for e in endpoints_of(edge) if e["url"] == victim.url())["ejected"],
               "the killed endpoint is ejected")
    assert httpx.get(f"{edge.url()}/ready").status_code == 200

    def endpoint_up() -> dict[str, str]:
        return {line.split("} ")[0]: line.split("} ")[1]
                for line in httpx.get(f"{edge.url()}/metrics").text.splitlines()
                if line.startswith("aibox_endpoint_up{") and 'provider="pool"' in line}
    wait_until(lambda: [v for k, v in endpoint_up().items() if f'endpoint="{victim.url()}"' in k] == ["0"],
               "aibox_endpoint_up is 0 for the killed endpoint")
    assert sorted(endpoint_up().values()) == ["0", "1", "1"]
    # Requests did meet the dead endpoint, and went elsewhere before any byte reached the client.
    failovers = [line for line in httpx.get(f"{edge.url()}/metrics").text.splitlines()
                 if line.startswith("aibox_upstream_failures_total{") and f'endpoint="{victim.url()}"' in line]
    assert failovers and float(failovers[0].rsplit(" ", 1)[1]) >= 1


def test_a_slow_endpoint_gets_less_traffic(procs, tmp_path):
    fast = [fake_upstream(procs, "ollama", "--name", f"fast{i}", name=f"fake-fast{i}") for i in range(2)]
    slow = fake_upstream(procs, "ollama", "--name", "slow", "--latency-ms", "200", name="fake-slow")
    edge = pool_edge(procs, tmp_path, [fast[0], slow, fast[1]])
    client = ollama.Client(host=edge.url())

    def one(i: int) -> None:
        client.chat(model="llama3:8b", messages=[{"role": "user", "content": f"hi {i}"}])

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, range(80)))
    counts = {"fast0": served(fast[0]), "fast1": served(fast[1]), "slow": served(slow)}
    assert sum(counts.values()) == 80, counts
    assert counts["slow"] * 4 < min(counts["fast0"], counts["fast1"]), counts


def test_a_model_on_one_endpoint_always_goes_there(procs, tmp_path):
    fakes = [
        fake_upstream(procs, "ollama", "--models", "llama3:8b,only-here:1b,fake-error:latest", "--name", "has-it", name="fake-has-it"),
        fake_upstream(procs, "ollama", "--models", "llama3:8b", "--name", "lacks1", name="fake-lacks1"),
        fake_upstream(procs, "ollama", "--models", "llama3:8b", "--name", "lacks2", name="fake-lacks2"),
    ]
    edge = pool_edge(procs, tmp_path, fakes)
    client = ollama.Client(host=edge.url())

    def one(i: int) -> str:
        return client.generate(model="only-here:1b", prompt=f"p{i}").response

    with ThreadPoolExecutor(max_workers=4) as pool:
        replies = list(pool.map(one, range(40)))
    assert replies == [f"You said: p{i}" for i in range(40)]
    assert [served(f) for f in fakes] == [40, 0, 0]
    assert "only-here:1b" in {m.model for m in client.list().models}

    # When that endpoint fails, clients see its failure rather than another endpoint's 404, and
    # the model stays served there while the endpoint is ejected.
    for _ in range(3):
        with pytest.raises(ollama.ResponseError) as e:
            client.chat(model="fake-error", messages=[{"role": "user", "content": "x"}])
        assert e.value.status_code == 500 and "llama runner" in e.value.error
    assert client.generate(model="only-here:1b", prompt="again").response == "You said: again"


def test_an_ejection_lasts_eject_ms_and_a_provider_with_none_left_answers_at_once(procs, tmp_path):
    """An endpoint that lists its models but fails chats stays out for `eject_ms` although every
    probe succeeds; while no endpoint of the provider is left, requests get 503 + Retry-After at
    once, in each surface's error shape, instead of waiting for first-byte timeouts."""
    fake = fake_upstream(procs, "ollama", "--name", "flaky", name="fake-flaky")
    edge = pool_edge(procs, tmp_path, [fake], HEALTH.replace("eject_ms = 1000", "eject_ms = 3000"))
    client = ollama.Client(host=edge.url())
    for _ in range(2):
        with pytest.raises(ollama.ResponseError) as e:
            client.chat(model="fake-error", messages=[{"role": "user", "content": "x"}])
        assert e.value.status_code == 500
    ejected_at = time.monotonic()
    before = served(fake)

    time.sleep(1.0)  # five probe intervals, each answered
    assert endpoints_of(edge)[0]["ejected"], endpoints_of(edge)

    started = time.monotonic()
    chat = {"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    r = httpx.post(f"{edge.url()}/api/chat", json=chat, timeout=10)
    assert r.status_code == 503 and isinstance(r.json()["error"], str), r.text
    assert 1 <= int(r.headers["retry-after"]) <= 3
    r = httpx.post(f"{edge.url()}/v1/chat/completions", json=chat, timeout=10)
    assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_unavailable", r.text
    assert 1 <= int(r.headers["retry-after"]) <= 3
    assert time.monotonic() - started < 1.0
    assert served(fake) == before, "no request reached the resting endpoint"

    wait_until(lambda: not endpoints_of(edge)[0]["ejected"], "the rest is over", timeout=10)
    assert time.monotonic() - ejected_at >= 2.5
    assert client.chat(model="llama3:8b", messages=[{"role": "user", "content": "back"}]).message.content \
        == "You said: back"


def test_an_admin_pull_reaches_every_endpoint(procs, tmp_path):
    fakes = [fake_upstream(procs, "ollama", "--name", f"p{i}", name=f"fake-p{i}") for i in range(3)]
    edge = pool_edge(procs, tmp_path, fakes)
    admin = ollama.Client(host=edge.url(), headers={"Authorization": f"Bearer {ADMIN}"})
    progress = list(admin.pull("mistral:7b", stream=True))
    # No controller is configured here: the call goes ahead and the edge says it was not audited.
    edge.wait_for_line(r"not in the audit log")
    assert [p.status for p in progress].count("success") == 1 and progress[-1].status == "success"
    for f in fakes:
        tags = httpx.get(f"{f.url()}/api/tags").json()
        assert "mistral:7b" in {m["name"] for m in tags["models"]}
    assert admin.delete("mistral:7b").status == "success"
    for f in fakes:
        tags = httpx.get(f"{f.url()}/api/tags").json()
        assert "mistral:7b" not in {m["name"] for m in tags["models"]}


def test_the_endpoint_with_the_model_loaded_is_preferred(procs, tmp_path):
    # Two hosts list the same models; Ollama's /api/ps says which one holds which in memory.
    a = fake_upstream(procs, "ollama", "--name", "a", "--loaded", "qwen2.5:0.5b", name="fake-a")
    b = fake_upstream(procs, "ollama", "--name", "b", "--loaded", "llama3:8b", name="fake-b")
    edge = pool_edge(procs, tmp_path, [a, b])
    wait_until(lambda: all(e["loaded"] for e in endpoints_of(edge)), "both /api/ps answers are known")
    client = ollama.Client(host=edge.url())
    a0, b0 = served(a), served(b)
    for i in range(20):
        client.chat(model="llama3:8b", messages=[{"role": "user", "content": f"warm {i}"}])
    assert (served(a) - a0, served(b) - b0) == (0, 20), "llama3 is loaded on b only"
    for i in range(20):
        client.chat(model="qwen2.5:0.5b", messages=[{"role": "user", "content": f"warm {i}"}])
    assert (served(a) - a0, served(b) - b0) == (20, 20), "qwen2.5 is loaded on a only"
    # The cold host gets the model only when no warm one is left.
    b.signal(9)
    for i in range(5):
        assert client.chat(model="llama3:8b", messages=[{"role": "user", "content": f"cold {i}"}]).message.content
    assert served(a) - a0 == 25


def test_a_much_busier_warm_endpoint_yields_to_a_cold_one(procs, tmp_path):
    cold = fake_upstream(procs, "ollama", "--name", "cold", "--loaded", "qwen2.5:0.5b", name="fake-cold")
    warm = fake_upstream(procs, "ollama", "--name", "warm", "--loaded", "llama3:8b", "--latency-ms", "400",
                         name="fake-warm")
    edge = pool_edge(procs, tmp_path, [cold, warm], HEALTH + "warm_busy_margin = 2\n")
    wait_until(lambda: all(e["loaded"] for e in endpoints_of(edge)), "both /api/ps answers are known")
    client = openai.OpenAI(base_url=f"{edge.url()}/v1", api_key="unused", max_retries=0, timeout=60)
    c0, w0 = served(cold), served(warm)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: client.chat.completions.create(
            model="llama3:8b", messages=[{"role": "user", "content": f"busy {i}"}]), range(24)))
    # With 8 at once the warm host runs 2 ahead of the idle cold one, which then takes some.
    assert served(warm) - w0 > 0 and served(cold) - c0 > 0, (served(warm) - w0, served(cold) - c0)
