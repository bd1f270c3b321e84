"""The request log, ledger pages and usage aggregates: pages that never skip or repeat."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from faregate.errors import InvalidRequest
from faregate.pb.events.v1.usage_pb2 import UsageRecord
from services.billing.ledger import Ledger
from services.billing.views import Views

DAY = 86_400_000
T0 = 1_796_083_200_000  # 2026-12-01T00:00:00Z


def record(acc: str, n: int, *, model: str = "m1", key: str = "key_a", at: int = T0) -> UsageRecord:
    return UsageRecord(
        request_id=f"req_{n:04d}_{secrets.token_hex(4)}",
        account_id=acc,
        key_id=key,
        model=model,
        provider="p",
        provider_model="pm",
        endpoint="chat.completions",
        prompt_tokens=n,
        completion_tokens=2 * n,
        cost_micros=3 * n,
        billable=True,
        status=UsageRecord.STATUS_OK,
        started_at_ms=at,
    )


async def test_request_pages_cover_every_request_once_newest_first(sessions: async_sessionmaker[Any]) -> None:
    acc = f"acc_{secrets.token_hex(6)}"
    # Several requests share a start time: the cursor must break ties by request id.
    records = [record(acc, n, at=T0 + (n // 3) * 1000) for n in range(1, 24)]
    await Ledger(sessions).apply_usage(records)
    await Ledger(sessions).apply_usage([record(f"acc_{secrets.token_hex(6)}", 99)])  # another account
    views = Views(sessions)
    seen: list[str] = []
    cursor = ""
    while True:
        rows, cursor = await views.requests_page(acc, 5, cursor)
        seen += [r["request_id"] for r in rows]
        if not cursor:
            break
    expected = [r.request_id for r in sorted(records, key=lambda r: (r.started_at_ms, r.request_id), reverse=True)]
    assert seen == expected


async def test_ledger_pages_cover_every_entry_once_newest_first(sessions: async_sessionmaker[Any]) -> None:
    acc = f"acc_{secrets.token_hex(6)}"
    ledger = Ledger(sessions)
    for i in range(1, 8):
        await ledger.credit(acc, i, note=str(i))
    seen, cursor = [], ""
    while True:
        rows, cursor = await Views(sessions).ledger_page(acc, 3, cursor)
        seen += [r["note"] for r in rows]
        if not cursor:
            break
    assert seen == [str(i) for i in range(7, 0, -1)]


async def test_usage_is_summed_per_model_key_and_day(sessions: async_sessionmaker[Any]) -> None:
    acc = f"acc_{secrets.token_hex(6)}"
    await Ledger(sessions).apply_usage(
        [
            record(acc, 1, model="m1", key="key_a", at=T0 + 10),
            record(acc, 2, model="m1", key="key_b", at=T0 + DAY + 10),
            record(acc, 4, model="m2", key="key_a", at=T0 + DAY + 20),
            record(acc, 8, model="m2", key="key_a", at=T0 + 5 * DAY),  # outside the range below
        ]
    )
    views = Views(sessions)
    by_model = await views.usage(acc, T0, T0 + 2 * DAY, "model")
    assert [
        (g["group"], g["requests"], g["prompt_tokens"], g["completion_tokens"], g["cost_micros"]) for g in by_model
    ] == [
        ("m1", 2, 3, 6, 9),
        ("m2", 1, 4, 8, 12),
    ]
    by_key = await views.usage(acc, T0, T0 + 2 * DAY, "key")
    assert [(g["group"], g["requests"]) for g in by_key] == [("key_a", 2), ("key_b", 1)]
    by_day = await views.usage(acc, T0, T0 + 6 * DAY, "day")
    assert [(g["group"], g["requests"]) for g in by_day] == [("2026-12-01", 1), ("2026-12-02", 2), ("2026-12-06", 1)]


async def test_bad_view_arguments_are_refused(sessions: async_sessionmaker[Any]) -> None:
    views = Views(sessions)
    for args in ((T0, T0 + DAY, "hour"), (T0 + DAY, T0, "day")):
        with pytest.raises(InvalidRequest):
            await views.usage("acc_x", *args)
    for bad in ("garbage", "x:y"):
        with pytest.raises(InvalidRequest):
            await views.requests_page("acc_x", 5, bad)
        with pytest.raises(InvalidRequest):
            await views.ledger_page("acc_x", 5, bad)


@pytest.mark.parametrize("cursor", ["99999999999999999999", "-1", "9223372036854775808"])
async def test_a_ledger_cursor_out_of_range_is_invalid_not_a_crash(
    sessions: async_sessionmaker[Any], cursor: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        await Views(sessions).ledger_page(f"acc_{secrets.token_hex(6)}", 10, cursor)
    assert info.value.param == "cursor"


async def test_a_request_cursor_out_of_range_is_invalid_not_a_crash(sessions: async_sessionmaker[Any]) -> None:
    with pytest.raises(InvalidRequest) as info:
        await Views(sessions).requests_page(f"acc_{secrets.token_hex(6)}", 10, "99999999999999999999:x")
    assert info.value.param == "cursor"


async def test_requests_never_billed_show_no_cost(sessions: async_sessionmaker[Any]) -> None:
    acc = f"acc_{secrets.token_hex(6)}"
    billed = record(acc, 5, model="billed")
    unbilled = record(acc, 7, model="unbilled")
    unbilled.billable = False  # a test key's request: its would-be cost is never charged
    await Ledger(sessions).apply_usage([billed, unbilled])
    views = Views(sessions)
    rows, _ = await views.requests_page(acc, 10, "")
    assert {r["model"]: r["cost_micros"] for r in rows} == {"billed": 15, "unbilled": 0}
    groups = await views.usage(acc, 0, 0, "model")
    assert {g["group"]: g["cost_micros"] for g in groups} == {"billed": 15, "unbilled": 0}
