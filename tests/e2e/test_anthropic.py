"""A Claude model through the gateway: the OpenAI SDK → edge → router's Anthropic adapter → fake
Anthropic API, and every call metered into the ledger at the model's prices."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from faregate.money import token_cost
from tests.harness import Stack, ledger, wait_for
from tests.openai_schema import validate

pytestmark = pytest.mark.e2e

MODEL, UPSTREAM_MODEL = "fake-claude", "fake-claude-upstream"  # tests/conftest.py's catalog
PROMPT_PRICE, COMPLETION_PRICE = 3_000_000, 15_000_000  # micro-USD per 1M tokens
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
def account(stack: Stack) -> tuple[str, str]:
    account_id = stack.create_account(plan="pro", credit_usd=10)
    return account_id, stack.create_key(account_id)


def client(stack: Stack, key: str) -> openai.OpenAI:
    return stack.sdk(key)


def usage_debits(stack: Stack, account_id: str, n: int) -> list[int]:
    """The amounts of the account's first ``n`` usage entries, oldest first, once all are there."""

    def entries() -> list[int] | None:
        found = [e.amount_micros for e in ledger(stack, account_id) if e.kind == "usage"]
        return found[::-1] if len(found) >= n else None

    debits: list[int] = wait_for(entries, what=f"{n} usage ledger entries")
    return debits


def last_request(fake_upstream) -> dict[str, Any]:
    request: dict[str, Any] = fake_upstream.requests[-1]
    assert request["path"] == "/v1/messages", "the router speaks Anthropic's API to an anthropic provider"
    assert request["headers"]["x-api-key"] == "sk-fake-upstream"
    assert request["headers"]["anthropic-version"] == "2023-06-01"
    return request


def test_a_completion_from_claude_is_answered_and_metered(stack: Stack, account, fake_upstream) -> None:
    account_id, key = account
    raw = client(stack, key).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "say hello to Claude"},
        ],
        max_tokens=64,
    )
    validate("CreateChatCompletionResponse", raw.http_response.json())
    completion = raw.parse()
    assert completion.choices[0].message.content == "fake reply to: say hello to Claude"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == UPSTREAM_MODEL
    sent = last_request(fake_upstream)["body"]
    assert sent["model"] == UPSTREAM_MODEL and sent["system"] == "You are terse." and sent["max_tokens"] == 64
    assert [m["role"] for m in sent["messages"]] == ["user"]

    usage = completion.usage
    assert usage is not None and usage.prompt_tokens == 7 and usage.completion_tokens == 7  # the fake counts words
    cost = token_cost(usage.prompt_tokens, usage.completion_tokens, PROMPT_PRICE, COMPLETION_PRICE)
    assert usage_debits(stack, account_id, 1) == [-cost]
    assert stack.balance_usd(account_id) == pytest.approx(10 - cost / 1e6, abs=1e-9)
    [row] = wait_for(
        lambda: stack.http.get("/v1/requests", headers={"Authorization": f"Bearer {key}"}).json()["data"],
        what="the request in the history",
    )
    assert (row["model"], row["provider"], row["tokens_estimated"]) == (MODEL, "fake-anthropic", False)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (7, 7)


def test_a_stream_from_claude_relays_chunks_and_usage(stack: Stack, account, fake_upstream) -> None:
    account_id, key = account
    stream = client(stack, key).chat.completions.create(
        model="fake-claude-20250101",  # an alias
        messages=[{"role": "user", "content": "one two three four five six"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "fake reply to: one two three four five six"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (6, 9)
    assert last_request(fake_upstream)["body"]["stream"] is True

    cost = token_cost(usage.prompt_tokens, usage.completion_tokens, PROMPT_PRICE, COMPLETION_PRICE)
    assert usage_debits(stack, account_id, 1) == [-cost]


def test_claude_calls_a_tool_and_reads_its_result(stack: Stack, account, fake_upstream) -> None:
    account_id, key = account
    sdk = client(stack, key)
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = sdk.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    validate("CreateChatCompletionResponse", first.model_dump(exclude_unset=True))
    assert first.choices[0].finish_reason == "tool_calls"
    [call] = first.choices[0].message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert last_request(fake_upstream)["body"]["tools"][0]["input_schema"] == WEATHER_TOOL["function"]["parameters"]

    streamed = list(
        sdk.chat.completions.create(
            model=MODEL, messages=messages, tools=[WEATHER_TOOL], stream=True, stream_options={"include_usage": True}
        )
    )
    deltas = [tc for c in streamed if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id == call.id and deltas[0].function and deltas[0].function.name == "get_weather"
    assert json.loads("".join(d.function.arguments or "" for d in deltas if d.function)) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "tool_calls"

    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"},
    ]
    final = sdk.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.content
    sent = last_request(fake_upstream)["body"]["messages"]
    assert sent[1]["content"][0] == {
        "type": "tool_use",
        "id": call.id,
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert sent[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 degrees and sunny"}],
    }

    usages = [first.usage, streamed[-1].usage, final.usage]
    expected = [-token_cost(u.prompt_tokens, u.completion_tokens, PROMPT_PRICE, COMPLETION_PRICE) for u in usages if u]
    assert len(expected) == 3 and all(e < 0 for e in expected)
    assert sorted(usage_debits(stack, account_id, 3)) == sorted(expected)
