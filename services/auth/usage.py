"""Tokens per day: auth learns what each key used from the usage stream, off the hot path.

With Redis the counters are shared and survive restarts, so a durable consumer resumes where
it stopped, acknowledging each record once counted. Without Redis the counters live in this
process, so each start replays today's records (an ephemeral consumer from UTC midnight) to
rebuild them; a lost acknowledgement costs nothing there, so one acknowledges a whole batch.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import UTC, datetime

from google.protobuf.message import DecodeError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from faregate.events import UsageStream, pull_batches, records_of
from services.auth.admission import Authenticator

log = logging.getLogger(__name__)


async def follow_usage(
    js: JetStreamContext, stream: UsageStream, auth: Authenticator, *, durable: bool, fill_wait: float
) -> None:
    midnight = datetime.fromtimestamp(time.time() // 86_400 * 86_400, tz=UTC)
    config = ConsumerConfig(
        ack_policy=AckPolicy.EXPLICIT if durable else AckPolicy.ALL,
        filter_subject=stream.subject,
        deliver_policy=DeliverPolicy.NEW if durable else DeliverPolicy.BY_START_TIME,
        opt_start_time=None if durable else midnight,
        max_ack_pending=20_000,
    )
    sub = await js.pull_subscribe(
        stream.subject, durable="auth-tokens" if durable else None, stream=stream.name, config=config
    )
    async with contextlib.aclosing(pull_batches(sub, 500, fill_wait=fill_wait)) as batches:
        async for msgs in batches:
            for msg in msgs:
                with contextlib.suppress(DecodeError):  # a malformed message counts nothing
                    for record in records_of(msg):
                        await auth.record_tokens(
                            record.key_id, record.prompt_tokens + record.completion_tokens, record.started_at_ms / 1000
                        )
                if durable:
                    await msg.ack()
            if msgs and not durable:
                await msgs[-1].ack()  # AckPolicy.ALL: the whole batch
