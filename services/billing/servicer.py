"""BillingService over gRPC: wire types in, domain calls, wire types out."""

from __future__ import annotations

import grpc

from faregate.pb.billing.v1 import billing_pb2 as pb
from faregate.pb.billing.v1 import billing_pb2_grpc
from services.billing.consumer import ConsumerStats
from services.billing.ledger import Ledger, WalletView


def wallet_message(w: WalletView) -> pb.Wallet:
    return pb.Wallet(account_id=w.account_id, balance_micros=w.balance_micros, entries=w.entries)


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self, ledger: Ledger, stats: ConsumerStats) -> None:
        self._ledger = ledger
        self._stats = stats

    async def GetWallet(self, request: pb.GetWalletRequest, context: grpc.aio.ServicerContext) -> pb.Wallet:
        return wallet_message(await self._ledger.wallet(request.account_id))

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
        rows = await self._ledger.entries(request.account_id, request.limit or 100)
        return pb.ListLedgerResponse(
            entries=[
                pb.LedgerEntry(
                    id=str(r["id"]),
                    account_id=r["account_id"],
                    kind=r["kind"],
                    amount_micros=r["amount_micros"],
                    idempotency_key=r["idempotency_key"],
                    request_id=r["request_id"] or "",
                    note=r["note"],
                    created_at_ms=r["created_at_ms"],
                )
                for r in rows
            ]
        )

    async def GetStatus(self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext) -> pb.BillingStatus:
        s = self._stats
        return pb.BillingStatus(
            consumer_connected=s.connected,
            applied=s.applied,
            duplicates=s.duplicates,
            dead_lettered=s.dead_lettered,
        )
