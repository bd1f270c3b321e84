"""The ledger's consumer under its supervisor, against a real NATS JetStream and a real ledger:
a commit that fails and dead letters that cannot be published lose nothing and apply nothing
twice."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import nats
from sqlalchemy import event

from faregate import db, events
from faregate.pb.events.v1.usage_pb2 import UsageBatch
from faregate.runtime import State, Supervisor
from services.billing.consumer import UsageConsumer
from services.billing.ledger import Ledger
from tests.harness import Infra
from tests.unit.billing.test_ledger import usage


class RefusingDeadLetters:
    """The consumer's JetStream, with its first ``times`` dead-letter publishes refused (as
    when NATS is unreachable); everything else goes to the real one."""

    def __init__(self, js: Any, subject: str, times: int) -> None:
        self._js = js
        self._subject = subject
        self.refused = 0
        self._times = times

    async def publish(self, subject: str, *args: Any, **kw: Any) -> Any:
        if subject == self._subject and self.refused < self._times:
            self.refused += 1
            raise nats.errors.ConnectionClosedError
        return await self._js.publish(subject, *args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._js, name)


async def no_wait(delay: float) -> None:
    await asyncio.sleep(0.01)


async def test_a_failed_commit_and_refused_dead_letters_apply_each_record_exactly_once(
    infra: Infra, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'billing.db'}"
    await db.upgrade_async("billing", url)
    engine = db.make_engine(url)
    commits_to_fail = [1]

    @event.listens_for(engine.sync_engine, "commit")
    def fail_once(conn: Any) -> None:
        if commits_to_fail[0]:
            commits_to_fail[0] -= 1
            raise ConnectionError("the database went away mid-commit")

    nc = await nats.connect(infra.nats_url)
    tag = secrets.token_hex(4)
    stream = events.UsageStream(f"recovery-test-{tag}", f"recovery.test.{tag}")
    real = nc.jetstream()
    await events.ensure_stream(real, stream)
    js = RefusingDeadLetters(real, stream.dead_letter_subject, times=5)
    ledger = Ledger(db.make_sessionmaker(engine))
    consumer = UsageConsumer(js, stream, ledger, max_wait=0.05, ack_wait=60, sleep=no_wait)  # type: ignore[arg-type]
    supervisor = Supervisor("billing-test", sleep=no_wait)
    supervisor.add("usage-consumer", consumer.run, ready=lambda: consumer.stats.connected)
    account = f"acc_{tag}"
    good = [usage(f"req_{tag}_{i}", cost=100 + i) for i in range(3)]
    for r in good:
        r.account_id = account
    bad = usage(f"req_{tag}_bad", cost=-5)
    try:
        supervisor.start()
        await real.publish(
            stream.subject,
            UsageBatch(records=[good[0], bad, good[1]]).SerializeToString(),
            headers={events.BATCH_HEADER: "1", "Nats-Msg-Id": f"{good[0].request_id}+2"},
        )
        await real.publish(stream.subject, good[2].SerializeToString(), headers={"Nats-Msg-Id": good[2].request_id})
        async with asyncio.timeout(30):
            while consumer.stats.applied < 3 or consumer.stats.dead_lettered < 1:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # room for a wrong second application to show
        assert commits_to_fail == [0] and js.refused == 5  # both failures happened
        assert (consumer.stats.applied, consumer.stats.dead_lettered) == (3, 1)
        entries = await ledger.entries(account, limit=100)
        assert sorted(e["request_id"] for e in entries) == sorted(r.request_id for r in good)
        assert sum(e["amount_micros"] for e in entries) == -(100 + 101 + 102)
        info = await real.stream_info(stream.name, subjects_filter=stream.dead_letter_subject)
        assert info.state.subjects == {stream.dead_letter_subject: 1}
        consumers = await real.consumers_info(stream.name)
        assert [c.num_ack_pending for c in consumers] == [0]  # acked once the dead letter was in
        async with asyncio.timeout(10):  # down while the dead letter waited, up at the next fetch
            while not supervisor.serving:
                await asyncio.sleep(0.05)
        assert supervisor.health()[0].state is State.RUNNING
    finally:
        await supervisor.stop()
        await real.delete_stream(stream.name)
        await nc.close()
        await engine.dispose()
