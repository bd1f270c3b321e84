"""The Anthropic adapter against the fake upstream: OpenAI in, Messages API out, and back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from faregate.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from services.router.catalog import Provider as ProviderConfig
from services.router.providers.anthropic import AnthropicProvider
from services.router.providers.base import Usage
from services.router.providers.client import make_session
from tests.fakes import http
from tests.fakes.upstream import TOOL_ARGUMENTS
from tests.openai_schema import validate
from tests.unit.router.payloads import payloads

UPSTREAM = "claude-upstream-id"
HELLO = {"model": "public-id", "messages": [{"role": "user", "content": "alpha beta gamma"}]}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER = {"model": "public-id", "messages": [{"role": "user", "content": "what is the weather?"}]}


def config(base_url: str, key: str | None = "sk-fake-upstream") -> ProviderConfig:
    return ProviderConfig("claude", "anthropic", base_url, "ANTHROPIC_API_KEY", key)


@pytest.fixture
async def provider(fake_upstream) -> AsyncIterator[AnthropicProvider]:
    session = make_session(16, 2.0, 10.0)
    yield AnthropicProvider(config(fake_upstream.anthropic_base_url), session)
    await session.close()
    fake_upstream.reset()


async def stream(provider: AnthropicProvider, body: dict, *, include_usage: bool = False) -> tuple[list[dict], Usage]:
    usage = Usage()
    chunks = [orjson.loads(c) async for c in payloads(provider, UPSTREAM, body, usage, include_usage=include_usage)]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    return chunks, usage


def sent(fake_upstream) -> dict[str, Any]:
    request: dict[str, Any] = fake_upstream.requests[-1]
    assert request["path"] == "/v1/messages"
    return request


# -- whole answers ---------------------------------------------------------------------------


async def test_a_text_answer_is_an_openai_completion(provider: AnthropicProvider, fake_upstream) -> None:
    completion = await provider.chat(UPSTREAM, HELLO)
    doc = orjson.loads(completion.body)
    validate("CreateChatCompletionResponse", doc)
    assert doc["object"] == "chat.completion" and doc["model"] == UPSTREAM
    [choice] = doc["choices"]
    assert choice["message"] == {"role": "assistant", "content": "fake reply to: alpha beta gamma", "refusal": None}
    assert choice["finish_reason"] == "stop"
    assert completion.usage.reported
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 6)
    assert doc["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
    request = sent(fake_upstream)
    assert request["headers"]["x-api-key"] == "sk-fake-upstream"
    assert request["headers"]["anthropic-version"] == "2023-06-01"
    assert request["body"] == {
        "model": UPSTREAM,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "alpha beta gamma"}]}],
        "max_tokens": 4096,  # Anthropic requires it
    }


async def test_system_and_developer_messages_become_the_system_prompt(
    provider: AnthropicProvider, fake_upstream
) -> None:
    body = {
        "model": "public-id",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "answer in French"}]},
            {"role": "user", "content": "hello"},
        ],
    }
    completion = await provider.chat(UPSTREAM, body)
    request = sent(fake_upstream)["body"]
    assert request["system"] == "be brief\n\nanswer in French"
    assert [m["role"] for m in request["messages"]] == ["user"]
    assert completion.usage.prompt_tokens == 6  # the fake counts the system prompt's words too


async def test_max_tokens_cuts_the_answer_and_says_length(provider: AnthropicProvider, fake_upstream) -> None:
    body = {**HELLO, "max_tokens": 50, "max_completion_tokens": 2}
    doc = orjson.loads((await provider.chat(UPSTREAM, body)).body)
    assert sent(fake_upstream)["body"]["max_tokens"] == 2  # the tighter of the two
    assert doc["choices"][0]["message"]["content"] == "fake reply"
    # The fake says end_turn whatever the cut; a real max_tokens stop is mapped on the stream test below.
    assert doc["choices"][0]["finish_reason"] == "stop"


async def test_a_tool_call_answer(provider: AnthropicProvider, fake_upstream) -> None:
    body = {**WEATHER, "tools": [WEATHER_TOOL], "tool_choice": "required", "parallel_tool_calls": False}
    completion = await provider.chat(UPSTREAM, body)
    doc = orjson.loads(completion.body)
    validate("CreateChatCompletionResponse", doc)
    [choice] = doc["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["id"] == "toolu_fake1" and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert isinstance(call["function"]["arguments"], str)
    assert orjson.loads(call["function"]["arguments"]) == orjson.loads(TOOL_ARGUMENTS)
    request = sent(fake_upstream)["body"]
    assert request["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city",
            "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
        }
    ]
    assert request["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


async def test_tool_results_go_back_as_one_user_turn(provider: AnthropicProvider, fake_upstream) -> None:
    calls = [
        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
    ]
    body = {
        "model": "public-id",
        "tools": [WEATHER_TOOL],
        "messages": [
            *WEATHER["messages"],  # type: ignore[misc]
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "rainy"}]},
        ],
    }
    doc = orjson.loads((await provider.chat(UPSTREAM, body)).body)
    validate("CreateChatCompletionResponse", doc)
    assert doc["choices"][0]["finish_reason"] == "stop"  # the fake answers a tool result with text
    assert doc["choices"][0]["message"]["content"].startswith("fake reply to:")
    messages = sent(fake_upstream)["body"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
    ]
    assert messages[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "rainy"}]},
    ]


async def test_missing_usage_is_estimated_and_not_shown(provider: AnthropicProvider, fake_upstream) -> None:
    fake_upstream.set_behavior("ok", include_usage=False)
    completion = await provider.chat(UPSTREAM, HELLO)
    assert not completion.usage.reported and completion.usage.completion_tokens > 0
    assert "usage" not in orjson.loads(completion.body)
    _, usage = await stream(provider, HELLO, include_usage=True)
    assert not usage.reported and usage.completion_tokens > 0


# -- streams ---------------------------------------------------------------------------------


async def test_a_text_stream(provider: AnthropicProvider) -> None:
    body = {**HELLO, "messages": [{"role": "user", "content": "one two three four five six"}]}
    chunks, usage = await stream(provider, body)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["model"] == UPSTREAM
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "fake reply to: one two three four five six"
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert all(c["choices"] for c in chunks) and all("usage" not in c for c in chunks)
    assert usage.reported and (usage.prompt_tokens, usage.completion_tokens) == (6, 9)
    assert usage.chunks == len(chunks) - 2  # content chunks: not the role and finish chunks


async def test_a_stream_ends_with_usage_when_asked(provider: AnthropicProvider) -> None:
    chunks, usage = await stream(provider, HELLO, include_usage=True)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
    assert (usage.prompt_tokens, usage.completion_tokens) == (3, 6)


async def test_a_tool_call_stream(provider: AnthropicProvider, fake_upstream) -> None:
    fake_upstream.set_behavior("ok", chunks=4)
    chunks, usage = await stream(provider, {**WEATHER, "tools": [WEATHER_TOOL]}, include_usage=True)
    calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_fake1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    pieces = [tc["function"]["arguments"] for tc in calls[1:]]
    assert len(pieces) > 1 and all(tc["index"] == 0 and "id" not in tc for tc in calls[1:])
    assert "".join(pieces) == TOOL_ARGUMENTS
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == usage.completion_tokens == len(TOOL_ARGUMENTS.split())


async def test_a_stream_cut_midway_raises_after_its_chunks(provider: AnthropicProvider, fake_upstream) -> None:
    fake_upstream.set_behavior("ok", chunks=6, fail_after_chunks=2)
    got = []
    with pytest.raises(UpstreamError):
        async for chunk in payloads(provider, UPSTREAM, HELLO, Usage(), include_usage=False):
            got.append(chunk)
    assert len(got) == 3, "the role chunk and the two content chunks before the cut are relayed"


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (400, InvalidRequest, None),
        (404, InvalidRequest, None),
        (413, InvalidRequest, None),
        (401, UpstreamError, "upstream_401"),
        (429, UpstreamError, "upstream_429"),
        (500, UpstreamError, "upstream_500"),
        (529, UpstreamError, "upstream_529"),
    ],
)
async def test_upstream_statuses_become_our_errors(
    provider: AnthropicProvider, fake_upstream, status: int, error: type[Exception], code: str | None
) -> None:
    fake_upstream.set_behavior("error", status=status, retry_after=7 if status == 429 else None, times=2)
    with pytest.raises(error) as info:
        await provider.chat(UPSTREAM, HELLO)
    assert type(info.value) is error
    assert getattr(info.value, "code", None) == code
    assert getattr(info.value, "retry_after", None) == (7 if status == 429 else None)
    before = len(fake_upstream.requests)
    chunks = payloads(provider, UPSTREAM, HELLO, Usage(), include_usage=False)
    assert len(fake_upstream.requests) == before  # nothing is sent until the first chunk is asked for
    with pytest.raises(error):
        await anext(chunks)
    assert len(fake_upstream.requests) == before + 1


async def test_a_disconnect_or_a_dead_upstream_is_an_upstream_error(provider: AnthropicProvider, fake_upstream) -> None:
    fake_upstream.set_behavior("disconnect", times=1)
    with pytest.raises(UpstreamError):
        await provider.chat(UPSTREAM, HELLO)
    session = make_session(4, 1.0, 5.0)
    try:
        dead = AnthropicProvider(config("http://127.0.0.1:9"), session)
        with pytest.raises(UpstreamError):
            await anext(payloads(dead, UPSTREAM, HELLO, Usage(), include_usage=False))
    finally:
        await session.close()


async def test_a_stalled_upstream_times_out(fake_upstream) -> None:
    fake_upstream.set_behavior("stall")
    session = make_session(4, 1.0, 0.5)
    try:
        with pytest.raises(UpstreamTimeout):
            await AnthropicProvider(config(fake_upstream.anthropic_base_url), session).chat(UPSTREAM, HELLO)
    finally:
        await session.close()
        fake_upstream.reset()


async def test_a_missing_key_is_refused_by_the_upstream(fake_upstream) -> None:
    session = make_session(4, 1.0, 5.0)
    try:
        keyless = AnthropicProvider(config(fake_upstream.anthropic_base_url, key=None), session)
        with pytest.raises(UpstreamError, match="401"):
            await keyless.chat(UPSTREAM, HELLO)
        assert "x-api-key" not in fake_upstream.requests[-1]["headers"]
    finally:
        await session.close()


# -- a scripted upstream, for the events the fake never sends -------------------------------------

Events = list[dict[str, Any]]


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Events], Awaitable[AnthropicProvider]]]:
    """An upstream that streams exactly the given events (a stand-in for Anthropic's edge cases)."""
    runners: list[web.AppRunner] = []
    session = make_session(4, 1.0, 5.0)

    async def start(events: Events) -> AnthropicProvider:
        async def messages(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for event in events:
                await resp.write(f"event: {event['type']}\ndata: ".encode() + orjson.dumps(event) + b"\n\n")
            await resp.write_eof()
            return resp

        app = web.Application()
        app.router.add_post("/v1/messages", messages)
        runner, base_url = await http.start(app)
        runners.append(runner)
        return AnthropicProvider(config(base_url), session)

    yield start
    await session.close()
    for runner in runners:
        await runner.cleanup()


START = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [],
        "usage": {
            "input_tokens": 10,
            "cache_read_input_tokens": 90,
            "cache_creation_input_tokens": 5,
            "output_tokens": 1,
        },
    },
}


