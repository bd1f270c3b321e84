"""BillingService over gRPC: wire types in, domain calls, wire types out."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from faregate.pb.billing.v1 import billing_pb2 as pb
from faregate.pb.billing.v1 import billing_pb2_grpc
from services.billing.consumer import ConsumerStats
from services.billing.ledger import Ledger
from services.billing.topups import TopUps
from services.billing.views import UsageViews
from services.billing.wallets import Summary, Wallets

Ctx: TypeAlias = grpc.aio.ServicerContext


def wallet_message(w: Summary) -> pb.Wallet:
    return pb.Wallet(
        account_id=w.account_id,
        balance_micros=w.balance_micros,
        entries=w.entries,
        credit_limit_micros=w.credit_limit_micros,
        held_micros=w.held_micros,
        available_micros=w.available_micros,
        tokens_this_month=w.tokens_this_month,
        cost_this_month_micros=w.cost_this_month_micros,
        month_start_ms=w.month_start_ms,
        next_month_start_ms=w.next_month_start_ms,
    )


def entry_message(r: dict[str, Any]) -> pb.LedgerEntry:
    return pb.LedgerEntry(
        id=str(r["id"]),
        account_id=r["account_id"],
        kind=r["kind"],
        amount_micros=r["amount_micros"],
        idempotency_key=r["idempotency_key"],
        request_id=r["request_id"] or "",
        note=r["note"],
        created_at_ms=r["created_at_ms"],
    )


def request_message(r: dict[str, Any]) -> pb.RequestRecord:
    return pb.RequestRecord(
        request_id=r["request_id"],
        key_id=r["key_id"],
        model=r["model"],
        provider=r["provider"],
        endpoint=r["endpoint"],
        prompt_tokens=r["prompt_tokens"],
        completion_tokens=r["completion_tokens"],
        estimated=r["estimated"],
        cost_micros=r["cost_micros"],
        billable=r["billable"],
        status=r["status"],
        stream=r["stream"],
        started_at_ms=r["started_at_ms"],
        latency_ms=r["latency_ms"],
        ttft_ms=r["ttft_ms"],
    )


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(
        self, ledger: Ledger, wallets: Wallets, views: UsageViews, topups: TopUps, stats: ConsumerStats
    ) -> None:
        self._ledger = ledger
        self._wallets = wallets
        self._views = views
        self._topups = topups
        self._stats = stats

    async def GetWallet(self, request: pb.GetWalletRequest, context: Ctx) -> pb.Wallet:
        return wallet_message(await self._wallets.summary(request.account_id))

    async def Credit(self, request: pb.CreditRequest, context: Ctx) -> pb.Wallet:
        await self._ledger.credit(
            request.account_id,
            request.amount_micros,
            note=request.note,
            idempotency_key=request.idempotency_key,
        )
        return wallet_message(await self._wallets.summary(request.account_id))

    async def SetCreditLimit(self, request: pb.SetCreditLimitRequest, context: Ctx) -> pb.Wallet:
        await self._wallets.set_credit_limit(request.account_id, request.credit_limit_micros)
        return wallet_message(await self._wallets.summary(request.account_id))

    async def Reserve(self, request: pb.ReserveRequest, context: Ctx) -> pb.ReserveResponse:
        await self._wallets.reserve(request.account_id, request.request_id, request.amount_micros)
        return pb.ReserveResponse(hold_id=request.request_id)

    async def ReleaseHold(self, request: pb.ReleaseHoldRequest, context: Ctx) -> pb.ReleaseHoldResponse:
        await self._wallets.release(request.hold_id, request.account_id)
        return pb.ReleaseHoldResponse()

    async def ListLedger(self, request: pb.ListLedgerRequest, context: Ctx) -> pb.ListLedgerResponse:
        page = await self._ledger.entries(request.account_id, request.limit or 100, request.cursor)
        return pb.ListLedgerResponse(entries=[entry_message(r) for r in page.entries], next_cursor=page.next_cursor)

    async def ListRequests(self, request: pb.ListRequestsRequest, context: Ctx) -> pb.ListRequestsResponse:
        page = await self._views.requests(request.account_id, request.limit, request.cursor)
        return pb.ListRequestsResponse(
            requests=[request_message(r) for r in page.requests], next_cursor=page.next_cursor
        )

    async def SummarizeUsage(self, request: pb.SummarizeUsageRequest, context: Ctx) -> pb.SummarizeUsageResponse:
        groups = await self._views.summarize(request.account_id, request.start_ms, request.end_ms, request.group_by)
        return pb.SummarizeUsageResponse(
            groups=[
                pb.UsageGroup(
                    key=g.key,
                    requests=g.requests,
                    prompt_tokens=g.prompt_tokens,
                    completion_tokens=g.completion_tokens,
                    cost_micros=g.cost_micros,
                )
                for g in groups
            ]
        )

    async def CreateCheckout(self, request: pb.CreateCheckoutRequest, context: Ctx) -> pb.PaymentLink:
        link = await self._topups.checkout(
            request.account_id, request.amount_micros, request.success_url, request.cancel_url
        )
        return pb.PaymentLink(id=link.id, url=link.url)

    async def CreatePortal(self, request: pb.CreatePortalRequest, context: Ctx) -> pb.PaymentLink:
        link = await self._topups.portal(request.account_id, request.return_url)
        return pb.PaymentLink(id=link.id, url=link.url)

    async def HandleStripeWebhook(self, request: pb.StripeWebhookRequest, context: Ctx) -> pb.StripeWebhookResponse:
        out = await self._topups.handle_webhook(request.payload, request.signature)
        return pb.StripeWebhookResponse(event_id=out.event_id, type=out.type, applied=out.applied, note=out.note)

    async def GetStatus(self, request: pb.GetStatusRequest, context: Ctx) -> pb.BillingStatus:
        s = self._stats
        return pb.BillingStatus(
            consumer_connected=s.connected,
            applied=s.applied,
            duplicates=s.duplicates,
            dead_lettered=s.dead_lettered,
        )
