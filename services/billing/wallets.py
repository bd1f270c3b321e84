"""Wallets and holds: may this account start a request that could cost up to X?

Available funds are the wallet's balance (every entry, granted credit included) minus the
holds of requests in flight. A request is refused with 402 when that is already below the
minimum threshold; otherwise it places a hold of its worst-case cost. A hold is removed when
its request's UsageRecord is applied to the ledger, by the edge when the request ends without
an answer, or when it expires. So an account can overdraw by at most one request's worst
case: the one admitted while funds were still above the threshold.

Two ways to keep holds (ADR 7):

- ``Wallets`` keeps them as rows, removed in the ledger's transaction: exact across any
  number of billing replicas (PostgreSQL), at a database write per request.
- ``MemoryWallets`` keeps them in this process, with each account's balance cached (reloaded
  after the ledger applies its usage, and at least every ``balance_ttl_s``): no database
  write per request. It is exact only with one billing replica — the embedded default
  (SQLite) — and holds do not survive a restart: requests in flight when billing restarts
  are no longer held, so the overdraft bound grows by their worst cases for that moment.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, literal, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from faregate.errors import InsufficientBalance, InvalidRequest
from faregate.money import micros_to_usd
from faregate.pb.events.v1.usage_pb2 import UsageRecord
from services.billing.storage import holds, wallets


def now_ms() -> int:
    return int(time.time() * 1000)


GRANT_S = 1.0  # default FAREGATE_GRANT_SECONDS: how long an edge may spend a funds grant (ADR 11)
GRANT_GRACE_S = 30.0  # a grant its edge never ended (it crashed) is freed this much later
GRANT_SHARE = 4  # a grant holds at most 1/4 of what is available above the threshold


@dataclass(frozen=True)
class FundsGrant:
    id: str
    micros: int
    valid_ms: int


@dataclass(frozen=True)
class Spend:
    grant_id: str
    request_id: str
    amount_micros: int


@dataclass(frozen=True)
class Funds:
    balance_micros: int
    held_micros: int

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.held_micros


class Wallets:
    def __init__(
        self,
        sessions: async_sessionmaker[Any],
        *,
        min_balance_micros: int = 0,
        hold_ttl_s: float = 900.0,
        grant_s: float = GRANT_S,
    ) -> None:
        self._sessions = sessions
        self._grant_s = grant_s  # funds grants: memory holds only
        self._engine: Any = sessions.kw["bind"]
        self._min = min_balance_micros
        self._ttl_ms = int(hold_ttl_s * 1000)
        # One decision per account at a time in this process; across replicas the wallet row
        # is locked (SELECT … FOR UPDATE on PostgreSQL; SQLite has a single writer anyway).
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def funds(self, account_id: str) -> Funds:
        async with self._sessions() as s:
            return await self._funds(s, account_id, lock=False)

    async def _funds(self, s: Any, account_id: str, *, lock: bool) -> Funds:
        q = select(wallets.c.balance_micros).where(wallets.c.account_id == account_id)
        balance = await s.scalar(q.with_for_update() if lock else q)
        held = await s.scalar(
            select(func.coalesce(func.sum(holds.c.amount_micros), 0)).where(
                holds.c.account_id == account_id, holds.c.expires_at_ms > now_ms()
            )
        )
        return Funds(int(balance or 0), int(held or 0))

    async def reserve(self, account_id: str, request_id: str, amount_micros: int) -> Funds:
        """Hold ``amount_micros`` for the request if funds are available: one conditional
        INSERT (plus a row lock of the wallet on PostgreSQL), so it stays cheap per request."""
        if amount_micros < 0:
            raise InvalidRequest("a hold cannot be negative")
        at = now_ms()
        held_now = (
            select(func.coalesce(func.sum(holds.c.amount_micros), 0))
            .where(holds.c.account_id == account_id, holds.c.expires_at_ms > at)
            .scalar_subquery()
        )
        balance_now = func.coalesce(
            select(wallets.c.balance_micros).where(wallets.c.account_id == account_id).scalar_subquery(), 0
        )
        available = balance_now - held_now
        threshold = max(self._min, 0)
        async with self._locks[account_id], self._engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(
                    select(wallets.c.account_id).where(wallets.c.account_id == account_id).with_for_update()
                )
            result = await conn.execute(
                insert(holds).from_select(
                    ["request_id", "account_id", "amount_micros", "expires_at_ms"],
                    select(
                        literal(request_id),
                        literal(account_id),
                        literal(amount_micros),
                        literal(at + self._ttl_ms),
                    ).where(available > threshold),
                )
            )
            admitted = result.rowcount == 1
        if not admitted:
            raise self.insufficient(await self.funds(account_id))
        if len(self._locks) > 10_000:
            self._locks.clear()
        return Funds(0, 0)

    async def release(self, request_id: str) -> None:
        async with self._sessions.begin() as s:
            await s.execute(delete(holds).where(holds.c.request_id == request_id))

    async def expire(self) -> int:
        async with self._sessions.begin() as s:
            result = await s.execute(delete(holds).where(holds.c.expires_at_ms <= now_ms()))
        return int(result.rowcount or 0)

    def settled(self, records: Iterable[UsageRecord]) -> None:
        """The ledger applied these requests (their hold rows went in its transaction)."""

    def grant(self, account_id: str, wanted_micros: int, smallest_micros: int) -> FundsGrant | None:
        """Funds held for an edge to admit requests against locally (ADR 11), right after a
        reservation for the same account. Only memory holds grant: database holds stay one
        row per request, exact across billing replicas."""
        return None

    def settle_grants(self, spent: Iterable[Spend], ended: Iterable[str]) -> None:
        """What an edge spent of its grants becomes one hold per request; ended grants go."""

    def forget(self, account_id: str) -> None:
        """The account's balance changed outside the usage path (a credit, a top-up)."""

    def insufficient(self, funds: Funds) -> InsufficientBalance:
        return InsufficientBalance(
            f"insufficient balance: {micros_to_usd(funds.available_micros):.6f} USD available "
            f"(balance {micros_to_usd(funds.balance_micros):.6f} minus "
            f"{micros_to_usd(funds.held_micros):.6f} held by requests in flight); top up to continue",
            code="insufficient_balance",
        )