async def test_an_error_event_before_any_content_raises_on_the_first_chunk(scripted) -> None:
    provider = await scripted([{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}])
    with pytest.raises(UpstreamError, match="Overloaded") as info:
        await anext(payloads(provider, UPSTREAM, HELLO, Usage(), include_usage=False))
    assert info.value.code == "upstream_529"


async def test_an_error_event_mid_stream_raises_after_the_chunks(scripted) -> None:
    text = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}
    error = {"type": "error", "error": {"type": "api_error", "message": "boom"}}
    provider = await scripted([START, {"type": "ping"}, text, error])
    got = []
    with pytest.raises(UpstreamError, match="boom"):
        async for chunk in payloads(provider, UPSTREAM, HELLO, Usage(), include_usage=False):
            got.append(orjson.loads(chunk))
    assert [c["choices"][0]["delta"].get("content") for c in got] == ["", "Hel"]


async def test_a_stream_without_message_stop_is_an_error(scripted) -> None:
    text = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}
    provider = await scripted([START, text, {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}])
    with pytest.raises(UpstreamError, match="early"):
        [c async for c in payloads(provider, UPSTREAM, HELLO, Usage(), include_usage=False)]


async def test_cache_tokens_count_as_prompt_and_unknown_blocks_are_skipped(scripted) -> None:
    events = [
        START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "cut"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "some_future_event"},
        {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 7}},
        {"type": "message_stop"},
    ]
    provider = await scripted(events)
    usage = Usage()
    chunks = [orjson.loads(c) async for c in payloads(provider, UPSTREAM, HELLO, usage, include_usage=True)]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:-2]] == ["", "cut"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 105,
        "completion_tokens": 7,
        "total_tokens": 112,
        "prompt_tokens_details": {"cached_tokens": 90},
    }
    assert (usage.prompt_tokens, usage.completion_tokens, usage.reported) == (105, 7, True)
    assert {c["model"] for c in chunks} == {"claude-x"} and chunks[0]["id"] == "chatcmpl-msg_1"
