"""The box on Docker Swarm (docs/SCALING.md): `./aibox up --swarm` on a single-node swarm made on
loopback, two edge replicas sharing their limits in the stack's Redis, a fake Ollama service, and
the official `openai` SDK as the client (through a forwarder container the test made, since the
routing mesh cannot publish on loopback only; tests/swarm_fixtures.py).

Where the kernel has no IPVS (a minimal VM kernel), Swarm's virtual IPs and routing mesh cannot
work at all; the stack then runs with `AIBOX_SWARM_ENDPOINT_MODE=dnsrr` and the test reaches each
replica by its address (it says which mode it ran in).

Skipped, with the engine's message, only where the engine refuses `docker swarm init`.
"""
from __future__ import annotations

import threading
import time

import openai
import pytest

from swarm_fixtures import SwarmStack, run, swarm_node, wait_until  # noqa: F401  (fixture)

CLIENTS = {
    # The shared window: 10 requests a minute across both replicas.
    "limited": {"rpm": 10, "models": "ollama/*"},
    # No limits: streams and fail-over.
    "streamer": {"models": "ollama/*"},
    # For the Redis outage: the local fallback (10 per replica), then the shared window again.
    "outage": {"rpm": 10, "models": "ollama/*"},
    "resumed": {"rpm": 3, "models": "ollama/*"},
}
MODEL = "ollama/llama3:8b"
LONG_PROMPT = " ".join(f"word{i}" for i in range(20))


@pytest.fixture(scope="module")
def stack(swarm_node, tmp_path_factory):  # noqa: F811
    s = SwarmStack(tmp_path_factory.mktemp("swarm"))
    started = time.monotonic()
    try:
        s.prepare(CLIENTS)
        s.up()
        wait_until(lambda: len(s.edge_tasks()) == 2, "two healthy edge replicas", timeout=120)
        s.start_forwarder()
        # The fake Ollama is a service the edge finds by its probes (every second here).
        try:
            wait_until(lambda: answers(s, "streamer"), "the edges to route to the fake Ollama", timeout=90, interval=1)
        except AssertionError as e:
            logs = "".join(s.logs(t["id"])[-3000:] for t in s.edge_tasks(healthy=False))
            raise AssertionError(f"{e}; last answer: {LAST_ANSWER}\nedge logs:\n{logs}") from None
        yield s
    finally:
        s.down()
        left = s.leftovers()
        s.remove_images_and_data()
        print(f"swarm test ({'virtual IPs' if s.ipvs else 'no IPVS: DNS round-robin'}): "
              f"stack up in {s.up_seconds:.0f} s, module {time.monotonic() - started:.0f} s")
        assert not any(left.values()), f"`docker stack rm` left: {left}"


def client(s: SwarmStack, name: str, port: int = 8080) -> openai.OpenAI:
    """A fresh client (and so a fresh connection, balanced anew by Swarm's virtual IP)."""
    return openai.OpenAI(base_url=s.url(port), api_key=f"swarm-test-key-{name}", max_retries=0, timeout=60)


def chat(s: SwarmStack, name: str, port: int = 8080) -> int:
    """One request; the HTTP status."""
    c = client(s, name, port)
    try:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        return 200
    except openai.APIStatusError as e:
        return e.status_code
    finally:
        c.close()


LAST_ANSWER: list = []


def answers(s: SwarmStack, name: str) -> bool:
    try:
        statuses = [chat(s, name, port) for port in (8081, 8082)]
        LAST_ANSWER[:] = statuses
        return statuses == [200, 200]
    except openai.APIConnectionError as e:
        LAST_ANSWER[:] = [repr(e)]
        return False


def test_a_client_with_rpm_10_gets_exactly_10_across_both_replicas(stack):
    # Through the service's virtual IP and straight at each replica, interleaved.
    ports = [8080, 8081, 8082]
    statuses = [chat(stack, "limited", ports[i % 3]) for i in range(30)]
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 20, statuses
    per_replica = {t["id"]: stack.logs(t["id"]).count('"client":"limited"') for t in stack.edge_tasks()}
    assert all(n >= 10 for n in per_replica.values()), f"requests logged per replica: {per_replica}"


