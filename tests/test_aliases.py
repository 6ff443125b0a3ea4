"""Model aliases with fallbacks (`[[models]]`): one name, several `provider/model` targets.

An alias is listed and routed on every surface that routes by model, falls back when a target
is down, answers 5xx or cannot fit the prompt, and is governed by a client's policy by its own
name. The clients are the official SDKs; the providers are fakes written from the published APIs.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx
import ollama
import openai
import pytest

from conftest import fake_upstream, start_edge

CLIENT_KEY = "sk-alias-client-0123456789"


def wait_until(check, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def served(fake) -> int:
    return httpx.get(f"{fake.url()}/_fake/stats").json()["requests"]


def ready(edge) -> bool:
    body = httpx.get(f"{edge.url()}/ready").json()
    return all(e["models"] is not None for p in body["providers"] for e in p["endpoints"])


@pytest.fixture(scope="module")
def stack(module_procs, tmp_path_factory):
    local = fake_upstream(module_procs, "ollama", "--chunk-delay-ms", "2", name="fake-local")
    vllm = fake_upstream(module_procs, "openai", "--chunk-delay-ms", "2", name="fake-vllm")
    small = fake_upstream(module_procs, "openai", "--context-length", "12", "--name", "small", name="fake-small")
    big = fake_upstream(module_procs, "openai", "--name", "big", name="fake-big")
    config = f"""
[[providers]]
name = "local"
kind = "ollama"
base_url = "{local.url()}"

[[providers]]
name = "vllm"
kind = "openai"
base_url = "{vllm.url()}/v1"

[[providers]]
name = "small"
kind = "openai"
base_url = "{small.url()}/v1"

[[providers]]
name = "big"
kind = "openai"
base_url = "{big.url()}/v1"

[[models]]
name = "fast"
targets = ["local/llama3:8b", "vllm/Qwen/Qwen2.5-0.5B-Instruct"]

[[models]]
name = "embedder"
targets = ["local/nomic-embed-text", "vllm/BAAI/bge-small-en"]

[[models]]
name = "sturdy"
targets = ["vllm/fake-error", "local/llama3:8b"]

[[models]]
name = "long"
targets = [{{ model = "small/Qwen/Qwen2.5-0.5B-Instruct", context = 12 }},
           {{ model = "big/Qwen/Qwen2.5-0.5B-Instruct", context = 32768 }}]

[[clients]]
name = "n8n"
key_env = "ALIAS_CLIENT_KEY"
models = ["fast"]
"""
    edge = start_edge(module_procs, tmp_path_factory.mktemp("edge"), config,
                      env={"ALIAS_CLIENT_KEY": CLIENT_KEY, "OLLAMA_URL": ""})
    wait_until(lambda: ready(edge), "every provider listed its models")
    return {"edge": edge, "local": local, "vllm": vllm, "small": small, "big": big}


def oai(stack, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack['edge'].url()}/v1", api_key=key, max_retries=0, timeout=30)


def test_an_alias_is_listed_on_both_surfaces(stack):
    ids = [m.id for m in oai(stack).models.list()]
    assert {"fast", "embedder", "sturdy", "long"} <= set(ids)
    assert next(m for m in oai(stack).models.list().data if m.id == "fast").owned_by == "aibox"
    assert oai(stack).models.retrieve("fast").id == "fast"
    tags = {m.model: m for m in ollama.Client(host=stack["edge"].url()).list().models}
    assert {"fast", "embedder", "sturdy", "long"} <= set(tags)
    # The first target's own entry, under the alias's name.
    assert tags["fast"].details.family == tags["llama3:8b"].details.family


def test_an_alias_routes_on_every_surface(stack):
    local = stack["local"]
    before = served(local)
    chat = oai(stack).chat.completions.create(model="fast", messages=[{"role": "user", "content": "via openai"}])
    assert chat.choices[0].message.content == "You said: via openai" and chat.model == "fast"
    streamed = "".join(c.choices[0].delta.content or "" for c in oai(stack).chat.completions.create(
        model="fast", stream=True, messages=[{"role": "user", "content": "streamed"}]) if c.choices)
    assert streamed == "You said: streamed"
    legacy = oai(stack).completions.create(model="fast", prompt="legacy prompt")
    assert "legacy prompt" in legacy.choices[0].text
    emb = oai(stack).embeddings.create(model="embedder", input="vectors please")
    assert len(emb.data[0].embedding) > 0

    o = ollama.Client(host=stack["edge"].url())
    assert o.chat(model="fast", messages=[{"role": "user", "content": "via ollama"}]).message.content == "You said: via ollama"
    assert "generated" in o.generate(model="fast:latest", prompt="generated").response
    assert len(o.embed(model="embedder", input="more vectors").embeddings[0]) > 0

    msg = anthropic.Anthropic(base_url=stack["edge"].url(), api_key="unused", max_retries=0, timeout=30).messages.create(
        model="fast", max_tokens=64, messages=[{"role": "user", "content": "via anthropic"}])
    assert msg.content[0].text == "You said: via anthropic"
    # Every one of them went to the alias's first target.
    assert served(local) - before == 8


def test_a_target_answering_500_falls_back_before_any_byte(stack):
    before = served(stack["local"])
    r = oai(stack).chat.completions.create(model="sturdy", messages=[{"role": "user", "content": "still here"}])
    assert r.choices[0].message.content == "You said: still here"
    chunks = list(oai(stack).chat.completions.create(
        model="sturdy", stream=True, messages=[{"role": "user", "content": "streamed too"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: streamed too"
    assert ollama.Client(host=stack["edge"].url()).chat(
        model="sturdy", messages=[{"role": "user", "content": "ollama too"}]).message.content == "You said: ollama too"
    assert served(stack["local"]) - before == 3
    log = stack["edge"].wait_for_line(r'"alias target failed; trying the next"')
    assert "sturdy" in log and "500" in log


def test_a_prompt_too_long_moves_to_a_target_with_a_larger_context(stack):
    small, big = stack["small"], stack["big"]
    s0, b0 = served(small), served(big)
    short = oai(stack).chat.completions.create(model="long", messages=[{"role": "user", "content": "short one"}])
    assert short.choices[0].message.content == "You said: short one"
    assert (served(small) - s0, served(big) - b0) == (1, 0)
    words = " ".join(f"w{i}" for i in range(40))
    longer = oai(stack).chat.completions.create(model="long", messages=[{"role": "user", "content": words}])
    assert longer.choices[0].message.content == f"You said: {words}"
    assert (served(small) - s0, served(big) - b0) == (2, 1)
    moves = [line for line in httpx.get(f"{stack['edge'].url()}/metrics").text.splitlines()
             if line.startswith('aibox_alias_fallbacks_total{alias="long",reason="context_length"}')]
    assert moves and moves[0].endswith(" 1"), moves
    # Without an alias the same prompt gets the server's own context-length error.
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        oai(stack).chat.completions.create(model="small/Qwen/Qwen2.5-0.5B-Instruct",
                                           messages=[{"role": "user", "content": words}])


def test_a_policy_names_the_alias(stack):
    c = oai(stack, CLIENT_KEY)
    assert [m.id for m in c.models.list()] == ["fast"]
    assert c.chat.completions.create(model="fast", messages=[{"role": "user", "content": "ok"}]).choices[0].message.content
    for forbidden in ["long", "local/llama3:8b", "llama3:8b"]:
        with pytest.raises(openai.PermissionDeniedError, match=forbidden):
            c.chat.completions.create(model=forbidden, messages=[{"role": "user", "content": "no"}])
    o = ollama.Client(host=stack["edge"].url(), headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert [m.model for m in o.list().models] == ["fast"]
    with pytest.raises(ollama.ResponseError) as e:
        o.chat(model="sturdy", messages=[{"role": "user", "content": "no"}])
    assert e.value.status_code == 403


def test_killing_a_target_mid_run_fails_no_request(procs, tmp_path):
    first = fake_upstream(procs, "ollama", "--latency-ms", "20", "--name", "first", name="fake-first")
    second = fake_upstream(procs, "ollama", "--name", "second", name="fake-second")
    config = f"""
