"""Tokens per day: auth learns what each key used from the usage stream, off the hot path.

With Redis the counters are shared and survive restarts, so a durable consumer resumes where
it stopped, acknowledging each record once counted. Without Redis the counters live in this
process, so each start replays today's records (an ephemeral consumer from UTC midnight) to
rebuild them; a lost acknowledgement costs nothing there, so one acknowledges a whole batch.

The follower is a supervised component (faregate/runtime.py): when counting fails (Redis
down) it raises and is restarted. Nothing goes uncounted: with Redis the records not counted
are handed back (nak) and redelivered to the restarted consumer; without Redis a restart
resumes after the last record this process counted, so none is counted twice.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import UTC, datetime

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from faregate.events import UsageStream, pull_batches, records_of
from services.auth.admission import Authenticator

log = logging.getLogger(__name__)

DURABLE = "auth-tokens"


class UsageFollower:
    def __init__(
        self, js: JetStreamContext, stream: UsageStream, auth: Authenticator, *, durable: bool, fill_wait: float
    ) -> None:
        self._js = js
        self._stream = stream
        self._auth = auth
        self._durable = durable
        self._fill_wait = fill_wait
        self._counted_seq = 0  # without Redis: the last stream sequence counted in this process
        # (stream sequence, records of it counted) of a message whose counting failed part-way:
        # its redelivery skips those, so no record of a batch message is counted twice
        self._partial: tuple[int, int] = (0, 0)
        self.connected = False  # the last fetch reached NATS
        self._behind = 0  # without Redis: records pending at start, not yet counted

    def _config(self) -> ConsumerConfig:
        if self._durable:
            return ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                filter_subject=self._stream.subject,
                deliver_policy=DeliverPolicy.NEW,
                ack_wait=30.0,
                max_ack_pending=20_000,
            )
        if self._counted_seq:  # a restart: on from where this process stopped counting
            return ConsumerConfig(
                ack_policy=AckPolicy.ALL,
                filter_subject=self._stream.subject,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self._counted_seq + 1,
                max_ack_pending=20_000,
            )
        return ConsumerConfig(
            ack_policy=AckPolicy.ALL,
            filter_subject=self._stream.subject,
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=datetime.fromtimestamp(time.time() // 86_400 * 86_400, tz=UTC),
            max_ack_pending=20_000,
        )

    async def run(self) -> None:
        sub = await self._js.pull_subscribe(
            self._stream.subject,
            durable=DURABLE if self._durable else None,
            stream=self._stream.name,
            config=self._config(),
        )
        if not self._durable:  # today's tokens are rebuilt before auth says it is serving
            self._behind = (await sub.consumer_info()).num_pending or 0
        try:
            batches = pull_batches(sub, 500, fill_wait=self._fill_wait, reached=self._reached)
            async with contextlib.aclosing(batches):
                async for msgs in batches:
                    await self._count(msgs)
        finally:
            self.connected = False

    def _reached(self, ok: bool) -> None:
        self.connected = ok

    @property
    def ready(self) -> bool:
        """The component's readiness: NATS reached and, without Redis, today's records that
        were in the stream at start counted (so a restart cannot admit past tokens per day)."""
        return self.connected and self._behind <= 0

    async def _count(self, msgs: list[Msg]) -> None:
        for i, msg in enumerate(msgs):
            try:
                await self._count_one(msg)
            except Exception:
                if self._durable:  # hand the rest back at once, not after ack_wait
                    for rest in msgs[i:]:
                        with contextlib.suppress(Exception):  # NATS down too: ack_wait redelivers
                            await rest.nak()
                raise
            if self._durable:
                await msg.ack()
            else:
                self._counted_seq = msg.metadata.sequence.stream
                self._behind -= 1
        if msgs and not self._durable:
            await msgs[-1].ack()  # AckPolicy.ALL: the whole batch

    async def _count_one(self, msg: Msg) -> None:
        try:
            records = records_of(msg)
        except DecodeError:  # a malformed message counts nothing (billing dead-letters it)
            return
        seq = msg.metadata.sequence.stream
        done = self._partial[1] if self._partial[0] == seq else 0
        for i, record in enumerate(records[done:], start=done):
            try:
                await self._auth.record_tokens(
                    record.key_id, record.prompt_tokens + record.completion_tokens, record.started_at_ms / 1000
                )
            except BaseException:
                self._partial = (seq, i)
                raise
        self._partial = (0, 0)
