"""The router's domain with the echo provider and a fake OpenAI-compatible upstream."""

from __future__ import annotations

import orjson
import pytest

from faregate.errors import Forbidden, InvalidRequest, NotFound, ServiceUnavailable, UpstreamError, UpstreamTimeout
from faregate.pb.events.v1.usage_pb2 import UsageRecord
from faregate.values import RoutingMode
from services.router.calls import Caller, Chunk, CompletionCall
from services.router.catalog import load_catalog
from services.router.providers.base import Completion
from services.router.providers.echo import EchoProvider
from services.router.routing import ChatRouter, cap_output, parse_body
from tests.openai_schema import validate


def request(body: dict, *, test_mode: bool = False, cap: int = 0) -> CompletionCall:
    return CompletionCall(
        request_id="req_1",
        body=orjson.dumps(body),
        caller=Caller(account_id="acc_1", key_id="key_1", billable=True, test_mode=test_mode, max_tokens_cap=cap),
    )


@pytest.fixture
def sink() -> list[UsageRecord]:
    return []


@pytest.fixture
def router(sink: list[UsageRecord]) -> ChatRouter:
    catalog = load_catalog(None, env={})
    return ChatRouter(catalog, {"faregate": EchoProvider("faregate/echo")}, sink.append)


async def collect(router: ChatRouter, req: CompletionCall) -> list[Chunk]:
    return [c async for c in router.chat(req)]


async def test_echo_completion_is_valid_and_metered(router: ChatRouter, sink: list[UsageRecord]) -> None:
    chunks = await collect(
        router, request({"model": "faregate/echo", "messages": [{"role": "user", "content": "a b"}]})
    )
    [only] = chunks  # a JSON answer is one message: start + the whole body
    assert only.start is not None and only.start.model == "faregate/echo" and not only.start.stream
    [data] = only.payloads
    doc = orjson.loads(data)
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
    assert chunks[0].start is not None and chunks[0].start.stream and chunks[1].start is None
    docs = [orjson.loads(d) for c in chunks for d in c.payloads]  # a chunk may carry several
    for d in docs:
        validate("CreateChatCompletionStreamResponse", d)
    assert "".join(d["choices"][0]["delta"].get("content", "") for d in docs if d["choices"]) == "one two"
    assert docs[-1]["usage"]["completion_tokens"] == 2
    assert sink[0].status == UsageRecord.STATUS_OK and sink[0].stream


async def test_caps_and_test_mode(router: ChatRouter, sink: list[UsageRecord]) -> None:
    body = {"model": "faregate/echo", "messages": [{"role": "user", "content": "w " * 50}]}
    chunks = await collect(router, request(body, cap=3))
    assert orjson.loads(chunks[0].payloads[0])["usage"]["completion_tokens"] == 3
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


MULTI = """
providers:
  p1: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
  p2: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
  p3: {kind: openai, base_url: "http://127.0.0.1:9/v1", api_key_env: FAREGATE_TEST_NO_SUCH_KEY}
models:
  - id: big
    categories: [general, coding]
    pricing: {prompt: 5, completion: 15}
    routes: [{provider: p1, model: big-1}, {provider: p2, model: big-2}, {provider: p3, model: big-3}]
  - id: small
    aliases: [tiny]
    categories: [general, cheap, fast]
    pricing: {prompt: 0.1, completion: 0.2}
    routes: [{provider: p2, model: small-2}]
  - id: vec
    categories: [embedding]
    pricing: {prompt: 0.02, completion: 0}
    routes: [{provider: p1, model: vec-1}]
"""


@pytest.fixture
def multi(tmp_path) -> ChatRouter:
    from services.router.breakers import LocalBreakers
    from services.router.providers.base import Provider as ProviderBase

    path = tmp_path / "c.yaml"
    path.write_text(MULTI)
    catalog = load_catalog(path, env={})
    providers = {name: ProviderBase.__new__(EchoProvider) for name in ("p1", "p2", "p3", "faregate")}
    return ChatRouter(catalog, providers, [].append, breakers=LocalBreakers(threshold=1, open_seconds=600))


def _caller(mode: str = "auto", provider: str = "") -> Caller:
    return Caller(
        account_id="a", key_id="k", billable=True, routing_mode=RoutingMode(mode), preferred_provider=provider
    )


async def _plan(router: ChatRouter, body: dict, caller: Caller | None = None) -> list[tuple[str, str]]:
    attempts = await router.plan({"messages": [{"role": "user", "content": "x"}], **body}, caller or _caller())
    return [(a.model.id, a.route.provider) for a in attempts]


