"""The ledger's consumer against a real NATS JetStream and a real (SQLite) ledger."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterable
from pathlib import Path

import nats

from faregate import db, events
from faregate.pb.events.v1.usage_pb2 import UsageBatch, UsageRecord
from services.billing.consumer import UsageConsumer
from services.billing.ledger import Ledger
from tests.harness import Infra
from tests.unit.billing.test_ledger import usage


async def test_a_batch_redelivered_after_a_failure_dead_letters_its_bad_record_once(
    infra: Infra, tmp_path: Path
) -> None:
    """Auth cannot answer the first time, so the batch is redelivered: its good record is
    applied once and its invalid record dead-lettered (and counted) once, not per delivery."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'billing.db'}"
    await db.upgrade_async("billing", url)
    engine = db.make_engine(url)
    nc = await nats.connect(infra.nats_url)
    tag = secrets.token_hex(4)
    stream = events.UsageStream(f"consumer-test-{tag}", f"consumer.test.{tag}")
    js = nc.jetstream()
    await events.ensure_stream(js, stream)
    asked = 0

    async def auth_down_once(account_ids: Iterable[str]) -> set[str]:
        nonlocal asked
        asked += 1
        if asked == 1:
            raise ConnectionError("auth is unreachable")
        return set()

    consumer = UsageConsumer(
        js, stream, Ledger(db.make_sessionmaker(engine)), max_wait=0.05, unknown_accounts=auth_down_once
    )
    task = asyncio.create_task(consumer.run())
    try:
        good, bad = usage(f"req_{tag}_good", cost=100), usage(f"req_{tag}_bad", cost=-5)
        await js.publish(
            stream.subject,
            UsageBatch(records=[good, bad]).SerializeToString(),
            headers={events.BATCH_HEADER: "1", "Nats-Msg-Id": f"{good.request_id}+1"},
        )
        async with asyncio.timeout(30):
            while consumer.stats.applied < 1:
                await asyncio.sleep(0.05)
        info = await js.stream_info(stream.name, subjects_filter=stream.dead_letter_subject)
        assert asked == 2  # delivered twice
        assert (consumer.stats.applied, consumer.stats.dead_lettered) == (1, 1)
        assert info.state.subjects == {stream.dead_letter_subject: 1}
        dead = await js.get_last_msg(stream.name, stream.dead_letter_subject)
        assert UsageRecord.FromString(dead.data).request_id == bad.request_id
        assert dead.headers and dead.headers["Faregate-Reason"] == "UsageRecord with negative cost or tokens"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await js.delete_stream(stream.name)
        await nc.close()
        await engine.dispose()
