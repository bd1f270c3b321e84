"""Circuit breakers, one per provider, in this process or shared by replicas through Redis.

closed ──(N consecutive failures)──► open ──(after the open period)──► half-open
  ▲                                   ▲                                   │ one probe request
  └──────────── probe succeeds ───────┴────────── probe fails ────────────┘

While open, a provider is skipped; after the open period exactly one request probes it (a
probe is a lease: one that never reports back frees the slot after ``probe_seconds``).
Failures are the provider's: unreachable, timed out, cut off, 5xx — never a request the
upstream rejected as invalid, nor a 429 (the router decides, ``routing.provider_fault``; a
failure that does not count is reported with ``counts=False``). Independently of the state,
a provider that answered with ``Retry-After`` is skipped until then ("cooling").

``LocalBreakers`` keeps the state in this process (one router replica). ``RedisBreakers``
keeps it in one Redis hash per provider, changed only by Lua scripts that read Redis's own
clock, so every replica sees the same transitions. Both are driven through the same async
methods; a success on a clean, closed breaker writes nothing (the common case is free).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple


@dataclass
class BreakerState:
    state: str = "closed"  # closed | open | half_open
    consecutive_failures: int = 0
    last_failure: float = 0.0  # Unix seconds; 0 = never
    opened_at: float = 0.0  # Unix seconds
    probe_until: float = 0.0  # a half-open probe is out until then
    cooling_until: float = 0.0  # Retry-After: skipped until then


class Permit(NamedTuple):
    allowed: bool
    clean: bool = False  # closed with no failures: a success changes nothing
    wait: float = 0.0  # when refused: seconds until it may be tried again


class Breakers(ABC):
    def __init__(self, threshold: int = 3, open_seconds: float = 600.0, probe_seconds: float = 60.0) -> None:
        self.threshold = threshold
        self.open_seconds = open_seconds
        self.probe_seconds = probe_seconds

    @abstractmethod
    async def allow(self, provider: str) -> Permit:
        """May a request go to ``provider`` now? (Takes the probe when half-open.)"""

    @abstractmethod
    async def success(self, provider: str, permit: Permit | None = None) -> None: ...

    @abstractmethod
    async def failure(self, provider: str, retry_after: float | None = None, *, counts: bool = True) -> None:
        """An attempt failed; ``counts`` False: not the provider's fault, only its Retry-After
        (cooling) applies."""

    @abstractmethod
    async def release_probe(self, provider: str) -> None:
        """A probe that ended neither way (e.g. the client left): let the next request probe."""

    @abstractmethod
    async def reset(self, providers: Iterable[str]) -> None: ...

    @abstractmethod
    async def snapshot(self, providers: Iterable[str]) -> dict[str, BreakerState]: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def _view(self, b: BreakerState, now: float) -> BreakerState:
        """The state as it reads at ``now`` (an open period that has passed reads half-open)."""
        if b.state == "open" and now - b.opened_at >= self.open_seconds:
            return BreakerState(**{**b.__dict__, "state": "half_open"})
        return b


class LocalBreakers(Breakers):
    def __init__(
        self,
        threshold: int = 3,
        open_seconds: float = 600.0,
        probe_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(threshold, open_seconds, probe_seconds)
        self._clock = clock
        self._breakers: dict[str, BreakerState] = {}

    def _get(self, provider: str) -> BreakerState:
        return self._breakers.setdefault(provider, BreakerState())

    async def allow(self, provider: str) -> Permit:
        b, now = self._get(provider), self._clock()
        if b.cooling_until > now:
            return Permit(False, wait=b.cooling_until - now)
        if b.state == "closed":
            return Permit(True, clean=b.consecutive_failures == 0)
        if b.state == "open":
            if now - b.opened_at < self.open_seconds:
                return Permit(False, wait=self.open_seconds - (now - b.opened_at))
            b.state = "half_open"
        if b.probe_until > now:
            return Permit(False, wait=1.0)
        b.probe_until = now + self.probe_seconds  # this request is the probe
        return Permit(True)

    async def success(self, provider: str, permit: Permit | None = None) -> None:
        if permit is not None and permit.clean:
            return
        b = self._get(provider)
        b.state, b.consecutive_failures, b.probe_until = "closed", 0, 0.0

    async def failure(self, provider: str, retry_after: float | None = None, *, counts: bool = True) -> None:
        b, now = self._get(provider), self._clock()
        if counts:
            b.consecutive_failures += 1
            b.last_failure = now
            if b.state == "half_open" or b.consecutive_failures >= self.threshold:
                b.state, b.opened_at, b.probe_until = "open", now, 0.0
        elif b.state == "half_open":
            b.probe_until = 0.0  # the probe proved nothing: the next request probes
        if retry_after:
            b.cooling_until = max(b.cooling_until, now + retry_after)

    async def release_probe(self, provider: str) -> None:
        self._get(provider).probe_until = 0.0

    async def reset(self, providers: Iterable[str]) -> None:
        for name in providers:
            self._breakers[name] = BreakerState()

    async def snapshot(self, providers: Iterable[str]) -> dict[str, BreakerState]:
        now = self._clock()
        return {name: self._view(self._get(name), now) for name in providers}


# KEYS[1] = the provider's hash. Every script reads Redis's clock, so replicas agree on time.
_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1e6 "

_ALLOW = (
    _NOW
    + """
