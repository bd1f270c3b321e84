"""Wallets and holds: what an account may still spend.

``available = balance + granted credit - in-flight holds``. Each admitted live request
places a hold of its worst-case cost (``reserve``), refused with 402 when ``available`` is
already below the minimum; the hold is released when the request's UsageRecord is applied
(in the ledger's transaction), cancelled by the edge when the request fails before the
upstream answered, and expires on its own after ``hold_ttl`` if its request never reports.

A reservation is one conditional ``INSERT … SELECT … WHERE available >= minimum``, made
after taking the wallet's lock (PostgreSQL: an upsert of its row, so the insert's snapshot
sees every earlier hold; SQLite: the single writer), so concurrent reservations of one
account are serialised and each sees the holds of the others: a burst can overdraw the
wallet by at most the worst case of the last request admitted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, String, bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from faregate.errors import InsufficientBalance, InvalidRequest, NotFound
from faregate.money import micros_to_usd
from services.billing.ledger import MAX_CREDIT_MICROS
from services.billing.storage import (
    Store,
    add_to_wallet,
    holds,
    insert_for,
    ledger_entries,
    usage_records,
    wallets,
)

log = logging.getLogger(__name__)

MAX_HOLD_MICROS = 100_000 * 1_000_000  # no single request may hold more than 100,000 USD


@dataclass(frozen=True)
class Summary:
    account_id: str
    balance_micros: int
    credit_limit_micros: int
    held_micros: int
    entries: int
    tokens_this_month: int
    cost_this_month_micros: int
    month_start_ms: int
    next_month_start_ms: int

    @property
    def available_micros(self) -> int:
        return self.balance_micros + self.credit_limit_micros - self.held_micros


def month_bounds(now: float) -> tuple[int, int]:
    """Start of this UTC month and of the next, in Unix milliseconds."""
    t = datetime.fromtimestamp(now, tz=UTC)
    start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return int(start.timestamp() * 1000), int(nxt.timestamp() * 1000)


class Wallets:
    def __init__(
        self,
        store: Store,
        *,
        min_balance_micros: int = 0,
        hold_ttl: float = 900.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._min = min_balance_micros
        self._ttl_ms = int(hold_ttl * 1000)
        self._clock = clock
        self._place = _place_hold(store.dialect, min_balance_micros)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def reserve(self, account_id: str, hold_id: str, amount_micros: int) -> None:
        """Place a hold (once per hold id), or raise InsufficientBalance."""
        if not account_id or not hold_id:
            raise InvalidRequest("account_id and request_id are required")
        if amount_micros <= 0 or amount_micros > MAX_HOLD_MICROS:
            raise InvalidRequest("hold amount must be positive and at most 100,000 USD", param="amount_micros")
        at = self._now_ms()
        dialect = self._store.dialect
        params = {
            "hold_id": hold_id,
            "account_id": account_id,
            "amount": amount_micros,
            "at": at,
            "expires": at + self._ttl_ms,
        }
        async with self._store.write() as s:
            if dialect != "sqlite":
                await s.execute(add_to_wallet(dialect, account_id, 0, at))  # the wallet's row lock
            result: Any = await s.execute(self._place, params)
            if result.rowcount:
                return
            if await s.scalar(select(holds.c.id).where(holds.c.id == hold_id)) is not None:
                return  # placed before: a retried Reserve
            available = await _available(s, account_id, at)
        raise InsufficientBalance(
            f"insufficient balance: {micros_to_usd(available):.6f} USD available (balance plus credit "
            f"minus requests in flight), below the minimum of {micros_to_usd(self._min):.6f} USD; "
            "top up with POST /v1/billing/checkout",
            code="insufficient_balance",
        )

    async def release(self, hold_id: str, account_id: str = "") -> bool:
        """Cancel a hold (idempotent). Returns whether there was one."""
        q = delete(holds).where(holds.c.id == hold_id)
        if account_id:
            q = q.where(holds.c.account_id == account_id)
        async with self._store.write() as s:
            result: Any = await s.execute(q)
        return bool(result.rowcount)

    async def sweep(self) -> int:
        """Delete expired holds (they already stopped counting when they expired)."""
        async with self._store.write() as s:
            result: Any = await s.execute(delete(holds).where(holds.c.expires_at_ms <= self._now_ms()))
        return int(result.rowcount or 0)

    async def sweep_forever(self, interval: float = 60.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                if swept := await self.sweep():
                    log.warning("%d funds holds expired without their usage being reported", swept)
            except Exception:
                log.exception("sweeping expired holds failed; trying again later")

    async def set_credit_limit(self, account_id: str, credit_limit_micros: int) -> None:
        if credit_limit_micros < 0 or credit_limit_micros > MAX_CREDIT_MICROS:
            raise InvalidRequest("credit limit must be between 0 and 1,000,000 USD", param="credit_limit_usd")
        at = self._now_ms()
        async with self._store.write() as s:
            await s.execute(add_to_wallet(self._store.dialect, account_id, 0, at))
            await s.execute(
                update(wallets)
                .where(wallets.c.account_id == account_id)
                .values(credit_limit_micros=credit_limit_micros)
            )

    async def summary(self, account_id: str) -> Summary:
        if not account_id:
            raise NotFound("no account given", code="account_not_found")
        at = self._now_ms()
        start, nxt = month_bounds(at / 1000)
        async with self._store.read() as s:
            wallet = (
                await s.execute(
                    select(wallets.c.balance_micros, wallets.c.credit_limit_micros).where(
                        wallets.c.account_id == account_id
                    )
                )
            ).one_or_none()
            held = await s.scalar(_held(account_id, at))
            entries = await s.scalar(
                select(func.count()).select_from(ledger_entries).where(ledger_entries.c.account_id == account_id)
            )
            month = (
                await s.execute(
                    select(
                        func.coalesce(func.sum(usage_records.c.prompt_tokens + usage_records.c.completion_tokens), 0),
                        func.coalesce(func.sum(usage_records.c.cost_micros), 0),
                    ).where(
                        usage_records.c.account_id == account_id,
                        usage_records.c.billable.is_(True),
                        usage_records.c.started_at_ms >= start,
                        usage_records.c.started_at_ms < nxt,
                    )
                )
            ).one()
        balance, credit = wallet if wallet is not None else (0, 0)
        return Summary(
            account_id=account_id,
            balance_micros=balance,
            credit_limit_micros=credit,
            held_micros=int(held or 0),
            entries=entries or 0,
            tokens_this_month=int(month[0]),
            cost_this_month_micros=int(month[1]),
            month_start_ms=start,
            next_month_start_ms=nxt,
        )


def _held(account_id: str, at_ms: int) -> Any:
    """What the account's unexpired holds add up to."""
    return select(func.coalesce(func.sum(holds.c.amount_micros), 0)).where(
        holds.c.account_id == account_id, holds.c.expires_at_ms > at_ms
    )


