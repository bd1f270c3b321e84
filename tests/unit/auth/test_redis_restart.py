"""Redis counters across a kill -9 of Redis itself: what its append-only file keeps, auth keeps.

A private redis-server on a free port (never the machine's own), with ``appendonly yes``.
With ``appendfsync always`` every counted admission is on disk before Redis answers, so the
counts survive exactly; the README says what ``everysec`` (Redis's default) may lose.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from faregate import processes
from services.auth.limits import AdmitCheck, RedisCounters
from tests.harness import wait_for

NOW = 1_800_000_010.0
_ARGS = ("redis-server", "--bind", "127.0.0.1", "--appendonly", "yes", "--appendfsync", "always", "--save", "")

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


class PrivateRedis:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = processes.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*_ARGS, "--port", str(self.port), "--dir", str(self.home)],
            stdout=subprocess.DEVNULL,
        )

        def answers() -> bool:
            done = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True)
            return done.stdout.strip() == "PONG"

        wait_for(answers, what="the private redis-server")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no shutdown save
        self.proc.wait()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
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