[health]
probe_interval_ms = 1500
eject_ms = 3000
eject_after = 2

[[providers]]
name = "first"
kind = "ollama"
base_url = "{first.url()}"

[[providers]]
name = "second"
kind = "ollama"
base_url = "{second.url()}"

[[models]]
name = "duo"
targets = ["first/llama3:8b", "second/llama3:8b"]
"""
    edge = start_edge(procs, tmp_path, config, env={"OLLAMA_URL": ""})
    wait_until(lambda: ready(edge), "both providers listed their models")
    client = openai.OpenAI(base_url=f"{edge.url()}/v1", api_key="unused", max_retries=0, timeout=60)
    thirty_done = threading.Event()
    done = [0]
    lock = threading.Lock()

    def kill_while_busy() -> None:
        thirty_done.wait(timeout=60)
        first.signal(9)

    def one(i: int) -> str:
        r = client.chat.completions.create(model="duo", messages=[{"role": "user", "content": f"request {i}"}])
        with lock:
            done[0] += 1
            if done[0] == 30:
                thirty_done.set()
        return r.choices[0].message.content

    killer = threading.Thread(target=kill_while_busy)
    killer.start()
    with ThreadPoolExecutor(max_workers=4) as pool:
        replies = list(pool.map(one, range(100)))  # an exception in any request fails the test
    killer.join()
    assert replies == [f"You said: request {i}" for i in range(100)]
    assert served(second) > 0, "the second target carried the rest"


def test_no_headers_within_the_first_byte_timeout_moves_to_the_next_target(procs, tmp_path):
    stuck = fake_upstream(procs, "openai", "--slow-ms", "60000", "--name", "stuck", name="fake-stuck")
    spare = fake_upstream(procs, "ollama", "--name", "spare", name="fake-spare")
    config = f"""
[timeouts]
first_byte_ms = 2000

[[providers]]
name = "stuck"
kind = "openai"
base_url = "{stuck.url()}/v1"

[[providers]]
name = "spare"
kind = "ollama"
base_url = "{spare.url()}"

[[models]]
name = "patient"
targets = ["stuck/fake-slow", "spare/llama3:8b"]
"""
    edge = start_edge(procs, tmp_path, config, env={"OLLAMA_URL": ""})
    wait_until(lambda: ready(edge), "both providers listed their models")
    client = openai.OpenAI(base_url=f"{edge.url()}/v1", api_key="unused", max_retries=0, timeout=60)
    chunks = list(client.chat.completions.create(model="patient", stream=True,
                                                 messages=[{"role": "user", "content": "anyone there"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: anyone there"
    assert served(stuck) == 1 and served(spare) == 1
    assert "504" in edge.wait_for_line(r"alias target failed; trying the next")
