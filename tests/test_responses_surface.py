"""OpenAI's Responses API and the pass-through routes (rerank, audio, images, moderations) on
the edge, driven by the official `openai` SDK as Codex or a user's script would.

The stack: a fake Ollama, a fake vLLM without the Responses API (both get Responses translated
to chat), and a fake OpenAI-compatible server that serves Responses itself (`responses = true`:
passed through) and the audio, image, moderation and rerank APIs — all tests/testkit, written
from the published APIs — with the real `edge` binary in front.
"""
from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
import wave

import openai
import pytest

from conftest import fake_upstream, start_edge
from test_openai_surface import CLIENT_KEY, VLLM_KEY, edge_config, last_upstream_request, wait_ready

OAI_KEY = "responses-upstream-key-91c2"
CODEX_KEY = "codex-client-key-0002"
TRANSLATED = ["ollama/llama3:8b", "vllm/Qwen/Qwen2.5-0.5B-Instruct"]
PASSED = "oai/Qwen/Qwen2.5-0.5B-Instruct"
EVERY = TRANSLATED + [PASSED]
OAI_MODELS = "Qwen/Qwen2.5-0.5B-Instruct,whisper-1,tts-1,gpt-image-1,omni-moderation-latest,bge-reranker-base"

WEATHER = {
    "type": "function", "name": "get_weather",
    "description": "Get current temperature for a given location.",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                   "required": ["location"], "additionalProperties": False},
}


@pytest.fixture(scope="module")
def stack(module_procs, tmp_path_factory):
    ollama = fake_upstream(module_procs, "ollama", "--chunk-delay-ms", "2")
    vllm = fake_upstream(module_procs, "openai", "--api-key", VLLM_KEY, "--chunk-delay-ms", "2")
    oai = fake_upstream(module_procs, "openai", "--responses", "--api-key", OAI_KEY,
                        "--models", OAI_MODELS, "--chunk-delay-ms", "2", name="fake-oai")
    extra = f"""
[[providers]]
name = "oai"
kind = "openai"
base_url = "{oai.url()}/v1"
api_key_env = "OAI_KEY"
responses = true
[[clients]]
name = "codex"
key_env = "CODEX_KEY"
models = ["ollama/*"]
"""
    edge = start_edge(
        module_procs, tmp_path_factory.mktemp("edge"), edge_config(ollama.url(), vllm.url(), extra),
        env={"VLLM_KEY": VLLM_KEY, "N8N_KEY": CLIENT_KEY, "OAI_KEY": OAI_KEY, "CODEX_KEY": CODEX_KEY},
    )
    wait_ready(edge.url())
    return {"edge": edge, "ollama": ollama, "vllm": vllm, "oai": oai}


def client(stack, key: str = "sk-anything") -> openai.OpenAI:
    return openai.OpenAI(base_url=stack["edge"].url() + "/v1", api_key=key, max_retries=0, timeout=20)


def upstream_of(stack, model: str):
    return stack[model.split("/")[0]]


