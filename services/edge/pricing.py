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
from typing import Any

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


# What a request can be billed for beyond its body's bytes (every token is at least one byte
# of the body, except for these):
IMAGE_TOKENS = 3_000  # an image by URL: OpenAI bills up to ~2,500 tokens, Anthropic ~1,600
TOOLS_TOKENS = 1_000  # the tool-use prompt an upstream adds when tools are given (Anthropic ~350–500)


@dataclass(frozen=True, slots=True)
class Shape:
    """What a request's cost depends on, beyond its model's prices."""

    prompt: int  # tokens at most, before the context window bounds them
    completion: int  # per choice, 0: not bounded by the request (the context window does)
    choices: int  # n


def shape(body: dict[str, Any], size: int) -> Shape:
    """The worst case of a checked body (services/edge/requests.py) of ``size`` bytes: every
    multiplier the upstream bills — ``n`` choices, each up to the larger of ``max_tokens`` and
    ``max_completion_tokens`` (providers differ in which they honour); images by URL; a file
    by id (the whole context window); the tool-use prompt."""
    prompt = size
    messages = body.get("messages")
    for m in messages if type(messages) is list else ():
        content = m.get("content") if type(m) is dict else None
        if type(content) is list:
            for part in content:
                kind = part.get("type") if type(part) is dict else None
                if kind == "image_url":
                    prompt += IMAGE_TOKENS
                elif kind == "file":
                    prompt = _UNBOUNDED
    if body.get("tools") or body.get("functions"):
        prompt += TOOLS_TOKENS
    limits = [v for v in (body.get("max_tokens"), body.get("max_completion_tokens")) if type(v) is int and v > 0]
    n = body.get("n")
    return Shape(prompt, max(limits, default=0), n if type(n) is int and n > 1 else 1)


_UNBOUNDED = 1 << 62


def _worst(price: Price, s: Shape) -> int:
    prompt = min(s.prompt, price.context_length)
    room = max(price.context_length - prompt, 1)
    completion = min(s.completion, room) if s.completion else room
    return max(1, token_cost(prompt, completion * s.choices, price.prompt_micros, price.completion_micros))


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
        worst = shape(body, size)
        return max(_worst(price, worst) for price in known)
