"""The ledger: every movement of money is an entry with an idempotency key, and a wallet's
balance is the sum of its entries (kept in ``wallets`` in the same transaction).

Kinds: usage (negative), topup, credit_grant, refund, dispute, adjustment. Usage records
are applied exactly once per request id; applying one also releases its funds hold, in the
same transaction, so money held and money spent never count twice.
"""

from __future__ import annotations

import secrets
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from faregate.errors import InvalidRequest
from faregate.pb.events.v1.usage_pb2 import UsageRecord
from services.billing import cursors
from services.billing.storage import (
    Store,
    add_to_wallet,
    holds,
    insert_for,
    ledger_entries,
    usage_records,
    wallets,
)

MAX_CREDIT_MICROS = 1_000_000 * 1_000_000  # one million USD in one movement
KINDS = ("usage", "topup", "credit_grant", "refund", "dispute", "adjustment")
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


@dataclass(frozen=True)
class EntryPage:
    entries: list[dict[str, Any]]
    next_cursor: str


class Ledger:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def apply_usage(self, records: list[UsageRecord]) -> Applied:
        """Apply a batch of usage records in one transaction; already-applied ones are no-ops."""
        unique = {r.request_id: r for r in records}
        at = now_ms()
        dialect = self._store.dialect
        async with self._store.write() as s:
            inserted = await s.execute(
                insert_for(dialect)(usage_records)
                .on_conflict_do_nothing(index_elements=[usage_records.c.request_id])
                .returning(usage_records.c.request_id),
                [_usage_row(r) for r in unique.values()],
            )
            new = [unique[rid] for rid in inserted.scalars().all()]
            if new:
                await s.execute(
                    ledger_entries.insert(),
                    [
                        {
                            "account_id": r.account_id,
                            "kind": "usage",
                            "amount_micros": -r.cost_micros if r.billable else 0,
                            "idempotency_key": f"usage:{r.request_id}",
                            "request_id": r.request_id,
                            "note": r.model,
                            "created_at_ms": at,
                            "reference": None,
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
                hold_ids = [r.hold_id for r in new if r.hold_id]
                if hold_ids:
                    await s.execute(delete(holds).where(holds.c.id.in_(hold_ids)))
        return Applied(len(new), len(records) - len(new))

    async def credit(
        self,
        account_id: str,
        amount_micros: int,
        *,
        kind: str = "credit_grant",
        note: str = "",
        idempotency_key: str = "",
        reference: str | None = None,
    ) -> tuple[WalletView, bool]:
        """Add a signed amount to a wallet once per idempotency key. Returns (wallet, applied)."""
        async with self._store.write() as s:
            applied = await post(
                s,
                account_id,
                amount_micros,
                kind=kind,
                note=note,
                idempotency_key=idempotency_key,
                reference=reference,
            )
        return await self.wallet(account_id), applied

    async def wallet(self, account_id: str) -> WalletView:
        async with self._store.read() as s:
            balance = await s.scalar(select(wallets.c.balance_micros).where(wallets.c.account_id == account_id))
            count = await s.scalar(
                select(func.count()).select_from(ledger_entries).where(ledger_entries.c.account_id == account_id)
            )
        return WalletView(account_id, balance or 0, count or 0)

    async def entries(self, account_id: str, limit: int = 100, cursor: str = "") -> EntryPage:
        """The account's entries, newest first, a page at a time."""
        size = cursors.page_size(limit)
        q = select(ledger_entries).where(ledger_entries.c.account_id == account_id)
        if cursor:
            (before,) = cursors.decode("ledger", cursor, 1)
            if not before.isdigit():
                raise InvalidRequest("cursor is not one this list gave out", code="invalid_cursor", param="cursor")
            q = q.where(ledger_entries.c.id < int(before))
        q = q.order_by(ledger_entries.c.id.desc()).limit(size + 1)
        async with self._store.read() as s:
            rows = [dict(r._mapping) for r in (await s.execute(q)).all()]
        more = len(rows) > size
        rows = rows[:size]
        return EntryPage(rows, cursors.encode("ledger", rows[-1]["id"]) if more else "")


async def post(
    s: AsyncConnection,
    account_id: str,
    amount_micros: int,
    *,
    kind: str,
    note: str = "",
    idempotency_key: str = "",
    reference: str | None = None,
) -> bool:
    """Append one non-usage entry and move the wallet, inside the caller's transaction.

    Returns False (and changes nothing) when an entry with this idempotency key exists.
    """
    if kind not in KINDS or kind == "usage":
        raise InvalidRequest(f"unknown entry kind {kind!r}")
    if amount_micros == 0 or abs(amount_micros) > MAX_CREDIT_MICROS:
        raise InvalidRequest("amount must be non-zero and at most 1,000,000 USD", param="amount_usd")
    if not account_id:
        raise InvalidRequest("account_id is required", param="account_id")
    key = idempotency_key or f"{kind}:{secrets.token_hex(12)}"
    at = now_ms()
    dialect = s.dialect.name
    inserted = await s.scalar(
        insert_for(dialect)(ledger_entries)
        .values(
            account_id=account_id,
            kind=kind,
            amount_micros=amount_micros,
            idempotency_key=key,
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
        "hold_id": r.hold_id or None,
    }
