"""Account views (balance, wallet summary, transactions, usage, request history) and Stripe
top-ups (Checkout, Customer Portal).

Authenticated by any key of the account and scoped to it (payments need a live key);
request history is metadata only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field

from faregate.errors import ContentPolicy, InvalidRequest
from faregate.money import micros_to_usd, usd_to_micros
from faregate.pb.auth.v1 import auth_pb2
from faregate.pb.billing.v1 import billing_pb2
from faregate.values import EntryKind
from services.edge.clients import unary
from services.edge.context import edge
from services.edge.routes.admin import Body, parse
from services.edge.routes.keys import caller
from services.edge.routes.responses import json_response

router = APIRouter(prefix="/v1")


def _next_month(now: datetime) -> datetime:
    return datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)


def _limit(value: int) -> int:
    if not 1 <= value <= 500:
        raise InvalidRequest("limit must be between 1 and 500", param="limit")
    return value


# the latest time a view can name: the end of year 9999, as datetime and ISO 8601 allow
_MAX_TIME_MS = 253_402_300_799_999


def _time(value: str, name: str) -> int:
    """Unix seconds or ISO 8601 → Unix milliseconds, between 1970 and the end of year 9999."""
    if not value:
        return 0
    invalid = InvalidRequest(f"{name} must be Unix seconds or an ISO 8601 time from 1970 to 9999", param=name)
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise invalid from None
        seconds = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if not 0 <= seconds * 1000 <= _MAX_TIME_MS:  # also false for nan and inf
        raise invalid
    return int(seconds * 1000)


def transaction_json(e: billing_pb2.LedgerEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "object": "transaction",
        "kind": EntryKind.from_pb(e.kind).value,
        "amount_usd": micros_to_usd(e.amount_micros),
        "request_id": e.request_id or None,
        "note": e.note,
        "created": e.created_at_ms // 1000,
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
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "tokens_estimated": r.estimated,
        "cost_usd": micros_to_usd(r.cost_micros),
        "latency_ms": r.latency_ms,
        "time_to_first_token_ms": r.ttft_ms or None,
        "status": r.status,
    }


@router.get("/balance")
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
            "held": micros_to_usd(wallet.held_micros),
            "plan": me.plan,
            # The plan's monthly quota is in tokens (auth's plan, ADR 21); used = billable tokens.
            "used_this_month": wallet.tokens_this_month,
            "quota_this_month": quota,
            "quota_remaining": max(quota - wallet.tokens_this_month, 0) if quota is not None else None,
            "quota_reset_at": int(_next_month(datetime.now(UTC)).timestamp()),
            "tokens_this_month": wallet.tokens_this_month,
            "spent_this_month": micros_to_usd(wallet.used_this_month_micros),
        }
    )


@router.get("/billing")
async def billing_summary(request: Request) -> Response:
    me = await caller(request)
    clients = edge(request).clients
    wallet = await unary(clients.billing.GetWallet, billing_pb2.GetWalletRequest(account_id=me.account_id))
    recent = await unary(
        clients.billing.ListRequests, billing_pb2.ListRequestsRequest(account_id=me.account_id, limit=10)
    )
    return json_response(
        {
            "object": "billing",
            "account_id": me.account_id,
            "plan": me.plan,
            "balance_usd": micros_to_usd(wallet.balance_micros),
            "held_usd": micros_to_usd(wallet.held_micros),
            "available_usd": micros_to_usd(wallet.balance_micros - wallet.held_micros),
            "used_this_month_usd": micros_to_usd(wallet.used_this_month_micros),
            "recent_usage": [request_json(r) for r in recent.requests],
        }
    )


@router.get("/billing/transactions")
async def transactions(request: Request, limit: int = 50, cursor: str = "") -> Response:
    me = await caller(request)
    page = await unary(
        edge(request).clients.billing.ListLedger,
        billing_pb2.ListLedgerRequest(account_id=me.account_id, limit=_limit(limit), cursor=cursor),
    )
    return json_response(
        {
            "object": "list",
            "data": [transaction_json(e) for e in page.entries],
            "has_more": bool(page.next_cursor),
            "next_cursor": page.next_cursor or None,
        }
    )


@router.get("/requests")
async def requests(request: Request, limit: int = 50, cursor: str = "") -> Response:
    me = await caller(request)
    page = await unary(
        edge(request).clients.billing.ListRequests,
        billing_pb2.ListRequestsRequest(account_id=me.account_id, limit=_limit(limit), cursor=cursor),
    )
    return json_response(
        {
            "object": "list",
            "data": [request_json(r) for r in page.requests],
            "has_more": bool(page.next_cursor),
            "next_cursor": page.next_cursor or None,
        }
    )


@router.get("/usage")
async def usage(request: Request, start: str = "", end: str = "", group_by: str = "model") -> Response:
    me = await caller(request)
    reply = await unary(
        edge(request).clients.billing.GetUsage,
        billing_pb2.GetUsageRequest(
            account_id=me.account_id, start_ms=_time(start, "start"), end_ms=_time(end, "end"), group_by=group_by
        ),
    )
    return json_response(
        {
            "object": "usage",
            "group_by": group_by,
            "data": [
                {
                    group_by: g.group,
                    "requests": g.requests,
                    "prompt_tokens": g.prompt_tokens,
                    "completion_tokens": g.completion_tokens,
                    "cost_usd": micros_to_usd(g.cost_micros),
                }
                for g in reply.groups
            ],
        }
    )


class Checkout(Body):
    amount_usd: float = Field(gt=0, le=10_000)
    success_url: str = Field(min_length=1, max_length=2048)
    cancel_url: str = Field(min_length=1, max_length=2048)


class Portal(Body):
    return_url: str = Field(min_length=1, max_length=2048)


async def _payer(request: Request) -> auth_pb2.AuthenticateResponse:
    me = await caller(request)
    if me.mode != auth_pb2.KEY_MODE_LIVE:
        raise ContentPolicy("payments need a live key (gw_live_…)", code="live_key_required")
    return me


@router.post("/billing/checkout")
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


@router.post("/billing/portal")
async def portal(request: Request) -> Response:
    me = await _payer(request)
    body = await parse(request, Portal)
    link = await unary(
        edge(request).clients.billing.CreatePortal,
        billing_pb2.CreatePortalRequest(account_id=me.account_id, return_url=body.return_url),
    )
    return json_response({"object": "billing_portal.session", "id": link.id, "url": link.url})