async def test_routing_modes_shape_the_chain(multi: ChatRouter) -> None:
    # auto: the chain's order, unconfigured providers left out
    assert await _plan(multi, {"model": "big"}) == [("big", "p1"), ("big", "p2")]
    # preferred: that provider first, then the rest of the chain
    assert await _plan(multi, {"model": "big"}, _caller("preferred", "p2")) == [("big", "p2"), ("big", "p1")]
    # failover: only the preferred provider
    assert await _plan(multi, {"model": "big"}, _caller("failover", "p2")) == [("big", "p2")]
    with pytest.raises(InvalidRequest, match="failover"):
        await _plan(multi, {"model": "small"}, _caller("failover", "p1"))


async def test_models_fallback_list_and_aliases(multi: ChatRouter) -> None:
    body = {"model": "tiny", "models": ["big", "small"]}
    assert await _plan(multi, body) == [("small", "p2"), ("big", "p1"), ("big", "p2")]
    only_models = parse_body(b'{"models": ["big"], "messages": [{"role": "user", "content": "x"}]}')
    assert [(a.model.id, a.route.provider) for a in await multi.plan(only_models, _caller())] == [
        ("big", "p1"),
        ("big", "p2"),
    ]
    with pytest.raises(NotFound):
        await _plan(multi, {"model": "big", "models": ["nope"]})
    with pytest.raises(InvalidRequest):
        parse_body(b'{"model": "big", "messages": [{}], "models": "small"}')


async def test_auto_router_skips_unhealthy_and_reads_the_task(multi: ChatRouter) -> None:
    coding = await multi.auto.choose("please fix this python bug")
    assert coding.category == "coding" and coding.ranked[0].model.id == "big"
    assert (await multi.auto.choose("cheap")).ranked[0].model.id == "small"
    assert (await multi.auto.choose("")).category == "general"
    # p1 fails (threshold 1): big is still served by p2, so it stays, through p2
    await multi.breakers.failure("p1")
    assert (await multi.auto.choose("coding")).ranked[0].provider == "p2"
    await multi.breakers.failure("p2")
    with pytest.raises(ServiceUnavailable):
        await multi.auto.choose("coding")  # nothing healthy, not even a general model
    await multi.breakers.reset(["p1", "p2"])
    # "model": "auto" routes the same way, the task hint leaving the body
    body = {"model": "auto", "task": "cheap bulk job", "messages": [{"role": "user", "content": "x"}]}
    assert (await multi.plan(body, _caller()))[0].model.id == "small" and "task" not in body


@pytest.mark.parametrize("stream", [False, True])
async def test_the_cap_bounds_max_completion_tokens_too(
    router: ChatRouter, sink: list[UsageRecord], stream: bool
) -> None:
    body = {"model": "faregate/echo", "messages": [{"role": "user", "content": "w " * 50}], "stream": stream}
    await collect(router, request({**body, "max_completion_tokens": 1000}, cap=3))
    assert sink[-1].completion_tokens == 3


def test_the_cap_is_applied_to_every_field_that_bounds_output() -> None:
    for given, capped in [
        ({}, {"max_tokens": 256}),
        ({"max_tokens": 10}, {"max_tokens": 10}),
        ({"max_tokens": 1000}, {"max_tokens": 256}),
        ({"max_completion_tokens": 1000}, {"max_completion_tokens": 256}),
        ({"max_tokens": 1000, "max_completion_tokens": 5000}, {"max_tokens": 256, "max_completion_tokens": 256}),
        ({"n": 4}, {"n": 4, "max_tokens": 64}),  # n choices share the cap
        ({"n": 128, "max_completion_tokens": 9}, {"n": 128, "max_completion_tokens": 2}),
        ({"n": 1000}, {"n": 1000, "max_tokens": 1}),
    ]:
        body = dict(given)
        cap_output(body, 256)
        assert body == capped, given
    body = {"max_tokens": 1000}
    cap_output(body, 0)  # no cap
    assert body == {"max_tokens": 1000}


class Failing(EchoProvider):
    def __init__(self, error: UpstreamError) -> None:
        super().__init__("faregate/echo")
        self.error = error

    async def chat(self, model: str, body: dict) -> Completion:
        raise self.error


@pytest.mark.parametrize(
    ("error", "opens"),
    [
        (UpstreamError("HTTP 500", code="upstream_500"), True),
        (UpstreamTimeout("timed out"), True),
        (UpstreamError("unreachable"), True),
        (UpstreamError("HTTP 429", code="upstream_429"), False),  # pacing, not failing
    ],
)
async def test_only_the_providers_failures_open_its_breaker(error: UpstreamError, opens: bool) -> None:
    catalog = load_catalog(None, env={})
    router = ChatRouter(catalog, {"faregate": Failing(error)}, lambda r: None)
    body = {"model": "faregate/echo", "messages": [{"role": "user", "content": "x"}]}
    for _ in range(router.breakers.threshold):
        with pytest.raises(UpstreamError):
            await collect(router, request(body))
    state = (await router.breakers.snapshot(["faregate"]))["faregate"]
    assert (state.state == "open") is opens
