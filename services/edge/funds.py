"""The edge's part of the funds check: what a request could cost at worst, and whose it is.

Holds are placed by billing (``Reserve``); the edge only supplies the amount and, to call
billing in the same round as auth, the account of a key it has seen before. Both caches are
in memory: prices from the router's catalog (refreshed every ``refresh_s``, and at once when
a message arrives on NATS subject ``faregate.catalog.changed``), and a digest of each live
key → its account (a key never changes account). The same NATS connection hears auth's
``faregate.keys.changed`` and passes the key id to ``on_key_changed`` (the edge's grants, ADR 11).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats

from faregate.events import CATALOG_CHANGED, KEYS_CHANGED
from faregate.money import token_cost, usd_to_micros
from faregate.pb.router.v1 import router_pb2, router_pb2_grpc

log = logging.getLogger(__name__)


def key_digest(key: str) -> bytes:
    """What the edge keeps of a presented key (its account here, its grants): never the key."""
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class Price:
    prompt_micros: int  # per 1M tokens
    completion_micros: int
    context_length: int
    free: bool


AUTO = "auto"  # the auto-router's model id: priced as the dearest model it could pick


def _dearest(p: Price) -> tuple[int, int]:
    return (p.completion_micros + p.prompt_micros, p.context_length)


def _worst(price: Price, body_bytes: int, asked: object) -> int:
    # Every token is at least one byte: the body's size bounds the prompt.
    prompt = min(body_bytes, price.context_length)
    room = max(price.context_length - prompt, 1)
    completion = min(asked, room) if isinstance(asked, int) and asked > 0 else room
    return max(1, token_cost(prompt, completion, price.prompt_micros, price.completion_micros))


class Funds:
    def __init__(self, router: router_pb2_grpc.RouterServiceStub, *, refresh_s: float = 30.0) -> None:
        self._router = router
        self._refresh_s = refresh_s
        self._prices: dict[str, Price] = {}
        self._accounts: dict[bytes, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        self._nc: Any = None
        self.on_key_changed: Callable[[str], None] = lambda key_id: None

    def start(self, nats_url: str | None = None) -> None:
        self._tasks.append(asyncio.create_task(self._refresh_loop()))
        if nats_url:
            self._tasks.append(asyncio.create_task(self._follow_changes(nats_url)))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()

    async def refresh(self) -> None:
        reply = await self._router.ListModels(router_pb2.ListModelsRequest(), timeout=5)
        prices = {}
        for m in reply.models:
            price = Price(
                usd_to_micros(m.pricing.prompt),
                usd_to_micros(m.pricing.completion),
                m.context_length,
                m.test or (m.pricing.prompt == 0 and m.pricing.completion == 0),
            )
            for name in (m.id, *m.aliases):
                prices[name] = price
            if not m.test and "embedding" not in m.categories:
                prices[AUTO] = max(prices.get(AUTO, price), price, key=_dearest)
        self._prices = prices

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # the router is starting or restarting: keep the old prices
                log.debug("catalog refresh failed: %s", exc)
                await asyncio.sleep(1)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._refresh_s)
            self._changed.clear()

    async def _follow_changes(self, url: str) -> None:
        """Reload the prices as soon as the catalog is announced changed (NATS reconnects by itself)."""
        while self._nc is None:
            try:
                self._nc = await nats.connect(url, name="faregate-edge", max_reconnect_attempts=-1)
            except Exception as exc:  # NATS is starting: the periodic refresh covers until then
                log.debug("edge cannot reach NATS for catalog changes yet: %s", exc)
                await asyncio.sleep(2)

        async def changed(_msg: Any) -> None:
            self._changed.set()

        async def key_changed(msg: Any) -> None:
            self.on_key_changed(msg.data.decode())

        await self._nc.subscribe(CATALOG_CHANGED, cb=changed)
        await self._nc.subscribe(KEYS_CHANGED, cb=key_changed)

    def worst_case(self, body: object, size: int) -> int:
        """The most the request could cost in micro-USD, from its parsed body (``None`` if it
        did not parse) and its size in bytes (0: free, unknown model or unparsable — the
        router answers those without an upstream bill). With a ``models`` fallback list or
        ``auto``, the dearest model it may end on."""
        if not isinstance(body, dict):
            return 0
        fallbacks = body.get("models")
        names = [body.get("model"), *(fallbacks if isinstance(fallbacks, list) else [])]
        known = [p for p in (self._prices.get(str(n)) for n in names) if p is not None and not p.free]
        if not known:
            return 0
        asked = body.get("max_completion_tokens") or body.get("max_tokens")
        return max(_worst(price, size, asked) for price in known)

    def account_of(self, key: bytes) -> str | None:
        """The account of a live key seen before, by the key's digest (``key_digest``)."""
        return self._accounts.get(key)

    def remember(self, key: bytes, account_id: str) -> None:
        if len(self._accounts) > 100_000:
            self._accounts.clear()
        self._accounts[key] = account_id

    @staticmethod
    def now() -> float:
        return time.time()
