"""Wires the auth service: settings → database, counters → domain → gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from faregate import db, events
from faregate.grpc import start_server
from faregate.lifecycle import wait_for_shutdown
from faregate.pb.auth.v1 import auth_pb2, auth_pb2_grpc
from faregate.settings import AuthSettings
from services.auth.admission import Authenticator
from services.auth.keys import KeyHasher
from services.auth.limits import Counters, LocalCounters, Plans, RedisCounters
from services.auth.servicer import AuthServicer
from services.auth.storage import AuthStore
from services.auth.usage import follow_usage

log = logging.getLogger(__name__)


async def serve(settings: AuthSettings) -> None:
    url = settings.database_url_for("auth")
    await db.upgrade_async("auth", url)
    engine = db.make_engine(url)
    counters: Counters = (
        RedisCounters.from_url(settings.redis_url, settings.redis_prefix) if settings.redis_url else LocalCounters()
    )
    auth = Authenticator(
        AuthStore(db.make_sessionmaker(engine)),
        KeyHasher(settings.hmac_key()),
        counters,
        Plans.from_json(settings.plans),
        slot_lease=settings.slot_lease_seconds,
        cache_ttl=settings.key_cache_seconds,
        grant_s=settings.grant_seconds,
    )
    auth.start()
    following: asyncio.Task[None] | None = None
    nc = None
    if settings.nats_url:
        nc = await _follow_key_changes(settings.nats_url, auth)
        stream = events.UsageStream(settings.usage_stream, settings.usage_subject)
        await events.ensure_stream(nc.jetstream(), stream)
        following = asyncio.create_task(
            follow_usage(
                nc.jetstream(), stream, auth, durable=bool(settings.redis_url), fill_wait=settings.usage_batch_wait
            )
        )
    addr = settings.bind_addr(settings.auth_addr)
    servicer = AuthServicer(auth)
    server, _ = await start_server(
        addr,
        lambda s: auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, s),
        [auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name],
    )
    log.info("auth listening on %s (limits %s)", addr, "in Redis" if settings.redis_url else "in process")
    try:
        await wait_for_shutdown()
    finally:
        await servicer.calls.close()
        await server.stop(grace=5)
        if following:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        if nc:
            await nc.drain()
        await auth.close()
        await engine.dispose()


async def _follow_key_changes(url: str, auth: Authenticator) -> NATS:
    """Connect to NATS so that a key changed on any replica is dropped from every replica's
    cache at once; after a reconnect (messages may have been missed) the whole cache goes."""

    async def reconnected() -> None:
        auth.forget_all()

    async def changed(msg: Msg) -> None:
        auth.forget(msg.data.decode())

    nc = await events.connect(url, name="faregate-auth", reconnected_cb=reconnected)
    await nc.subscribe(events.KEYS_CHANGED, cb=changed)

    async def announce(key_id: str) -> None:
        await nc.publish(events.KEYS_CHANGED, key_id.encode())
        await nc.flush(timeout=2)

    auth.announce = announce
    return nc
