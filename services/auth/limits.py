"""Plans, and the counters that enforce them.

A plan sets requests per minute (RPM), requests per UTC day, tokens per UTC day and a
concurrency ceiling; a key may override any of them. Counters live in Redis when
FAREGATE_REDIS_URL is set (one Lua script per decision, so replicas share them and
concurrent requests cannot both take the last unit) and in process otherwise (one replica),
journaled to auth's database so that a restart keeps them (services/auth/journal.py, ADR 16).

Windows are fixed and aligned to wall-clock time (minutes, UTC days). A concurrency slot is
a lease: it expires unless renewed, so a crashed process cannot hold a slot for ever.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple

from faregate.errors import InvalidRequest
from services.auth.journal import CounterJournal

UNLIMITED = -1


@dataclass(frozen=True)
class Limits:
    """None means no limit."""

    rpm: int | None
    requests_per_day: int | None
    tokens_per_day: int | None
    concurrency: int | None
    tokens_per_month: int | None = None  # the plan's monthly quota: reported by /v1/balance (billing counts use)

    def overridden(self, **overrides: int | None) -> Limits:
        """Apply per-key overrides: None keeps the plan's, UNLIMITED removes the limit."""
        changes = {k: (None if v == UNLIMITED else v) for k, v in overrides.items() if v is not None}
        return replace(self, **changes)


DEFAULT_PLANS: dict[str, Limits] = {
    "basic": Limits(60, 1_000, 500_000, 64, tokens_per_month=10_000_000),
    "pro": Limits(120, None, 2_000_000, 64, tokens_per_month=50_000_000),
    "enterprise": Limits(300, None, 6_000_000, 64, tokens_per_month=150_000_000),
    "unlimited": Limits(None, None, None, None),
}
DEFAULT_PLAN = "basic"
GUEST_LIMITS = Limits(rpm=5, requests_per_day=None, tokens_per_day=None, concurrency=64)  # rpm per client IP
GUEST_MAX_TOKENS = 256


class Plans:
    def __init__(self, plans: dict[str, Limits]) -> None:
        self._plans = plans

    @classmethod
    def from_json(cls, text: str | None) -> Plans:
        """Defaults, changed by FAREGATE_PLANS, e.g. ``{"basic": {"rpm": 100}, "team": {...}}``."""
        plans = dict(DEFAULT_PLANS)
        if text:
            names = {f.name for f in fields(Limits)}
            for name, spec in json.loads(text).items():
                unknown = set(spec) - names
                if unknown:
                    raise ValueError(f"plan {name!r}: unknown limits {sorted(unknown)}")
                base = plans.get(name, Limits(None, None, None, None))
                plans[name.lower()] = replace(base, **spec)
        return cls(plans)

    def named(self, name: str) -> Limits:
        found = self._plans.get((name or DEFAULT_PLAN).lower())
        if found is None:
            raise InvalidRequest(f"unknown plan {name!r}; one of: {', '.join(self._plans)}", param="plan")
        return found

    def check(self, name: str) -> str:
        self.named(name)
        return name.lower()


def day_key(now: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(now))


def seconds_to_utc_midnight(now: float) -> int:
    return 86_400 - int(now) % 86_400


@dataclass(frozen=True)
class AdmitCheck:
    """Everything one admission decides, as one atomic step (limits: None = no limit)."""

    subject: str  # a key id, or guest:<ip>
    rpm: int | None
    requests_per_day: int | None
    tokens_per_day: int | None
    concurrency: int | None
    concurrency_bucket: str
    slot: str
    lease: float
    now: float
    # a grant (ADR 11): up to this many admissions more, and these slots more, when the
    # limits leave room; counted in the same step as the request's own
    grant: int = 0
    grant_slots: tuple[str, ...] = ()

    def buckets(self) -> list[str]:
        # one hash tag per subject keeps every key of a decision in one Redis cluster slot
        minute = int(self.now) - int(self.now) % 60
        day = day_key(self.now)
        tag = "{" + self.subject + "}"
        return [f"rpm:{tag}:{minute}", f"rpd:{tag}:{day}", f"tpd:{tag}:{day}", self.concurrency_bucket]


REFUSED_BY = {1: "rpm", 2: "requests_per_day", 3: "tokens_per_day", 4: "concurrency"}


class Decision(NamedTuple):
    refused: str | None  # the limit that refused, or None
    rpm: int  # the minute window's count after this decision
    granted: int = 0  # admissions counted beyond the request's own
    slots: int = 0  # how many of the grant's slots were taken (the first ones)


