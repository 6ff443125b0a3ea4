"""Anthropic's Messages API on the edge, driven by the official `anthropic` SDK as Claude Code
would use it: `ANTHROPIC_BASE_URL` pointing at the edge, a local model behind it.

The stack: a fake Ollama and a fake vLLM (tests/testkit, written from the published APIs), and
the real `edge` binary translating Messages to each provider's chat and back.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import anthropic
import pytest

from conftest import fake_upstream, start_edge
from test_openai_surface import CLIENT_KEY, VLLM_KEY, edge_config, last_upstream_request, wait_ready

MODELS = ["ollama/llama3:8b", "vllm/Qwen/Qwen2.5-0.5B-Instruct"]

WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                     "required": ["location"]},
}


@pytest.fixture(scope="module")
def stack(module_procs, tmp_path_factory):
    ollama = fake_upstream(module_procs, "ollama", "--chunk-delay-ms", "2")
    vllm = fake_upstream(module_procs, "openai", "--api-key", VLLM_KEY, "--chunk-delay-ms", "2")
    edge = start_edge(
        module_procs, tmp_path_factory.mktemp("edge"), edge_config(ollama.url(), vllm.url()),
        env={"VLLM_KEY": VLLM_KEY, "N8N_KEY": CLIENT_KEY},
    )
    wait_ready(edge.url())
    return {"edge": edge, "ollama": ollama, "vllm": vllm}


def claude(stack, **kw) -> anthropic.Anthropic:
    kw.setdefault("api_key", "sk-anything")
    return anthropic.Anthropic(base_url=stack["edge"].url(), max_retries=0, timeout=20, **kw)


@pytest.mark.parametrize("model", MODELS)
def test_a_plain_message(stack, model):
    msg = claude(stack).messages.create(
        model=model, max_tokens=64, system="Be brief.",
        messages=[{"role": "user", "content": "hello claude code"}])
    assert msg.type == "message" and msg.role == "assistant" and msg.model == model
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "You said: hello claude code"
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens == 5 and msg.usage.input_tokens > 0
    assert msg._request_id and msg.id == "msg_" + msg._request_id.replace("-", "")


def test_system_and_sampling_reach_ollama_natively(stack):
    claude(stack).messages.create(
        model="ollama/llama3:8b", max_tokens=7, system=[{"type": "text", "text": "You are terse."}],
        stop_sequences=["END"],
        # This SDK version no longer names temperature/top_p; older clients and Claude Code send them.
        extra_body={"temperature": 0.2, "top_p": 0.5},
        messages=[{"role": "user", "content": "x"}])
    sent = last_upstream_request(stack["ollama"])["body"]
    assert sent["messages"][0] == {"role": "system", "content": "You are terse."}
    assert sent["options"] == {"num_predict": 7, "temperature": 0.2, "top_p": 0.5, "stop": ["END"]}


@pytest.mark.parametrize("model", MODELS)
def test_a_streamed_message(stack, model):
    with claude(stack).messages.stream(
            model=model, max_tokens=64,
            messages=[{"role": "user", "content": "one two three"}]) as stream:
        events = [e.type for e in stream]
        text = "".join(stream.text_stream)  # already consumed: empty, but must not raise
        final = stream.get_final_message()
    assert text == ""
    assert final.content[0].text == "You said: one two three"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 5 and final.usage.input_tokens > 0
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert events.count("text") >= 3  # the SDK's per-delta event: it arrived in pieces


@pytest.mark.parametrize("model", MODELS)
def test_tool_use_both_ways(stack, model):
    c = claude(stack)
    msg = c.messages.create(model=model, max_tokens=64, tools=[WEATHER],
                            messages=[{"role": "user", "content": "weather in Paris and Berlin?"}])
    assert msg.stop_reason == "tool_use"
    calls = [b for b in msg.content if b.type == "tool_use"]
    assert [b.input for b in calls] == [{"location": "Paris"}, {"location": "Berlin"}]
    assert all(b.name == "get_weather" for b in calls) and len({b.id for b in calls}) == 2
    follow = c.messages.create(model=model, max_tokens=64, tools=[WEATHER], messages=[
        {"role": "user", "content": "weather in Paris and Berlin?"},
        {"role": "assistant", "content": msg.content},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": calls[0].id, "content": "sunny"},
            {"type": "tool_result", "tool_use_id": calls[1].id, "content": "rain"}]},
    ])
    assert follow.stop_reason == "end_turn"
    assert follow.content[0].text == "You said: weather in Paris and Berlin?"
    sent = last_upstream_request(stack["ollama" if model.startswith("ollama") else "vllm"])["body"]
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["user", "assistant", "tool", "tool"]
    if model.startswith("ollama"):
        assert sent["messages"][2] == {"role": "tool", "content": "sunny", "tool_name": "get_weather"}
    else:
        assert sent["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": calls[0].id}
        assert sent["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]


@pytest.mark.parametrize("model", MODELS)
def test_streamed_tool_use(stack, model):
    with claude(stack).messages.stream(
            model=model, max_tokens=64, tools=[WEATHER],
            messages=[{"role": "user", "content": "weather?"}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [b.input for b in final.content if b.type == "tool_use"] == [
        {"location": "Paris"}, {"location": "Berlin"}]


@pytest.mark.parametrize("model", ["ollama/fake-midstream-error", "ollama/fake-drop", "vllm/fake-drop"])
def test_a_stream_that_breaks_ends_with_an_error_event(stack, model):
    got = ""
    with pytest.raises(anthropic.APIStatusError) as e:
        with claude(stack).messages.stream(model=model, max_tokens=64,
                                           messages=[{"role": "user", "content": "x"}]) as stream:
            for text in stream.text_stream:
                got += text
    assert got.startswith("partial")
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "api_error"


def test_count_tokens(stack):
    r = claude(stack).messages.count_tokens(
        model="ollama/llama3:8b", system="x" * 40,
        messages=[{"role": "user", "content": "y" * 40}])
    assert r.input_tokens == 20


def test_missing_max_tokens_is_an_invalid_request(stack):
    # The SDK itself insists on max_tokens, so the body goes raw, as a hand-rolled client's would.
    req = urllib.request.Request(
        stack["edge"].url() + "/v1/messages", method="POST",
        data=json.dumps({"model": "ollama/llama3:8b", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        headers={"content-type": "application/json", "x-api-key": "k"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 400
    body = json.load(e.value)
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    # And through the SDK, a bad block surfaces as its BadRequestError.
    with pytest.raises(anthropic.BadRequestError) as sdk_err:
        claude(stack).messages.create(model="ollama/llama3:8b", max_tokens=8,
                                      messages=[{"role": "system", "content": "no such role"}])
    assert sdk_err.value.body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("model", ["ollama/no-such-model", "vllm/no-such-model", "nobody-has-this"])
def test_unknown_model_is_not_found(stack, model):
    with pytest.raises(anthropic.NotFoundError) as e:
        claude(stack).messages.create(model=model, max_tokens=8,
                                      messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error"


def test_keys_from_x_api_key_or_bearer_and_refusals_in_anthropic_shape(procs, tmp_path):
    ollama = fake_upstream(procs, "ollama")
    edge = start_edge(procs, tmp_path, f"""
