"""The edge's slot releases: carried by the next admission, or flushed in one call when idle."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from faregate.pb.auth.v1 import auth_pb2
from services.edge.slots import SlotReleases


class RecordingAuth:
    """Stands in for the auth stub's ReleaseMany (the unit under test is the batching)."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.returned: list[tuple[str, int, int]] = []
        self.fail = fail

    async def ReleaseMany(self, batch: auth_pb2.ReleaseBatch, timeout: float) -> auth_pb2.ReleaseResponse:
        self.batches.append([s.slot_id for s in batch.slots])
        self.returned.extend((r.key_id, r.unused, r.window) for r in batch.returned)
        if self.fail:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
        return auth_pb2.ReleaseResponse()


def slot(n: int) -> auth_pb2.ReleaseRequest:
    return auth_pb2.ReleaseRequest(key_id="k", slot_id=f"s{n}")


async def test_releases_ride_on_the_next_admission_or_flush_when_idle() -> None:
    auth: Any = RecordingAuth()
    releases = SlotReleases(auth, delay=0.05)
    releases.add(slot(1))
    releases.add(slot(2))
    assert [s.slot_id for s in releases.take()] == ["s1", "s2"]  # an Authenticate carries them
    await asyncio.sleep(0.1)
    assert auth.batches == []  # nothing left for a call of its own
    releases.add(slot(3))
    releases.add(slot(4))
    await asyncio.sleep(0.1)
    assert auth.batches == [["s3", "s4"]]  # idle: one ReleaseMany for both
    taken = [slot(5)]
    releases.give_back(taken)  # the Authenticate that carried it failed
    await releases.close()
    assert auth.batches[-1] == ["s5"]


async def test_a_failed_flush_is_dropped_quietly() -> None:
    auth: Any = RecordingAuth(fail=True)
    releases = SlotReleases(auth, delay=0.01)
    releases.add(slot(1))
    await asyncio.sleep(0.05)
    assert auth.batches == [["s1"]]  # tried once; the slot's lease is the safety net
    await releases.close()


async def test_returned_admissions_ride_on_the_next_admission_or_flush_and_are_never_sent_twice() -> None:
    auth: Any = RecordingAuth()
    releases = SlotReleases(auth, delay=0.05)
    releases.add_return(auth_pb2.GrantReturn(key_id="k", unused=3, window=60))
    assert [r.unused for r in releases.take_returns()] == [3]  # an Authenticate carries it
    await asyncio.sleep(0.1)
    assert auth.batches == [] and auth.returned == []
    releases.add_return(auth_pb2.GrantReturn(key_id="k", unused=4, window=60))
    releases.add(slot(1))
    await asyncio.sleep(0.1)
    assert auth.batches == [["s1"]] and auth.returned == [("k", 4, 60)]  # idle: with the releases
    releases.add_return(auth_pb2.GrantReturn(key_id="k", unused=5, window=120))
    await releases.close()  # the edge stops: what is left goes now
    assert auth.returned == [("k", 4, 60), ("k", 5, 120)]
