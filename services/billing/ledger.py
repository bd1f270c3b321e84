"""The ledger: every movement of money is an entry with an idempotency key, and a wallet's
balance is the sum of its entries (kept in ``wallets`` in the same transaction).

Kinds: usage (negative), topup, credit_grant, refund, dispute, adjustment.
"""

from __future__ import annotations

import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from faregate.errors import InvalidRequest
from faregate.pb.events.v1.usage_pb2 import UsageRecord
from faregate.values import EntryKind
from services.billing.storage import add_to_wallet, holds, insert_for, ledger_entries, usage_records, wallets

MAX_CREDIT_MICROS = 1_000_000 * 1_000_000  # one million USD in one movement
_STATUS = {v: k.removeprefix("STATUS_").lower() for k, v in UsageRecord.Status.items()}


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Applied:
    applied: int
    duplicates: int


@dataclass(frozen=True)
class WalletView:
    account_id: str
    balance_micros: int
    entries: int


class Ledger:
    def __init__(
        self,
        sessions: async_sessionmaker[Any],
        on_applied: Callable[[list[UsageRecord]], None] | None = None,
        on_credit: Callable[[str], None] | None = None,
    ) -> None:
        self._sessions = sessions
        # told after each commit: a usage batch (to drop its holds), a credit (its account)
        self._on_applied = on_applied
        self._on_credit = on_credit

    async def apply_usage(self, records: list[UsageRecord]) -> Applied:
        """Apply a batch of usage records in one transaction; already-applied ones are no-ops."""
        unique = {r.request_id: r for r in records}
        at = now_ms()
        async with self._sessions.begin() as s:
            dialect = s.bind.dialect.name
            seen = set(
                (
                    await s.scalars(
                        select(usage_records.c.request_id).where(usage_records.c.request_id.in_(list(unique)))
                    )
                ).all()
            )
            new = [r for rid, r in unique.items() if rid not in seen]
            if new:
                await s.execute(usage_records.insert(), [_usage_row(r) for r in new])
                await s.execute(
                    ledger_entries.insert(),
                    [
                        {
                            "account_id": r.account_id,
                            "kind": EntryKind.USAGE.value,
                            "amount_micros": -r.cost_micros if r.billable else 0,
                            "idempotency_key": f"usage:{r.request_id}",
                            "request_id": r.request_id,
                            "note": r.model,
                            "created_at_ms": at,
                        }
                        for r in new
                    ],
                )
                debits: dict[str, int] = defaultdict(int)
                for r in new:
                    if r.billable and r.cost_micros:
                        debits[r.account_id] += r.cost_micros
                for account_id, amount in sorted(debits.items()):
                    await s.execute(add_to_wallet(dialect, account_id, -amount, at))
            # the requests are accounted for: their holds go in the same transaction
            await s.execute(delete(holds).where(holds.c.request_id.in_(list(unique))))
        if self._on_applied is not None:
            self._on_applied(records)
        return Applied(len(new), len(records) - len(new))

    async def credit(
        self,
        account_id: str,
        amount_micros: int,
        *,
        kind: EntryKind = EntryKind.CREDIT_GRANT,
        note: str = "",
        idempotency_key: str = "",
    ) -> tuple[WalletView, bool]:
        """Add a signed amount to a wallet once per idempotency key. Returns (wallet, applied)."""
        _check(kind, amount_micros)
        key = idempotency_key or f"{kind}:{secrets.token_hex(12)}"
        at = now_ms()
        async with self._sessions.begin() as s:
            exists = await s.scalar(select(ledger_entries.c.id).where(ledger_entries.c.idempotency_key == key))
            if exists is None:
                await s.execute(
                    ledger_entries.insert().values(
                        account_id=account_id,
                        kind=kind.value,
                        amount_micros=amount_micros,
                        idempotency_key=key,
                        request_id=None,
                        note=note[:400],
                        created_at_ms=at,
                    )
                )
                await s.execute(add_to_wallet(s.bind.dialect.name, account_id, amount_micros, at))
        if self._on_credit is not None:
            self._on_credit(account_id)
        return await self.wallet(account_id), exists is None

    async def wallet(self, account_id: str) -> WalletView:
        async with self._sessions() as s:
            balance = await s.scalar(select(wallets.c.balance_micros).where(wallets.c.account_id == account_id))
            count = await s.scalar(
                select(func.count()).select_from(ledger_entries).where(ledger_entries.c.account_id == account_id)
            )
        return WalletView(account_id, balance or 0, count or 0)

    async def entries(self, account_id: str, limit: int = 100) -> list[dict[str, Any]]:
        q = (
            select(ledger_entries)
            .where(ledger_entries.c.account_id == account_id)
            .order_by(ledger_entries.c.id.desc())
            .limit(max(1, min(limit, 1000)))
        )
        async with self._sessions() as s:
            return [dict(r._mapping) for r in (await s.execute(q)).all()]


def _usage_row(r: UsageRecord) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "account_id": r.account_id,
        "key_id": r.key_id,
        "model": r.model,
        "provider": r.provider,
        "provider_model": r.provider_model,
        "endpoint": r.endpoint,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "estimated": r.estimated,
        "cost_micros": r.cost_micros,
        "billable": r.billable,
        "status": _STATUS.get(r.status, "unspecified"),
        "stream": r.stream,
        "started_at_ms": r.started_at_ms,
        "latency_ms": r.latency_ms,
        "ttft_ms": r.ttft_ms,
    }


def _check(kind: EntryKind, amount_micros: int) -> None:
    if kind == EntryKind.USAGE:  # usage entries come from the usage stream only
        raise InvalidRequest(f"unknown entry kind {kind!r}")
    if amount_micros == 0 or abs(amount_micros) > MAX_CREDIT_MICROS:
        raise InvalidRequest("amount must be non-zero and at most 1,000,000 USD", param="amount_usd")


async def post(
    s: AsyncSession,
    account_id: str,
    amount_micros: int,
    *,
    kind: EntryKind,
    idempotency_key: str,
    note: str = "",
    reference: str | None = None,
) -> bool:
    """Append one non-usage entry and move the wallet, inside the caller's transaction.

    Returns False (and changes nothing) when an entry with this idempotency key exists, also
    when another transaction inserts it concurrently (the insert is ON CONFLICT DO NOTHING).
    """
    _check(kind, amount_micros)
    if not account_id or not idempotency_key:
        raise InvalidRequest("account_id and idempotency_key are required")
    at = now_ms()
    dialect = s.get_bind().dialect.name
    inserted = await s.scalar(
        insert_for(dialect)(ledger_entries)
        .values(
            account_id=account_id,
            kind=kind.value,
            amount_micros=amount_micros,
            idempotency_key=idempotency_key,
            request_id=None,
            note=note[:400],
            created_at_ms=at,
            reference=reference,
        )
        .on_conflict_do_nothing(index_elements=[ledger_entries.c.idempotency_key])
        .returning(ledger_entries.c.id)
    )
    if inserted is None:
        return False
    await s.execute(add_to_wallet(dialect, account_id, amount_micros, at))
    return True
