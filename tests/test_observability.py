"""What operators see of model traffic: exact token counts for streams, `/metrics` by route,
provider, model and client, time to first token, in-flight per endpoint, process and build
metrics, and W3C trace context from the caller through the edge to the provider and its log.
"""
from __future__ import annotations

import json
import re
import time

import httpx
import openai
import pytest

from conftest import fake_upstream, start_edge

CLIENT_KEY = "sk-observed-client-0123456789"
MODEL = "vllm/Qwen/Qwen2.5-0.5B-Instruct"
SPEC_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def wait_until(check, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def stack(module_procs, tmp_path_factory):
    vllm = fake_upstream(module_procs, "openai", "--chunk-delay-ms", "2", name="fake-vllm")
    local = fake_upstream(module_procs, "ollama", "--chunk-delay-ms", "2", name="fake-local")
    config = f"""
[[providers]]
name = "vllm"
kind = "openai"
base_url = "{vllm.url()}/v1"

[[providers]]
name = "local"
kind = "ollama"
base_url = "{local.url()}"

[[clients]]
name = "n8n"
key_env = "OBSERVED_KEY"
"""
    edge = start_edge(module_procs, tmp_path_factory.mktemp("edge"), config,
                      env={"OBSERVED_KEY": CLIENT_KEY, "OLLAMA_URL": ""})
    wait_until(lambda: httpx.get(f"{edge.url()}/ready").json()["ready"], "the edge is ready")
    return {"edge": edge, "vllm": vllm, "local": local}


def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack['edge'].url()}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30)


def samples(stack, name: str) -> list[tuple[dict, float]]:
    """Every sample of metric `name` as (labels, value)."""
    out = []
    for line in httpx.get(f"{stack['edge'].url()}/metrics").text.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            out.append((labels, float(m.group(2))))
    return out


def tokens(stack, direction: str) -> float:
    return sum(v for labels, v in samples(stack, "aibox_model_tokens_total")
               if labels == {"route": "/v1/chat/completions", "provider": "vllm", "model": MODEL,
                             "client": "n8n", "direction": direction})


def fake_usage(text: str) -> tuple[int, int]:
    """The fake's usage for one user message: its words + 5 in, "You said: …" words out."""
    return len(text.split()) + 5, len(f"You said: {text}".split(" "))


def test_a_stream_without_include_usage_has_no_usage_chunk_but_tokens_are_counted(stack):
    before_in, before_out = tokens(stack, "in"), tokens(stack, "out")
    text = "count my tokens please"
    chunks = list(client(stack).chat.completions.create(
        model=MODEL, stream=True, messages=[{"role": "user", "content": text}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == f"You said: {text}"
    assert all(c.usage is None and c.choices for c in chunks), "no usage chunk the client did not ask for"
    # The edge asked upstream for it.
    sent = httpx.get(f"{stack['vllm'].url()}/_fake/last").json()["body"]
    assert sent["stream_options"] == {"include_usage": True}
    want_in, want_out = fake_usage(text)
    wait_until(lambda: tokens(stack, "out") - before_out == want_out, "completion tokens are counted")
    assert tokens(stack, "in") - before_in == want_in


def test_a_stream_with_include_usage_has_exactly_one_usage_chunk(stack):
    before_out = tokens(stack, "out")
    text = "and mine"
    chunks = list(client(stack).chat.completions.create(
        model=MODEL, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": text}]))
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1] and with_usage[0].choices == []
    want_in, want_out = fake_usage(text)
    assert (with_usage[0].usage.prompt_tokens, with_usage[0].usage.completion_tokens) == (want_in, want_out)
    wait_until(lambda: tokens(stack, "out") - before_out == want_out, "completion tokens are counted once")


def test_metrics_carry_route_provider_model_and_client(stack):
    c = client(stack)
    c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "labelled"}])
    list(c.chat.completions.create(model="local/llama3:8b", stream=True,
                                   messages=[{"role": "user", "content": "streamed"}]))
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="yet-another-unknown", messages=[{"role": "user", "content": "x"}])

    def requests():
        return samples(stack, "aibox_model_requests_total")
    wait_until(lambda: any(labels.get("status") == "404" for labels, _ in requests()), "the 404s are counted")
    counted = requests()
    assert {"route": "/v1/chat/completions", "provider": "vllm", "model": MODEL, "client": "n8n",
            "status": "200"} in [labels for labels, _ in counted]
    # Names that never routed fold into one label: the model label stays bounded.
    unknown = [(labels, v) for labels, v in counted if labels["status"] == "404"]
    assert [labels["model"] for labels, _ in unknown] == ["other"] and unknown[0][1] >= 2

    ttft = [labels for labels, _ in samples(stack, "aibox_time_to_first_token_seconds_count")]
    assert {"route": "/v1/chat/completions", "provider": "local", "model": "local/llama3:8b"} in ttft
    assert any(labels["le"] == "+Inf" for labels, _ in samples(stack, "aibox_time_to_first_token_seconds_bucket"))
    in_flight = {labels["provider"]: v for labels, v in samples(stack, "aibox_endpoint_in_flight")}
    assert in_flight == {"vllm": 0.0, "local": 0.0}
    text = httpx.get(f"{stack['edge'].url()}/metrics").text
    assert re.search(r"^process_resident_memory_bytes \d", text, re.M)
    assert re.search(r"^process_cpu_seconds_total \d", text, re.M)
    build = samples(stack, "aibox_build_info")
    assert len(build) == 1 and build[0][1] == 1.0 and re.match(r"^\d+\.\d+\.\d+", build[0][0]["version"])


def test_traceparent_reaches_the_upstream_and_the_log_line(stack):
    client(stack).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "traced"}],
        extra_headers={"traceparent": SPEC_TRACEPARENT, "tracestate": "congo=t61rcWkgMzE",
                       "X-Request-ID": "trace-test-1"})
    seen = httpx.get(f"{stack['vllm'].url()}/_fake/last").json()["headers"]
    parent = seen["traceparent"]
    # A child of the caller's span: same trace, the edge's own span id, same flags.
    assert re.fullmatch(r"00-4bf92f3577b34da6a3ce929d0e0e4736-[0-9a-f]{16}-01", parent)
    assert parent[36:52] != "00f067aa0ba902b7"
    assert seen["tracestate"] == "congo=t61rcWkgMzE" and seen["x-request-id"] == "trace-test-1"
    line = stack["edge"].wait_for_line(r"trace-test-1")
    record = json.loads(line[line.index("{"):])
    fields = record.get("fields", record)
    assert fields["request_id"] == "trace-test-1"
    assert fields["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"

    # An invalid header starts a new trace rather than passing garbage on.
    client(stack).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "traced"}],
        extra_headers={"traceparent": "00-not-a-trace-01", "tracestate": "x=y"})
    seen = httpx.get(f"{stack['vllm'].url()}/_fake/last").json()["headers"]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00", seen["traceparent"]) and "tracestate" not in seen
