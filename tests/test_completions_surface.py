"""Legacy completions (`POST /v1/completions`) on the edge, driven by the official `openai` SDK:
passed through to an OpenAI-compatible server, translated to `/api/generate` for Ollama.
"""
from __future__ import annotations

import openai
import pytest

from conftest import fake_upstream, start_edge
from test_openai_surface import VLLM_KEY, edge_config, last_upstream_request, wait_ready

MODELS = ["ollama/llama3:8b", "vllm/Qwen/Qwen2.5-0.5B-Instruct"]


@pytest.fixture(scope="module")
def stack(module_procs, tmp_path_factory):
    ollama = fake_upstream(module_procs, "ollama", "--chunk-delay-ms", "2")
    vllm = fake_upstream(module_procs, "openai", "--api-key", VLLM_KEY, "--chunk-delay-ms", "2")
    edge = start_edge(
        module_procs, tmp_path_factory.mktemp("edge"), edge_config(ollama.url(), vllm.url()),
        env={"VLLM_KEY": VLLM_KEY, "N8N_KEY": "n"},
    )
    wait_ready(edge.url())
    return {"edge": edge, "ollama": ollama, "vllm": vllm}


def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack["edge"].url() + "/v1", api_key="sk-x", max_retries=0, timeout=20)


@pytest.mark.parametrize("model", MODELS)
def test_a_completion(stack, model):
    r = client(stack).completions.create(model=model, prompt="Say this is a test", max_tokens=7)
    assert r.object == "text_completion"
    assert r.choices[0].text == "You said: Say this is a test"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 7


def test_ollama_gets_generate_with_its_options(stack):
    client(stack).completions.create(model="ollama/llama3:8b", prompt="def f():", suffix="  return 1",
                                     max_tokens=7, temperature=0.1, stop=["\n\n"])
    sent = last_upstream_request(stack["ollama"])
    body = sent["body"]
    assert body["prompt"] == "def f():" and body["suffix"] == "  return 1" and body["stream"] is False
    assert body["options"] == {"num_predict": 7, "temperature": 0.1, "stop": ["\n\n"]}


def test_vllm_gets_the_body_with_only_model_rewritten(stack):
    client(stack).completions.create(model="vllm/Qwen/Qwen2.5-0.5B-Instruct", prompt="hi", max_tokens=3,
                                     extra_body={"top_k": 5})
    sent = last_upstream_request(stack["vllm"])
    assert sent["body"] == {"model": "Qwen/Qwen2.5-0.5B-Instruct", "prompt": "hi", "max_tokens": 3, "top_k": 5}
    assert sent["headers"]["authorization"] == f"Bearer {VLLM_KEY}"


@pytest.mark.parametrize("model", MODELS)
def test_a_streamed_completion(stack, model):
    chunks = list(client(stack).completions.create(
        model=model, prompt="one two three", stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "You said: one two three"
    assert len([c for c in chunks if c.choices and c.choices[0].text]) >= 4
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5


def test_several_prompts_are_refused_for_ollama(stack):
    with pytest.raises(openai.BadRequestError) as e:
        client(stack).completions.create(model="ollama/llama3:8b", prompt=["a", "b"])
    assert e.value.body["param"] == "prompt"


@pytest.mark.parametrize("model", ["ollama/no-such-model", "nobody-has-this"])
def test_unknown_model(stack, model):
    with pytest.raises(openai.NotFoundError):
        client(stack).completions.create(model=model, prompt="x")
