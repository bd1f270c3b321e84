"""Streamed calls on long-lived streams (faregate/callstream.py, ADR 10) over a real grpc.aio server.

The servicer is a stand-in whose ChatCompletion yields what the request body scripts: the
transport is under test — results in order per call, chunks of many calls sharing messages,
each call's window, cancellation reaching the server, errors and a server going away.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest

from faregate import processes
from faregate.callstream import WINDOW, CallServer, CallStream, Replica
from faregate.errors import RateLimited, ServiceUnavailable
from faregate.grpc import insecure_channel, start_server
from faregate.pb.router.v1 import router_pb2 as pb
from faregate.pb.router.v1 import router_pb2_grpc
from faregate.pb.rpc.v1 import calls_pb2


@dataclass
class Scripted(router_pb2_grpc.RouterServiceServicer):
    """ChatCompletion by body: ``count:N`` yields N chunks; ``fail:K`` K chunks then a 429;
    ``forever`` yields until stopped, ``stall`` never yields (both set ``stopped`` when stopped)."""

    calls: CallServer = field(default_factory=CallServer)
    produced: dict[str, int] = field(default_factory=dict)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    messages: list[int] = field(default_factory=list)  # results in each message sent

    def __post_init__(self) -> None:
        self._stream = self.calls.streaming_handler(self.ChatCompletion, pb.CompletionRequest)

    async def ChatCompletion(
        self, request: pb.CompletionRequest, context: object
    ) -> AsyncGenerator[pb.CompletionChunk]:
        verb, _, arg = request.body.decode().partition(":")
        rid = request.request_id
        self.produced[rid] = 0
        if verb == "stall":
            try:
                await asyncio.Event().wait()
            finally:
                self.stopped.set()
        if verb == "forever":
            try:
                while True:
                    self.produced[rid] += 1
                    yield pb.CompletionChunk(data=b"%d" % self.produced[rid])
                    await asyncio.sleep(0.001)
            finally:
                self.stopped.set()
        for i in range(int(arg)):
            self.produced[rid] += 1
            yield pb.CompletionChunk(data=f"{rid}/{i}".encode())
            await asyncio.sleep(0)
        if verb == "fail":
            raise RateLimited("slow down", code="rpm_exceeded", retry_after=3)

    async def ChatCompletionStream(
        self, request_iterator: AsyncIterator[calls_pb2.Calls], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[calls_pb2.Results]:
        async for message in self._stream(request_iterator, context):
            self.messages.append(len(message.results))
            yield message


@dataclass
class Wired:
    server: grpc.aio.Server
    servicer: Scripted
    calls: CallStream[pb.CompletionRequest, pb.CompletionChunk]


@pytest.fixture
async def wired() -> AsyncIterator[Wired]:
    addr = f"127.0.0.1:{processes.free_port()}"
    servicer = Scripted()
    server, _ = await start_server(
        addr,
        lambda s: router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, s),
        ["faregate.router.v1.RouterService"],
    )
    channel = insecure_channel(addr)
    stub = router_pb2_grpc.RouterServiceStub(channel)
    w = Wired(server, servicer, CallStream([Replica(channel, stub.ChatCompletionStream)], pb.CompletionChunk))
    try:
        yield w
    finally:
        await w.calls.close()
        await channel.close()
        await server.stop(None)


def request(rid: str, body: str) -> pb.CompletionRequest:
    return pb.CompletionRequest(request_id=rid, body=body.encode())


async def read_all(wired: Wired, rid: str, body: str) -> list[bytes]:
    call = wired.calls.stream(request(rid, body))
    out = []
    while (chunk := await call.read(5)) is not None:
        out.append(chunk.data)
    return out


async def test_each_call_gets_its_own_chunks_in_order_and_calls_share_messages(wired: Wired) -> None:
    got = await asyncio.gather(*(read_all(wired, f"r{i}", "count:150") for i in range(20)))
    for i, chunks in enumerate(got):
        assert chunks == [f"r{i}/{k}".encode() for k in range(150)]  # past the window: credit flowed
    sent = sum(wired.servicer.messages)
    assert sent >= 20 * 151  # every chunk and every end
    assert len(wired.servicer.messages) < sent / 3  # chunks of different calls travelled together


async def test_a_caller_that_does_not_read_holds_the_server_at_its_window(wired: Wired) -> None:
    call = wired.calls.stream(request("slow", "count:1000"))
    await asyncio.sleep(0.3)
    assert wired.servicer.produced["slow"] <= WINDOW + 1  # one more made, waiting for credit
    for _ in range(WINDOW):
        assert await call.read(5) is not None
    await asyncio.sleep(0.3)
    assert WINDOW + 1 < wired.servicer.produced["slow"] <= 2 * WINDOW + 1
    # other calls on the same stream are not held up by the stalled one
    assert len(await read_all(wired, "other", "count:300")) == 300
    call.close()


async def test_closing_a_call_stops_it_on_the_server(wired: Wired) -> None:
    call = wired.calls.stream(request("f", "forever"))
    assert (await call.read(5)) is not None
    call.close()
    await asyncio.wait_for(wired.servicer.stopped.wait(), 5)
    made = wired.servicer.produced["f"]
    await asyncio.sleep(0.1)
    assert wired.servicer.produced["f"] == made  # it made nothing more
    assert len(await read_all(wired, "next", "count:3")) == 3  # the stream goes on


async def test_an_error_after_some_chunks_arrives_after_them(wired: Wired) -> None:
    call = wired.calls.stream(request("e", "fail:5"))
    chunks = [await call.read(5) for _ in range(5)]
    assert [c.data for c in chunks if c] == [f"e/{k}".encode() for k in range(5)]
    with pytest.raises(RateLimited) as limited:
        await call.read(5)
    assert limited.value.retry_after == 3


async def test_a_server_gone_mid_call_is_a_retryable_503_for_the_reader(wired: Wired) -> None:
    call = wired.calls.stream(request("g", "forever"))
    assert (await call.read(5)) is not None
    await wired.server.stop(None)
    with pytest.raises(ServiceUnavailable):
        while await call.read(5) is not None:
            pass


async def test_a_first_result_that_does_not_come_in_time_is_a_503(wired: Wired) -> None:
    assert await read_all(wired, "empty", "count:0") == []  # an empty call simply ends
    call = wired.calls.stream(request("s", "stall"))
    with pytest.raises(ServiceUnavailable):
        await call.read(0.2)
    call.close()
    await asyncio.wait_for(wired.servicer.stopped.wait(), 5)  # the server stopped it
