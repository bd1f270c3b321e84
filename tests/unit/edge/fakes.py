"""Fake auth, billing and router clients for the gateway's unit tests: the gateway takes
its clients through its constructor (services/edge/gateway.py's ports), so a test passes
these instead of patching anything. End to end, the real services run (tests/e2e)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from faregate.errors import FaregateError, ServiceUnavailable
from services.edge.callers import (
    AdmissionAsk,
    AdmissionGrant,
    Admitted,
    Caller,
    FundsGrant,
    GrantReturn,
    GrantSpend,
    ModelPrice,
    RateLimit,
    SlotRelease,
)
from services.edge.gateway import Gateway, Opened, RouteCall

CALLER = Caller("acc_1", "key_1", billable=True, rate_limit=RateLimit(60, 59, 1_000_060), slot_lease_seconds=3)
LIVE_KEY = "gw_live_" + "k" * 32
PRICED = ModelPrice(("priced",), 1_000_000, 2_000_000, 10_000, free=False, autoroutable=True)


def down() -> FaregateError:
    return ServiceUnavailable("a Faregate service is unavailable or overloaded, try again shortly", retry_after=1)


class Outage:
    """Fails the next ``n`` calls, as a peer that is down would."""

    def __init__(self) -> None:
        self.left = 0

    def check(self) -> None:
        if self.left:
            self.left -= 1
            raise down()


@dataclass
class FakeAuth:
    caller: Caller = CALLER
    refuse: FaregateError | None = None
    grant: AdmissionGrant | None = None
    asks: list[AdmissionAsk] = field(default_factory=list)
    released: list[SlotRelease] = field(default_factory=list)
    returned: list[GrantReturn] = field(default_factory=list)
    renewed: list[SlotRelease] = field(default_factory=list)
    outage: Outage = field(default_factory=Outage)

    async def authenticate(self, ask: AdmissionAsk) -> Admitted:
        self.asks.append(ask)
        if self.refuse is not None:
            raise self.refuse
        self.released.extend(ask.released)
        self.returned.extend(ask.returned)
        return Admitted(self.caller, f"slot_{len(self.asks)}", self.grant)

    async def release(self, slots: Sequence[SlotRelease], returned: Sequence[GrantReturn]) -> None:
        self.outage.check()
        self.released.extend(slots)
        self.returned.extend(returned)

    async def renew(self, slot: SlotRelease) -> None:
        self.renewed.append(slot)


@dataclass
class FakeBilling:
    refuse: FaregateError | None = None
    grant: FundsGrant | None = None
    held: dict[str, int] = field(default_factory=dict)  # request id → amount
    dropped: list[str] = field(default_factory=list)
    spends: list[GrantSpend] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    outage: Outage = field(default_factory=Outage)

    async def reserve(self, account_id: str, request_id: str, amount: int, grant_wanted: int) -> FundsGrant | None:
        if self.refuse is not None:
            raise self.refuse
        self.held[request_id] = amount
        return self.grant

    async def release_hold(self, request_id: str) -> None:
        self.outage.check()
        self.held.pop(request_id, None)
        self.dropped.append(request_id)

    async def settle_grants(self, spent: Sequence[GrantSpend], ended: Sequence[str]) -> None:
        self.outage.check()
        self.spends.extend(spent)
        self.ended.extend(ended)


class FakeStream:
    def __init__(self, opened: Opened | FaregateError, batches: list[list[bytes] | FaregateError]) -> None:
        self._opened = opened
        self._batches = list(batches)
        self.closed = False
        self.more = asyncio.Event()  # a read past the scripted batches waits for this (or the close)

    async def open(self) -> Opened:
        if isinstance(self._opened, FaregateError):
            raise self._opened
        return self._opened

    async def read(self) -> list[bytes] | None:
        if self.closed:
            return None
        if not self._batches:
            await self.more.wait()
            return None
        batch = self._batches.pop(0)
        if isinstance(batch, FaregateError):
            raise batch
        return batch

    def close(self) -> None:
        self.closed = True
        self.more.set()


@dataclass
class FakeRouter:
    answer: bytes | FaregateError = b'{"id": "chatcmpl-1"}'
    stream_with: FakeStream | None = None
    calls: list[RouteCall] = field(default_factory=list)
    prices_asked: int = 0

    async def complete(self, call: RouteCall) -> bytes:
        self.calls.append(call)
        if isinstance(self.answer, FaregateError):
            raise self.answer
        return self.answer

    def stream(self, call: RouteCall) -> FakeStream:
        self.calls.append(call)
        assert self.stream_with is not None
        return self.stream_with

    async def embeddings(self, call: RouteCall) -> bytes:
        return await self.complete(call)

    async def prices(self) -> list[ModelPrice]:
        self.prices_asked += 1
        return [PRICED]


async def gateway(
    auth: FakeAuth | None = None,
    billing: FakeBilling | None = None,
    router: FakeRouter | None = None,
    **options: object,
) -> tuple[Gateway, FakeAuth, FakeBilling, FakeRouter]:
    auth, billing, router = auth or FakeAuth(), billing or FakeBilling(), router or FakeRouter()
    options.setdefault("max_body_bytes", 10_000)
    gw = Gateway(auth, billing, router, **options)  # type: ignore[arg-type]
    await gw.prices.refresh()
    return gw, auth, billing, router
