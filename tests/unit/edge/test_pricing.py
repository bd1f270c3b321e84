"""Worst-case pricing at the edge, and prices reloaded when the catalog is announced changed
on NATS (a real nats-server, the edge's own subscription)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats
import orjson

from faregate.events import CATALOG_CHANGED
from faregate.money import token_cost
from services.edge.callers import ModelPrice
from services.edge.changes import follow_changes
from services.edge.pricing import IMAGE_TOKENS, TOOLS_TOKENS, PriceBook

MESSAGES = [{"role": "user", "content": "What is the capital of France, in one word?"}]


class Catalog:
    def __init__(self) -> None:
        self.loads = 0

    async def __call__(self) -> list[ModelPrice]:
        self.loads += 1
        return [
            ModelPrice(("cheap", "cheap-alias"), 1_000_000, 2_000_000, 100_000, free=False, autoroutable=True),
            ModelPrice(("tiny-context",), 1_000_000, 2_000_000, 300, free=False, autoroutable=True),
            ModelPrice(("free",), 0, 0, 8000, free=True, autoroutable=True),
            ModelPrice(("faregate/echo",), 1_000_000, 1_000_000, 8000, free=True, autoroutable=False),
        ]


def body(**fields: Any) -> bytes:
    return orjson.dumps({"messages": MESSAGES, **fields})


async def loaded() -> PriceBook:
    prices = PriceBook(Catalog())
    await prices.refresh()
    return prices


def worst(prices: PriceBook, raw: bytes) -> int:
    return prices.worst_case(orjson.loads(raw), len(raw))


async def test_the_worst_case_is_the_whole_body_as_prompt_plus_max_tokens() -> None:
    prices = await loaded()
    raw = body(model="cheap", max_tokens=100)
    assert worst(prices, raw) == token_cost(len(raw), 100, 1_000_000, 2_000_000)
    raw = body(model="cheap-alias", max_completion_tokens=7)
    assert worst(prices, raw) == token_cost(len(raw), 7, 1_000_000, 2_000_000)
    raw = body(model="cheap")  # no max_tokens: the rest of the context window
    assert worst(prices, raw) == token_cost(len(raw), 100_000 - len(raw), 1_000_000, 2_000_000)
    raw = body(model="tiny-context", max_tokens=10_000)  # capped by the context window
    assert worst(prices, raw) == token_cost(len(raw), 300 - len(raw), 1_000_000, 2_000_000)
    raw = body(model="auto", max_tokens=10)  # the dearest model the auto-router could pick
    assert worst(prices, raw) == token_cost(len(raw), 10, 1_000_000, 2_000_000)


async def test_free_test_unknown_and_unparsable_requests_hold_nothing() -> None:
    prices = await loaded()
    for raw in (body(model="free"), body(model="faregate/echo"), body(model="nope"), b"[1]"):
        assert worst(prices, raw) == 0, raw
    assert prices.worst_case(None, 9) == 0  # what the edge passes for a body that does not parse


async def test_a_catalog_change_announced_on_nats_reloads_the_prices(infra: Any) -> None:
    catalog = Catalog()
    prices = PriceBook(catalog, refresh_s=3600)
    keys: list[str] = []
    tasks = [
        asyncio.create_task(prices.follow()),
        asyncio.create_task(follow_changes(infra.nats_url, prices.changed, keys.append)),
    ]
    nc = await nats.connect(infra.nats_url)
    try:
        for _ in range(100):  # bounded: the subscription is made in the background
            if catalog.loads >= 2 and keys:
                break
            if catalog.loads == 1:
                await nc.publish(CATALOG_CHANGED, b"")
                await nc.publish("faregate.keys.changed", b"key_1")
            await asyncio.sleep(0.1)
        assert catalog.loads >= 2, "the announcement did not reload the catalog"
        assert "key_1" in keys
    finally:
        await nc.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_the_worst_case_counts_every_multiplier() -> None:
    prices = await loaded()
    raw = body(model="cheap", n=100, max_tokens=64)  # issue 22: 100 choices of 64 tokens each
    assert worst(prices, raw) == token_cost(len(raw), 6_400, 1_000_000, 2_000_000)
    raw = body(model="cheap", max_tokens=10, max_completion_tokens=1_000)  # providers honour either
    assert worst(prices, raw) == token_cost(len(raw), 1_000, 1_000_000, 2_000_000)
    raw = body(model="tiny-context", n=3)  # each choice up to the rest of the window
    assert worst(prices, raw) == token_cost(len(raw), 3 * (300 - len(raw)), 1_000_000, 2_000_000)
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    raw = orjson.dumps({"model": "cheap", "max_tokens": 1, "messages": [{"role": "user", "content": [image, image]}]})
    assert worst(prices, raw) == token_cost(len(raw) + 2 * IMAGE_TOKENS, 1, 1_000_000, 2_000_000)
    tool = {"type": "function", "function": {"name": "f"}}
    raw = body(model="cheap", max_tokens=1, tools=[tool])
    assert worst(prices, raw) == token_cost(len(raw) + TOOLS_TOKENS, 1, 1_000_000, 2_000_000)
    file = {"type": "file", "file": {"file_id": "file-1"}}  # its size is not in the body: the whole window
    raw = orjson.dumps({"model": "cheap", "max_tokens": 1, "messages": [{"role": "user", "content": [file]}]})
    assert worst(prices, raw) == token_cost(100_000, 1, 1_000_000, 2_000_000)