def raw(stack, path: str, body: bytes, headers: dict | None = None, method: str = "POST"):
    req = urllib.request.Request(stack["edge"].url() + path, data=body, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


# --------------------------------------------------------------- Responses --

@pytest.mark.parametrize("model", EVERY)
def test_a_plain_response(stack, model):
    r = client(stack).responses.create(model=model, instructions="Be brief.", input="hello codex")
    assert r.object == "response" and r.status == "completed"
    assert r.output_text == "You said: hello codex"
    assert r.usage.output_tokens > 0 and r.usage.input_tokens > 0
    assert r.id.startswith("resp_")
    sent = last_upstream_request(upstream_of(stack, model))
    if model == PASSED:
        # Passed through: the Responses body as it came, only the model renamed, the
        # provider's own key instead of the client's.
        assert sent["body"] == {"model": "Qwen/Qwen2.5-0.5B-Instruct", "instructions": "Be brief.",
                                "input": "hello codex"}
        assert sent["headers"]["authorization"] == f"Bearer {OAI_KEY}"
    else:
        assert r.model == model
        assert sent["body"]["messages"][0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize("model", EVERY)
def test_a_streamed_response_has_the_documented_event_sequence(stack, model):
    with client(stack).responses.stream(model=model, input="one two three") as stream:
        events = [e.type for e in stream]
        final = stream.get_final_response()
    assert final.output_text == "You said: one two three" and final.status == "completed"
    assert events[:2] == ["response.created", "response.in_progress"]
    assert events[-1] == "response.completed"
    assert events.count("response.output_text.delta") >= 3  # it arrived in pieces
    order = ["response.output_item.added", "response.content_part.added", "response.output_text.delta",
             "response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert [e for e in events if e in order and e != "response.output_text.delta"] == \
        [e for e in order if e != "response.output_text.delta"]
    assert final.usage.output_tokens > 0
    # Kept (translated) or remembered (passed through) once the stream is over.
    assert client(stack).responses.retrieve(final.id).output_text == final.output_text


@pytest.mark.parametrize("model", EVERY)
def test_function_calling_both_ways(stack, model):
    c = client(stack)
    question = [{"role": "user", "content": "weather in Paris and Berlin?"}]
    r = c.responses.create(model=model, input=question, tools=[WEATHER])
    calls = [o for o in r.output if o.type == "function_call"]
    assert [json.loads(o.arguments) for o in calls] == [{"location": "Paris"}, {"location": "Berlin"}]
    assert all(o.name == "get_weather" for o in calls) and len({o.call_id for o in calls}) == 2
    follow = c.responses.create(model=model, tools=[WEATHER], input=question + [
        *[o.model_dump(exclude_none=True) for o in calls],
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "14"},
        {"type": "function_call_output", "call_id": calls[1].call_id, "output": "9"},
    ])
    assert follow.output_text == "You said: weather in Paris and Berlin?"
    sent = last_upstream_request(upstream_of(stack, model))["body"]
    if model == PASSED:
        assert [i.get("type", "message") for i in sent["input"]] == \
            ["message", "function_call", "function_call", "function_call_output", "function_call_output"]
        return
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool", "tool"]
    if model.startswith("ollama"):
        assert sent["messages"][2] == {"role": "tool", "content": "14", "tool_name": "get_weather"}
    else:
        assert sent["messages"][2] == {"role": "tool", "content": "14", "tool_call_id": calls[0].call_id}
        assert sent["tools"][0]["function"]["parameters"] == WEATHER["parameters"]


@pytest.mark.parametrize("model", EVERY)
def test_streamed_function_calls(stack, model):
    with client(stack).responses.stream(model=model, input="weather?", tools=[WEATHER]) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_response()
    calls = [o for o in final.output if o.type == "function_call"]
    assert [json.loads(o.arguments) for o in calls] == [{"location": "Paris"}, {"location": "Berlin"}]
    assert "response.function_call_arguments.delta" in events
    assert events.count("response.function_call_arguments.done") == 2
    assert events[-1] == "response.completed"


@pytest.mark.parametrize("model", EVERY)
def test_retrieve_and_delete_go_where_the_response_was_made(stack, model):
    c = client(stack)
    r = c.responses.create(model=model, input="keep me")
    got = c.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == "You said: keep me"
    if model == PASSED:
        assert last_upstream_request(stack["oai"])["body"] == {"get": r.id}
    # Another client does not see it.
    with pytest.raises(openai.NotFoundError):
        client(stack, CLIENT_KEY).responses.retrieve(r.id)
    c.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError) as e:
        c.responses.retrieve(r.id)
    assert e.value.body["code"] == "response_not_found"


def request_log_line(stack, request_id: str) -> dict:
    """The edge's one log line for a request (written once the body is out)."""
    deadline = time.monotonic() + 10
    while True:
        for line in stack["edge"].output().splitlines():
            if line.startswith("{") and '"message":"request"' in line and request_id in line:
                return json.loads(line)
        assert time.monotonic() < deadline, f"no log line for {request_id}"
        time.sleep(0.05)


@pytest.mark.parametrize("model", EVERY)
def test_tokens_are_counted_streamed_or_not(stack, model):
    c = client(stack)
    r = c.responses.create(model=model, input="count these words")
    stream = c.responses.create(model=model, input="count these words too", stream=True)
    events = [e.type for e in stream]
    assert events[-1] == "response.completed"
    for request_id in (r._request_id, stream.response.headers["x-request-id"]):
        line = request_log_line(stack, request_id)
        assert line["tokens_in"] > 0 and line["tokens_out"] > 0, line
        assert line["provider"] == model.split("/")[0] and line["status"] == 200


@pytest.mark.parametrize("model", TRANSLATED)
def test_a_translated_follow_up_reads_its_previous_response(stack, model):
    c = client(stack)
    first = c.responses.create(model=model, instructions="Be brief.", input="first question")
    c.responses.create(model=model, previous_response_id=first.id, input="second question")
    sent = last_upstream_request(upstream_of(stack, model))["body"]["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "first question"), ("assistant", "You said: first question"), ("user", "second question")]


def test_store_false_is_not_kept(stack):
    c = client(stack)
    r = c.responses.create(model=TRANSLATED[0], input="forget me", store=False)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError) as e:
        c.responses.create(model=TRANSLATED[0], previous_response_id=r.id, input="x")
    assert e.value.body["param"] == "previous_response_id"


@pytest.mark.parametrize("body, status, param", [
    (b"[1, 2]", 400, None),
    (b"{not json", 400, None),
    (b'{"input": "hi"}', 400, "model"),
    (b'{"model": 7, "input": "hi"}', 400, "model"),
    (b'{"model": "ollama/llama3:8b", "input": 42}', 400, "input"),
    (b'{"model": "ollama/llama3:8b"}', 400, "input"),
    (b'{"model": "ollama/llama3:8b", "input": "x", "max_output_tokens": "many"}', 400, "max_output_tokens"),
    (b'{"model": "no-such-model", "input": "hi"}', 404, "model"),
])
def test_bad_requests_get_openai_shaped_errors(stack, body, status, param):
    code, headers, err = raw(stack, "/v1/responses", body)
    assert code == status, err
    assert set(err["error"]) == {"message", "type", "param", "code"}
    assert err["error"]["type"] == "invalid_request_error" and err["error"]["param"] == param
    assert headers.get("X-Request-ID") or headers.get("x-request-id")


def test_an_upstream_error_keeps_its_status(stack):
    with pytest.raises(openai.NotFoundError):
        client(stack).responses.create(model="oai/not-there", input="x")
    code, _, err = raw(stack, "/v1/responses", json.dumps(
        {"model": "ollama/fake-error", "input": "x"}).encode())
    assert code == 500 and "terminated" in err["error"]["message"]


def test_policy_holds_for_responses(stack):
    with pytest.raises(openai.PermissionDeniedError):
        client(stack, CODEX_KEY).responses.create(model=PASSED, input="x")
    assert client(stack, CODEX_KEY).responses.create(model="ollama/llama3:8b", input="x").status == "completed"


# ---------------------------------------------------- pass-through routes --

def small_wav() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x00" * 1600)  # 0.1 s of silence
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["transcriptions", "translations"])
def test_audio_upload_is_multipart_with_model_rewritten(stack, kind):
    audio = small_wav()
    api = getattr(client(stack).audio, kind)
    r = api.create(model="oai/whisper-1", file=("hello.wav", audio, "audio/wav"))
    assert r.text == f"heard {len(audio)} bytes of hello.wav"
    sent = last_upstream_request(stack["oai"])
    assert sent["body"]["fields"]["model"] == "whisper-1"
    assert sent["body"]["file"] == {"name": "hello.wav", "size": len(audio), "content_type": "audio/wav"}
    assert sent["headers"]["authorization"] == f"Bearer {OAI_KEY}"


