"""The account's money, scoped by the caller's API key: wallet, transactions, usage,
request log, balance and quota, and Stripe top-ups. Plus the admin's granted credit.

Every route identifies the key first (auth ``Identify``: no rate limits counted) and asks
billing about that key's account only; lists are cursor-paginated (``?limit=&cursor=``,
answered with ``has_more`` and ``next_cursor``). Nothing here carries prompt or completion text.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import Field

from faregate.errors import Forbidden, InvalidRequest
from faregate.money import micros_to_usd, usd_to_micros
from faregate.pb.auth.v1 import auth_pb2
from faregate.pb.billing.v1 import billing_pb2
from services.edge.clients import unary
from services.edge.context import edge
from services.edge.routes.admin import Body, parse, require_admin
from services.edge.routes.keys import caller
from services.edge.routes.responses import json_response

router = APIRouter()
admin_router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])

PAGE = Query(default=20, ge=1, le=100)
RECENT = 10


class Checkout(Body):
    amount_usd: float = Field(gt=0, le=10_000)
    success_url: str = Field(min_length=1, max_length=2048)
    cancel_url: str = Field(min_length=1, max_length=2048)


class Portal(Body):
    return_url: str = Field(min_length=1, max_length=2048)


class CreditLimit(Body):
    credit_limit_usd: float = Field(ge=0, le=1_000_000)


def wallet_json(w: billing_pb2.Wallet) -> dict[str, Any]:
    return {
        "account_id": w.account_id,
        "currency": "USD",
        "balance_usd": micros_to_usd(w.balance_micros),
        "credit_limit_usd": micros_to_usd(w.credit_limit_micros),
        "held_usd": micros_to_usd(w.held_micros),
        "available_usd": micros_to_usd(w.available_micros),
    }


def request_json(r: billing_pb2.RequestRecord) -> dict[str, Any]:
    return {
        "id": r.request_id,
        "object": "request",
        "created": r.started_at_ms // 1000,
        "key_id": r.key_id,
        "model": r.model,
        "provider": r.provider,
        "endpoint": r.endpoint,
        "stream": r.stream,
        "status": r.status,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "tokens_estimated": r.estimated,
        "cost_usd": micros_to_usd(r.cost_micros) if r.billable else 0.0,
        "billable": r.billable,
        "latency_ms": r.latency_ms,
        "time_to_first_token_ms": r.ttft_ms or None,
    }


def page_json(data: list[dict[str, Any]], next_cursor: str) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": bool(next_cursor), "next_cursor": next_cursor or None}


@router.get("/v1/billing")
async def billing_summary(request: Request) -> Response:
    me = await caller(request)
    billing = edge(request).clients.billing
    wallet, recent = await asyncio.gather(
        unary(billing.GetWallet, billing_pb2.GetWalletRequest(account_id=me.account_id)),
        unary(billing.ListRequests, billing_pb2.ListRequestsRequest(account_id=me.account_id, limit=RECENT)),
    )
    return json_response(
        {
            "object": "billing",
            **wallet_json(wallet),
            "this_month": {
                "tokens": wallet.tokens_this_month,
                "cost_usd": micros_to_usd(wallet.cost_this_month_micros),
            },
            "recent_requests": [request_json(r) for r in recent.requests],
        }
    )


@router.get("/v1/billing/transactions")
async def transactions(request: Request, limit: int = PAGE, cursor: str = "") -> Response:
    me = await caller(request)
    page = await unary(
        edge(request).clients.billing.ListLedger,
        billing_pb2.ListLedgerRequest(account_id=me.account_id, limit=limit, cursor=cursor),
    )
    data = [
        {
            "id": f"txn_{e.id}",
            "object": "transaction",
            "type": e.kind,
            "amount_usd": micros_to_usd(e.amount_micros),
            "request_id": e.request_id or None,
            "description": e.note,
            "created": e.created_at_ms // 1000,
        }
        for e in page.entries
    ]
    return json_response(page_json(data, page.next_cursor))


@router.get("/v1/requests")
async def requests_log(request: Request, limit: int = PAGE, cursor: str = "") -> Response:
    me = await caller(request)
    page = await unary(
        edge(request).clients.billing.ListRequests,
        billing_pb2.ListRequestsRequest(account_id=me.account_id, limit=limit, cursor=cursor),
    )
    return json_response(page_json([request_json(r) for r in page.requests], page.next_cursor))


@router.get("/v1/usage")
async def usage(request: Request, start: str = "", end: str = "", group_by: str = "day") -> Response:
    me = await caller(request)
    now = time.time()
    end_ms = parse_time(end, "end") if end else int(now * 1000)
    start_ms = parse_time(start, "start") if start else _month_start_ms(now)
    reply = await unary(
        edge(request).clients.billing.SummarizeUsage,
        billing_pb2.SummarizeUsageRequest(
            account_id=me.account_id, start_ms=start_ms, end_ms=end_ms, group_by=group_by
        ),
    )
    field = {"model": "model", "key": "key_id", "day": "day"}.get(group_by, group_by)
    rows = [
        {
            field: g.key,
            "requests": g.requests,
            "prompt_tokens": g.prompt_tokens,
            "completion_tokens": g.completion_tokens,
            "total_tokens": g.prompt_tokens + g.completion_tokens,
            "cost_usd": micros_to_usd(g.cost_micros),
        }
        for g in reply.groups
    ]
    return json_response(
        {
            "object": "usage",
            "group_by": group_by,
            "start": start_ms // 1000,
            "end": end_ms // 1000,
            "data": rows,
            "total": {
                "requests": sum(g.requests for g in reply.groups),
                "prompt_tokens": sum(g.prompt_tokens for g in reply.groups),
                "completion_tokens": sum(g.completion_tokens for g in reply.groups),
                "cost_usd": micros_to_usd(sum(g.cost_micros for g in reply.groups)),
            },
        }
    )


@router.get("/v1/balance")
async def balance(request: Request) -> Response:
    me = await caller(request)
    wallet = await unary(
        edge(request).clients.billing.GetWallet, billing_pb2.GetWalletRequest(account_id=me.account_id)
    )
    quota = me.monthly_token_quota if me.HasField("monthly_token_quota") else None
    return json_response(
        {
            "object": "balance",
            "balance": micros_to_usd(wallet.balance_micros),
            "available": micros_to_usd(wallet.available_micros),
            "currency": "USD",
            "plan": me.plan,
            "used_this_month": wallet.tokens_this_month,
            "quota_this_month": quota,
            "quota_remaining": max(quota - wallet.tokens_this_month, 0) if quota is not None else None,
            "quota_reset_at": wallet.next_month_start_ms // 1000,
        }
    )


@router.post("/v1/billing/checkout")
async def checkout(request: Request) -> Response:
    me = await _payer(request)
    body = await parse(request, Checkout)
    link = await unary(
        edge(request).clients.billing.CreateCheckout,
        billing_pb2.CreateCheckoutRequest(
            account_id=me.account_id,
            amount_micros=usd_to_micros(body.amount_usd),
            success_url=body.success_url,
            cancel_url=body.cancel_url,
        ),
    )
    return json_response({"object": "checkout.session", "id": link.id, "url": link.url, "amount_usd": body.amount_usd})


@router.post("/v1/billing/portal")
async def portal(request: Request) -> Response:
    me = await _payer(request)
    body = await parse(request, Portal)
    link = await unary(
        edge(request).clients.billing.CreatePortal,
        billing_pb2.CreatePortalRequest(account_id=me.account_id, return_url=body.return_url),
    )
    return json_response({"object": "billing_portal.session", "id": link.id, "url": link.url})


@admin_router.put("/accounts/{account_id}/credit_limit")
async def set_credit_limit(request: Request, account_id: str) -> Response:
    body = await parse(request, CreditLimit)
    clients = edge(request).clients
    account = await unary(clients.auth.GetAccount, auth_pb2.GetAccountRequest(account_id=account_id))
    wallet = await unary(
        clients.billing.SetCreditLimit,
        billing_pb2.SetCreditLimitRequest(
            account_id=account.id, credit_limit_micros=usd_to_micros(body.credit_limit_usd)
        ),
    )
    return json_response({"object": "wallet", **wallet_json(wallet)})


router.include_router(admin_router)


async def _payer(request: Request) -> auth_pb2.AuthenticateResponse:
    me = await caller(request)
    if me.mode != auth_pb2.KEY_MODE_LIVE:
        raise Forbidden("payments need a live key (gw_live_…)", code="live_key_required")
    return me


def parse_time(text: str, param: str) -> int:
    """Unix seconds, or an ISO 8601 date or date-time (UTC unless it says otherwise), in ms."""
    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"{param} must be Unix seconds or an ISO 8601 date, e.g. 2026-01-31", param=param
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def _month_start_ms(now: float) -> int:
    t = datetime.fromtimestamp(now, tz=UTC)
    return int(t.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)
