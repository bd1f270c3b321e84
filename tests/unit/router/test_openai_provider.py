"""The OpenAI-compatible adapter against the fake upstream: usage, stripping, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from faregate.errors import InvalidRequest, UpstreamError
from services.router.catalog import Provider as ProviderConfig
from services.router.providers.base import Usage
from services.router.providers.openai import OpenAIProvider, make_session
from tests.unit.router.payloads import payloads

BODY = {"model": "public-id", "messages": [{"role": "user", "content": "alpha beta gamma"}]}


@pytest.fixture
async def provider(fake_upstream) -> AsyncIterator[OpenAIProvider]:
    session = make_session(16, 2.0, 10.0)
    cfg = ProviderConfig("fake", "openai", fake_upstream.base_url, "K", "sk-fake-upstream")
    yield OpenAIProvider(cfg, session)
    await session.close()
    fake_upstream.reset()


async def test_whole_completion_passes_bytes_and_reads_usage(provider: OpenAIProvider, fake_upstream) -> None:
    completion = await provider.chat("upstream-id", BODY)
    doc = orjson.loads(completion.body)
    assert doc["model"] == "upstream-id"
    assert completion.usage.reported
    assert completion.usage.completion_tokens == doc["usage"]["completion_tokens"]
    assert fake_upstream.requests[-1]["headers"]["Authorization"] == "Bearer sk-fake-upstream"


async def test_stream_strips_usage_unless_asked(provider: OpenAIProvider) -> None:
    usage = Usage()
    chunks = [orjson.loads(c) async for c in payloads(provider, "u", BODY, usage, include_usage=False)]
    assert usage.reported and usage.completion_tokens > 0
    assert all(c["choices"] for c in chunks) and all("usage" not in c for c in chunks)
    usage2 = Usage()
    chunks2 = [orjson.loads(c) async for c in payloads(provider, "u", BODY, usage2, include_usage=True)]
    assert chunks2[-1]["choices"] == [] and chunks2[-1]["usage"]["completion_tokens"] == usage2.completion_tokens


async def test_missing_usage_is_estimated(provider: OpenAIProvider, fake_upstream) -> None:
    fake_upstream.set_behavior("ok", include_usage=False)
    completion = await provider.chat("u", BODY)
    assert not completion.usage.reported and completion.usage.completion_tokens > 0
    usage = Usage()
    [c async for c in payloads(provider, "u", BODY, usage, include_usage=False)]
    assert not usage.reported and usage.completion_tokens > 0


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, UpstreamError), (503, UpstreamError), (429, UpstreamError), (401, UpstreamError), (400, InvalidRequest)],
)
async def test_upstream_statuses_become_our_errors(provider: OpenAIProvider, fake_upstream, status, error) -> None:
    fake_upstream.set_behavior("error", status=status, retry_after=7 if status == 429 else None)
    with pytest.raises(error) as info:
        await provider.chat("u", BODY)
    if status == 429:
        assert info.value.retry_after == 7
    with pytest.raises(error):
        await anext(payloads(provider, "u", BODY, Usage(), include_usage=False))


async def test_a_stream_cut_midway_raises_after_the_chunks(provider: OpenAIProvider, fake_upstream) -> None:
    fake_upstream.set_behavior("ok", chunks=6, fail_after_chunks=2)
    got = []
    with pytest.raises(UpstreamError):
        async for c in payloads(provider, "u", BODY, Usage(), include_usage=False):
            got.append(c)
    assert got, "chunks before the cut are relayed"


async def test_unreachable_upstream() -> None:
    session = make_session(4, 1.0, 5.0)
    try:
        p = OpenAIProvider(ProviderConfig("dead", "openai", "http://127.0.0.1:9/v1", None, None), session)
        with pytest.raises(UpstreamError):
            await p.chat("u", BODY)
    finally:
        await session.close()
