"""Plans and rate limits.

A plan sets requests per minute (RPM), requests per UTC day, tokens per day and a
concurrency ceiling. The walking skeleton enforces RPM in process (fixed one-minute
windows); shared Redis counters, daily limits and concurrency slots build on this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from faregate.errors import InvalidRequest, RateLimited


@dataclass(frozen=True)
class Plan:
    name: str
    rpm: int | None
    requests_per_day: int | None
    tokens_per_day: int | None
    concurrency: int | None


PLANS: dict[str, Plan] = {
    "basic": Plan("basic", 60, 1_000, 500_000, 64),
    "pro": Plan("pro", 120, None, 2_000_000, 64),
    "enterprise": Plan("enterprise", 300, None, 6_000_000, 64),
    "unlimited": Plan("unlimited", None, None, None, None),
}
DEFAULT_PLAN = "basic"


def plan_named(name: str) -> Plan:
    plan = PLANS.get((name or DEFAULT_PLAN).lower())
    if plan is None:
        raise InvalidRequest(f"unknown plan {name!r}; one of: {', '.join(PLANS)}", param="plan")
    return plan


@dataclass(frozen=True)
class Window:
    limit: int
    remaining: int
    reset_at: int  # Unix seconds


class RpmLimiter:
    """Fixed one-minute windows per key, in process (a single replica's view)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counts: dict[str, tuple[int, int]] = {}  # key -> (window start, count)

    def hit(self, key: str, limit: int | None) -> Window | None:
        if limit is None:
            return None
        now = int(self._clock())
        start = now - now % 60
        window, count = self._counts.get(key, (start, 0))
        if window != start:
            count = 0
            if len(self._counts) > 100_000:
                self._counts = {k: v for k, v in self._counts.items() if v[0] == start}
        reset_at = start + 60
        if count >= limit:
            raise RateLimited(
                f"rate limit exceeded: {limit} requests per minute for this key",
                code="rpm_exceeded",
                retry_after=max(1, reset_at - now),
            )
        self._counts[key] = (start, count + 1)
        return Window(limit, limit - count - 1, reset_at)
