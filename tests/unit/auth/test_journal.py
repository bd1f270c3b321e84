"""The in-process counters journaled to auth's (SQLite) database: a restart keeps them (ADR 16)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from faregate import db
from faregate.errors import ServiceUnavailable
from services.auth.journal import CounterJournal
from services.auth.limits import AdmitCheck, LocalCounters

NOW = 1_800_000_010.0  # 10 s into a minute


def check(subject: str = "key_1", *, rpm: int | None = 3, rpd: int | None = 5, conc: int | None = None, **kw: Any):
    return AdmitCheck(subject, rpm, rpd, None, conc, "conc:{" + subject + "}", kw.pop("slot", ""), 60.0, NOW, **kw)


@pytest.fixture
async def engines(tmp_path: Path) -> AsyncIterator[Callable[[], AsyncEngine]]:
    """Engines on one database file: each call is a new process's view of it."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    await db.upgrade_async("auth", url)
    made: list[AsyncEngine] = []

    def engine() -> AsyncEngine:
        made.append(db.make_engine(url))
        return made[-1]

    yield engine
    for e in made:
        await e.dispose()


async def started(engine: AsyncEngine) -> tuple[LocalCounters, CounterJournal]:
    journal = CounterJournal(db.make_sessionmaker(engine), clock=lambda: NOW)
    return await LocalCounters.restored(journal, clock=lambda: NOW), journal


async def test_counts_and_slots_survive_a_restart_without_close(engines: Callable[[], AsyncEngine]) -> None:
    first, _ = await started(engines())
    for i in range(3):
        assert (await first.admit(check(conc=4, slot=f"s{i}"))).refused is None
    await first.release("conc:{key_1}", "s0")
    assert (await first.admit(check("key_2", rpm=None, rpd=1))).refused is None
    # a second process on the same file, the first never closed (as after kill -9): the
    # admissions it answered are on disk, so the minute's and the day's limits stay exact
    second, _ = await started(engines())
    assert (await second.admit(check(conc=4, slot="s3"))).refused == "rpm"
    assert (await second.admit(check("key_2", rpm=None, rpd=1))).refused == "requests_per_day"
    # s1 and s2 still hold their slots; s0's release reached the table with key_2's admission
    assert (await second.admit(check("key_3", conc=1, slot="x"))).refused is None
    third, _ = await started(engines())
    assert third._slots["conc:{key_1}"].keys() == {"s1", "s2"}


async def test_one_write_per_turn_carries_every_decision_of_that_turn(engines: Callable[[], AsyncEngine]) -> None:
    counters, journal = await started(engines())
    decisions = await asyncio.gather(*(counters.admit(check(f"key_{i}", rpm=10)) for i in range(50)))
    assert [d.refused for d in decisions] == [None] * 50
    assert journal.writes == 1
    await counters.admit(check("key_0", rpm=10))
    assert journal.writes == 2


async def test_an_admission_is_answered_only_once_it_is_written(engines: Callable[[], AsyncEngine]) -> None:
    counters, journal = await started(engines())
    written = asyncio.Event()
    write = journal._write

    async def slow(*args: Any) -> None:
        await written.wait()
        await write(*args)

    journal._write = slow  # type: ignore[method-assign]
    admitted = asyncio.ensure_future(counters.admit(check()))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not admitted.done() and journal.writes == 0
    written.set()
    assert (await admitted).refused is None and journal.writes == 1


async def test_a_failed_write_fails_its_admissions_and_is_written_with_the_next(
    engines: Callable[[], AsyncEngine],
) -> None:
    engine = engines()
    counters, journal = await started(engine)
    write = journal._write
    failures = [RuntimeError("disk full")]

    async def flaky(*args: Any) -> None:
        if failures:
            raise failures.pop()
        await write(*args)

    journal._write = flaky  # type: ignore[method-assign]
    with pytest.raises(ServiceUnavailable):
        await counters.admit(check())
    assert (await counters.admit(check())).refused is None  # the count is 2 now, both written
    restarted, _ = await started(engines())
    assert (await restarted.admit(check())).refused is None
    assert (await restarted.admit(check())).refused == "rpm"


async def test_tokens_are_not_journaled(engines: Callable[[], AsyncEngine]) -> None:
    """Token counts are rebuilt from the usage stream at start: journaling them too would
    count them twice."""
    counters, journal = await started(engines())
    await counters.add("tpd:{key_1}:20270115", 500, 3600)
    await journal.close()
    restarted, _ = await started(engines())
    assert await restarted.get("tpd:{key_1}:20270115") == 0
    assert await counters.get("tpd:{key_1}:20270115") == 500
