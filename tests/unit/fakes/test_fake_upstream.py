"""The fake upstream itself, through the official openai SDK (OpenAI kind) and plain httpx (Anthropic kind)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.openai_schema import validate

KEY = "x"
HELLO: Any = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say hello to the fake"}]
WEATHER: Any = [{"role": "user", "content": "what is the weather in Paris?"}]
TOOL: Any = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
ANTHROPIC_HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
ANTHROPIC_TOOL = {"name": "get_weather", "input_schema": {"type": "object"}}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream(api_key=KEY) as upstream:
        yield upstream


@pytest.fixture(autouse=True)
def _ok_again(fake: FakeUpstream) -> Iterator[None]:
    yield
    fake.reset()


@pytest.fixture
def client(fake: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.base_url, api_key=KEY, max_retries=0) as sdk:
        yield sdk


def stream_chunks(client: openai.OpenAI, **kwargs: Any) -> list[dict[str, Any]]:
    """The chunks of a streamed completion as sent on the wire, each validated against OpenAI's schema."""
    chunks = [c.to_dict() for c in client.chat.completions.create(model="m", stream=True, **kwargs)]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    return chunks


def sse_events(resp: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    events, name = [], ""
    for line in resp.text.splitlines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def test_completion_is_deterministic_and_valid(client: openai.OpenAI, fake: FakeUpstream) -> None:
    raw = client.chat.completions.with_raw_response.create(model="m1", messages=HELLO)
    doc = raw.http_response.json()
    validate("CreateChatCompletionResponse", doc)
    assert doc["id"].startswith("chatcmpl-fake") and doc["model"] == "m1"
    assert doc["choices"][0]["message"] == {
        "role": "assistant",
        "content": "fake reply to: say hello to the fake",
        "refusal": None,
    }
    assert doc["choices"][0]["finish_reason"] == "stop"
    assert doc["usage"] == {"prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15}
    assert raw.parse().choices[0].message.content == "fake reply to: say hello to the fake"
    sent = fake.requests[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["body"]["messages"] == HELLO
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"


def test_max_tokens_cut_the_reply(client: openai.OpenAI) -> None:
    short = client.chat.completions.create(model="m", messages=HELLO, max_tokens=3)
    assert short.choices[0].message.content == "fake reply to:" and short.usage and short.usage.completion_tokens == 3
    shorter = client.chat.completions.create(model="m", messages=HELLO, max_completion_tokens=1)
    assert shorter.choices[0].message.content == "fake"


def test_stream_without_usage(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.set_behavior("ok", chunks=3)
    chunks = stream_chunks(client, messages=HELLO)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(chunks) == 1 + 3 + 1 and all("usage" not in c for c in chunks)
    assert (
        "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "fake reply to: say hello to the fake"
    )
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}


def test_stream_with_include_usage(client: openai.OpenAI) -> None:
    chunks = stream_chunks(client, messages=HELLO, stream_options={"include_usage": True})
    *body, last = chunks
    assert len(body) == 1 + 5 + 1 and all(c["usage"] is None for c in body)
    assert last["choices"] == [] and last["usage"] == {"prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15}


def test_upstream_without_usage(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.set_behavior("ok", include_usage=False)
    doc = client.chat.completions.with_raw_response.create(model="m", messages=HELLO).http_response.json()
    validate("CreateChatCompletionResponse", doc)
    assert "usage" not in doc
    chunks = stream_chunks(client, messages=HELLO, stream_options={"include_usage": True})
    assert all("usage" not in c and c["choices"] for c in chunks)


def test_error_behaviour(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.set_behavior("error", status=503, retry_after=2)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="m", messages=HELLO)
    assert info.value.status_code == 503 and info.value.response.headers["Retry-After"] == "2"
    validate("ErrorResponse", info.value.response.json())
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=HELLO, stream=True)


def test_times_then_ok_and_per_model_overrides(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.set_behavior("error", status=500, times=1)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=HELLO)
    assert client.chat.completions.create(model="m", messages=HELLO).choices[0].message.content
    fake.set_behavior("error", status=429)
    fake.set_behavior("ok", model="good")
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="other", messages=HELLO)
    assert client.chat.completions.create(model="good", messages=HELLO).model == "good"


def test_stream_cut_after_chunks(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.set_behavior("ok", chunks=6, fail_after_chunks=2)
    got: list[str] = []
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        for chunk in client.chat.completions.create(model="m", messages=HELLO, stream=True):
            got.append(chunk.choices[0].delta.content or "")
    assert len(got) == 1 + 2, "the role chunk and two content chunks, then nothing"


def test_disconnect_slow_and_stall(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.set_behavior("disconnect", times=1)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=HELLO)
    fake.set_behavior("slow", delay=0.3, times=1)
    started = time.monotonic()
    client.chat.completions.create(model="m", messages=HELLO)
    assert time.monotonic() - started >= 0.3
    fake.set_behavior("stall")
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).chat.completions.create(model="m", messages=HELLO)
    statuses: list[int] = []
    waiting = threading.Thread(
        target=lambda: statuses.append(
            httpx.post(
                f"{fake.base_url}/chat/completions",
                json={"model": "m", "messages": HELLO},
                headers={"Authorization": f"Bearer {KEY}"},
                timeout=10,
            ).status_code
        )
    )
    seen = len(fake.requests)
    waiting.start()
    while len(fake.requests) == seen:
        time.sleep(0.01)
    time.sleep(0.1)  # the request is in, and stalls
    fake.reset()
    waiting.join(5)
    assert statuses == [504], "reset releases stalled requests"


def test_stop_does_not_wait_for_stalled_requests() -> None:
    upstream = FakeUpstream().start()
    upstream.set_behavior("stall")
    outcome: list[object] = []

    def call() -> None:
        try:
            body = {"model": "m", "messages": HELLO}
            outcome.append(httpx.post(f"{upstream.base_url}/chat/completions", json=body, timeout=10).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    while not upstream.requests:
        time.sleep(0.01)
    started = time.monotonic()
    upstream.stop()
    caller.join(5)
    assert time.monotonic() - started < 3 and outcome, "the stalled request is released or cut, not left hanging"


def test_wrong_key_is_401(fake: FakeUpstream) -> None:
    with (
        openai.OpenAI(base_url=fake.base_url, api_key="not-it", max_retries=0) as wrong,
        pytest.raises(openai.AuthenticationError) as info,
    ):
        wrong.chat.completions.create(model="m", messages=HELLO)
    validate("ErrorResponse", info.value.response.json())


def test_embeddings_and_models(client: openai.OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(model="e", input=["one", "two words"], encoding_format="float")
    doc = raw.http_response.json()
    validate("CreateEmbeddingResponse", doc)
    assert [d["index"] for d in doc["data"]] == [0, 1] and all(len(d["embedding"]) == 8 for d in doc["data"])
    assert doc["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    again = client.embeddings.create(model="e", input="one")  # the SDK asks for base64 and decodes it
    assert again.data[0].embedding == pytest.approx(doc["data"][0]["embedding"], abs=1e-6)
    models = client.models.with_raw_response.list().http_response.json()
    validate("ListModelsResponse", models)
    assert [m["id"] for m in models["data"]] == ["fake-upstream-model"]


def test_openai_tool_call(client: openai.OpenAI) -> None:
    doc = client.chat.completions.with_raw_response.create(
        model="m", messages=WEATHER, tools=[TOOL]
    ).http_response.json()
    validate("CreateChatCompletionResponse", doc)
    choice = doc["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = {
        "id": "call_fake1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    assert choice["message"]["tool_calls"] == [call]
    chunks = stream_chunks(client, messages=WEATHER, tools=[TOOL])
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert (
        deltas[0]["tool_calls"][0]["id"] == "call_fake1"
        and deltas[0]["tool_calls"][0]["function"]["name"] == "get_weather"
    )
    assert (
        "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas if d.get("tool_calls"))
        == '{"city": "Paris"}'
    )
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    after = [
        *WEATHER,
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_fake1", "content": "sunny"},
    ]
    assert client.chat.completions.create(model="m", messages=after, tools=[TOOL]).choices[0].finish_reason == "stop"


def test_anthropic_messages(fake: FakeUpstream) -> None:
    url = f"{fake.anthropic_base_url}/v1/messages"
    body = {
        "model": "claude-fake",
        "max_tokens": 100,
        "system": "be brief",
        "messages": [{"role": "user", "content": "say hello"}],
    }
    doc = httpx.post(url, json=body, headers=ANTHROPIC_HEADERS).json()
    assert doc["id"].startswith("msg_fake") and doc["type"] == "message" and doc["role"] == "assistant"
    assert doc["content"] == [{"type": "text", "text": "fake reply to: say hello"}] and doc["model"] == "claude-fake"
    assert doc["stop_reason"] == "end_turn" and doc["stop_sequence"] is None
    assert doc["usage"] == {"input_tokens": 4, "output_tokens": 5}

    events = sse_events(httpx.post(url, json={**body, "stream": True}, headers=ANTHROPIC_HEADERS))
    names = [name for name, _ in events]
    assert names == ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * 5 + [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    assert events[0][1]["message"]["usage"]["input_tokens"] == 4
    assert "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta") == "fake reply to: say hello"
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn" and events[-2][1]["usage"] == {"output_tokens": 5}


def test_anthropic_tool_use_and_errors(fake: FakeUpstream) -> None:
    url = f"{fake.anthropic_base_url}/v1/messages"
    body = {"model": "claude-fake", "max_tokens": 100, "messages": WEATHER, "tools": [ANTHROPIC_TOOL]}
    doc = httpx.post(url, json=body, headers=ANTHROPIC_HEADERS).json()
    assert doc["stop_reason"] == "tool_use"
    assert doc["content"] == [
        {"type": "tool_use", "id": "toolu_fake1", "name": "get_weather", "input": {"city": "Paris"}}
    ]
    events = sse_events(httpx.post(url, json={**body, "stream": True}, headers=ANTHROPIC_HEADERS))
    assert events[1][1]["content_block"] == {
        "type": "tool_use",
        "id": "toolu_fake1",
        "name": "get_weather",
        "input": {},
    }
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert json.loads(partial) == {"city": "Paris"} and events[-2][1]["delta"]["stop_reason"] == "tool_use"

    fake.set_behavior("error", status=529, model="claude-fake", times=1)
    resp = httpx.post(url, json=body, headers=ANTHROPIC_HEADERS)
    assert resp.status_code == 529 and resp.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "fake upstream error 529"},
    }
    assert httpx.post(url, json=body, headers={**ANTHROPIC_HEADERS, "x-api-key": "no"}).status_code == 401
    assert fake.requests[-1]["headers"]["x-api-key"] == "no"


def test_cli_runs_in_the_foreground() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "tests.fakes.upstream", "--port", str(port)]
    with subprocess.Popen(command, cwd=Path(__file__).resolve().parents[3], stdout=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None and f":{port}/v1" in proc.stdout.readline().decode()
            assert httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["object"] == "list"
        finally:
            proc.terminate()
