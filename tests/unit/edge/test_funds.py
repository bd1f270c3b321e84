"""The edge's funds check: worst-case holds, one round with auth, and every way it can end.

Auth's and billing's stubs are passed in through the constructor (no patching); the real
services are exercised end to end in tests/e2e/test_billing.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import nats
import orjson
import pytest

from faregate.errors import AuthenticationFailed, InsufficientBalance, ServiceUnavailable
from faregate.money import token_cost
from faregate.pb.auth.v1 import auth_pb2
from faregate.pb.billing.v1 import billing_pb2
from faregate.pb.router.v1 import router_pb2
from faregate.tokens import estimate_messages, estimate_text
from services.edge.funds import CATALOG_CHANGED, Funds

LIVE = "gw_live_" + "a" * 32
MESSAGES = [{"role": "user", "content": "What is the capital of France, in one word?"}]


class Router:
    async def ListModels(self, request: Any, timeout: float) -> router_pb2.ListModelsResponse:
        def model(id_: str, prompt: float, completion: float, context: int) -> router_pb2.Model:
            return router_pb2.Model(
                id=id_, context_length=context, pricing=router_pb2.Pricing(prompt=prompt, completion=completion)
            )

        return router_pb2.ListModelsResponse(
            models=[model("cheap", 1.0, 2.0, 1000), model("dear", 10.0, 30.0, 4000), model("free", 0, 0, 8000)]
        )


def rpc_error(err: Any | None, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> grpc.aio.AioRpcError:
    md = grpc.aio.Metadata(*err.metadata()) if err is not None else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(err.grpc_code if err else code, grpc.aio.Metadata(), md, details="x")


class Billing:
    def __init__(self, refuse: grpc.aio.AioRpcError | None = None) -> None:
        self.log: list[str] = []
        self.reserved: list[billing_pb2.ReserveRequest] = []
        self.released: list[str] = []
        self.refuse = refuse

    def Reserve(self, request: billing_pb2.ReserveRequest, timeout: float) -> Any:
        self.log.append("reserve")  # sent now, like a grpc.aio call
        self.reserved.append(request)

        async def answer() -> billing_pb2.ReserveResponse:
            await asyncio.sleep(0.01)
            if self.refuse is not None:
                raise self.refuse
            return billing_pb2.ReserveResponse(hold_id=request.request_id)

        return asyncio.ensure_future(answer())

    async def ReleaseHold(self, request: billing_pb2.ReleaseHoldRequest, timeout: float) -> Any:
        self.released.append(request.hold_id)
        return billing_pb2.ReleaseHoldResponse()


def admitted(account: str = "acc_1", billable: bool = True) -> auth_pb2.AuthenticateResponse:
    return auth_pb2.AuthenticateResponse(account_id=account, key_id="key_1", billable=billable)


async def auth(log: list[str], reply: auth_pb2.AuthenticateResponse | Exception) -> auth_pb2.AuthenticateResponse:
    log.append("auth")
    await asyncio.sleep(0.01)
    if isinstance(reply, Exception):
        raise reply
    return reply


def body(**fields: Any) -> bytes:
    return orjson.dumps({"messages": MESSAGES, **fields})


async def settle(billing: Billing, what: str = "released") -> None:
    for _ in range(100):
        if getattr(billing, what):
            return
        await asyncio.sleep(0.01)


async def test_the_worst_case_is_prompt_plus_max_tokens_at_the_models_prices() -> None:
    funds = Funds(Billing(), Router())  # type: ignore[arg-type]
    prompt = estimate_messages(MESSAGES)
    assert await funds.worst_case(LIVE, body(model="cheap", max_tokens=100)) == token_cost(
        prompt, 100, 1_000_000, 2_000_000
    )
    assert await funds.worst_case(LIVE, body(model="cheap")) == token_cost(prompt, 1000 - prompt, 1_000_000, 2_000_000)
    assert await funds.worst_case(LIVE, body(model="cheap", max_tokens=10**6)) == token_cost(
        prompt, 1000 - prompt, 1_000_000, 2_000_000
    )  # capped by the context window
    assert await funds.worst_case(LIVE, body(model="cheap", max_completion_tokens=50, n=3)) == token_cost(
        prompt, 150, 1_000_000, 2_000_000
    )
    assert await funds.worst_case(LIVE, body(model="no-such-model", max_tokens=10)) == token_cost(
        prompt, 10, 10_000_000, 30_000_000
    )  # unknown ids hold at the dearest prices
    embedding = orjson.dumps({"model": "dear", "input": ["one two three", "four"]})
    assert await funds.worst_case(LIVE, embedding) == token_cost(
        estimate_text("one two three") + estimate_text("four"), 0, 10_000_000, 30_000_000
    )


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("", body(model="dear")),  # guest
        ("gw_test_" + "a" * 32, body(model="dear")),  # test key
        (LIVE, body(model="free")),  # free model
        (LIVE, b"{not json"),  # the router will answer 400
        (LIVE, b"[1, 2]"),
    ],
)
async def test_no_hold_and_no_billing_call(key: str, raw: bytes) -> None:
    billing = Billing()
    funds = Funds(billing, Router())  # type: ignore[arg-type]
    reply, hold = await funds.admit(key, raw, "req_1", auth(billing.log, admitted()))
    assert reply.account_id == "acc_1" and hold.id == "" and billing.log == ["auth"]


async def test_a_known_key_reserves_alongside_auth_and_an_unknown_one_after_it() -> None:
    billing = Billing()
    funds = Funds(billing, Router())  # type: ignore[arg-type]
    _, first = await funds.admit(LIVE, body(model="cheap"), "req_1", auth(billing.log, admitted()))
    _, second = await funds.admit(LIVE, body(model="cheap"), "req_2", auth(billing.log, admitted()))
    assert billing.log == ["auth", "reserve", "reserve", "auth"]  # miss: in order; hit: reserve first, same round
    assert (first.id, second.id) == ("req_1", "req_2")
    assert [r.account_id for r in billing.reserved] == ["acc_1", "acc_1"]
    second.release()
    second.release()
    await settle(billing)
    assert billing.released == ["req_2"]


async def test_a_refused_key_gives_its_hold_back() -> None:
    billing = Billing()
    funds = Funds(billing, Router())  # type: ignore[arg-type]
    await funds.admit(LIVE, body(model="cheap"), "req_1", auth(billing.log, admitted()))
    with pytest.raises(AuthenticationFailed):
        await funds.admit(LIVE, body(model="cheap"), "req_2", auth(billing.log, AuthenticationFailed("revoked")))
    await settle(billing)
    assert billing.released == ["req_2"]


async def test_a_stale_cache_entry_is_corrected() -> None:
    billing = Billing()
    funds = Funds(billing, Router())  # type: ignore[arg-type]
    await funds.admit(LIVE, body(model="cheap"), "req_1", auth(billing.log, admitted("acc_1")))
    _, hold = await funds.admit(LIVE, body(model="cheap"), "req_2", auth(billing.log, admitted("acc_2")))
    await settle(billing)
    assert billing.released == ["req_2"] and billing.reserved[-1].account_id == "acc_2" and hold.account_id == "acc_2"


async def test_an_empty_wallet_is_refused_after_auth_answered() -> None:
    billing = Billing(refuse=rpc_error(InsufficientBalance("insufficient balance")))
    funds = Funds(billing, Router())  # type: ignore[arg-type]
    reply, hold = await funds.admit(LIVE, body(model="cheap"), "req_1", auth(billing.log, admitted()))
    assert reply.key_id == "key_1"  # the caller still gets auth's answer, to give its slot back
    with pytest.raises(InsufficientBalance):
        hold.check()


async def test_billing_down_fails_open_or_closed_as_configured() -> None:
    down = rpc_error(None, grpc.StatusCode.UNAVAILABLE)
    open_ = Funds(Billing(refuse=down), Router())  # type: ignore[arg-type]
    _, hold = await open_.admit(LIVE, body(model="cheap"), "req_1", auth([], admitted()))
    hold.check()
    assert hold.id == "req_1"  # billing may have placed it before failing: the usage record releases it
    closed = Funds(Billing(refuse=down), Router(), fail_open=False)  # type: ignore[arg-type]
    _, hold = await closed.admit(LIVE, body(model="cheap"), "req_1", auth([], admitted()))
    with pytest.raises(ServiceUnavailable):
        hold.check()


async def test_a_catalog_change_announced_on_nats_reloads_the_prices(infra: Any) -> None:
    class Counting(Router):
        calls = 0

        async def ListModels(self, request: Any, timeout: float) -> router_pb2.ListModelsResponse:
            self.calls += 1
            return await super().ListModels(request, timeout)

    router = Counting()
    funds = Funds(Billing(), router, refresh_seconds=3600)  # type: ignore[arg-type]
    funds.start(infra.nats_url)
    nc = await nats.connect(infra.nats_url)
    try:
        for _ in range(100):
            if router.calls >= 2:
                break
            if router.calls == 1:
                await nc.publish(CATALOG_CHANGED, b"")
            await asyncio.sleep(0.1)
        assert router.calls >= 2, "the announcement did not reload the catalog"
    finally:
        await nc.close()
        await funds.close()