@dataclass
class _Hold:
    account_id: str
    amount_micros: int
    expires_at: float  # monotonic


class MemoryWallets(Wallets):
    """Holds in this process (one billing replica): a reservation is a dict update."""

    def __init__(
        self,
        sessions: async_sessionmaker[Any],
        *,
        min_balance_micros: int = 0,
        hold_ttl_s: float = 900.0,
        balance_ttl_s: float = 1.0,
        grant_s: float = GRANT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(sessions, min_balance_micros=min_balance_micros, hold_ttl_s=hold_ttl_s, grant_s=grant_s)
        self._hold_ttl_s = hold_ttl_s
        self._balance_ttl_s = balance_ttl_s
        self._clock = clock
        self._holds: dict[str, _Hold] = {}
        self._held: defaultdict[str, int] = defaultdict(int)  # account → sum of its holds
        self._balances: dict[str, tuple[float, int]] = {}  # account → (loaded at, balance)
        self._changes = 0  # bumped whenever balances may have moved: a read begun before is not cached
        # requests whose hold went (usage applied, or released) in the last minutes: a spend
        # an edge reports after that must not hold their funds again
        self._finished: dict[str, float] = {}

    async def _balance(self, account_id: str) -> int:
        cached = self._balances.get(account_id)
        if cached is not None and self._clock() - cached[0] < self._balance_ttl_s:
            return cached[1]
        async with self._locks[account_id]:
            cached = self._balances.get(account_id)
            if cached is None or self._clock() - cached[0] >= self._balance_ttl_s:
                loaded_at, changes = self._clock(), self._changes
                async with self._sessions() as s:
                    balance = await s.scalar(select(wallets.c.balance_micros).where(wallets.c.account_id == account_id))
                cached = (loaded_at, int(balance or 0))
                if changes == self._changes:  # no batch was applied meanwhile
                    self._balances[account_id] = cached
        return cached[1]

    async def funds(self, account_id: str) -> Funds:
        return Funds(await self._balance(account_id), self._held.get(account_id, 0))

    async def reserve(self, account_id: str, request_id: str, amount_micros: int) -> Funds:
        if amount_micros < 0:
            raise InvalidRequest("a hold cannot be negative")
        while True:  # a batch applied while the balance was read: read it again
            changes = self._changes
            balance = await self._balance(account_id)
            if changes == self._changes:
                break
        # From here to the hold there is no await: the check and the hold are one step.
        funds = Funds(balance, self._held.get(account_id, 0))
        if funds.available_micros <= max(self._min, 0):
            raise self.insufficient(funds)
        if request_id not in self._holds:
            self._holds[request_id] = _Hold(account_id, amount_micros, self._clock() + self._hold_ttl_s)
            self._held[account_id] += amount_micros
        if len(self._locks) > 10_000:
            self._locks.clear()
        return Funds(0, 0)

    def _drop(self, request_id: str) -> _Hold | None:
        hold = self._holds.pop(request_id, None)
        if hold is not None:
            left = self._held[hold.account_id] - hold.amount_micros
            if left:
                self._held[hold.account_id] = left
            else:
                del self._held[hold.account_id]
        return hold

    async def release(self, request_id: str) -> None:
        self._drop(request_id)
        self._finished[request_id] = self._clock()

    async def expire(self) -> int:
        now = self._clock()
        expired = [rid for rid, h in self._holds.items() if h.expires_at <= now]
        for rid in expired:
            self._drop(rid)
        if len(self._balances) > 100_000:
            self._balances.clear()
        self._finished = {rid: at for rid, at in self._finished.items() if at > now - 2 * GRANT_GRACE_S}
        return len(expired)

    def settled(self, records: Iterable[UsageRecord]) -> None:
        # The debit is in the database now: the hold goes and the balance is read again, in
        # the same step, so no moment counts the request twice or not at all.
        self._changes += 1
        now = self._clock()
        for r in records:
            self._drop(r.request_id)
            self._finished[r.request_id] = now
            self._balances.pop(r.account_id, None)

    def grant(self, account_id: str, wanted_micros: int, smallest_micros: int) -> FundsGrant | None:
        # Called right after ``reserve`` succeeded, with no await since: the balance it read
        # is still the one the check used.
        cached = self._balances.get(account_id)
        if wanted_micros <= 0 or cached is None or self._grant_s <= 0:
            return None
        room = cached[1] - self._held.get(account_id, 0) - max(self._min, 0)
        micros = min(wanted_micros, room // GRANT_SHARE)
        if micros < max(smallest_micros, 1):
            return None
        grant_id = f"gr_{secrets.token_hex(8)}"
        self._holds[grant_id] = _Hold(account_id, micros, self._clock() + self._grant_s + GRANT_GRACE_S)
        self._held[account_id] += micros
        return FundsGrant(grant_id, micros, int(self._grant_s * 1000))

    def settle_grants(self, spent: Iterable[Spend], ended: Iterable[str]) -> None:
        # Each spend moves its amount from the grant's hold to a hold of its own request, so
        # the account's held sum never dips while the request is in flight.
        for s in spent:
            grant = self._holds.get(s.grant_id)
            if grant is None:  # ended or freed already: nothing holds for it any more
                continue
            amount = min(s.amount_micros, grant.amount_micros)
            grant.amount_micros -= amount
            self._held[grant.account_id] -= amount
            if s.request_id not in self._finished and s.request_id not in self._holds:
                self._holds[s.request_id] = _Hold(grant.account_id, amount, self._clock() + self._hold_ttl_s)
                self._held[grant.account_id] += amount
            if not self._held[grant.account_id]:
                del self._held[grant.account_id]
        for grant_id in ended:
            self._drop(grant_id)

    def forget(self, account_id: str) -> None:
        self._changes += 1
        self._balances.pop(account_id, None)
