"""Wires the billing service: database, ledger, usage consumer, gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from faregate import db, events
from faregate.grpc import start_server
from faregate.lifecycle import wait_for_shutdown
from faregate.pb.billing.v1 import billing_pb2, billing_pb2_grpc
from faregate.settings import BillingSettings
from services.billing.consumer import UsageConsumer
from services.billing.ledger import Ledger
from services.billing.servicer import BillingServicer

log = logging.getLogger(__name__)


async def serve(settings: BillingSettings) -> None:
    if not settings.nats_url:
        raise SystemExit("FAREGATE_NATS_URL is required for billing (faregate up starts a private NATS)")
    url = settings.database_url_for("billing")
    await db.upgrade_async("billing", url)
    engine = db.make_engine(url)
    ledger = Ledger(db.make_sessionmaker(engine))
    nc = await events.connect(settings.nats_url, name="faregate-billing")
    js = nc.jetstream()
    stream = events.UsageStream(settings.usage_stream, settings.usage_subject)
    await events.ensure_stream(js, stream)
    consumer = UsageConsumer(js, stream, ledger, batch=settings.consumer_batch, max_wait=settings.consumer_max_wait)
    consuming = asyncio.create_task(consumer.run(), name="usage-consumer")
    addr = settings.bind_addr(settings.billing_addr)
    server, _ = await start_server(
        addr,
        lambda s: billing_pb2_grpc.add_BillingServiceServicer_to_server(BillingServicer(ledger, consumer.stats), s),
        [billing_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name],
    )
    log.info("billing listening on %s", addr)
    try:
        await wait_for_shutdown()
    finally:
        await server.stop(grace=5)
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
        await nc.drain()
        await engine.dispose()
