"""Wires the auth service: settings → database, counters → domain → gRPC server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from faregate import db, events
from faregate.grpc import start_server
from faregate.lifecycle import wait_for_shutdown
from faregate.pb.auth.v1 import auth_pb2, auth_pb2_grpc
from faregate.runtime import Step, Supervisor, run_until_stopped
from faregate.settings import AuthSettings
from services.auth.admission import Authenticator
from services.auth.journal import CounterJournal
from services.auth.keys import KeyHasher
from services.auth.limits import Counters, LocalCounters, Plans, RedisCounters
from services.auth.servicer import AuthServicer
from services.auth.storage import AuthStore
from services.auth.usage import UsageFollower

log = logging.getLogger(__name__)


async def serve(settings: AuthSettings) -> None:
    url = settings.database_url_for("auth")
    await db.upgrade_async("auth", url)
    engine = db.make_engine(url)
    sessions = db.make_sessionmaker(engine)
    counters: Counters = (
        RedisCounters.from_url(settings.redis_url, settings.redis_prefix)
        if settings.redis_url
        else await LocalCounters.restored(CounterJournal(sessions))  # ADR 16
    )
    auth = Authenticator(
        AuthStore(sessions),
        KeyHasher(settings.hmac_key()),
        counters,
        Plans.from_json(settings.plans),
        slot_lease=settings.slot_lease_seconds,
        cache_ttl=settings.key_cache_seconds,
        grant_s=settings.grant_seconds,
    )
    supervisor = Supervisor("auth")
    supervisor.add("last-used", auth.flush_last_used, required=False)
    close: list[Step] = []
    if settings.nats_url:
        nc = await events.connect(settings.nats_url, name="faregate-auth", reconnected_cb=_forget_all(auth))
        auth.announce = _announcer(nc)
        stream = events.UsageStream(settings.usage_stream, settings.usage_subject)
        await events.ensure_stream(nc.jetstream(), stream)
        follower = UsageFollower(
            nc.jetstream(), stream, auth, durable=bool(settings.redis_url), fill_wait=settings.usage_batch_wait
        )
        # tokens per day are enforced only while it counts: auth is not serving without it
        supervisor.add("usage-follower", follower.run, ready=lambda: nc.is_connected and follower.ready)
        supervisor.add(
            "key-changes", lambda: _follow_key_changes(nc, auth), required=False, ready=lambda: nc.is_connected
        )
        close.append(nc.drain)
    supervisor.start()
    addr = settings.bind_addr(settings.auth_addr)
    servicer = AuthServicer(auth)
    server, _ = await start_server(
        addr,
        lambda s: auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, s),
        [auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name],
        supervisor,
    )
    log.info("auth listening on %s (limits %s)", addr, "in Redis" if settings.redis_url else "in process")
    await run_until_stopped(
        supervisor,
        server,
        wait_for_shutdown,
        stop_admitting=[servicer.calls.close],
        close=[*close, auth.close, engine.dispose],
    )


def _forget_all(auth: Authenticator) -> Callable[[], Awaitable[None]]:
    async def reconnected() -> None:  # messages may have been missed: the whole cache goes
        auth.forget_all()

    return reconnected


def _announcer(nc: NATS) -> Callable[[str], Awaitable[None]]:
    async def announce(key_id: str) -> None:
        await nc.publish(events.KEYS_CHANGED, key_id.encode())
        await nc.flush(timeout=2)

    return announce


async def _follow_key_changes(nc: NATS, auth: Authenticator) -> None:
    """A key changed on any replica is dropped from every replica's cache at once (a
    supervised component: subscribed while it runs)."""

    async def changed(msg: Msg) -> None:
        auth.forget(msg.data.decode())

    sub = await nc.subscribe(events.KEYS_CHANGED, cb=changed)
    try:
        await asyncio.Event().wait()  # nats-py delivers to ``changed``; this holds the subscription
    finally:
        if not nc.is_closed:
            await sub.unsubscribe()
