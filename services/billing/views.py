"""Read-only views of an account's metering: the request log and usage aggregates.

Metadata only: the request log has no column that could hold prompt or completion text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, or_, select

from faregate.errors import InvalidRequest
from services.billing import cursors
from services.billing.storage import Store, usage_records

MAX_SPAN_MS = 400 * 86_400_000  # a usage summary covers at most ~13 months
DAY_MS = 86_400_000
GROUPS = ("model", "key", "day")


@dataclass(frozen=True)
class RequestPage:
    requests: list[dict[str, Any]]
    next_cursor: str


@dataclass(frozen=True)
class UsageGroup:
    key: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int


class UsageViews:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def requests(self, account_id: str, limit: int = 20, cursor: str = "") -> RequestPage:
        """The account's requests, newest first (by start time, then request id)."""
        size = cursors.page_size(limit)
        u = usage_records.c
        q = select(usage_records).where(u.account_id == account_id)
        if cursor:
            ms, rid = cursors.decode("requests", cursor, 2)
            if not ms.isdigit():
                raise InvalidRequest("cursor is not one this list gave out", code="invalid_cursor", param="cursor")
            q = q.where(or_(u.started_at_ms < int(ms), and_(u.started_at_ms == int(ms), u.request_id < rid)))
        q = q.order_by(u.started_at_ms.desc(), u.request_id.desc()).limit(size + 1)
        async with self._store.read() as s:
            rows = [dict(r._mapping) for r in (await s.execute(q)).all()]
        more = len(rows) > size
        rows = rows[:size]
        last = rows[-1] if rows else None
        return RequestPage(
            rows, cursors.encode("requests", last["started_at_ms"], last["request_id"]) if more and last else ""
        )

    async def summarize(self, account_id: str, start_ms: int, end_ms: int, group_by: str) -> list[UsageGroup]:
        """Requests, tokens and cost per model, key or UTC day, for requests started in [start, end)."""
        if group_by not in GROUPS:
            raise InvalidRequest("group_by must be one of model, key, day", param="group_by")
        if start_ms < 0 or end_ms <= start_ms:
            raise InvalidRequest("start must be before end", param="start")
        if end_ms - start_ms > MAX_SPAN_MS:
            raise InvalidRequest("a usage summary covers at most 400 days", param="start")
        u = usage_records.c
        key: Any = {"model": u.model, "key": u.key_id, "day": u.started_at_ms // DAY_MS}[group_by]
        q = (
            select(
                key.label("k"),
                func.count().label("requests"),
                func.coalesce(func.sum(u.prompt_tokens), 0),
                func.coalesce(func.sum(u.completion_tokens), 0),
                func.coalesce(func.sum(u.cost_micros), 0),
            )
            .where(
                u.account_id == account_id,
                u.started_at_ms >= start_ms,
                u.started_at_ms < end_ms,
            )
            .group_by(key)
            .order_by(key)
        )
        async with self._store.read() as s:
            rows = (await s.execute(q)).all()
        return [
            UsageGroup(
                _day(int(k)) if group_by == "day" else str(k),
                int(n),
                int(p),
                int(c),
                int(cost),
            )
            for k, n, p, c, cost in rows
        ]


def _day(day_number: int) -> str:
    return datetime.fromtimestamp(day_number * 86_400, tz=UTC).strftime("%Y-%m-%d")
