"""`faregate ledger verify`: silent on a sound ledger, loud (exit 1) on every kind of mismatch."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, update

from faregate import db
from faregate.pb.events.v1.usage_pb2 import UsageRecord
from services.billing.ledger import Ledger
from services.billing.storage import ledger_entries, usage_records, wallets
from services.billing.verify import verify


@pytest.fixture
async def fresh(tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'billing.db'}"
    await db.upgrade_async("billing", url)
    engine = db.make_engine(url)
    store = db.make_sessionmaker(engine)
    ledger = Ledger(store)
    await ledger.credit("acc_a", 1_000)
    await ledger.apply_usage([_usage("acc_a", f"r{i}", 10 + i) for i in range(5)])
    await ledger.apply_usage([_usage("acc_b", "rb", 0, billable=False)])
    yield url, store
    await engine.dispose()


def _usage(acc: str, rid: str, cost: int, billable: bool = True) -> UsageRecord:
    return UsageRecord(
        request_id=rid,
        account_id=acc,
        key_id="k",
        model="m",
        provider="p",
        provider_model="pm",
        endpoint="chat.completions",
        cost_micros=cost,
        billable=billable,
    )


def cli(url: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FAREGATE_DATABASE_URL": url, "FAREGATE_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "faregate.cli", "ledger", "verify"], env=env, capture_output=True, text=True, timeout=60
    )


async def test_a_sound_ledger_verifies(fresh: tuple[str, Any], tmp_path: Path) -> None:
    url, store = fresh
    report = await verify(store)
    assert report.ok, report.problems
    assert (report.accounts, report.entries, report.usage_records) == (2, 7, 6)
    done = cli(url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert " 0 mismatches" in done.stdout


@pytest.mark.parametrize(
    "tamper",
    [
        update(wallets).where(wallets.c.account_id == "acc_a").values(balance_micros=wallets.c.balance_micros + 1),
        update(ledger_entries).where(ledger_entries.c.request_id == "r1").values(amount_micros=-1),
        update(ledger_entries).where(ledger_entries.c.request_id == "r2").values(account_id="acc_b"),
        delete(usage_records).where(usage_records.c.request_id == "r3"),
        delete(ledger_entries).where(ledger_entries.c.request_id == "rb"),
        insert(ledger_entries).values(
            account_id="acc_c",
            kind="usage",
            amount_micros=0,
            idempotency_key="x",
            request_id="r4",
            note="",
            created_at_ms=0,
        ),
    ],
    ids=[
        "balance",
        "usage-amount",
        "usage-account",
        "record-missing",
        "entry-missing",
        "usage-twice",
    ],
)
async def test_every_mismatch_is_found(fresh: tuple[str, Any], tamper: Any) -> None:
    _, store = fresh
    async with store.begin() as s:
        await s.execute(tamper)
    report = await verify(store)
    assert not report.ok and report.problems


async def test_the_command_exits_non_zero_on_a_mismatch(fresh: tuple[str, Any], tmp_path: Path) -> None:
    url, store = fresh
    async with store.begin() as s:
        await s.execute(update(wallets).where(wallets.c.account_id == "acc_a").values(balance_micros=5))
    done = cli(url, tmp_path)
    assert done.returncode == 1
    assert " 1 mismatches" in done.stdout and "MISMATCH acc_a" in done.stderr
