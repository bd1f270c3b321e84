"""Worst-case pricing: what a request could cost at most, from the router's catalog.

Holds are placed by billing (``Reserve``); the edge only supplies the amount. The prices are
kept in memory, refreshed every ``refresh_s`` and at once when the catalog is announced
changed (NATS subject ``faregate.catalog.changed``, services/edge/changes.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from faregate.money import token_cost
from services.edge.callers import ModelPrice

log = logging.getLogger(__name__)

AUTO = "auto"  # the auto-router's model id: priced as the dearest model it could pick


@dataclass(frozen=True, slots=True)
class Price:
    prompt_micros: int  # per 1M tokens
    completion_micros: int
    context_length: int
    free: bool


def _dearest(p: Price) -> tuple[int, int]:
    return (p.completion_micros + p.prompt_micros, p.context_length)


def _worst(price: Price, body_bytes: int, asked: object) -> int:
    # Every token is at least one byte: the body's size bounds the prompt.
    prompt = min(body_bytes, price.context_length)
    room = max(price.context_length - prompt, 1)
    completion = min(asked, room) if isinstance(asked, int) and asked > 0 else room
    return max(1, token_cost(prompt, completion, price.prompt_micros, price.completion_micros))


class PriceBook:
    """The catalog's prices by model id and alias, and the worst case of a request."""

    def __init__(self, load: Callable[[], Awaitable[list[ModelPrice]]], *, refresh_s: float = 30.0) -> None:
        self._load = load
        self._refresh_s = refresh_s
        self._prices: dict[str, Price] = {}
        self._changed = asyncio.Event()

    async def refresh(self) -> None:
        prices: dict[str, Price] = {}
        for m in await self._load():
            price = Price(m.prompt_micros, m.completion_micros, m.context_length, m.free)
            for name in m.names:
                prices[name] = price
            if m.autoroutable:
                prices[AUTO] = max(prices.get(AUTO, price), price, key=_dearest)
        self._prices = prices

    def changed(self) -> None:
        """The catalog was announced changed: reload now."""
        self._changed.set()

    async def follow(self) -> None:
        """Keep the prices fresh (a supervised component): reload every ``refresh_s`` and on
        ``changed``. A router that is starting or restarting keeps the old prices meanwhile."""
        while True:
            try:
                await self.refresh()
            except Exception as exc:
                log.debug("catalog refresh failed: %s", exc)
                await asyncio.sleep(1)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._refresh_s)
            self._changed.clear()

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
