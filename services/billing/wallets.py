"""Wallets and holds: may this account start a request that could cost up to X?

Available funds are the wallet's balance (every entry, granted credit included) minus the
holds of requests in flight. A request is refused with 402 when that is already below the
minimum threshold; otherwise it places a hold of its worst-case cost. A hold is removed in
the same transaction that applies its request's UsageRecord (the ledger), by the edge when
the request ends without an answer, or when it expires. So an account can overdraw by at
most one request's worst case: the one admitted while funds were still above the threshold.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, literal, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from faregate.errors import InsufficientBalance, InvalidRequest
from faregate.money import micros_to_usd
from services.billing.storage import holds, wallets


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Funds:
    balance_micros: int
    held_micros: int

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.held_micros


class Wallets:
    def __init__(
        self, sessions: async_sessionmaker[Any], *, min_balance_micros: int = 0, hold_ttl_s: float = 900.0
    ) -> None:
        self._sessions = sessions
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
            funds = await self.funds(account_id)
            raise InsufficientBalance(
                f"insufficient balance: {micros_to_usd(funds.available_micros):.6f} USD available "
                f"(balance {micros_to_usd(funds.balance_micros):.6f} minus "
                f"{micros_to_usd(funds.held_micros):.6f} held by requests in flight); top up to continue",
                code="insufficient_balance",
            )
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
