"""Waiting in tests without the wall clock: an injected sleep that returns at once, and a
bounded spin of the event loop until a condition holds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Sleeps:
    """An injected sleep: records each delay and yields once instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


async def settled(condition: Callable[[], object], rounds: int = 1000) -> None:
    """Let the event loop run until ``condition()`` holds (bounded; no wall clock)."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")
