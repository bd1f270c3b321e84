"""The ledger against a real (SQLite) database migrated by Alembic."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faregate import db
from faregate.errors import InvalidRequest
from faregate.pb.events.v1.usage_pb2 import UsageRecord
from services.billing.ledger import Ledger


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'billing.db'}"
    await db.upgrade_async("billing", url)
    engine = db.make_engine(url)
    yield Ledger(db.make_sessionmaker(engine))
    await engine.dispose()


def usage(rid: str, account: str = "acc_1", cost: int = 100, billable: bool = True) -> UsageRecord:
    return UsageRecord(
        request_id=rid,
        account_id=account,
        key_id="key_1",
        model="m",
        provider="p",
        provider_model="pm",
        endpoint="chat.completions",
        prompt_tokens=3,
        completion_tokens=4,
        cost_micros=cost,
        billable=billable,
        status=UsageRecord.STATUS_OK,
    )


async def test_usage_is_applied_once_per_request_id(ledger: Ledger) -> None:
    await ledger.credit("acc_1", 10_000)
    first = await ledger.apply_usage([usage("r1"), usage("r2", cost=50), usage("r1")])
    again = await ledger.apply_usage([usage("r2", cost=50), usage("r3", cost=7)])
    assert (first.applied, first.duplicates) == (2, 1)
    assert (again.applied, again.duplicates) == (1, 1)
    wallet = await ledger.wallet("acc_1")
    assert wallet.balance_micros == 10_000 - 157
    assert wallet.entries == 4


async def test_balance_equals_the_sum_of_entries(ledger: Ledger) -> None:
    await ledger.credit("acc_2", 5_000, note="grant")
    await ledger.apply_usage([usage(f"q{i}", "acc_2", cost=i) for i in range(20)])
    await ledger.apply_usage([usage("free", "acc_2", cost=999, billable=False)])
    entries = await ledger.entries("acc_2", 1000)
    assert sum(e["amount_micros"] for e in entries) == (await ledger.wallet("acc_2")).balance_micros
    assert next(e for e in entries if e["request_id"] == "free")["amount_micros"] == 0


async def test_credit_is_idempotent_per_key_and_bounded(ledger: Ledger) -> None:
    w1, applied1 = await ledger.credit("acc_3", 1_000, idempotency_key="stripe:evt_1")
    w2, applied2 = await ledger.credit("acc_3", 1_000, idempotency_key="stripe:evt_1")
    assert applied1 and not applied2 and w2.balance_micros == w1.balance_micros == 1_000
    for bad in (0, 10**13):
        with pytest.raises(InvalidRequest):
            await ledger.credit("acc_3", bad)
    with pytest.raises(InvalidRequest):
        await ledger.credit("acc_3", 5, kind="usage")


async def test_accounts_do_not_mix(ledger: Ledger) -> None:
    await ledger.apply_usage([usage("a1", "acc_a", cost=10), usage("b1", "acc_b", cost=20)])
    assert (await ledger.wallet("acc_a")).balance_micros == -10
    assert (await ledger.wallet("acc_b")).balance_micros == -20
    assert [e["request_id"] for e in await ledger.entries("acc_a")] == ["a1"]
