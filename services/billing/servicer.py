"""BillingService over gRPC: wire types in, domain calls, wire types out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from faregate.callstream import CallServer
from faregate.pb.billing.v1 import billing_pb2 as pb
from faregate.pb.billing.v1 import billing_pb2_grpc
from faregate.pb.rpc.v1 import calls_pb2
from faregate.values import EntryKind
from services.billing.consumer import ConsumerStats
from services.billing.ledger import Ledger, WalletView
from services.billing.topups import TopUps
from services.billing.views import Views
from services.billing.wallets import Spend, Wallets


def wallet_message(w: WalletView, held: int = 0, month: tuple[int, int] = (0, 0)) -> pb.Wallet:
    return pb.Wallet(
        account_id=w.account_id,
        balance_micros=w.balance_micros,
        entries=w.entries,
        held_micros=held,
        used_this_month_micros=month[0],
        tokens_this_month=month[1],
    )


def entry_message(r: dict) -> pb.LedgerEntry:  # type: ignore[type-arg]
    return pb.LedgerEntry(
        id=str(r["id"]),
        account_id=r["account_id"],
        kind=EntryKind(r["kind"]).to_pb(),
        amount_micros=r["amount_micros"],
        idempotency_key=r["idempotency_key"],
        request_id=r["request_id"] or "",
        note=r["note"],
        created_at_ms=r["created_at_ms"],
    )


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self, ledger: Ledger, wallets: Wallets, views: Views, topups: TopUps, stats: ConsumerStats) -> None:
        self._ledger = ledger
        self._wallets = wallets
        self._views = views
        self._topups = topups
        self._stats = stats
        self.calls = CallServer()
        self._reserve_stream = self.calls.handler(self.Reserve, pb.ReserveRequest)

    async def GetWallet(self, request: pb.GetWalletRequest, context: grpc.aio.ServicerContext) -> pb.Wallet:
        funds = await self._wallets.funds(request.account_id)
        month = await self._views.month(request.account_id)
        return wallet_message(await self._ledger.wallet(request.account_id), funds.held_micros, month)

    async def Reserve(self, request: pb.ReserveRequest, context: grpc.aio.ServicerContext) -> pb.Wallet:
        funds = await self._wallets.reserve(request.account_id, request.request_id, request.amount_micros)
        reply = pb.Wallet(
            account_id=request.account_id, balance_micros=funds.balance_micros, held_micros=funds.held_micros
        )
        grant = self._wallets.grant(request.account_id, request.grant_micros, request.amount_micros)
        if grant is not None:
            reply.grant.CopyFrom(pb.FundsGrant(id=grant.id, micros=grant.micros, valid_ms=grant.valid_ms))
        return reply

    async def ReserveStream(
        self, request_iterator: AsyncIterator[calls_pb2.Calls], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[calls_pb2.Results]:
        """Reserve calls on one long-lived stream (faregate/callstream.py)."""
        async for result in self._reserve_stream(request_iterator, context):
            yield result

    async def ReleaseHold(
        self, request: pb.ReleaseHoldRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseHoldResponse:
        await self._wallets.release(request.request_id)
        return pb.ReleaseHoldResponse()

    async def SettleGrants(self, request: pb.GrantSpends, context: grpc.aio.ServicerContext) -> pb.ReleaseHoldResponse:
        spent = [Spend(s.grant_id, s.request_id, s.amount_micros) for s in request.spent]
        self._wallets.settle_grants(spent, request.ended)
        return pb.ReleaseHoldResponse()

    async def ListRequests(
        self, request: pb.ListRequestsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRequestsResponse:
        rows, cursor = await self._views.requests_page(request.account_id, request.limit, request.cursor)
        fields = set(pb.RequestRecord.DESCRIPTOR.fields_by_name)
        return pb.ListRequestsResponse(
            requests=[pb.RequestRecord(**{k: v for k, v in r.items() if k in fields}) for r in rows],
            next_cursor=cursor,
        )

    async def GetUsage(self, request: pb.GetUsageRequest, context: grpc.aio.ServicerContext) -> pb.GetUsageResponse:
        groups = await self._views.usage(request.account_id, request.start_ms, request.end_ms, request.group_by)
        return pb.GetUsageResponse(groups=[pb.UsageGroup(**g) for g in groups])

    async def Credit(self, request: pb.CreditRequest, context: grpc.aio.ServicerContext) -> pb.Wallet:
        wallet, _ = await self._ledger.credit(
            request.account_id,
            request.amount_micros,
            note=request.note,
            idempotency_key=request.idempotency_key,
        )
        return wallet_message(wallet)

    async def ListLedger(
        self, request: pb.ListLedgerRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListLedgerResponse:
        rows, cursor = await self._views.ledger_page(request.account_id, request.limit or 100, request.cursor)
        return pb.ListLedgerResponse(entries=[entry_message(r) for r in rows], next_cursor=cursor)

    async def CreateCheckout(
        self, request: pb.CreateCheckoutRequest, context: grpc.aio.ServicerContext
    ) -> pb.PaymentLink:
        link = await self._topups.checkout(
            request.account_id, request.amount_micros, request.success_url, request.cancel_url
        )
        return pb.PaymentLink(id=link.id, url=link.url)

    async def CreatePortal(self, request: pb.CreatePortalRequest, context: grpc.aio.ServicerContext) -> pb.PaymentLink:
        link = await self._topups.portal(request.account_id, request.return_url)
        return pb.PaymentLink(id=link.id, url=link.url)

    async def HandleStripeWebhook(
        self, request: pb.StripeWebhookRequest, context: grpc.aio.ServicerContext
    ) -> pb.StripeWebhookResponse:
        out = await self._topups.handle_webhook(request.payload, request.signature)
        return pb.StripeWebhookResponse(event_id=out.event_id, type=out.type, applied=out.applied, note=out.note)

    async def GetStatus(self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext) -> pb.BillingStatus:
        s = self._stats
        return pb.BillingStatus(
            consumer_connected=s.connected,
            applied=s.applied,
            duplicates=s.duplicates,
            dead_lettered=s.dead_lettered,
        )