[anonymous]
models = []
mcp_servers = []
[[providers]]
name = "ollama"
kind = "ollama"
base_url = "{ollama.url()}"
[[clients]]
name = "claude-code"
key_env = "CC_KEY"
models = ["ollama/llama3*"]
[[clients]]
name = "tiny"
key_env = "TINY_KEY"
rpm = 1
""", env={"CC_KEY": "cc-key-0001", "TINY_KEY": "tiny-key-0001"})
    wait_ready(edge.url())
    messages = [{"role": "user", "content": "hi"}]

    def ask(model="ollama/llama3:8b", **kw):
        c = anthropic.Anthropic(base_url=edge.url(), max_retries=0, **kw)
        return c.messages.create(model=model, max_tokens=8, messages=messages)

    # Claude Code sends ANTHROPIC_API_KEY as x-api-key, ANTHROPIC_AUTH_TOKEN as a Bearer token.
    assert ask(api_key="cc-key-0001").content
    assert ask(auth_token="cc-key-0001").content
    with pytest.raises(anthropic.AuthenticationError) as e:
        ask(api_key="wrong")
    assert e.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        ask(model="ollama/qwen2.5:0.5b", api_key="cc-key-0001")
    assert e.value.body["error"]["type"] == "permission_error"
    assert "ollama/qwen2.5:0.5b" in e.value.body["error"]["message"]
    assert ask(api_key="tiny-key-0001").content
    with pytest.raises(anthropic.RateLimitError) as e:
        ask(api_key="tiny-key-0001")
    assert e.value.body["error"]["type"] == "rate_limit_error"
    assert int(e.value.response.headers["retry-after"]) >= 1


def test_models_in_anthropic_shape(stack):
    c = claude(stack)
    ids = [m.id for m in c.models.list()]
    assert "ollama/llama3:8b" in ids and "vllm/Qwen/Qwen2.5-0.5B-Instruct" in ids
    m = c.models.retrieve("llama3:8b")
    assert m.type == "model" and m.id == "ollama/llama3:8b"
    with pytest.raises(anthropic.NotFoundError):
        c.models.retrieve("ollama/no-such-model")


def test_requests_are_counted_under_the_anthropic_surface(stack):
    claude(stack, api_key=CLIENT_KEY).messages.create(
        model="ollama/llama3:8b", max_tokens=8, messages=[{"role": "user", "content": "count me"}])
    with urllib.request.urlopen(stack["edge"].url() + "/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert 'aibox_requests_total{client="n8n",provider="ollama",status="200",surface="anthropic"}' in metrics
    assert 'aibox_tokens_total{client="n8n",direction="out",provider="ollama"}' in metrics


def test_a_body_over_the_limit_is_413_in_anthropic_shape(stack):
    with pytest.raises(anthropic.APIStatusError) as e:
        claude(stack).messages.create(model="ollama/llama3:8b", max_tokens=8,
                                      messages=[{"role": "user", "content": "x" * 70_000}])
    assert e.value.status_code == 413
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "request_too_large"


def test_extended_thinking_comes_back_as_a_thinking_block(stack):
    msg = claude(stack).messages.create(
        model="ollama/llama3:8b", max_tokens=64, thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "think first"}])
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == "Let me think."
    assert last_upstream_request(stack["ollama"])["body"]["think"] is True
    with claude(stack).messages.stream(
            model="ollama/llama3:8b", max_tokens=64, thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[{"role": "user", "content": "think first"}]) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[1].text == "You said: think first"
