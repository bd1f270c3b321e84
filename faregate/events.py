"""The usage stream: declared once, published with message id = request id.

The router publishes :class:`UsageRecord` protobufs through :class:`UsagePublisher`, off the
client's path: records are queued in memory and published concurrently in batches, each
awaiting its JetStream ack; a failed publish is retried until NATS takes it (JetStream's
duplicate window plus billing's idempotent insert make retries harmless). Billing reads the
stream with a durable pull consumer (services/billing/consumer.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from faregate.pb.events.v1.usage_pb2 import UsageBatch, UsageRecord

log = logging.getLogger(__name__)

DUPLICATE_WINDOW_S = 120.0
CATALOG_CHANGED = "faregate.catalog.changed"  # core NATS: a router changed prices; caches reload
# core NATS, payload the key id: a key was revoked or its limits or routing changed; every
# auth replica drops its cached copy at once (the cache's TTL covers a missed message)
KEYS_CHANGED = "faregate.keys.changed"
ACK_TIMEOUT_S = 5.0
BATCH_HEADER = "Faregate-Batch"  # the message holds a UsageBatch, not one UsageRecord
BATCH_RECORDS = 256  # records in one stream message at most (~50 KB)


def records_of(msg: Msg) -> list[UsageRecord]:
    """The usage records a stream message holds (DecodeError when it is malformed)."""
    if msg.headers and msg.headers.get(BATCH_HEADER) == "1":
        return list(UsageBatch.FromString(msg.data).records)
    return [UsageRecord.FromString(msg.data)]


@dataclass(frozen=True)
class UsageStream:
    name: str
    subject: str

    @property
    def dead_letter_subject(self) -> str:
        return f"{self.subject}.dead"

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            subjects=[self.subject, self.dead_letter_subject],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=30 * 24 * 3600,
            duplicate_window=DUPLICATE_WINDOW_S,
        )


async def pull_batches(
    sub: JetStreamContext.PullSubscription,
    size: int,
    *,
    fill_wait: float,
    reached: Callable[[bool], None] | None = None,
) -> AsyncGenerator[list[Msg], None]:
    """Batches of up to ``size`` messages from a pull subscription, for ever: a fetch that
    times out is tried again, one that fails (NATS restarting) after 0.5 s, and after a short
    batch ``fill_wait`` lets the next one fill (consumers are off the client's path).
    ``reached`` is told whether each fetch reached NATS (one that found nothing did).

    Close it (``contextlib.aclosing``) when the consumer stops: the subscription is dropped,
    for records fetched but not handled would hold the connection's drain until its timeout
    (unacknowledged, they are redelivered)."""
    failing = False  # logged once per outage, not every half second
    try:
        while True:
            try:
                msgs = await sub.fetch(size, timeout=1.0)
            except TimeoutError:
                if reached is not None:
                    reached(True)
                continue
            except Exception as exc:
                if reached is not None:
                    reached(False)
                if not failing:
                    log.warning("usage fetch failed (%s); retrying every 0.5 s", exc)
                failing = True
                await asyncio.sleep(0.5)
                continue
            if failing:
                log.info("usage fetch works again")
                failing = False
            if reached is not None:
                reached(True)
            yield msgs
            if len(msgs) < size:
                await asyncio.sleep(fill_wait)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def connect(url: str, *, name: str, attempts: int = 60, **options: Any) -> NATS:
    """Connect, waiting for a NATS server that is still starting (up to ``attempts`` × 0.5 s).
    ``options`` go to ``nats.connect`` (callbacks such as ``reconnected_cb``). Plain TCP
    (``nats://``, ``tls://``) only: websocket URLs are refused, for most services import
    nats-py without its websocket transport (lifecycle.import_nats_without_websockets)."""
    if any(u.strip().lower().startswith(("ws://", "wss://")) for u in url.split(",")):
        raise ValueError(f"NATS over websockets is not supported; use a nats:// URL, not {url.split('://')[0]}://")
    for attempt in range(attempts):
        try:
            return await nats.connect(
                url,
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=2,
                **options,
            )
        except (OSError, nats.errors.NoServersError, TimeoutError):
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


async def ensure_stream(js: JetStreamContext, stream: UsageStream) -> None:
    try:
        await js.stream_info(stream.name)
    except NotFoundError:
        await js.add_stream(stream.config())


class UsagePublisher:
    """Queues usage records and publishes them to JetStream in the background."""

    def __init__(
        self, js: JetStreamContext, stream: UsageStream, *, max_in_flight: int = 1000, linger: float = 0.05
    ) -> None:
        self._js = js
        self._stream = stream
        self._linger = linger  # after a record arrives, how long the next ones may join its batch
        self._queue: asyncio.Queue[UsageRecord] = asyncio.Queue()
        self._max_in_flight = max_in_flight
        self._in_hand: list[UsageRecord] = []
        self.published = 0

    def submit(self, record: UsageRecord) -> None:
        """Hand a record over; never blocks the request that produced it."""
        self._queue.put_nowait(record)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait (up to ``timeout``) until what is queued is published: the stop order's flush
        step, before the supervisor stops :meth:`run`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        if self._queue.qsize():
            log.error("usage publisher stopped with %d records unpublished", self._queue.qsize())

    async def run(self) -> None:
        """Publish queued records for ever (a supervised component, faregate/runtime.py). A
        batch taken from the queue stays in hand until published, so a run that fails or is
        restarted publishes it first instead of losing it."""
        while True:
            if not self._in_hand:
                self._in_hand = [await self._queue.get()]
                if self._linger:
                    await asyncio.sleep(self._linger)
                while len(self._in_hand) < self._max_in_flight and not self._queue.empty():
                    self._in_hand.append(self._queue.get_nowait())
            await self._publish(self._in_hand)
            for _ in self._in_hand:
                self._queue.task_done()
            self._in_hand = []

    async def _publish(self, batch: list[UsageRecord]) -> None:
        """Publish a batch as few stream messages (each up to BATCH_RECORDS records), pipelined
        with one wait for all acks; retry the messages that were not acknowledged, with the
        same message ids (JetStream drops a copy it already has)."""
        pending = [batch[i : i + BATCH_RECORDS] for i in range(0, len(batch), BATCH_RECORDS)]
        delay = 0.1
        while pending:
            acks: list[asyncio.Future[Any] | None] = []
            for records in pending:
                try:
                    acks.append(
                        await self._js.publish_async(
                            self._stream.subject,
                            UsageBatch(records=records).SerializeToString(),
                            headers={
                                "Nats-Msg-Id": f"{records[0].request_id}+{len(records) - 1}",
                                BATCH_HEADER: "1",
                            },
                        )
                    )
                except Exception as exc:  # not connected: retried below
                    log.warning("usage publish of %d records failed (%s); retrying", len(records), exc)
                    acks.append(None)
            # one wait for the whole batch (not a wait_for task per message); acks still
            # missing after it are given up (cancelled, which frees their publish slots) and retried
            live = [ack for ack in acks if ack is not None]
            if live:
                _, late = await asyncio.wait(live, timeout=ACK_TIMEOUT_S)
                for ack in late:
                    ack.cancel()
            failed = [
                records
                for records, ack in zip(pending, acks, strict=True)
                if ack is None or ack.cancelled() or ack.exception() is not None
            ]
            self.published += sum(len(r) for r in pending) - sum(len(r) for r in failed)
            pending = failed
            if pending:
                log.warning("%d usage records not acknowledged by JetStream; retrying", sum(len(r) for r in pending))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
