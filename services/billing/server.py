"""Wires the billing service: database, ledger, wallets, Stripe, usage consumer, gRPC server."""

from __future__ import annotations

import asyncio
import logging

from faregate import db, events
from faregate.grpc import insecure_channel, start_server
from faregate.lifecycle import wait_for_shutdown
from faregate.money import usd_to_micros
from faregate.pb.auth.v1 import auth_pb2_grpc
from faregate.pb.billing.v1 import billing_pb2, billing_pb2_grpc
from faregate.runtime import Supervisor, run_until_stopped
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
        linked=lambda: nc.is_connected,
    )
    supervisor = Supervisor("billing")
    supervisor.add("usage-consumer", consumer.run, ready=lambda: consumer.stats.connected)
    supervisor.add("hold-expiry", lambda: expire_holds(wallets), required=False)
    supervisor.start()
    addr = settings.bind_addr(settings.billing_addr)
    stripe = StripePayments.from_settings(settings)
    servicer = BillingServicer(ledger, wallets, Views(sessions), TopUps(sessions, stripe), consumer.stats)
    server, _ = await start_server(
        addr,
        lambda s: billing_pb2_grpc.add_BillingServiceServicer_to_server(servicer, s),
        [billing_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name],
        supervisor,
    )
    log.info("billing listening on %s (holds %s)", addr, "in memory" if in_memory else "in the database")
    await run_until_stopped(
        supervisor,
        server,
        wait_for_shutdown,
        stop_admitting=[servicer.calls.close],
        close=[nc.drain, auth_channel.close, stripe.close, engine.dispose],
    )


async def expire_holds(wallets: Wallets, every: float = 10.0) -> None:
    """Free holds whose request never reported and funds grants whose edge never ended them
    (ADR 11: billing settles what it owns). A supervised component: a sweep that fails
    raises and is retried after a backoff."""
    while True:
        await asyncio.sleep(every)
        if expired := await wallets.expire():
            log.warning("%d holds or funds grants expired without being settled", expired)
