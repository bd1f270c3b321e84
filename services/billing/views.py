"""Read-side queries for the account views: ledger pages, request history, usage totals.

Every query is scoped to one account id (the caller's, established by the edge through
auth); request history holds metadata only. Cursors are opaque strings: the last row's
position, so pages stay stable while new rows arrive.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from faregate.errors import InvalidRequest
from services.billing.storage import ledger_entries, usage_records

MAX_PAGE = 500
GROUPS = ("model", "key", "day")


def month_start_ms(now: float | None = None) -> int:
    t = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    return int(datetime(t.year, t.month, 1, tzinfo=UTC).timestamp() * 1000)


def _page(limit: int) -> int:
    return max(1, min(limit or 50, MAX_PAGE))


class Views:
    def __init__(self, sessions: async_sessionmaker[Any]) -> None:
        self._sessions = sessions

    async def ledger_page(self, account_id: str, limit: int, cursor: str) -> tuple[list[dict[str, Any]], str]:
        q = select(ledger_entries).where(ledger_entries.c.account_id == account_id)
        if cursor:
            q = q.where(ledger_entries.c.id < _int_cursor(cursor))
        q = q.order_by(ledger_entries.c.id.desc()).limit(_page(limit) + 1)
        async with self._sessions() as s:
            rows = [dict(r._mapping) for r in (await s.execute(q)).all()]
        more = len(rows) > _page(limit)
        rows = rows[: _page(limit)]
        return rows, (str(rows[-1]["id"]) if more else "")

    async def requests_page(self, account_id: str, limit: int, cursor: str) -> tuple[list[dict[str, Any]], str]:
        c = usage_records.c
        q = select(usage_records).where(c.account_id == account_id)
        if cursor:
            at, _, rid = cursor.partition(":")
            q = q.where(
                or_(c.started_at_ms < _int_cursor(at), and_(c.started_at_ms == _int_cursor(at), c.request_id < rid))
            )
        q = q.order_by(c.started_at_ms.desc(), c.request_id.desc()).limit(_page(limit) + 1)
        async with self._sessions() as s:
            rows = [_billed(dict(r._mapping)) for r in (await s.execute(q)).all()]
        more = len(rows) > _page(limit)
        rows = rows[: _page(limit)]
        return rows, (f"{rows[-1]['started_at_ms']}:{rows[-1]['request_id']}" if more else "")

    async def usage(self, account_id: str, start_ms: int, end_ms: int, group_by: str) -> list[dict[str, Any]]:
        c = usage_records.c
        if group_by not in GROUPS:
            raise InvalidRequest(f"group_by must be one of {', '.join(GROUPS)}", param="group_by")
        if end_ms and start_ms and end_ms <= start_ms:
            raise InvalidRequest("end must be after start", param="end")
        key: Any = {"model": c.model, "key": c.key_id, "day": c.started_at_ms / 86_400_000}[group_by]
        if group_by == "day":
            key = func.floor(key)
        q = (
            select(
                key.label("g"),
                func.count().label("requests"),
                func.sum(c.prompt_tokens).label("p"),
                func.sum(c.completion_tokens).label("c"),
                # a test key's request carries its would-be cost but was never billed
                func.sum(case((c.billable.is_(True), c.cost_micros), else_=0)).label("cost"),
            )
            .where(c.account_id == account_id, c.started_at_ms >= start_ms)
            .group_by(key)
            .order_by(key)
        )
        if end_ms:
            q = q.where(c.started_at_ms < end_ms)
        async with self._sessions() as s:
            rows = (await s.execute(q)).all()
        out = []
        for r in rows:
            group = r.g
            if group_by == "day":
                group = datetime.fromtimestamp(int(group) * 86_400, tz=UTC).strftime("%Y-%m-%d")
            out.append(
                {
                    "group": str(group),
                    "requests": int(r.requests),
                    "prompt_tokens": int(r.p or 0),
                    "completion_tokens": int(r.c or 0),
                    "cost_micros": int(r.cost or 0),
                }
            )
        return out

    async def month(self, account_id: str) -> tuple[int, int]:
        """(billed micro-USD, tokens) this UTC month."""
        c = usage_records.c
        q = select(
            func.coalesce(func.sum(c.cost_micros), 0), func.coalesce(func.sum(c.prompt_tokens + c.completion_tokens), 0)
        ).where(c.account_id == account_id, c.started_at_ms >= month_start_ms(), c.billable.is_(True))
        async with self._sessions() as s:
            cost, tokens = (await s.execute(q)).one()
        return int(cost), int(tokens)


INT64_MAX = 2**63 - 1


def _billed(row: dict[str, Any]) -> dict[str, Any]:
    """A request as the account sees it: no cost where nothing was billed (a test key)."""
    if not row.get("billable", True):
        row["cost_micros"] = 0
    return row


def _int_cursor(text: str) -> int:
    """A cursor's integer part; out of the columns' 64-bit range is as invalid as not a number."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= INT64_MAX:
        raise InvalidRequest("invalid cursor", param="cursor")
    return value
