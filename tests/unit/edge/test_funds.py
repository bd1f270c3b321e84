"""The edge's part of the funds check: worst-case amounts, the key → account memory, and
prices reloaded when the catalog is announced changed on NATS (a real nats-server).

The router's stub is passed in through the constructor; the whole admission runs against
real services in tests/e2e/test_billing.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import orjson

from faregate.events import CATALOG_CHANGED
from faregate.money import token_cost
from faregate.pb.router.v1 import router_pb2
from services.edge.funds import Funds, key_digest

MESSAGES = [{"role": "user", "content": "What is the capital of France, in one word?"}]


class Router:
    def __init__(self) -> None:
        self.calls = 0

    async def ListModels(self, request: Any, timeout: float) -> router_pb2.ListModelsResponse:
        self.calls += 1

        def model(id_: str, prompt: float, completion: float, context: int, test: bool = False) -> router_pb2.Model:
            return router_pb2.Model(
                id=id_,
                context_length=context,
                test=test,
                pricing=router_pb2.Pricing(prompt=prompt, completion=completion),
            )

        return router_pb2.ListModelsResponse(
            models=[
                model("cheap", 1.0, 2.0, 100_000),
                model("tiny-context", 1.0, 2.0, 300),
                model("free", 0, 0, 8000),
                model("faregate/echo", 1.0, 1.0, 8000, test=True),
            ]
        )


def body(**fields: Any) -> bytes:
    return orjson.dumps({"messages": MESSAGES, **fields})


async def loaded() -> Funds:
    funds = Funds(Router())  # type: ignore[arg-type]
    await funds.refresh()
    return funds


def worst(funds: Funds, raw: bytes) -> int:
    return funds.worst_case(orjson.loads(raw), len(raw))


async def test_the_worst_case_is_the_whole_body_as_prompt_plus_max_tokens() -> None:
    funds = await loaded()
    raw = body(model="cheap", max_tokens=100)
    assert worst(funds, raw) == token_cost(len(raw), 100, 1_000_000, 2_000_000)
    raw = body(model="cheap", max_completion_tokens=7)
    assert worst(funds, raw) == token_cost(len(raw), 7, 1_000_000, 2_000_000)
    raw = body(model="cheap")  # no max_tokens: the rest of the context window
    assert worst(funds, raw) == token_cost(len(raw), 100_000 - len(raw), 1_000_000, 2_000_000)
    raw = body(model="tiny-context", max_tokens=10_000)  # capped by the context window
    assert worst(funds, raw) == token_cost(len(raw), 300 - len(raw), 1_000_000, 2_000_000)


async def test_free_test_unknown_and_unparsable_requests_hold_nothing() -> None:
    funds = await loaded()
    for raw in (body(model="free"), body(model="faregate/echo"), body(model="nope"), b"[1]"):
        assert worst(funds, raw) == 0, raw
    assert funds.worst_case(None, 9) == 0  # what the edge passes for a body that does not parse


async def test_a_key_is_remembered_by_digest_only() -> None:
    funds = await loaded()
    key = "gw_live_" + "k" * 32
    assert funds.account_of(key_digest(key)) is None
    funds.remember(key_digest(key), "acc_1")
    assert funds.account_of(key_digest(key)) == "acc_1" and funds.account_of(key_digest(key[:-1] + "x")) is None
    assert all(key.encode() not in digest for digest in funds._accounts)


async def test_a_catalog_change_announced_on_nats_reloads_the_prices(infra: Any) -> None:
    router = Router()
    funds = Funds(router, refresh_s=3600)  # type: ignore[arg-type]
    funds.start(infra.nats_url)
    nc = await nats.connect(infra.nats_url)
    try:
        for _ in range(100):  # bounded: the subscription is made in the background
            if router.calls >= 2:
                break
            if router.calls == 1:
                await nc.publish(CATALOG_CHANGED, b"")
            await asyncio.sleep(0.1)
        assert router.calls >= 2, "the announcement did not reload the catalog"
    finally:
        await nc.close()
        await funds.close()