class Counters(ABC):
    """Atomic counters and leases. Buckets are strings; every operation is one round trip."""

    @abstractmethod
    async def admit(self, check: AdmitCheck) -> Decision:
        """All limits at once, all or nothing for the request itself; a grant takes what
        room is left, up to what it asks for."""

    @abstractmethod
    async def take(self, bucket: str, limit: int, ttl: int) -> int:
        """Count one unit if fewer than ``limit`` are counted; the new count, or -1 if full."""

    @abstractmethod
    async def add(self, bucket: str, amount: int, ttl: int) -> None:
        """Count ``amount`` more: for counts the caller rebuilds itself after a restart
        (tokens, from the usage stream), so the in-process backend does not journal them."""

    @abstractmethod
    async def get(self, bucket: str) -> int: ...

    @abstractmethod
    async def refund(self, bucket: str, amount: int) -> None:
        """Give back units counted but never used (a bucket that has expired stays gone)."""

    @abstractmethod
    async def renew(self, bucket: str, slot: str, lease: float, now: float) -> None: ...

    @abstractmethod
    async def release(self, bucket: str, slot: str) -> None: ...

    async def close(self) -> None:  # noqa: B027 - optional
        pass


class LocalCounters(Counters):
    """In-process counters: correct for a single auth replica. With a journal, every change
    of a request count or slot is written to the database before the decision returns
    (slot releases and renewals without waiting), and ``restored`` rebuilds them at start."""

    def __init__(self, clock: Any = time.time, journal: CounterJournal | None = None) -> None:
        self._clock = clock
        self._journal = journal
        self._counts: dict[str, tuple[int, float]] = {}  # bucket -> (count, expires_at)
        self._slots: dict[str, dict[str, float]] = {}  # bucket -> slot -> expires_at

    @classmethod
    async def restored(cls, journal: CounterJournal, clock: Any = time.time) -> LocalCounters:
        counters = cls(clock, journal)
        counters._counts, counters._slots = await journal.load()
        return counters

    async def _durable(self) -> None:
        if self._journal is not None:
            await self._journal.durable()

    def _note_slot(self, bucket: str, slot: str, expires_at: float | None) -> None:
        if self._journal is not None:
            self._journal.slot(bucket, slot, expires_at)

    async def admit(self, check: AdmitCheck) -> Decision:
        rpm_b, rpd_b, tpd_b, conc_b = check.buckets()
        rpm = self._live(rpm_b)
        n = 1 + max(check.grant, 0)
        if check.rpm is not None:
            if rpm >= check.rpm:
                return Decision("rpm", rpm)
            n = min(n, check.rpm - rpm)
        if check.requests_per_day is not None:
            today = self._live(rpd_b)
            if today >= check.requests_per_day:
                return Decision("requests_per_day", rpm)
            n = min(n, check.requests_per_day - today)
        if check.tokens_per_day is not None and self._live(tpd_b) >= check.tokens_per_day:
            return Decision("tokens_per_day", rpm)
        slots = 0
        if check.concurrency is not None:
            now = check.now
            held = {s: exp for s, exp in self._slots.get(conc_b, {}).items() if exp > now}
            self._slots[conc_b] = held
            if len(held) >= check.concurrency:
                return Decision("concurrency", rpm)
            wanted = (check.slot, *check.grant_slots)[: check.concurrency - len(held)]
            for slot in wanted:
                held[slot] = now + check.lease
                self._note_slot(conc_b, slot, now + check.lease)
            slots = len(wanted) - 1
            if not slots:
                n = 1  # no slot to spend them with: a grant would be of no use
        if check.rpm is not None:
            rpm = self._count(rpm_b, n, 61)
        if check.requests_per_day is not None:
            self._count(rpd_b, n, seconds_to_utc_midnight(check.now) + 60)
        await self._durable()  # the answer leaves only once its counts are on disk
        return Decision(None, rpm, n - 1, slots)

    def _count(self, bucket: str, n: int, ttl: int, *, journaled: bool = True) -> int:
        count = self._live(bucket) + n
        self._set(bucket, count, self._counts.get(bucket, (0, self._clock() + ttl))[1], journaled=journaled)
        return count

    def _set(self, bucket: str, count: int, expires_at: float, *, journaled: bool = True) -> None:
        self._counts[bucket] = (count, expires_at)
        if journaled and self._journal is not None:
            self._journal.count(bucket, count, expires_at)
        self._sweep()

    def _live(self, bucket: str) -> int:
        count, expires = self._counts.get(bucket, (0, 0.0))
        if expires <= self._clock():
            self._counts.pop(bucket, None)
            return 0
        return count

    def _sweep(self) -> None:
        if len(self._counts) > 200_000:
            now = self._clock()
            self._counts = {b: v for b, v in self._counts.items() if v[1] > now}

    async def take(self, bucket: str, limit: int, ttl: int) -> int:
        count = self._live(bucket)
        if count >= limit:
            return -1
        count = self._count(bucket, 1, ttl)
        await self._durable()
        return count

    async def add(self, bucket: str, amount: int, ttl: int) -> None:
        self._count(bucket, amount, ttl, journaled=False)

    async def get(self, bucket: str) -> int:
        return self._live(bucket)

    async def refund(self, bucket: str, amount: int) -> None:
        # written with the next batch, not waited for: a refund lost in a crash only refuses more
        count = self._live(bucket)
        if count:
            self._set(bucket, max(count - amount, 0), self._counts[bucket][1])

    async def renew(self, bucket: str, slot: str, lease: float, now: float) -> None:
        slots = self._slots.get(bucket, {})
        if slot in slots:
            slots[slot] = now + lease
            self._note_slot(bucket, slot, now + lease)

    async def release(self, bucket: str, slot: str) -> None:
        slots = self._slots.get(bucket)
        if slots is not None:
            if slots.pop(slot, None) is not None:
                self._note_slot(bucket, slot, None)
            if not slots:
                self._slots.pop(bucket, None)

    async def close(self) -> None:
        if self._journal is not None:
            await self._journal.close()