local h = redis.call('HMGET', KEYS[1], 'state', 'failures', 'opened_at', 'probe_until', 'cooling_until')
local state = h[1] or 'closed'
local cooling = tonumber(h[5] or '0')
if cooling > now then return {0, 0, tostring(cooling - now)} end
if state == 'closed' then
  if tonumber(h[2] or '0') == 0 then return {1, 1, '0'} end
  return {1, 0, '0'}
end
local open_s = tonumber(ARGV[1])
if state == 'open' then
  local opened = tonumber(h[3] or '0')
  if now - opened < open_s then return {0, 0, tostring(open_s - (now - opened))} end
  redis.call('HSET', KEYS[1], 'state', 'half_open')
end
if tonumber(h[4] or '0') > now then return {0, 0, '1'} end
redis.call('HSET', KEYS[1], 'probe_until', tostring(now + tonumber(ARGV[2])))
return {1, 0, '0'}
"""
)

_FAILURE = (
    _NOW
    + """
local h = redis.call('HMGET', KEYS[1], 'state', 'failures', 'cooling_until')
local failures = tonumber(h[2] or '0')
if ARGV[3] == '1' then
  failures = failures + 1
  redis.call('HSET', KEYS[1], 'failures', failures, 'last_failure', tostring(now))
  if h[1] == 'half_open' or failures >= tonumber(ARGV[1]) then
    redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', tostring(now), 'probe_until', '0')
  end
elseif h[1] == 'half_open' then
  redis.call('HSET', KEYS[1], 'probe_until', '0')
end
local wait = tonumber(ARGV[2])
if wait > 0 and now + wait > tonumber(h[3] or '0') then
  redis.call('HSET', KEYS[1], 'cooling_until', tostring(now + wait))
end
return failures
"""
)

_SUCCESS = "redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'probe_until', '0') return 1"

_SNAPSHOT = (
    _NOW
    + """
local out = {tostring(now)}
for i, key in ipairs(KEYS) do
  local h = redis.call('HMGET', key, 'state', 'failures', 'last_failure', 'opened_at', 'probe_until', 'cooling_until')
  for j = 1, 6 do out[#out + 1] = h[j] or '' end
end
return out
"""
)


class RedisBreakers(Breakers):
    """Breaker state shared by router replicas: one hash per provider under ``prefix``."""

    def __init__(
        self,
        redis: Any,
        prefix: str = "faregate:",
        threshold: int = 3,
        open_seconds: float = 600.0,
        probe_seconds: float = 60.0,
    ) -> None:
        super().__init__(threshold, open_seconds, probe_seconds)
        self._redis = redis
        self._prefix = prefix
        self._allow = redis.register_script(_ALLOW)
        self._failure = redis.register_script(_FAILURE)
        self._success = redis.register_script(_SUCCESS)
        self._snapshot = redis.register_script(_SNAPSHOT)

    def _key(self, provider: str) -> str:
        return f"{self._prefix}{{breakers}}:{provider}"  # one hash slot: snapshot reads all

    async def allow(self, provider: str) -> Permit:
        allowed, clean, wait = await self._allow(
            keys=[self._key(provider)], args=[self.open_seconds, self.probe_seconds]
        )
        return Permit(bool(allowed), bool(clean), float(wait))

    async def success(self, provider: str, permit: Permit | None = None) -> None:
        if permit is not None and permit.clean:
            return
        await self._success(keys=[self._key(provider)])

    async def failure(self, provider: str, retry_after: float | None = None, *, counts: bool = True) -> None:
        await self._failure(keys=[self._key(provider)], args=[self.threshold, retry_after or 0, 1 if counts else 0])

    async def release_probe(self, provider: str) -> None:
        await self._redis.hset(self._key(provider), "probe_until", "0")

    async def reset(self, providers: Iterable[str]) -> None:
        keys = [self._key(p) for p in providers]
        if keys:
            await self._redis.delete(*keys)

    async def snapshot(self, providers: Iterable[str]) -> dict[str, BreakerState]:
        names = list(providers)
        if not names:
            return {}
        raw = [
            v.decode() if isinstance(v, bytes) else str(v)
            for v in await self._snapshot(keys=[self._key(p) for p in names])
        ]
        now = float(raw[0])
        out = {}
        for i, name in enumerate(names):
            state, failures, last, opened, probe, cooling = raw[1 + 6 * i : 7 + 6 * i]
            b = BreakerState(
                state=state or "closed",
                consecutive_failures=int(failures or 0),
                last_failure=float(last or 0),
                opened_at=float(opened or 0),
                probe_until=float(probe or 0),
                cooling_until=float(cooling or 0),
            )
            out[name] = self._view(b, now)
        return out

    async def close(self) -> None:
        await self._redis.aclose()
