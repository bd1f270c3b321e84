"""`faregate ledger verify`: the ledger's invariants, checked against the database.

1. Every wallet's balance equals the sum of its account's ledger entries (and an account
   with entries has a wallet).
2. Every usage entry matches exactly one usage record (same request, amount = minus its
   cost when billable, 0 otherwise), and every usage record has exactly one usage entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from faregate.values import EntryKind
from services.billing.storage import ledger_entries, usage_records, wallets


@dataclass
class Report:
    accounts: int = 0
    entries: int = 0
    usage_records: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def verify(sessions: async_sessionmaker[Any]) -> Report:
    report = Report()
    async with sessions() as s:
        sums = dict(
            (
                await s.execute(
                    select(ledger_entries.c.account_id, func.sum(ledger_entries.c.amount_micros)).group_by(
                        ledger_entries.c.account_id
                    )
                )
            ).all()
        )
        balances = dict((await s.execute(select(wallets.c.account_id, wallets.c.balance_micros))).all())
        report.accounts = len(set(sums) | set(balances))
        report.entries = int(await s.scalar(select(func.count()).select_from(ledger_entries)) or 0)
        for account in sorted(set(sums) | set(balances)):
            total, balance = int(sums.get(account) or 0), balances.get(account)
            if balance is None and total != 0:
                report.problems.append(f"{account}: entries sum to {total} µUSD but there is no wallet")
            elif balance is not None and int(balance) != total:
                report.problems.append(f"{account}: wallet says {balance} µUSD, entries sum to {total} µUSD")

        usage_entries: dict[str, list[int]] = {}
        for rid, amount in (
            await s.execute(
                select(ledger_entries.c.request_id, ledger_entries.c.amount_micros).where(
                    ledger_entries.c.kind == EntryKind.USAGE.value
                )
            )
        ).all():
            usage_entries.setdefault(rid, []).append(int(amount))
        records = {
            rid: (int(cost), bool(billable))
            for rid, cost, billable in (
                await s.execute(
                    select(usage_records.c.request_id, usage_records.c.cost_micros, usage_records.c.billable)
                )
            ).all()
        }
        report.usage_records = len(records)
    for rid, amounts in sorted(usage_entries.items()):
        if len(amounts) != 1:
            report.problems.append(f"request {rid}: {len(amounts)} usage entries")
        if rid not in records:
            report.problems.append(f"request {rid}: usage entry without a usage record")
            continue
        cost, billable = records[rid]
        expected = -cost if billable else 0
        if amounts[0] != expected:
            report.problems.append(f"request {rid}: entry {amounts[0]} µUSD, record says {expected} µUSD")
    for rid in sorted(set(records) - set(usage_entries)):
        report.problems.append(f"request {rid}: usage record without a ledger entry")
    return report
