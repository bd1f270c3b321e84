"""The request log and usage aggregates: pages that never skip or repeat, sums that add up."""

from __future__ import annotations

import secrets

import pytest

from faregate.errors import InvalidRequest
from faregate.pb.events.v1.usage_pb2 import UsageRecord
from services.billing import cursors
from services.billing.ledger import Ledger
from services.billing.storage import Store
from services.billing.views import UsageViews

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


async def test_request_pages_cover_every_request_once_newest_first(store: Store) -> None:
    acc = f"acc_{secrets.token_hex(6)}"
    # Several requests share a start time: the cursor must break ties by request id.
    records = [record(acc, n, at=T0 + (n // 3) * 1000) for n in range(1, 24)]
    await Ledger(store).apply_usage(records)
    await Ledger(store).apply_usage([record(f"acc_{secrets.token_hex(6)}", 99)])  # another account
    views = UsageViews(store)
    seen: list[str] = []
    cursor = ""
    while True:
        page = await views.requests(acc, 5, cursor)
        seen += [r["request_id"] for r in page.requests]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    expected = [r.request_id for r in sorted(records, key=lambda r: (r.started_at_ms, r.request_id), reverse=True)]
    assert seen == expected


async def test_usage_is_summed_per_model_key_and_day(store: Store) -> None:
    acc = f"acc_{secrets.token_hex(6)}"
    await Ledger(store).apply_usage(
        [
            record(acc, 1, model="m1", key="key_a", at=T0 + 10),
            record(acc, 2, model="m1", key="key_b", at=T0 + DAY + 10),
            record(acc, 4, model="m2", key="key_a", at=T0 + DAY + 20),
            record(acc, 8, model="m2", key="key_a", at=T0 + 5 * DAY),  # outside the range below
        ]
    )
    views = UsageViews(store)
    by_model = await views.summarize(acc, T0, T0 + 2 * DAY, "model")
    assert [(g.key, g.requests, g.prompt_tokens, g.completion_tokens, g.cost_micros) for g in by_model] == [
        ("m1", 2, 3, 6, 9),
        ("m2", 1, 4, 8, 12),
    ]
    by_key = await views.summarize(acc, T0, T0 + 2 * DAY, "key")
    assert [(g.key, g.requests) for g in by_key] == [("key_a", 2), ("key_b", 1)]
    by_day = await views.summarize(acc, T0, T0 + 6 * DAY, "day")
    assert [(g.key, g.requests) for g in by_day] == [("2026-12-01", 1), ("2026-12-02", 2), ("2026-12-06", 1)]


async def test_bad_view_arguments_are_refused(store: Store) -> None:
    views = UsageViews(store)
    for args in ((T0, T0 + DAY, "hour"), (T0, T0, "day"), (T0, T0 + 500 * DAY, "day")):
        with pytest.raises(InvalidRequest):
            await views.summarize("acc_x", *args)
    for bad in ("garbage", cursors.encode("ledger", 5), cursors.encode("requests", "x", "y"), "%%%"):
        with pytest.raises(InvalidRequest) as err:
            await views.requests("acc_x", 5, bad)
        assert err.value.code == "invalid_cursor"
    with pytest.raises(InvalidRequest):
        await Ledger(store).entries("acc_x", 5, cursors.encode("requests", 1, "r"))
    with pytest.raises(InvalidRequest):
        await views.requests("acc_x", 5000)
