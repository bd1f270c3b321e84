"""Circuit breakers, one per provider.

closed ──(N consecutive failures)──► open ──(after the open period)──► half-open
  ▲                                   ▲                                   │ one probe request
  └──────────── probe succeeds ───────┴────────── probe fails ────────────┘

While open, a provider is skipped; after the open period exactly one request probes it.
Failures are what make failover worthwhile: unreachable, timed out, 5xx and 429 — never a
request the upstream rejected as invalid. State is per router process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Breaker:
    state: str = "closed"  # closed | open | half_open
    consecutive_failures: int = 0
    last_failure: float | None = None  # wall-clock seconds
    opened_at: float = 0.0  # monotonic
    probing: bool = False


class Breakers:
    def __init__(
        self,
        threshold: int = 3,
        open_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.threshold = threshold
        self.open_seconds = open_seconds
        self._clock = clock
        self._wall = wall
        self._breakers: dict[str, Breaker] = {}

    def _get(self, provider: str) -> Breaker:
        return self._breakers.setdefault(provider, Breaker())

    def allow(self, provider: str) -> bool:
        b = self._get(provider)
        if b.state == "closed":
            return True
        if b.state == "open" and self._clock() - b.opened_at >= self.open_seconds:
            b.state, b.probing = "half_open", False
        if b.state == "half_open" and not b.probing:
            b.probing = True  # this request is the probe
            return True
        return False

    def retry_after(self, provider: str) -> float:
        b = self._get(provider)
        return max(1.0, self.open_seconds - (self._clock() - b.opened_at)) if b.state == "open" else 1.0

    def success(self, provider: str) -> None:
        b = self._get(provider)
        b.state, b.consecutive_failures, b.probing = "closed", 0, False

    def failure(self, provider: str) -> None:
        b = self._get(provider)
        b.consecutive_failures += 1
        b.last_failure = self._wall()
        if b.state == "half_open" or b.consecutive_failures >= self.threshold:
            b.state, b.opened_at, b.probing = "open", self._clock(), False

    def release_probe(self, provider: str) -> None:
        """A probe that ended neither way (e.g. the client left): let the next request probe."""
        self._get(provider).probing = False

    def reset(self, provider: str | None = None) -> list[str]:
        names = [provider] if provider else list(self._breakers)
        for name in names:
            self._breakers[name] = Breaker()
        return names

    def snapshot(self, providers: list[str]) -> dict[str, Breaker]:
        out = {}
        for name in providers:
            b = self._get(name)
            if b.state == "open" and self._clock() - b.opened_at >= self.open_seconds:
                b.state = "half_open"
            out[name] = b
        return out
