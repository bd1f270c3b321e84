"""Admission: who is calling, may they, and under which limits. The domain of auth.

One ``admit`` per inference request: key check (format first, no I/O for garbage), then the
key's limits — requests per minute, requests per UTC day, tokens per UTC day, and a
concurrency slot (a lease the edge releases when the request ends, renews while it
streams, and that expires if nobody does). A request without a key is a guest: account
``acc_guest``, limited per client IP, never billed, max_tokens capped.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from faregate.errors import AuthenticationFailed, InvalidRequest, NotFound, RateLimited, RateWindow, Reason
from faregate.values import KeyMode, KeyStatus, RoutingMode
from services.auth import keys
from services.auth.limits import (
    GUEST_LIMITS,
    AdmitCheck,
    Counters,
    Limits,
    LocalCounters,
    Plans,
    seconds_to_utc_midnight,
)
from services.auth.storage import AccountRow, AuthStore, KeyRow, now_ms

log = logging.getLogger(__name__)

_RETURN_MEMORY_S = 180  # a grant's return arrives within its minute window or is worthless

GRANT_S = 1.0  # default FAREGATE_GRANT_SECONDS: how long an edge may spend a grant (ADR 11)
GRANT_MAX = 1_000  # admissions in one grant
GRANT_SHARE = 8  # a grant holds at most 1/8 of a window's requests, half of the concurrency
# How stale a replica's copy of a key may be when a change message is lost (default
# FAREGATE_KEY_CACHE_SECONDS); a grant never outlives the copy it was counted on, so with
# the transit allowance a revoked or expired key is refused everywhere within the bound.
CACHE_TTL_S = 0.9
TRANSIT_S = 0.1  # a grant's reply reaching its edge, which starts the grant's life then
REVOCATION_BOUND_S = 1.0
GUEST_ACCOUNT = "acc_guest"
BAD_KEYS_PER_IP_PER_MINUTE = 60


@dataclass(frozen=True)
class Window:
    limit: int
    remaining: int
    reset_at: int  # Unix seconds


@dataclass(frozen=True)
class Grant:
    """Admissions counted for an edge in one step, to spend there until ``valid_ms`` ends."""

    admissions: int
    slot_ids: tuple[str, ...]
    valid_ms: int
    window: int  # the minute window they were counted in (Unix seconds)
    id: str = ""  # its returns are refunded once


@dataclass(frozen=True)
class Admission:
    account_id: str
    key_id: str
    mode: KeyMode
    plan: str
    window: Window | None
    slot_id: str
    guest: bool = False
    routing_mode: RoutingMode = RoutingMode.AUTO
    preferred_provider: str = ""
    grant: Grant | None = None

    @property
    def billable(self) -> bool:
        return self.mode is KeyMode.LIVE and not self.guest


@dataclass(frozen=True)
class Routing:
    """A key's routing mode: auto (the chain), preferred (a provider first), failover (only it)."""

    mode: RoutingMode = RoutingMode.AUTO
    provider: str = ""

    def __post_init__(self) -> None:
        if self.mode is not RoutingMode.AUTO and not self.provider:
            raise InvalidRequest(f"routing_mode {self.mode!r} needs a preferred_provider", param="preferred_provider")
        if len(self.provider) > 100:
            raise InvalidRequest("preferred_provider is at most 100 characters", param="preferred_provider")

    def columns(self) -> dict[str, str | None]:
        return {"routing_mode": self.mode.value, "preferred_provider": self.provider or None}


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
        grant_s: float = GRANT_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._counters = counters or LocalCounters()
        self._plans = plans or Plans.from_json(None)
        self._cache_ttl = cache_ttl
        self.slot_lease = slot_lease
        self._grant_s = grant_s
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._cache: dict[bytes, tuple[float, KeyRow | None]] = {}
        self._last_used: dict[str, int] = {}
        # tells the other replicas a key changed (auth's server wires it to NATS KEYS_CHANGED)
        self.announce: Callable[[str], Awaitable[None]] | None = None

    async def close(self) -> None:
        await self._store.touch_keys(self._last_used)
        await self._counters.close()

    # -- the hot path ------------------------------------------------------------------

    async def identify(self, presented: str, client_ip: str = "") -> KeyRow:
        """The active key behind ``presented``; AuthenticationFailed otherwise."""
        if not presented:
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer gw_…'", reason=Reason.KEY_MISSING)
        try:
            keys.mode_of(presented)
            digest = self._hasher.digest(presented)
            key = await self._lookup(digest)
            if key is None or not keys.KeyHasher.matches(key.key_hash, digest):
                raise AuthenticationFailed("invalid API key", reason=Reason.KEY_UNKNOWN)
        except AuthenticationFailed:
            await self._count_bad_key(client_ip)
            raise
        status = key.effective_status(now_ms())
        if status is not KeyStatus.ACTIVE:
            if status is KeyStatus.REVOKED:
                await self._store.audit(key.id, key.account_id, "used_after_revoke")
            reason = Reason.KEY_REVOKED if status is KeyStatus.REVOKED else Reason.KEY_EXPIRED
            raise AuthenticationFailed(f"API key is {status}", reason=reason)
        return key

    async def admit(self, presented: str, client_ip: str = "", *, grant: int = 0, grant_slots: int = 0) -> Admission:
        """Admit one request; with ``grant`` > 0, also count up to that many more admissions
        (and up to ``grant_slots`` slots for them) for the edge to spend locally (ADR 11)."""
        if not presented:
            slot, window, _ = await self._decide(
                f"guest:{client_ip or 'unknown'}", GUEST_LIMITS, "conc:{guest}", guest=True
            )
            return Admission(GUEST_ACCOUNT, "guest", KeyMode.TEST, "guest", window, slot, guest=True)
        key = await self.identify(presented, client_ip)
        limits = self._plans.named(key.plan).overridden(
            rpm=key.rpm_limit,
            requests_per_day=key.requests_per_day_limit,
            tokens_per_day=key.tokens_per_day_limit,
            concurrency=key.concurrency_limit,
        )
        slot, window, granted = await self._decide(
            key.id, limits, _slot_bucket(key.id), grant, grant_slots, grant_until=self._trusted_until(presented, key)
        )
        self._last_used[key.id] = now_ms()
        return Admission(
            key.account_id,
            key.id,
            key.mode,
            key.plan,
            window,
            slot,
            routing_mode=key.routing_mode or RoutingMode.AUTO,
            preferred_provider=key.preferred_provider or "",
            grant=granted,
        )

    async def _decide(
        self,
        subject: str,
        limits: Limits,
        slot_bucket: str,
        grant: int = 0,
        grant_slots: int = 0,
        *,
        guest: bool = False,
        grant_until: float | None = None,
    ) -> tuple[str, Window | None, Grant | None]:
        """Every limit in one atomic step (one Redis round trip); nothing is counted if refused."""
        now = self._clock()
        slot = secrets.token_hex(8) if limits.concurrency is not None else ""
        grant = _grant_size(grant, limits) if self._grant_s > 0 else 0
        extra: tuple[str, ...] = ()
        if grant and limits.concurrency is not None:
            wanted = min(grant_slots, grant, limits.concurrency // 2)
            extra = tuple(f"{slot}.{i}" for i in range(wanted))
        refused, rpm, granted, slots = await self._counters.admit(
            AdmitCheck(
                subject,
                limits.rpm,
                limits.requests_per_day,
                limits.tokens_per_day,
                limits.concurrency,
                slot_bucket,
                slot,
                self.slot_lease,
                now,
                grant,
                extra,
            )
        )
        reset_at = int(now) - int(now) % 60 + 60
        if refused is not None:
            raise _refusal(refused, limits, now, rpm, guest=guest)
        window = Window(limits.rpm, limits.rpm - rpm, reset_at) if limits.rpm is not None else None
        life = min(self._grant_s, reset_at - now)
        if grant_until is not None:  # never past the key's cached copy, nor its expiry
            life = min(life, grant_until - now)
        valid_ms = int(life * 1000)
        if not granted or valid_ms <= 0:
            return slot, window, None
        return slot, window, Grant(granted, extra[:slots], valid_ms, reset_at - 60, f"gr_{secrets.token_hex(8)}")

    def _trusted_until(self, presented: str, key: KeyRow) -> float:
        """Until when (this clock) a grant of ``key`` may be spent: while this replica's copy
        of the key is fresh, less a reply's transit, and never past the key's expiry (ADR 16)."""
        cached = self._cache.get(self._hasher.digest(presented))
        now = self._clock()
        fresh = self._cache_ttl if cached is None else cached[0] - self._monotonic()
        until = now + fresh - TRANSIT_S
        if key.expires_at_ms is not None:
            until = min(until, key.expires_at_ms / 1000)
        return until

    async def refund(self, key_id: str, unused: int, window: int, grant_id: str = "") -> None:
        """An ended grant's admissions that were never spent go back to their minute window
        and day (an edge returns them; a window that has ended has nothing to give back).
        Once per grant: an edge resends a return whose delivery it could not confirm."""
        if unused > 0 and key_id and key_id != "guest":
            if grant_id and await self._counters.take(f"returned:{{{grant_id}}}", 1, _RETURN_MEMORY_S) < 0:
                return  # refunded already
            rpm, rpd, _, _ = AdmitCheck(key_id, None, None, None, None, "", "", 0, float(window)).buckets()
            await self._counters.refund(rpm, unused)
            await self._counters.refund(rpd, unused)

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
            bucket = AdmitCheck(key_id, None, None, None, None, "", "", 0, at).buckets()[2]
            await self._counters.add(bucket, tokens, seconds_to_utc_midnight(at) + 3600)

    async def _count_bad_key(self, client_ip: str) -> None:
        """Cap the work a client can cause with bad keys: after a burst, no more lookups."""
        now = int(self._clock())
        if await self._counters.take(f"badkey:{client_ip}:{now // 60}", BAD_KEYS_PER_IP_PER_MINUTE, 61) < 0:
            raise RateLimited(
                "too many failed authentications from this address",
                reason=Reason.AUTH_FAILURES,
                retry_after=60 - now % 60,
                window=RateWindow(BAD_KEYS_PER_IP_PER_MINUTE, 0, now - now % 60 + 60),
            )

    async def _lookup(self, digest: bytes) -> KeyRow | None:
        now = self._monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        key = await self._store.key_by_hash(digest)
        if len(self._cache) > 100_000:
            self._cache = {d: v for d, v in self._cache.items() if v[0] > now}
        self._cache[digest] = (now + self._cache_ttl, key)
        return key

    async def flush_last_used(self, every: float = 5.0) -> None:
        """Write keys' last-used times every few seconds (a supervised component: a failed
        write keeps its times for the next one and raises, to be retried after a backoff)."""
        while True:
            await asyncio.sleep(every)
            pending, self._last_used = self._last_used, {}
            try:
                await self._store.touch_keys(pending)
            except BaseException:
                self._last_used = {**pending, **self._last_used}
                raise

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

    async def create_key(
        self, account_id: str, name: str, mode: KeyMode, expires_at_ms: int | None, routing: Routing | None = None
    ) -> tuple[KeyRow, str]:
        if account_id == GUEST_ACCOUNT:
            raise InvalidRequest("the guest account has no keys")
        await self.account(account_id)
        if len(name) > 200:
            raise InvalidRequest("key name must be at most 200 characters", param="name")
        if expires_at_ms is not None and expires_at_ms <= now_ms():
            raise InvalidRequest("expires_at must be in the future", param="expires_at")
        secret = keys.generate(mode)
        row = await self._store.create_key(
            account_id,
            name,
            mode,
            self._hasher.digest(secret),
            secret[:12],
            secret[-4:],
            expires_at_ms,
            routing.columns() if routing else None,
        )
        return row, secret

    async def list_keys(self, account_id: str) -> list[KeyRow]:
        await self.account(account_id)
        return await self._store.list_keys(account_id)

    async def revoke_key(self, account_id: str, key_id: str) -> KeyRow:
        """Revoke, and answer once every replica and every edge refuses the key: the change
        message may be lost, so this waits out the longest a cached copy (and a grant counted
        on it) can live. With a key cache longer than the bound it cannot: it answers at once
        and the message on NATS is what stops the others (``revocation_bounded`` says which)."""
        row = await self._store.revoke_key(account_id, key_id)
        if row is None:
            raise NotFound(f"no key {key_id!r}", code="key_not_found")
        await self._changed(key_id)
        if self.revocation_bounded:
            await self._sleep(self._cache_ttl + TRANSIT_S)
        return row

    @property
    def revocation_bounded(self) -> bool:
        """Whether a revocation answered here is refused everywhere (with the same settings)."""
        return self._cache_ttl + TRANSIT_S <= REVOCATION_BOUND_S

    async def update_key(
        self,
        key_id: str,
        limits: dict[str, int | None],
        routing: Routing | None = None,
        account_id: str | None = None,
    ) -> KeyRow:
        """Per-key limit overrides and routing mode; ``account_id`` scopes a self-service change."""
        if not limits and routing is None:
            raise InvalidRequest(
                "give at least one of rpm, requests_per_day, tokens_per_day, concurrency, routing_mode"
            )
        for name, value in limits.items():
            if value is not None and value < -1:
                raise InvalidRequest(f"{name} must be a positive number, or -1 for no limit", param=name)
        values: dict[str, int | str | None] = dict(limits)
        if routing is not None:
            values.update(routing.columns())
        row = await self._store.update_key(key_id, values, account_id)
        if row is None:
            raise NotFound(f"no key {key_id!r}", code="key_not_found")
        await self._changed(key_id)
        return row

    async def _changed(self, key_id: str) -> None:
        """Drop this replica's cached copy now and tell the others (they drop theirs when the
        message arrives, or when their copy's TTL ends if it is lost)."""
        self.forget(key_id)
        if self.announce is not None:
            try:
                await self.announce(key_id)
            except Exception as exc:  # NATS is away: the other replicas' TTL still bounds it
                log.warning("could not announce a change to key %s: %s", key_id, exc)

    def forget(self, key_id: str) -> None:
        """Drop the cached copy of one key (a change made here or announced by a replica)."""
        self._cache = {d: v for d, v in self._cache.items() if v[1] is None or v[1].id != key_id}

    def forget_all(self) -> None:
        """Drop every cached key (after a gap in the change messages, e.g. a NATS reconnect)."""
        self._cache = {}


def _grant_size(wanted: int, limits: Limits) -> int:
    """What a grant may ask the counters for: never more than a share of a window's budget,
    so one edge's unspent admissions cannot starve the others for long."""
    size = min(max(wanted, 0), GRANT_MAX)
    for limit in (limits.rpm, limits.requests_per_day):
        if limit is not None:
            size = min(size, limit // GRANT_SHARE)
    if limits.concurrency is not None and limits.concurrency // 2 == 0:
        return 0  # a key allowed one request at a time has no slots to spare
    return size


def _refusal(refused: str, limits: Limits, now: float, rpm: int, *, guest: bool) -> RateLimited:
    """The 429 for the limit that refused, with the window its X-RateLimit-* headers show:
    the refusing window for requests per minute or per day, else the minute's as counted."""
    whose = "from this address in the guest sandbox" if guest else "for this key"
    reset_at = int(now) - int(now) % 60 + 60
    minute = RateWindow(limits.rpm, max(limits.rpm - rpm, 0), reset_at) if limits.rpm is not None else None
    midnight = int(now) + seconds_to_utc_midnight(now)
    if refused == "rpm":
        return RateLimited(
            f"rate limit exceeded: {limits.rpm} requests per minute {whose}",
            reason=Reason.RPM_EXCEEDED,
            retry_after=max(1, reset_at - int(now)),
            window=RateWindow(limits.rpm or 0, 0, reset_at),
        )
    if refused == "requests_per_day":
        return RateLimited(
            f"daily limit reached: {limits.requests_per_day} requests per UTC day {whose}",
            reason=Reason.DAILY_REQUESTS_EXCEEDED,
            retry_after=seconds_to_utc_midnight(now),
            window=RateWindow(limits.requests_per_day or 0, 0, midnight),
        )
    if refused == "tokens_per_day":
        return RateLimited(
            f"daily limit reached: {limits.tokens_per_day} tokens per UTC day {whose}",
            reason=Reason.DAILY_TOKENS_EXCEEDED,
            retry_after=seconds_to_utc_midnight(now),
            window=minute,
        )
    return RateLimited(
        f"concurrency limit reached: {limits.concurrency} requests in flight {whose}",
        reason=Reason.CONCURRENCY_EXCEEDED,
        retry_after=1,
        window=minute,
    )


def _slot_bucket(key_id: str) -> str:
    return "conc:{guest}" if key_id == "guest" else "conc:{" + key_id + "}"
