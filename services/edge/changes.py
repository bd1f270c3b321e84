"""What the edge hears on NATS: the catalog changed (prices reload) and a key changed
(its grants end at once). Core NATS; a missed message is covered by the price refresh and
by a grant's one-second life (ADR 11)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nats.aio.msg import Msg

from faregate import events


async def follow_changes(url: str, on_catalog: Callable[[], None], on_key: Callable[[str], None]) -> None:
    """Subscribe and stay subscribed (a supervised component: it fails if NATS cannot be
    reached, and nats-py reconnects by itself once connected)."""
    nc = await events.connect(url, name="faregate-edge", attempts=4)

    async def catalog_changed(_msg: Msg) -> None:
        on_catalog()

    async def key_changed(msg: Msg) -> None:
        on_key(msg.data.decode())

    try:
        await nc.subscribe(events.CATALOG_CHANGED, cb=catalog_changed)
        await nc.subscribe(events.KEYS_CHANGED, cb=key_changed)
        await asyncio.Event().wait()  # until stopped
    finally:
        await nc.close()