def test_killing_a_replica_mid_stream_leaves_the_others_streams_and_swarm_replaces_it(stack):
    results: dict[int, list] = {8081: [], 8082: []}
    started = threading.Barrier(5)

    def stream(port: int) -> None:
        c = client(stack, "streamer", port)
        text, done = "", False
        try:
            s = c.chat.completions.create(model=MODEL, stream=True,
                                          messages=[{"role": "user", "content": LONG_PROMPT}])
            first = True
            for chunk in s:
                if first:
                    first = False
                    started.wait(timeout=60)
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                if chunk.choices and chunk.choices[0].finish_reason:
                    done = True
        except Exception as e:  # the killed replica's streams break; that is the point
            text += f" <{type(e).__name__}>"
        finally:
            c.close()
        results[port].append((done, text))

    threads = [threading.Thread(target=stream, args=(port,)) for port in (8081, 8081, 8082, 8082)]
    for t in threads:
        t.start()
    started.wait(timeout=60)
    victim = stack.task_by_port[8081]
    run(["docker", "kill", victim["id"]])
    for t in threads:
        t.join(timeout=120)
    survivors = results[8082]
    assert len(survivors) == 2 and all(done for done, _ in survivors), results
    assert all(text.endswith("word19") for _, text in survivors), survivors
    assert not any(done for done, _ in results[8081]), f"streams of the killed replica: {results[8081]}"

    # New requests succeed: through the virtual IP (Swarm stops sending to the dead task), or
    # without IPVS at the surviving task.
    port = 8080 if stack.ipvs else 8082

    def five_in_a_row() -> bool:
        try:
            return all(chat(stack, "streamer", port) == 200 for _ in range(5))
        except openai.APIConnectionError:
            return False
    wait_until(five_in_a_row, "new requests to succeed after the kill", timeout=60, interval=1)

    # Swarm replaces the dead task with a new one.
    def replaced() -> bool:
        tasks = stack.edge_tasks()
        return len(tasks) == 2 and victim["task"] not in {t["task"] for t in tasks}
    wait_until(replaced, "Swarm to replace the killed edge replica", timeout=120, interval=1)


def test_without_redis_the_replicas_fall_back_to_local_limits_and_share_again_when_it_returns(stack):
    # The replica that replaced the killed one has a new address.
    wait_until(lambda: len(stack.edge_tasks()) == 2, "two healthy edge replicas", timeout=120)
    stack.start_forwarder()
    tasks = list(stack.task_by_port.values())
    redis = f"{stack.stack}_redis"
    run(["docker", "service", "scale", "--detach", f"{redis}=0"])
    wait_until(lambda: not stack.running_tasks(redis), "Redis to stop", timeout=60)

    # Requests keep flowing, each replica under its own limit (never unlimited, never refused
    # for want of Redis), and each replica says so.
    statuses = [chat(stack, "outage", (8081, 8082)[i % 2]) for i in range(6)]
    assert statuses == [200] * 6, statuses
    wait_until(lambda: all("shared limits: Redis is unreachable" in stack.logs(t["id"]) for t in tasks),
               "both replicas to log the local fallback", timeout=30)
    # Bounded: the fallback is the client's own limit, per replica (10 each, 6 used).
    statuses = [chat(stack, "outage", (8081, 8082)[i % 2]) for i in range(20)]
    assert 14 <= statuses.count(200) <= 16, statuses  # a token bucket may refill one in the meantime

    run(["docker", "service", "scale", "--detach", f"{redis}=1"])
    wait_until(lambda: run(["docker", "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={redis}",
                            "--filter", "health=healthy"]).stdout.strip(), "Redis to be back", timeout=90)

    def resumed() -> bool:
        # A client with limits: only its admission asks Redis (one without limits never does).
        for port in (8081, 8082):
            try:
                chat(stack, "outage", port)
            except openai.APIConnectionError:
                pass
        return all("shared limits: Redis answers again" in stack.logs(t["id"]) for t in tasks)
    wait_until(resumed, "both replicas to log that sharing resumed", timeout=60, interval=1)

    # Shared again: 3 a minute across both replicas.
    statuses = [chat(stack, "resumed", (8080, 8081, 8082)[i % 3]) for i in range(9)]
    assert statuses.count(200) == 3, statuses
