"""Redis counters across a kill -9 of Redis itself: what its append-only file keeps, auth keeps.

A private redis-server on a free port (never the machine's own), with ``appendonly yes``.
With ``appendfsync always`` every counted admission is on disk before Redis answers, so the
counts survive exactly; the README says what ``everysec`` (Redis's default) may lose.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.auth.limits import AdmitCheck, RedisCounters
from tests.redis_server import PrivateRedis

NOW = 1_800_000_010.0

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def counters(redis_server: PrivateRedis) -> AsyncIterator[list[RedisCounters]]:
    made: list[RedisCounters] = []
    yield made
    for c in made:
        await c.close()


def check(subject: str, rpm: int | None, rpd: int | None) -> AdmitCheck:
    return AdmitCheck(subject, rpm, rpd, None, None, "conc:{" + subject + "}", "", 60.0, NOW)


async def test_counts_survive_a_kill_of_redis_with_its_append_only_file(
    redis_server: PrivateRedis, counters: list[RedisCounters]
) -> None:
    before = RedisCounters.from_url(redis_server.url, "fg:")
    counters.append(before)
    assert [(await before.admit(check("key_1", 3, None))).refused for _ in range(3)] == [None] * 3
    assert (await before.admit(check("key_2", None, 2))).refused is None
    redis_server.kill()
    redis_server.start()  # replays appendonly.aof from the same directory
    after = RedisCounters.from_url(redis_server.url, "fg:")
    counters.append(after)
    assert (await after.admit(check("key_1", 3, None))).refused == "rpm"
    assert (await after.admit(check("key_2", None, 2))).refused is None
    assert (await after.admit(check("key_2", None, 2))).refused == "requests_per_day"
