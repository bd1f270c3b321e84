"""The edge's slot releases: carried by the next admission, or flushed in one call when idle,
and retried until auth has them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from services.edge.callers import GrantReturn, SlotRelease
from services.edge.slots import SlotReleases
from tests.unit.edge.fakes import FakeAuth
from tests.waiting import Sleeps, settled


def slot(n: int) -> SlotRelease:
    return SlotRelease("k", f"s{n}")


@contextlib.asynccontextmanager
async def flushing(releases: SlotReleases) -> AsyncIterator[None]:
    task = asyncio.create_task(releases.flusher.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_releases_ride_on_the_next_admission_or_flush_when_idle() -> None:
    auth, sleeps = FakeAuth(), Sleeps()
    releases = SlotReleases(auth, delay=0.05, sleep=sleeps)
    releases.add(slot(1))
    releases.add(slot(2))
    assert releases.take() == [slot(1), slot(2)]  # an Authenticate carries them
    async with flushing(releases):
        await settled(lambda: sleeps.delays == [0.05])
        assert auth.released == []  # nothing left for a call of its own
        releases.add(slot(3))
        releases.add(slot(4))
        await settled(lambda: auth.released == [slot(3), slot(4)])  # idle: one ReleaseMany for both
    releases.give_back([slot(5)], [])  # the Authenticate that carried it failed
    await releases.close()
    assert auth.released[-1] == slot(5)


async def test_a_failed_flush_is_retried_until_auth_has_it() -> None:
    auth, sleeps = FakeAuth(), Sleeps()
    auth.outage.left = 10  # longer than any fixed number of tries
    releases = SlotReleases(auth, delay=0.01, sleep=sleeps)
    async with flushing(releases):
        releases.add(slot(1))
        releases.add_return(GrantReturn("k", 2, 60))
        await settled(lambda: auth.released == [slot(1)])
    assert auth.returned == [GrantReturn("k", 2, 60)] and auth.outage.left == 0
    assert sleeps.delays[1:4] == [0.1, 0.2, 0.4]  # backing off


async def test_returned_admissions_ride_on_the_next_admission_or_flush_with_the_releases() -> None:
    auth = FakeAuth()
    releases = SlotReleases(auth, delay=0.05, sleep=Sleeps())
    releases.add_return(GrantReturn("k", 3, 60))
    assert releases.take_returns() == [GrantReturn("k", 3, 60)]  # an Authenticate carries it
    async with flushing(releases):
        releases.add_return(GrantReturn("k", 4, 60))
        releases.add(slot(1))
        await settled(lambda: auth.returned == [GrantReturn("k", 4, 60)])  # idle: with the releases
        assert auth.released == [slot(1)]
    releases.add_return(GrantReturn("k", 5, 120))
    await releases.close()  # the edge stops: what is left goes now
    assert auth.returned == [GrantReturn("k", 4, 60), GrantReturn("k", 5, 120)]


async def test_the_close_delivers_what_a_stopped_flusher_left() -> None:
    auth, sleeps = FakeAuth(), Sleeps()
    auth.outage.left = 3
    releases = SlotReleases(auth, delay=0.01, sleep=sleeps)
    async with flushing(releases):
        releases.add(slot(1))
        await settled(lambda: auth.outage.left == 1)  # stopped in the middle of retrying
    assert await releases.close()
    assert auth.released == [slot(1)]
