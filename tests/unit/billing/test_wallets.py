"""Wallets and holds against a real database: what an account may still spend."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest

from faregate.errors import InsufficientBalance, InvalidRequest
from faregate.pb.events.v1.usage_pb2 import UsageRecord
from services.billing.ledger import Ledger
from services.billing.storage import Store
from services.billing.wallets import Wallets, month_bounds


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def account() -> str:
    return f"acc_{secrets.token_hex(6)}"


def rid() -> str:
    return f"req_{secrets.token_hex(8)}"


def usage(account_id: str, request_id: str, cost: int, hold_id: str = "", started_ms: int = 0) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        account_id=account_id,
        key_id="key_1",
        model="m",
        provider="p",
        provider_model="pm",
        endpoint="chat.completions",
        prompt_tokens=10,
        completion_tokens=5,
        cost_micros=cost,
        billable=True,
        status=UsageRecord.STATUS_OK,
        hold_id=hold_id,
        started_at_ms=started_ms,
    )


async def test_holds_count_against_what_is_available(store: Store) -> None:
    wallets, ledger = Wallets(store), Ledger(store)
    acc = account()
    await ledger.credit(acc, 100)
    await wallets.reserve(acc, f"{acc}-1", 60)
    await wallets.reserve(acc, f"{acc}-2", 60)  # 40 left was not below the minimum (0): admitted
    await wallets.reserve(acc, f"{acc}-2", 60)  # a retry places nothing more
    with pytest.raises(InsufficientBalance) as refused:
        await wallets.reserve(acc, f"{acc}-3", 1)
    assert refused.value.status == 402 and refused.value.error_type == "insufficient_balance"
    summary = await wallets.summary(acc)
    assert (summary.balance_micros, summary.held_micros, summary.available_micros) == (100, 120, -20)


async def test_applying_usage_releases_its_hold_in_the_same_transaction(store: Store) -> None:
    wallets, ledger = Wallets(store), Ledger(store)
    acc = account()
    await ledger.credit(acc, 1_000)
    r1, r2 = rid(), rid()
    await wallets.reserve(acc, r1, 300)
    await wallets.reserve(acc, r2, 300)
    await ledger.apply_usage([usage(acc, r1, 120, hold_id=r1)])
    summary = await wallets.summary(acc)
    assert (summary.balance_micros, summary.held_micros, summary.available_micros) == (880, 300, 580)
    await ledger.apply_usage([usage(acc, r1, 120, hold_id=r1)])  # redelivered: nothing moves
    assert (await wallets.summary(acc)).available_micros == 580
    assert await wallets.release(r2, acc) and not await wallets.release(r2, acc)
    assert (await wallets.summary(acc)).available_micros == 880


async def test_granted_credit_and_the_minimum(store: Store) -> None:
    acc = account()
    strict = Wallets(store, min_balance_micros=500)
    with pytest.raises(InsufficientBalance):
        await strict.reserve(acc, rid(), 10)
    await strict.set_credit_limit(acc, 600)
    await strict.reserve(acc, rid(), 10)
    assert (await strict.summary(acc)).available_micros == 590
    assert (await strict.summary(acc)).credit_limit_micros == 600
    for bad in (-1, 10**13):
        with pytest.raises(InvalidRequest):
            await strict.set_credit_limit(acc, bad)


async def test_a_hold_whose_request_never_reports_expires(store: Store) -> None:
    clock = Clock()
    wallets, ledger = Wallets(store, hold_ttl=60, clock=clock), Ledger(store)
    acc = account()
    await ledger.credit(acc, 100)
    await wallets.reserve(acc, rid(), 150)
    with pytest.raises(InsufficientBalance):
        await wallets.reserve(acc, rid(), 1)
    clock.now += 61
    assert (await wallets.summary(acc)).held_micros == 0
    await wallets.reserve(acc, rid(), 1)
    assert await wallets.sweep() >= 1
    assert (await wallets.summary(acc)).held_micros == 1


async def test_concurrent_reservations_never_overdraw_by_more_than_one_worst_case(
    store: Store,
) -> None:
    wallets, ledger = Wallets(store), Ledger(store)
    acc = account()
    await ledger.credit(acc, 100)
    results = await asyncio.gather(*(wallets.reserve(acc, rid(), 30) for _ in range(64)), return_exceptions=True)
    admitted = [r for r in results if r is None]
    refused = [r for r in results if isinstance(r, InsufficientBalance)]
    assert len(admitted) == 4 and len(refused) == 60  # 100 → 70 → 40 → 10 → -20, then refused
    assert (await wallets.summary(acc)).available_micros == -20


async def test_bad_reservations_are_refused(store: Store) -> None:
    wallets = Wallets(store)
    for acc, hold, amount in (("", "h", 1), ("acc_x", "", 1), ("acc_x", "h", 0), ("acc_x", "h", 10**15)):
        with pytest.raises(InvalidRequest):
            await wallets.reserve(acc, hold, amount)


async def test_this_months_use_counts_billable_tokens_since_the_first(store: Store) -> None:
    wallets, ledger = Wallets(store), Ledger(store)
    acc = account()
    start, _ = month_bounds(time.time())
    free = usage(acc, rid(), 0, started_ms=start + 1)
    free.billable = False
    await ledger.apply_usage(
        [usage(acc, rid(), 7, started_ms=start + 5), usage(acc, rid(), 9, started_ms=start - 5), free]
    )
    summary = await wallets.summary(acc)
    assert (summary.tokens_this_month, summary.cost_this_month_micros) == (15, 7)


def test_month_bounds_roll_over_the_year() -> None:
    start, nxt = month_bounds(1_796_083_200.5)  # 2026-12-01T00:00:00.5Z
    assert (start, nxt) == (1_796_083_200_000, 1_798_761_600_000)
