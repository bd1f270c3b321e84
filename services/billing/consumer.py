"""The ledger's JetStream consumer: durable, pull-based, ack only after commit.

Records are fetched in batches and applied in one transaction; a batch is acknowledged only
when its transaction has committed, so a crash at any point means redelivery, and
redelivery is a no-op (the ledger is idempotent on request id). A message that cannot be
decoded or applied on its own goes to the dead-letter subject with its reason and is
counted; nothing is dropped silently: a dead letter that cannot be published is retried
until it is, and the batch is acknowledged only after.

``run`` is a supervised component (faregate/runtime.py): when it fails it is restarted, and
while it is down (or NATS is) ``stats.connected`` is false.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from faregate.events import UsageStream, pull_batches, records_of
from faregate.pb.events.v1.usage_pb2 import UsageRecord
from services.billing.ledger import Ledger
from services.billing.storage import USAGE_STRING_LIMITS

log = logging.getLogger(__name__)

DURABLE = "billing-ledger"
MAX_RECORD_COST_MICROS = 10_000 * 1_000_000  # one request costing more than 10,000 USD is a bug upstream of us

UnknownAccounts = Callable[[Iterable[str]], Awaitable[set[str]]]


async def _all_known(account_ids: Iterable[str]) -> set[str]:
    return set()


def _linked() -> bool:
    return True


@dataclass
class ConsumerStats:
    reaching: bool = False  # the consumer runs and its last fetch reached NATS
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    link: Callable[[], bool] = _linked  # the NATS connection is up

    @property
    def connected(self) -> bool:
        return self.reaching and self.link()


class UsageConsumer:
    def __init__(
        self,
        js: JetStreamContext,
        stream: UsageStream,
        ledger: Ledger,
        *,
        batch: int = 256,
        max_wait: float,  # FAREGATE_USAGE_BATCH_WAIT
        ack_wait: float = 30.0,
        unknown_accounts: UnknownAccounts = _all_known,
        linked: Callable[[], bool] = _linked,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._js = js
        self._stream = stream
        self._ledger = ledger
        self._unknown_accounts = unknown_accounts
        self._batch = batch
        self._max_wait = max_wait
        self._ack_wait = ack_wait
        self._sleep = sleep
        self.stats = ConsumerStats(link=linked)

    async def run(self) -> None:
        sub = await self._js.pull_subscribe(
            self._stream.subject,
            durable=DURABLE,
            stream=self._stream.name,
            config=ConsumerConfig(
                durable_name=DURABLE,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self._ack_wait,
                max_ack_pending=20_000,
                filter_subject=self._stream.subject,
            ),
        )
        self.stats.reaching = True
        try:
            batches = pull_batches(sub, self._batch, fill_wait=self._max_wait, reached=self._reached)
            async with contextlib.aclosing(batches):
                async for msgs in batches:
                    await self.handle(msgs)
        finally:
            self.stats.reaching = False

    def _reached(self, ok: bool) -> None:
        self.stats.reaching = ok

    async def handle(self, msgs: list[Msg]) -> None:
        """Apply the records of a fetch in one transaction. A message that does not decode is
        dead-lettered whole; a record that is invalid or of an unknown account is dead-lettered
        alone (the rest of its message is applied); a message is acknowledged once all its
        records are applied or dead-lettered, and redelivered if applying failed.

        Dead letters are published only once the batch is settled (applied, or nothing to
        apply), each with a message id drawn from its message's stream sequence: a batch
        redelivered after a failure, or after a crash between publishing and acking, does not
        dead-letter (nor count) the same record twice."""
        records: list[tuple[UsageRecord, str]] = []  # (record, its dead-letter id)
        dead: list[tuple[bytes, str, str, str]] = []  # (data, subject, reason, id)
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            try:
                found = records_of(msg)
            except DecodeError:
                dead.append((msg.data, msg.subject, "malformed UsageRecord", f"dead:{seq}"))
                continue
            for i, record in enumerate(found):
                if problem := _invalid(record):
                    dead.append((record.SerializeToString(), msg.subject, problem, f"dead:{seq}:{i}"))
                else:
                    records.append((record, f"dead:{seq}:{i}"))
        if records:
            try:
                unknown = await self._unknown_accounts({r.account_id for r, _ in records})
            except Exception as exc:  # auth unreachable: try the batch again later, drop nothing
                log.warning(
                    "cannot check accounts of %d usage records (%s); they will be redelivered", len(records), exc
                )
                await self._nak(msgs)
                return
            for r, dead_id in records:
                if r.account_id in unknown:
                    dead.append(
                        (r.SerializeToString(), self._stream.subject, f"unknown account {r.account_id!r}", dead_id)
                    )
            known = [r for r, _ in records if r.account_id not in unknown]
            try:
                result = await self._ledger.apply_usage(known) if known else None
            except Exception:
                log.exception("applying %d usage records failed; they will be redelivered", len(known))
                await self._nak(msgs)
                return
            if result is not None:
                self.stats.applied += result.applied
                self.stats.duplicates += result.duplicates
                if result.duplicates:
                    log.info(
                        "%d usage records were already applied (redelivered or republished): no-ops",
                        result.duplicates,
                    )
        for data, subject, reason, dead_id in dead:
            await self._dead_letter(data, subject, reason, dead_id)
        for msg in msgs:
            await msg.ack()

    @staticmethod
    async def _nak(msgs: list[Msg]) -> None:
        for msg in msgs:
            await msg.nak(delay=1.0)

    async def _dead_letter(self, data: bytes, subject: str, reason: str, dead_id: str) -> None:
        """Publish one dead letter, retried (same message id) until JetStream has it: its
        batch is not acknowledged before, so not even a crash loses it."""
        delay = 0.1
        while True:
            try:
                ack = await self._js.publish(
                    self._stream.dead_letter_subject,
                    data,
                    headers={"Faregate-Reason": reason, "Faregate-Subject": subject, "Nats-Msg-Id": dead_id},
                )
                break
            except Exception as exc:  # NATS down or slow: the record waits, unacknowledged
                self.stats.reaching = False  # stuck: /health says so until a fetch works again
                if delay == 0.1:
                    log.warning("dead letter %s not published (%s); retrying until it is", dead_id, exc)
                await self._sleep(delay)
                delay = min(delay * 2, 5.0)
        if ack.duplicate:  # dead-lettered by an earlier delivery of the same message
            return
        self.stats.dead_lettered += 1
        log.error("usage record dead-lettered: %s", reason)


def _invalid(r: UsageRecord) -> str | None:
    if not r.request_id:
        return "UsageRecord without request_id"
    if not r.account_id:
        return "UsageRecord without account_id"
    if r.cost_micros < 0 or r.prompt_tokens < 0 or r.completion_tokens < 0:
        return "UsageRecord with negative cost or tokens"
    if r.cost_micros > MAX_RECORD_COST_MICROS:
        return "UsageRecord with an absurd cost"
    for name, limit in USAGE_STRING_LIMITS.items():
        if len(getattr(r, name)) > limit:
            return f"UsageRecord with {name} over {limit} characters"
    return None
