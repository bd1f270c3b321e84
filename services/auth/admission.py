"""Admission: who is calling, may they, and under which limits. The domain of auth.

One ``admit`` per inference request: key check (format first, no I/O for garbage), then the
key's limits — requests per minute, requests per UTC day, tokens per UTC day, and a
concurrency slot (a lease the edge releases when the request ends, renews while it
streams, and that expires if nobody does). A request without a key is a guest: account
``acc_guest``, limited per client IP, never billed, max_tokens capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from faregate.errors import AuthenticationFailed, InvalidRequest, NotFound, RateLimited
from services.auth import keys
from services.auth.limits import (
    GUEST_LIMITS,
    Counters,
    Limits,
    LocalCounters,
    Plans,
    day_key,
    seconds_to_utc_midnight,
)
from services.auth.storage import AccountRow, AuthStore, KeyRow, now_ms

log = logging.getLogger(__name__)

CACHE_TTL_S = 1.0  # a revoked key is refused by every replica within this time
GUEST_ACCOUNT = "acc_guest"
BAD_KEYS_PER_IP_PER_MINUTE = 60


@dataclass(frozen=True)
class Window:
    limit: int
    remaining: int
    reset_at: int  # Unix seconds


@dataclass(frozen=True)
class Admission:
    account_id: str
    key_id: str
    mode: str
    plan: str
    window: Window | None
    slot_id: str
    guest: bool = False

    @property
    def billable(self) -> bool:
        return self.mode == "live" and not self.guest


class Authenticator:
    def __init__(
        self,
        store: AuthStore,
        hasher: keys.KeyHasher,
        counters: Counters | None = None,
        plans: Plans | None = None,
        *,
        cache_ttl: float = CACHE_TTL_S,
        slot_lease: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._counters = counters or LocalCounters()
        self._plans = plans or Plans.from_json(None)
        self._cache_ttl = cache_ttl
        self.slot_lease = slot_lease
        self._clock = clock
        self._cache: dict[bytes, tuple[float, KeyRow | None]] = {}
        self._last_used: dict[str, int] = {}
        self._flusher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_last_used())

    async def close(self) -> None:
        if self._flusher:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self._store.touch_keys(self._last_used)
        await self._counters.close()

    # -- the hot path ------------------------------------------------------------------

    async def identify(self, presented: str, client_ip: str = "") -> KeyRow:
        """The active key behind ``presented``; AuthenticationFailed otherwise."""
        if not presented:
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer gw_…'", code="missing_api_key")
        try:
            keys.mode_of(presented)
            digest = self._hasher.digest(presented)
            key = await self._lookup(digest)
            if key is None or not keys.KeyHasher.matches(key.key_hash, digest):
                raise AuthenticationFailed("invalid API key", code="invalid_api_key")
        except AuthenticationFailed:
            await self._count_bad_key(client_ip)
            raise
        status = key.effective_status(now_ms())
        if status != "active":
            if status == "revoked":
                await self._store.audit(key.id, key.account_id, "used_after_revoke")
            raise AuthenticationFailed(f"API key is {status}", code=f"{status}_api_key")
        return key

    async def admit(self, presented: str, client_ip: str = "") -> Admission:
        if not presented:
            return await self._admit_guest(client_ip)
        key = await self.identify(presented, client_ip)
        limits = self._plans.named(key.plan).overridden(
            rpm=key.rpm_limit,
            requests_per_day=key.requests_per_day_limit,
            tokens_per_day=key.tokens_per_day_limit,
            concurrency=key.concurrency_limit,
        )
        window = await self._check(key.id, limits)
        slot = await self._acquire_slot(f"conc:{key.id}", limits.concurrency, "this key")
        self._last_used[key.id] = now_ms()
        return Admission(key.account_id, key.id, key.mode, key.plan, window, slot)

    async def _admit_guest(self, client_ip: str) -> Admission:
        window = await self._take_rpm(
            f"guest:{client_ip or 'unknown'}", GUEST_LIMITS.rpm or 0, "guest requests per minute from this address"
        )
        slot = await self._acquire_slot("conc:guest", GUEST_LIMITS.concurrency, "the guest sandbox")
        return Admission(GUEST_ACCOUNT, "guest", "test", "guest", window, slot, guest=True)

    async def _check(self, key_id: str, limits: Limits) -> Window | None:
        now = self._clock()
        window = None
        if limits.rpm is not None:
            window = await self._take_rpm(key_id, limits.rpm, "requests per minute for this key")
        if limits.requests_per_day is not None:
            ttl = seconds_to_utc_midnight(now)
            if await self._counters.take(f"rpd:{key_id}:{day_key(now)}", limits.requests_per_day, ttl + 60) < 0:
                raise RateLimited(
                    f"daily limit reached: {limits.requests_per_day} requests per UTC day for this key",
                    code="daily_requests_exceeded",
                    retry_after=ttl,
                )
        if limits.tokens_per_day is not None:
            used = await self._counters.get(f"tpd:{key_id}:{day_key(now)}")
            if used >= limits.tokens_per_day:
                raise RateLimited(
                    f"daily limit reached: {limits.tokens_per_day} tokens per UTC day for this key",
                    code="daily_tokens_exceeded",
                    retry_after=seconds_to_utc_midnight(now),
                )
        return window

    async def _take_rpm(self, subject: str, limit: int, what: str) -> Window:
        now = int(self._clock())
        start = now - now % 60
        reset_at = start + 60
        count = await self._counters.take(f"rpm:{subject}:{start}", limit, 61)
        if count < 0:
            raise RateLimited(
                f"rate limit exceeded: {limit} {what}", code="rpm_exceeded", retry_after=max(1, reset_at - now)
            )
        return Window(limit, limit - count, reset_at)

    async def _acquire_slot(self, bucket: str, limit: int | None, whose: str) -> str:
        if limit is None:
            return ""
        slot = secrets.token_hex(8)
        if not await self._counters.acquire(bucket, slot, limit, self.slot_lease, self._clock()):
            raise RateLimited(
                f"concurrency limit reached: {limit} requests in flight for {whose}",
                code="concurrency_exceeded",
                retry_after=1,
            )
        return slot

    def monthly_quota(self, plan: str) -> int | None:
        """The plan's tokens per UTC month (None: no quota). Billing counts what was used."""
        try:
            return self._plans.named(plan).tokens_per_month
        except InvalidRequest:  # a plan removed from FAREGATE_PLANS since the account was made
            return None

    async def release(self, key_id: str, slot: str) -> None:
        if slot:
            await self._counters.release(_slot_bucket(key_id), slot)

    async def renew(self, key_id: str, slot: str) -> None:
        if slot:
            await self._counters.renew(_slot_bucket(key_id), slot, self.slot_lease, self._clock())

    async def record_tokens(self, key_id: str, tokens: int, at: float) -> None:
        """Count tokens a key used today (fed from the usage stream, off the hot path)."""
        if tokens > 0 and key_id and key_id != "guest":
            await self._counters.add(f"tpd:{key_id}:{day_key(at)}", tokens, seconds_to_utc_midnight(at) + 3600)

    async def _count_bad_key(self, client_ip: str) -> None:
        """Cap the work a client can cause with bad keys: after a burst, no more lookups."""
        minute = int(self._clock()) // 60
        if await self._counters.take(f"badkey:{client_ip}:{minute}", BAD_KEYS_PER_IP_PER_MINUTE, 61) < 0:
            raise RateLimited(
                "too many failed authentications from this address",
                code="auth_failures",
                retry_after=60 - int(self._clock()) % 60,
            )

    async def _lookup(self, digest: bytes) -> KeyRow | None:
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        key = await self._store.key_by_hash(digest)
        if len(self._cache) > 100_000:
            self._cache = {d: v for d, v in self._cache.items() if v[0] > now}
        self._cache[digest] = (now + self._cache_ttl, key)
        return key

    async def _flush_last_used(self) -> None:
        while True:
            await asyncio.sleep(5)
            pending, self._last_used = self._last_used, {}
            try:
                await self._store.touch_keys(pending)
            except Exception:
                log.exception("could not record key last-used times")

    # -- accounts and keys ------------------------------------------------------------

    async def create_account(self, name: str, plan: str) -> AccountRow:
        if not name or len(name) > 200:
            raise InvalidRequest("account name must be 1–200 characters", param="name")
        return await self._store.create_account(name, self._plans.check(plan or "basic"))

    async def account(self, account_id: str) -> AccountRow:
        row = await self._store.get_account(account_id)
        if row is None:
            raise NotFound(f"no account {account_id!r}", code="account_not_found")
        return row

    async def create_key(self, account_id: str, name: str, mode: str, expires_at_ms: int | None) -> tuple[KeyRow, str]:
        if account_id == GUEST_ACCOUNT:
            raise InvalidRequest("the guest account has no keys")
        await self.account(account_id)
        if mode not in keys.PREFIXES:
            raise InvalidRequest("mode must be 'live' or 'test'", param="mode")
        if len(name) > 200:
            raise InvalidRequest("key name must be at most 200 characters", param="name")
        if expires_at_ms is not None and expires_at_ms <= now_ms():
            raise InvalidRequest("expires_at must be in the future", param="expires_at")
        secret = keys.generate(mode)
        row = await self._store.create_key(
            account_id, name, mode, self._hasher.digest(secret), secret[:12], secret[-4:], expires_at_ms
        )
        return row, secret

    async def list_keys(self, account_id: str) -> list[KeyRow]:
        await self.account(account_id)
        return await self._store.list_keys(account_id)

    async def revoke_key(self, account_id: str, key_id: str) -> KeyRow:
        row = await self._store.revoke_key(account_id, key_id)
        if row is None:
            raise NotFound(f"no key {key_id!r}", code="key_not_found")
        self._forget(key_id)
        return row

    async def update_limits(self, key_id: str, limits: dict[str, int | None]) -> KeyRow:
        if not limits:
            raise InvalidRequest("give at least one of rpm, requests_per_day, tokens_per_day, concurrency")
        for name, value in limits.items():
            if value is not None and value < -1:
                raise InvalidRequest(f"{name} must be a positive number, or -1 for no limit", param=name)
        row = await self._store.update_limits(key_id, limits)
        if row is None:
            raise NotFound(f"no key {key_id!r}", code="key_not_found")
        self._forget(key_id)
        return row

    def _forget(self, key_id: str) -> None:
        """Drop this replica's cached copy now; other replicas' copies expire within the TTL."""
        self._cache = {d: v for d, v in self._cache.items() if v[1] is None or v[1].id != key_id}


def _slot_bucket(key_id: str) -> str:
    return "conc:guest" if key_id == "guest" else f"conc:{key_id}"