def test_transcription_as_plain_text(stack):
    text = client(stack).audio.transcriptions.create(
        model="oai/whisper-1", file=("a.wav", small_wav(), "audio/wav"), response_format="text")
    assert text.startswith("heard ")


def test_speech_streams_audio_bytes(stack):
    with client(stack).audio.speech.with_streaming_response.create(
            model="oai/tts-1", voice="alloy", input="hello there") as r:
        assert r.headers["content-type"] == "audio/mpeg"
        assert r.headers.get("x-request-id")
        data = b"".join(r.iter_bytes())
    assert data == b"ID3hello there"
    assert last_upstream_request(stack["oai"])["body"]["model"] == "tts-1"


def test_images(stack):
    r = client(stack).images.generate(model="oai/gpt-image-1", prompt="a red fox", n=2)
    assert len(r.data) == 2 and r.data[0].b64_json.startswith("iVBOR")


def test_moderations(stack):
    r = client(stack).moderations.create(model="oai/omni-moderation-latest", input="I will kill the process")
    assert r.results[0].flagged is True
    assert last_upstream_request(stack["oai"])["body"]["model"] == "omni-moderation-latest"


def test_rerank_over_plain_http(stack):
    code, headers, r = raw(stack, "/v1/rerank", json.dumps({
        "model": "oai/bge-reranker-base", "query": "red fox",
        "documents": ["a blue whale", "the red fox jumps", "a fox"], "top_n": 2}).encode())
    assert code == 200, r
    assert [x["index"] for x in r["results"]] == [1, 2]
    assert last_upstream_request(stack["oai"])["body"]["model"] == "bge-reranker-base"


