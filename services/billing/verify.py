"""`faregate ledger verify`: the ledger's invariants, checked against the database.

1. Every wallet's balance equals the sum of its account's entries (and no account has
   entries without a wallet).
2. Every usage entry matches exactly one UsageRecord (same account, amount = minus its
   cost when billable, else 0), and every UsageRecord has exactly one usage entry.
3. No hold outlives the usage record that should have released it.

Each check is one SQL statement, so it reads one consistent snapshot even while the
consumer is applying records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, case, func, or_, select

from faregate import db
from services.billing.ledger import KINDS
from services.billing.storage import Store, holds, ledger_entries, usage_records, wallets

MAX_LISTED = 50  # mismatches listed per check; all are counted


@dataclass
class Report:
    wallets: int = 0
    entries: int = 0
    usage_records: int = 0
    mismatches: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    def add(self, what: str, rows: list[Any]) -> None:
        self.mismatches += len(rows)
        self.details.extend(f"{what}: {tuple(r)}" for r in rows[:MAX_LISTED])


async def verify(store: Store) -> Report:
    e, u, w, h = ledger_entries.c, usage_records.c, wallets.c, holds.c
    report = Report()
    sums = select(e.account_id, func.sum(e.amount_micros).label("total")).group_by(e.account_id).subquery()
    async with store.read() as s:
        report.wallets = await s.scalar(select(func.count()).select_from(wallets)) or 0
        report.entries = await s.scalar(select(func.count()).select_from(ledger_entries)) or 0
        report.usage_records = await s.scalar(select(func.count()).select_from(usage_records)) or 0

        rows = await s.execute(
            select(w.account_id, w.balance_micros, sums.c.total)
            .select_from(wallets.outerjoin(sums, sums.c.account_id == w.account_id))
            .where(w.balance_micros != func.coalesce(sums.c.total, 0))
        )
        report.add("wallet balance != sum of entries (account, balance, sum)", list(rows))
        rows = await s.execute(
            select(sums.c.account_id, sums.c.total)
            .select_from(sums.outerjoin(wallets, w.account_id == sums.c.account_id))
            .where(w.account_id.is_(None), sums.c.total != 0)
        )
        report.add("entries without a wallet (account, sum)", list(rows))

        rows = await s.execute(select(e.id, e.kind).where(e.kind.not_in(KINDS)))
        report.add("entry of unknown kind (id, kind)", list(rows))
        expected = case((u.billable, -u.cost_micros), else_=0)
        rows = await s.execute(
            select(e.id, e.request_id, e.account_id, e.amount_micros)
            .select_from(ledger_entries.outerjoin(usage_records, u.request_id == e.request_id))
            .where(
                e.kind == "usage",
                or_(u.request_id.is_(None), u.account_id != e.account_id, e.amount_micros != expected),
            )
        )
        report.add("usage entry without its matching UsageRecord (id, request, account, amount)", list(rows))
        rows = await s.execute(
            select(e.request_id, func.count()).where(e.kind == "usage").group_by(e.request_id).having(func.count() > 1)
        )
        report.add("request with more than one usage entry (request, entries)", list(rows))
        rows = await s.execute(
            select(u.request_id, u.account_id)
            .select_from(usage_records.outerjoin(ledger_entries, and_(e.kind == "usage", e.request_id == u.request_id)))
            .where(e.id.is_(None))
        )
        report.add("UsageRecord without a usage entry (request, account)", list(rows))
        rows = await s.execute(
            select(h.id, h.account_id, h.amount_micros).select_from(holds.join(usage_records, u.hold_id == h.id))
        )
        report.add("hold not released by its applied UsageRecord (hold, account, amount)", list(rows))
    return report


async def check_database(url: str) -> Report:
    """Verify the ledger in the database at ``url`` (no migration is run)."""
    engine = db.make_engine(url)
    try:
        return await verify(Store(engine))
    finally:
        await engine.dispose()
