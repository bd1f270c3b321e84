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
from services.billing.stripe_payments import StripePayments
from services.billing.topups import TopUps
from services.billing.views import Views
from services.billing.wallets import MemoryWallets, Wallets

log = logging.getLogger(__name__)


async def serve(settings: BillingSettings) -> None:
    if not settings.nats_url:
        raise SystemExit("FAREGATE_NATS_URL is required for billing (faregate up starts a private NATS)")
    url = settings.database_url_for("billing")
    await db.upgrade_async("billing", url)
    engine = db.make_engine(url)
    sessions = db.make_sessionmaker(engine)
    in_memory = settings.holds == "memory" or (settings.holds == "auto" and engine.dialect.name == "sqlite")
    wallets = (MemoryWallets if in_memory else Wallets)(
        sessions,
        min_balance_micros=usd_to_micros(settings.min_balance_usd),
        hold_ttl_s=settings.hold_ttl_seconds,
        grant_s=settings.grant_seconds,
    )
    ledger = Ledger(sessions, on_applied=wallets.settled, on_credit=wallets.forget)
    expiring = asyncio.create_task(_expire_holds(wallets), name="hold-expiry")
    nc = await events.connect(settings.nats_url, name="faregate-billing")
    js = nc.jetstream()
    stream = events.UsageStream(settings.usage_stream, settings.usage_subject)
    await events.ensure_stream(js, stream)
    auth_channel = insecure_channel(settings.auth_addr)
    consumer = UsageConsumer(
        js,
        stream,
        ledger,
        batch=settings.consumer_batch,
        max_wait=settings.usage_batch_wait,
        ack_wait=settings.consumer_ack_wait,
        unknown_accounts=AccountDirectory(auth_pb2_grpc.AuthServiceStub(auth_channel)).unknown,
    )
    consuming = asyncio.create_task(consumer.run(), name="usage-consumer")
    addr = settings.bind_addr(settings.billing_addr)
    stripe = StripePayments.from_settings(settings)
    servicer = BillingServicer(ledger, wallets, Views(sessions), TopUps(sessions, stripe), consumer.stats)
    server, _ = await start_server(
        addr,
        lambda s: billing_pb2_grpc.add_BillingServiceServicer_to_server(servicer, s),
        [billing_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name],
    )
    log.info("billing listening on %s (holds %s)", addr, "in memory" if in_memory else "in the database")
    try:
        await wait_for_shutdown()
    finally:
        await servicer.calls.close()
        await server.stop(grace=5)
        for task in (consuming, expiring):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await nc.drain()
        await auth_channel.close()
        await stripe.close()
        await engine.dispose()


async def _expire_holds(wallets: Wallets) -> None:
    while True:
        await asyncio.sleep(30)
        try:
            if expired := await wallets.expire():
                log.warning("%d holds expired without a usage record", expired)
        except Exception:
            log.exception("expiring holds failed")