async def _available(s: AsyncConnection, account_id: str, at_ms: int) -> int:
    funds = await s.scalar(
        select(wallets.c.balance_micros + wallets.c.credit_limit_micros).where(wallets.c.account_id == account_id)
    )
    return int(funds or 0) - int(await s.scalar(_held(account_id, at_ms)) or 0)


def _place_hold(dialect: str, minimum: int) -> Any:
    """INSERT a hold only if what the account has left (before it) is not below ``minimum``.

    Built once; parameters: hold_id, account_id, amount, at, expires.
    """
    account = bindparam("account_id", type_=String)
    at = bindparam("at", type_=BigInteger)
    funds = select(wallets.c.balance_micros + wallets.c.credit_limit_micros).where(wallets.c.account_id == account)
    held = select(func.coalesce(func.sum(holds.c.amount_micros), 0)).where(
        holds.c.account_id == account, holds.c.expires_at_ms > at
    )
    return (
        insert_for(dialect)(holds)
        .from_select(
            ["id", "account_id", "amount_micros", "created_at_ms", "expires_at_ms"],
            select(
                bindparam("hold_id", type_=String),
                account,
                bindparam("amount", type_=BigInteger),
                at,
                bindparam("expires", type_=BigInteger),
            ).where(func.coalesce(funds.scalar_subquery(), 0) - held.scalar_subquery() >= minimum),
        )
        .on_conflict_do_nothing(index_elements=[holds.c.id])
    )