def test_a_provider_without_the_route_names_model_and_route(stack):
    with pytest.raises(openai.NotFoundError) as e:
        client(stack).audio.transcriptions.create(model="ollama/llama3:8b", file=("a.wav", small_wav(), "audio/wav"))
    assert "ollama/llama3:8b" in e.value.message and "/v1/audio/transcriptions" in e.value.message
    assert e.value.body["code"] == "route_not_supported"
    code, _, err = raw(stack, "/v1/images/generations", b'{"model": "ollama/llama3:8b", "prompt": "x"}')
    assert code == 404 and "/v1/images/generations" in err["error"]["message"]


def test_pass_through_routes_check_input_and_policy(stack):
    code, _, err = raw(stack, "/v1/moderations", b'"just a string"')
    assert code == 400 and err["error"]["type"] == "invalid_request_error"
    code, _, err = raw(stack, "/v1/rerank", b'{"query": "x", "documents": []}')
    assert code == 400 and err["error"]["param"] == "model"
    code, _, err = raw(stack, "/v1/moderations", b'{"model": "nope", "input": "x"}')
    assert code == 404 and err["error"]["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:  # a form without model
        client(stack).audio.transcriptions.create(model="", file=("a.wav", small_wav(), "audio/wav"))
    assert e.value.body["param"] == "model"
    with pytest.raises(openai.PermissionDeniedError):
        client(stack, CODEX_KEY).moderations.create(model="oai/omni-moderation-latest", input="x")


def test_pass_through_routes_fail_over_like_chat(procs, tmp_path):
    """The preferred endpoint of a provider dies mid-run: every upload and every JSON call
    still lands on the other one (the multipart form is built again for the second attempt)."""
    first = fake_upstream(procs, "openai", "--models", OAI_MODELS, name="fake-first")
    second = fake_upstream(procs, "openai", "--models", OAI_MODELS, name="fake-second")
    edge = start_edge(procs, tmp_path, f"""
[[providers]]
name = "oai"
kind = "openai"
[[providers.endpoints]]
url = "{first.url()}/v1"
weight = 100
[[providers.endpoints]]
url = "{second.url()}/v1"
weight = 1
[egress]
dns_servers = ["127.0.0.1:9"]
""")
    wait_ready(edge.url())
    c = openai.OpenAI(base_url=edge.url() + "/v1", api_key="x", max_retries=0, timeout=20)

    def requests_to(proc) -> int:
        with urllib.request.urlopen(proc.url() + "/_fake/stats") as r:
            return json.load(r)["requests"]

    # The heavier endpoint answers while it is up.
    assert c.moderations.create(model="oai/omni-moderation-latest", input="x").results
    assert requests_to(first) == 1 and requests_to(second) == 0
    first.stop()
    for _ in range(3):
        assert c.audio.transcriptions.create(
            model="oai/whisper-1", file=("a.wav", small_wav(), "audio/wav")).text.startswith("heard ")
        assert c.moderations.create(model="oai/omni-moderation-latest", input="x").results[0].flagged is False
    assert requests_to(second) == 6
    assert "upstream attempt failed" in edge.output()
