"""Wires the billing service: database, ledger, wallets, Stripe, usage consumer, gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from faregate import db, events
from faregate.grpc import insecure_channel, start_server
from faregate.lifecycle import wait_for_shutdown
from faregate.money import usd_to_micros
from faregate.pb.auth.v1 import auth_pb2_grpc
from faregate.pb.billing.v1 import billing_pb2, billing_pb2_grpc
from faregate.settings import BillingSettings
from services.billing.accounts import AccountDirectory
from services.billing.consumer import UsageConsumer
from services.billing.ledger import Ledger
from services.billing.servicer import BillingServicer
from services.billing.storage import Store
from services.billing.stripe_payments import StripePayments
from services.billing.topups import TopUps
from services.billing.views import UsageViews
from services.billing.wallets import Wallets

log = logging.getLogger(__name__)


async def serve(settings: BillingSettings) -> None:
    if not settings.nats_url:
        raise SystemExit("FAREGATE_NATS_URL is required for billing (faregate up starts a private NATS)")
    url = settings.database_url_for("billing")
    await db.upgrade_async("billing", url)
    engine = db.make_engine(url)
    store = Store(engine)
    ledger = Ledger(store)
    wallets = Wallets(
        store, min_balance_micros=usd_to_micros(settings.min_balance_usd), hold_ttl=settings.hold_ttl_seconds
    )
    stripe_payments = StripePayments.from_settings(settings)
    topups = TopUps(store, stripe_payments)
    auth_channel = insecure_channel(settings.auth_addr)
    accounts = AccountDirectory(auth_pb2_grpc.AuthServiceStub(auth_channel))
    nc = await events.connect(settings.nats_url, name="faregate-billing")
    js = nc.jetstream()
    stream = events.UsageStream(settings.usage_stream, settings.usage_subject)
    await events.ensure_stream(js, stream)
    consumer = UsageConsumer(
        js,
        stream,
        ledger,
        batch=settings.consumer_batch,
        max_wait=settings.consumer_max_wait,
        ack_wait=settings.consumer_ack_wait,
        unknown_accounts=accounts.unknown,
    )
    tasks = [
        asyncio.create_task(consumer.run(), name="usage-consumer"),
        asyncio.create_task(wallets.sweep_forever(), name="hold-sweeper"),
    ]
    addr = settings.bind_addr(settings.billing_addr)
    servicer = BillingServicer(ledger, wallets, UsageViews(store), topups, consumer.stats)
    server, _ = await start_server(
        addr,
        lambda s: billing_pb2_grpc.add_BillingServiceServicer_to_server(servicer, s),
        [billing_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name],
    )
    log.info("billing listening on %s (Stripe %s)", addr, "on" if settings.stripe_secret_key else "not configured")
    try:
        await wait_for_shutdown()
    finally:
        await server.stop(grace=5)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await nc.drain()
        await auth_channel.close()
        await stripe_payments.close()
        await engine.dispose()
