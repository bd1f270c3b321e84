"""Admission: who is calling, may they, and under which limits. The domain of auth."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from faregate.errors import AuthenticationFailed, InvalidRequest, NotFound
from services.auth import keys
from services.auth.limits import RpmLimiter, Window, plan_named
from services.auth.storage import AccountRow, AuthStore, KeyRow, now_ms

log = logging.getLogger(__name__)

CACHE_TTL_S = 1.0  # a revoked key is refused by every replica within this time


@dataclass(frozen=True)
class Admission:
    key: KeyRow
    window: Window | None

    @property
    def billable(self) -> bool:
        return self.key.mode == "live"


class Authenticator:
    def __init__(
        self,
        store: AuthStore,
        hasher: keys.KeyHasher,
        limiter: RpmLimiter | None = None,
        cache_ttl: float = CACHE_TTL_S,
    ) -> None:
        self._store = store
        self._cache_ttl = cache_ttl
        self._hasher = hasher
        self._limiter = limiter or RpmLimiter()
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

    async def admit(self, presented: str) -> Admission:
        if not presented:
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer gw_…'", code="missing_api_key")
        keys.mode_of(presented)
        digest = self._hasher.digest(presented)
        key = await self._lookup(digest)
        if key is None or not keys.KeyHasher.matches(key.key_hash, digest):
            raise AuthenticationFailed("invalid API key", code="invalid_api_key")
        status = key.effective_status(now_ms())
        if status != "active":
            if status == "revoked":
                await self._store.audit(key.id, key.account_id, "used_after_revoke")
            raise AuthenticationFailed(f"API key is {status}", code=f"{status}_api_key")
        window = self._limiter.hit(key.id, plan_named(key.plan).rpm)
        self._last_used[key.id] = now_ms()
        return Admission(key, window)

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
        return await self._store.create_account(name, plan_named(plan).name)

    async def account(self, account_id: str) -> AccountRow:
        row = await self._store.get_account(account_id)
        if row is None:
            raise NotFound(f"no account {account_id!r}", code="account_not_found")
        return row

    async def create_key(self, account_id: str, name: str, mode: str, expires_at_ms: int | None) -> tuple[KeyRow, str]:
        await self.account(account_id)
        if mode not in keys.PREFIXES:
            raise InvalidRequest("mode must be 'live' or 'test'", param="mode")
        if len(name) > 200:
            raise InvalidRequest("key name must be at most 200 characters", param="name")
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
        return row
