"""The router's domain with the echo provider and a fake OpenAI-compatible upstream."""

from __future__ import annotations

import orjson
import pytest

from faregate.errors import Forbidden, InvalidRequest, NotFound, ServiceUnavailable
from faregate.pb.events.v1.usage_pb2 import UsageRecord
from faregate.pb.router.v1 import router_pb2 as pb
from services.router.catalog import load_catalog
from services.router.providers.echo import EchoProvider
from services.router.routing import ChatRouter, parse_body
from tests.openai_schema import validate


def request(body: dict, *, test_mode: bool = False, cap: int = 0) -> pb.CompletionRequest:
    return pb.CompletionRequest(
        request_id="req_1",
        body=orjson.dumps(body),
        caller=pb.Caller(account_id="acc_1", key_id="key_1", billable=True, test_mode=test_mode, max_tokens_cap=cap),
    )


@pytest.fixture
def sink() -> list[UsageRecord]:
    return []


@pytest.fixture
def router(sink: list[UsageRecord]) -> ChatRouter:
    catalog = load_catalog(None, env={})
    return ChatRouter(catalog, {"faregate": EchoProvider("faregate/echo")}, sink.append)


async def collect(router: ChatRouter, req: pb.CompletionRequest) -> list[pb.CompletionChunk]:
    return [c async for c in router.chat(req)]


async def test_echo_completion_is_valid_and_metered(router: ChatRouter, sink: list[UsageRecord]) -> None:
    chunks = await collect(
        router, request({"model": "faregate/echo", "messages": [{"role": "user", "content": "a b"}]})
    )
    [only] = chunks  # a JSON answer is one message: start + the whole body
    assert only.start.model == "faregate/echo" and not only.start.stream
    doc = orjson.loads(only.data)
    validate("CreateChatCompletionResponse", doc)
    assert doc["choices"][0]["message"]["content"] == "a b"
    [record] = sink
    assert record.request_id == "req_1" and record.completion_tokens == 2 and record.cost_micros == 0
    assert not record.billable  # test models are never billed
    assert not record.estimated


async def test_echo_stream_chunks_validate(router: ChatRouter, sink: list[UsageRecord]) -> None:
    body = {
        "model": "faregate/echo",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "one two three"}],
        "max_tokens": 2,
    }
    chunks = await collect(router, request(body))
    assert chunks[0].start.stream and not chunks[1].HasField("start")
    docs = [orjson.loads(c.data) for c in chunks]
    for d in docs:
        validate("CreateChatCompletionStreamResponse", d)
    assert "".join(d["choices"][0]["delta"].get("content", "") for d in docs if d["choices"]) == "one two"
    assert docs[-1]["usage"]["completion_tokens"] == 2
    assert sink[0].status == UsageRecord.STATUS_OK and sink[0].stream


async def test_caps_and_test_mode(router: ChatRouter, sink: list[UsageRecord]) -> None:
    body = {"model": "faregate/echo", "messages": [{"role": "user", "content": "w " * 50}]}
    chunks = await collect(router, request(body, cap=3))
    assert orjson.loads(chunks[0].data)["usage"]["completion_tokens"] == 3
    with pytest.raises(Forbidden):
        await collect(
            router, request({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}, test_mode=True)
        )


async def test_unknown_and_unconfigured_models(router: ChatRouter) -> None:
    with pytest.raises(NotFound):
        await collect(router, request({"model": "nope", "messages": [{"role": "user", "content": "x"}]}))
    with pytest.raises(ServiceUnavailable, match="OPENAI_API_KEY"):
        await collect(router, request({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"nope",
        b"[]",
        b'{"messages": [{}]}',
        b'{"model": "m"}',
        b'{"model": "m", "messages": [], "stream": false}',
        b'{"model": "m", "messages": [{}], "max_tokens": 0}',
        b'{"model": "m", "messages": [{}], "stream": 1}',
    ],
)
def test_parse_body_rejects_bad_input(raw: bytes) -> None:
    with pytest.raises(InvalidRequest):
        parse_body(raw)
