"""Wallets and holds against a real database: what an account may still spend."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from faregate.errors import InsufficientBalance, InvalidRequest
from faregate.pb.events.v1.usage_pb2 import UsageRecord
from services.billing.ledger import Ledger
from services.billing.views import Views, month_start_ms
from services.billing.wallets import MemoryWallets, Spend, Wallets


@pytest.fixture(params=["database", "memory"])
def books(request: pytest.FixtureRequest, sessions: async_sessionmaker[Any]) -> Any:
    """(wallets, ledger) wired as billing wires them, for both ways of keeping holds."""

    def make(**kw: Any) -> tuple[Wallets, Ledger]:
        wallets = (Wallets if request.param == "database" else MemoryWallets)(sessions, **kw)
        return wallets, Ledger(sessions, on_applied=wallets.settled, on_credit=wallets.forget)

    return make


def account() -> str:
    return f"acc_{secrets.token_hex(6)}"


def rid() -> str:
    return f"req_{secrets.token_hex(8)}"


def usage(account_id: str, request_id: str, cost: int, started_ms: int = 0, billable: bool = True) -> UsageRecord:
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
        billable=billable,
        status=UsageRecord.STATUS_OK,
        started_at_ms=started_ms,
    )


async def test_holds_count_against_what_is_available(books: Any) -> None:
    wallets, ledger = books()
    acc = account()
    await ledger.credit(acc, 100)
    await wallets.reserve(acc, rid(), 60)
    await wallets.reserve(acc, rid(), 60)  # 40 left was still above the minimum (0): admitted
    with pytest.raises(InsufficientBalance) as refused:
        await wallets.reserve(acc, rid(), 1)
    assert refused.value.status == 402 and refused.value.type == "insufficient_balance"
    funds = await wallets.funds(acc)
    assert (funds.balance_micros, funds.held_micros, funds.available_micros) == (100, 120, -20)


async def test_applying_usage_releases_its_hold_in_the_same_transaction(books: Any) -> None:
    wallets, ledger = books()
    acc = account()
    await ledger.credit(acc, 1_000)
    r1, r2 = rid(), rid()
    await wallets.reserve(acc, r1, 300)
    await wallets.reserve(acc, r2, 300)
    await ledger.apply_usage([usage(acc, r1, 120)])
    funds = await wallets.funds(acc)
    assert (funds.balance_micros, funds.held_micros) == (880, 300)
    await ledger.apply_usage([usage(acc, r1, 120)])  # redelivered: nothing moves
    assert (await wallets.funds(acc)).available_micros == 580
    await wallets.release(r2)
    await wallets.release(r2)
    assert (await wallets.funds(acc)).available_micros == 880


async def test_the_minimum_is_configurable(books: Any) -> None:
    acc = account()
    strict, ledger = books(min_balance_micros=500)
    await ledger.credit(acc, 400)
    with pytest.raises(InsufficientBalance):
        await strict.reserve(acc, rid(), 10)
    await ledger.credit(acc, 200)
    await strict.reserve(acc, rid(), 10)
    assert (await strict.funds(acc)).available_micros == 590


async def test_a_hold_whose_request_never_reports_expires(books: Any) -> None:
    wallets, ledger = books(hold_ttl_s=0.3)
    acc = account()
    await ledger.credit(acc, 100)
    await wallets.reserve(acc, rid(), 150)
    with pytest.raises(InsufficientBalance):
        await wallets.reserve(acc, rid(), 1)
    for _ in range(100):  # bounded wait for the hold to lapse
        await wallets.expire()  # what billing's sweeper does every 30 s
        if (await wallets.funds(acc)).held_micros == 0:
            break
        await asyncio.sleep(0.05)
    assert (await wallets.funds(acc)).held_micros == 0
    await wallets.reserve(acc, rid(), 1)


async def test_concurrent_reservations_overdraw_by_at_most_one_worst_case(books: Any) -> None:
    wallets, ledger = books()
    acc = account()
    await ledger.credit(acc, 100)
    results = await asyncio.gather(*(wallets.reserve(acc, rid(), 30) for _ in range(64)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, InsufficientBalance)]
    assert len(refused) == 60, [
        r for r in results if isinstance(r, Exception) and not isinstance(r, InsufficientBalance)
    ]
    assert (await wallets.funds(acc)).available_micros == -20  # 100 → 70 → 40 → 10 → -20, then refused


async def test_a_negative_hold_is_refused(sessions: async_sessionmaker[Any]) -> None:
    with pytest.raises(InvalidRequest):
        await Wallets(sessions).reserve(account(), rid(), -1)


async def test_this_months_use_counts_billable_usage_since_the_first(sessions: async_sessionmaker[Any]) -> None:
    ledger, views = Ledger(sessions), Views(sessions)
    acc = account()
    start = month_start_ms(time.time())
    await ledger.apply_usage(
        [
            usage(acc, rid(), 7, started_ms=start + 5),
            usage(acc, rid(), 9, started_ms=start - 5),  # last month
            usage(acc, rid(), 0, started_ms=start + 1, billable=False),
        ]
    )
    assert await views.month(acc) == (7, 15)


async def test_memory_holds_reread_the_balance_after_a_batch_lands(sessions: async_sessionmaker[Any]) -> None:
    wallets = MemoryWallets(sessions, balance_ttl_s=3600)  # only a change may refresh the balance
    ledger = Ledger(sessions, on_applied=wallets.settled, on_credit=wallets.forget)
    acc = account()
    await ledger.credit(acc, 100)
    r1 = rid()
    await wallets.reserve(acc, r1, 90)
    assert (await wallets.funds(acc)).available_micros == 10
    await ledger.apply_usage([usage(acc, r1, 95)])  # cost more than held: the debit, not the hold, counts
    funds = await wallets.funds(acc)
    assert (funds.balance_micros, funds.held_micros) == (5, 0)
    await wallets.reserve(acc, rid(), 50)
    with pytest.raises(InsufficientBalance):
        await wallets.reserve(acc, rid(), 1)


async def test_a_funds_grant_holds_until_each_spend_is_a_hold_of_its_own(sessions: async_sessionmaker[Any]) -> None:
    """ADR 11: an edge spends a grant locally; billing turns each reported spend into the
    request's own hold (dropped when its usage lands), and frees what an ended grant has left.
    The account's held sum never dips while a request is in flight."""
    wallets = MemoryWallets(sessions)
    ledger = Ledger(sessions, on_applied=wallets.settled, on_credit=wallets.forget)
    acc = account()
    await ledger.credit(acc, 10_000)
    first = rid()
    await wallets.reserve(acc, first, 100)
    grant = wallets.grant(acc, 5_000, 100)
    assert grant is not None and grant.micros == (10_000 - 100) // 4  # at most a quarter of the room
    assert (await wallets.funds(acc)).held_micros == 100 + grant.micros
    spent, settled_early, released = rid(), rid(), rid()
    await ledger.apply_usage([usage(acc, settled_early, 40)])  # its usage landed before the report
    await wallets.release(released)  # and this one ended without an answer before it
    wallets.settle_grants(
        [Spend(grant.id, s, 100) for s in (spent, settled_early, released)],
        [],
    )
    assert (await wallets.funds(acc)).held_micros == 100 + grant.micros - 200  # only `spent` holds now
    wallets.settle_grants([], [grant.id])
    assert (await wallets.funds(acc)).held_micros == 200  # `first` and `spent`
    await ledger.apply_usage([usage(acc, first, 60), usage(acc, spent, 70)])
    funds = await wallets.funds(acc)
    assert (funds.balance_micros, funds.held_micros) == (10_000 - 40 - 60 - 70, 0)
    wallets.settle_grants([Spend(grant.id, rid(), 100)], [grant.id])  # late and ended: nothing to hold
    assert (await wallets.funds(acc)).held_micros == 0


async def test_no_grant_without_room_nor_with_database_holds(sessions: async_sessionmaker[Any]) -> None:
    wallets = MemoryWallets(sessions)
    ledger = Ledger(sessions, on_applied=wallets.settled, on_credit=wallets.forget)
    acc = account()
    await ledger.credit(acc, 1_000)
    await wallets.reserve(acc, rid(), 900)
    assert wallets.grant(acc, 1_000, 100) is None  # a quarter of the 100 left is less than one request
    assert wallets.grant(acc, 0, 1) is None  # none asked for
    database = Wallets(sessions)
    await database.reserve(acc, rid(), 1)
    assert database.grant(acc, 1_000, 1) is None