_TAKE = """
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if c >= tonumber(ARGV[1]) then return -1 end
c = redis.call('INCR', KEYS[1])
if c == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return c
"""

_ADD = """
local c = redis.call('INCRBY', KEYS[1], ARGV[1])
if c == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return c
"""


_ADMIT = """
local n = 1 + tonumber(ARGV[11])
local rpm = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) >= 0 then
  if rpm >= tonumber(ARGV[1]) then return {1, rpm, 0, 0} end
  n = math.min(n, tonumber(ARGV[1]) - rpm)
end
if tonumber(ARGV[3]) >= 0 then
  local today = tonumber(redis.call('GET', KEYS[2]) or '0')
  if today >= tonumber(ARGV[3]) then return {2, rpm, 0, 0} end
  n = math.min(n, tonumber(ARGV[3]) - today)
end
if tonumber(ARGV[5]) >= 0 and tonumber(redis.call('GET', KEYS[3]) or '0') >= tonumber(ARGV[5]) then
  return {3, rpm, 0, 0}
end
local slots = 0
if tonumber(ARGV[6]) >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[7])
  local free = tonumber(ARGV[6]) - redis.call('ZCARD', KEYS[4])
  if free <= 0 then return {4, rpm, 0, 0} end
  redis.call('ZADD', KEYS[4], ARGV[8], ARGV[9])
  for i = 12, #ARGV do
    if slots + 1 >= free then break end
    redis.call('ZADD', KEYS[4], ARGV[8], ARGV[i])
    slots = slots + 1
  end
  redis.call('EXPIRE', KEYS[4], ARGV[10])
  if slots == 0 then n = 1 end
end
if tonumber(ARGV[1]) >= 0 then
  rpm = redis.call('INCRBY', KEYS[1], n)
  if rpm == n then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
end
if tonumber(ARGV[3]) >= 0 then
  if redis.call('INCRBY', KEYS[2], n) == n then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
end
return {0, rpm, n - 1, slots}
"""

_REFUND = """
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if c > 0 then redis.call('DECRBY', KEYS[1], math.min(c, tonumber(ARGV[1]))) end
return 0
"""


def _limit(value: int | None) -> int:
    return -1 if value is None else value


class RedisCounters(Counters):
    """Counters shared by every auth replica, one Lua script per decision."""

    def __init__(self, redis: Any, prefix: str = "faregate:") -> None:
        self._redis = redis
        self._prefix = prefix
        self._take = redis.register_script(_TAKE)
        self._add = redis.register_script(_ADD)
        self._admit = redis.register_script(_ADMIT)
        self._refund = redis.register_script(_REFUND)

    async def admit(self, check: AdmitCheck) -> Decision:
        code, rpm, granted, slots = await self._admit(
            keys=[self._prefix + b for b in check.buckets()],
            args=[
                _limit(check.rpm),
                61,
                _limit(check.requests_per_day),
                seconds_to_utc_midnight(check.now) + 60,
                _limit(check.tokens_per_day),
                _limit(check.concurrency),
                check.now,
                check.now + check.lease,
                check.slot,
                int(check.lease) + 60,
                max(check.grant, 0),
                *check.grant_slots,
            ],
        )
        return Decision(REFUSED_BY.get(int(code)), int(rpm), int(granted), int(slots))

    @classmethod
    def from_url(cls, url: str, prefix: str) -> RedisCounters:
        import redis.asyncio as aioredis

        return cls(aioredis.Redis.from_url(url), prefix)

    async def take(self, bucket: str, limit: int, ttl: int) -> int:
        return int(await self._take(keys=[self._prefix + bucket], args=[limit, ttl]))

    async def add(self, bucket: str, amount: int, ttl: int) -> None:
        await self._add(keys=[self._prefix + bucket], args=[amount, ttl])

    async def get(self, bucket: str) -> int:
        value = await self._redis.get(self._prefix + bucket)
        return int(value or 0)

    async def refund(self, bucket: str, amount: int) -> None:
        await self._refund(keys=[self._prefix + bucket], args=[amount])

    async def renew(self, bucket: str, slot: str, lease: float, now: float) -> None:
        await self._redis.zadd(self._prefix + bucket, {slot: now + lease}, xx=True)

    async def release(self, bucket: str, slot: str) -> None:
        await self._redis.zrem(self._prefix + bucket, slot)

    async def close(self) -> None:
        await self._redis.aclose()
