"""Counters that survive a restart without Redis (ADR 16).

The in-process counters (services/auth/limits.py ``LocalCounters``) note every change of a
request count or a concurrency slot here; the journal writes what was noted to auth's
database in one transaction per event-loop turn, so every decision of a turn shares one
write (and under load, every decision made while the previous write ran). An admission
waits for the write that holds it before auth answers: a process killed at any moment has
answered only admissions that are on disk, and the next start rebuilds the counters from
the table. A failed write fails the admissions waiting for it (503) and keeps their
changes for the next write: counts are written as absolute values, so a later write is
still right, and a count that was never answered only errs towards refusing.

Token counts are not journaled: auth rebuilds them from the usage stream at start
(services/auth/usage.py). Slot releases and renewals are written with the next batch but
not waited for: a lost release only keeps a slot until its lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import BigInteger, Column, MetaData, String, Table, delete, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import async_sessionmaker

from faregate.errors import ServiceUnavailable

log = logging.getLogger(__name__)

SWEEP_S = 60.0  # expired rows are deleted about this often

metadata = MetaData()

limit_counts = Table(
    "limit_counts",
    metadata,
    Column("bucket", String(200), primary_key=True),
    Column("count", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
)

limit_slots = Table(
    "limit_slots",
    metadata,
    Column("bucket", String(200), primary_key=True),
    Column("slot", String(64), primary_key=True),
    Column("expires_at_ms", BigInteger, nullable=False),
)

Counts = dict[str, tuple[int, float]]  # bucket -> (count, expires_at)
Slots = dict[str, dict[str, float]]  # bucket -> slot -> expires_at


class CounterJournal:
    def __init__(self, sessions: async_sessionmaker[Any], clock: Callable[[], float] = time.time) -> None:
        self._sessions = sessions
        self._clock = clock
        self._counts: Counts = {}  # noted, not yet written
        self._slots: dict[tuple[str, str], float | None] = {}  # None: released
        self._done: asyncio.Future[None] | None = None  # resolved when what is noted is written
        self._writer: asyncio.Task[None] | None = None
        self._swept = clock()
        self.writes = 0  # transactions written (tests, metrics)

    # -- what the counters note ---------------------------------------------------------

    def count(self, bucket: str, count: int, expires_at: float) -> None:
        self._counts[bucket] = (count, expires_at)
        self._schedule()

    def slot(self, bucket: str, slot: str, expires_at: float | None) -> None:
        """A slot taken or renewed until ``expires_at``, or released (None)."""
        self._slots[(bucket, slot)] = expires_at
        self._schedule()

    async def durable(self) -> None:
        """Wait until everything noted so far is written (ServiceUnavailable if it failed)."""
        if self._done is None:
            if not (self._counts or self._slots):
                return
            self._done = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._done)

    # -- start and stop -----------------------------------------------------------------

    async def load(self) -> tuple[Counts, Slots]:
        """The live counts and slots, as the last process left them."""
        now_ms = int(self._clock() * 1000)
        counts: Counts = {}
        slots: Slots = {}
        async with self._sessions() as s:
            for bucket, count, expires in await s.execute(
                select(limit_counts).where(limit_counts.c.expires_at_ms > now_ms)
            ):
                counts[bucket] = (int(count), expires / 1000)
            for bucket, slot, expires in await s.execute(
                select(limit_slots).where(limit_slots.c.expires_at_ms > now_ms)
            ):
                slots.setdefault(bucket, {})[slot] = expires / 1000
        return counts, slots

    async def close(self) -> None:
        """Write what is still noted (releases, refunds) before the process exits."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer
        if self._counts or self._slots:
            self._schedule()
            assert self._writer is not None
            with contextlib.suppress(Exception):
                await self._writer

    # -- the writer -----------------------------------------------------------------------

    def _schedule(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain(), name="counter-journal")

    async def _drain(self) -> None:
        """One write after another until nothing is noted; it ends when the journal is clean
        and the next note starts it again, so it needs no supervisor of its own: a failure
        reaches every admission waiting for it."""
        await asyncio.sleep(0)  # the rest of this turn's decisions join the first write
        while self._counts or self._slots:
            counts, slots, done = self._counts, self._slots, self._done
            self._counts, self._slots, self._done = {}, {}, None
            try:
                await self._write(counts, slots)
            except Exception as exc:
                self._counts = {**counts, **self._counts}  # newer values win: they are absolute
                self._slots = {**slots, **self._slots}
                log.warning("could not write the limit counters: %s", exc)
                if done is not None:
                    done.set_exception(ServiceUnavailable("auth could not record the request count, try again"))
                    done.exception()  # retrieved here: the waiters see it through shield
                return  # the next note tries again
            self.writes += 1
            if done is not None:
                done.set_result(None)

    async def _write(self, counts: Counts, slots: dict[tuple[str, str], float | None]) -> None:
        now = self._clock()
        async with self._sessions.begin() as s:
            insert = pg_insert if s.bind.dialect.name == "postgresql" else sqlite_insert
            rows = [{"bucket": b, "count": c, "expires_at_ms": int(e * 1000)} for b, (c, e) in counts.items()]
            for chunk in _chunks(rows):
                stmt = insert(limit_counts).values(chunk)
                await s.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[limit_counts.c.bucket],
                        set_={"count": stmt.excluded.count, "expires_at_ms": stmt.excluded.expires_at_ms},
                    )
                )
            held = [{"bucket": b, "slot": k, "expires_at_ms": int(e * 1000)} for (b, k), e in slots.items() if e]
            for chunk in _chunks(held):
                stmt = insert(limit_slots).values(chunk)
                await s.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[limit_slots.c.bucket, limit_slots.c.slot],
                        set_={"expires_at_ms": stmt.excluded.expires_at_ms},
                    )
                )
            released = [(b, k) for (b, k), e in slots.items() if e is None]
            for chunk in _chunks(released):
                await s.execute(delete(limit_slots).where(tuple_(limit_slots.c.bucket, limit_slots.c.slot).in_(chunk)))
            if now - self._swept >= SWEEP_S:
                self._swept = now
                cutoff = int(now * 1000)
                await s.execute(delete(limit_counts).where(limit_counts.c.expires_at_ms <= cutoff))
                await s.execute(delete(limit_slots).where(limit_slots.c.expires_at_ms <= cutoff))


def _chunks(rows: list[Any], size: int = 500) -> list[list[Any]]:
    """Statements of at most ``size`` rows: SQLite caps the parameters of one statement."""
    return [rows[i : i + size] for i in range(0, len(rows), size)]
