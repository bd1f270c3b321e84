"""Unary calls on long-lived streams (faregate/callstream.py) over a real grpc.aio server.

The servicer here is a stand-in with scripted answers: what is under test is the transport —
matching results to calls, carrying errors, deadlines, a server going away and coming back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from faregate import processes
from faregate.callstream import CallServer, CallStream, Replica
from faregate.errors import FaregateError, InsufficientBalance, RateLimited, ServiceUnavailable
from faregate.grpc import insecure_channel, start_server
from faregate.pb.auth.v1 import auth_pb2 as pb
from faregate.pb.auth.v1 import auth_pb2_grpc
from faregate.pb.rpc.v1 import calls_pb2


class Scripted(auth_pb2_grpc.AuthServiceServicer):
    """Authenticate answers by the key it is given: ``wait:<ms>:<id>``, ``limit``, ``funds``, ``crash``."""

    def __init__(self) -> None:
        self.calls = CallServer()
        self._stream = self.calls.handler(self.Authenticate, pb.AuthenticateRequest)
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.messages: list[int] = []  # calls in each message received

    async def Authenticate(self, request: pb.AuthenticateRequest, context: object) -> pb.AuthenticateResponse:
        key = request.api_key
        if key.startswith("wait:"):
            _, ms, ident = key.split(":")
            await asyncio.sleep(int(ms) / 1000)
            return pb.AuthenticateResponse(key_id=ident)
        if key == "limit":
            raise RateLimited("rate limit exceeded: 1 requests per minute", code="rpm_exceeded", retry_after=7)
        if key == "funds":
            raise InsufficientBalance("insufficient funds", code="insufficient_funds")
        if key == "crash":
            raise KeyError("a bug")
        if key == "hold":
            self.started.set()
            await self.release.wait()
            return pb.AuthenticateResponse(key_id="held")
        return pb.AuthenticateResponse(key_id=key)

    async def AuthenticateStream(
        self, request_iterator: AsyncIterator[calls_pb2.Calls], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[calls_pb2.Results]:
        async def counted() -> AsyncIterator[calls_pb2.Calls]:
            async for message in request_iterator:
                self.messages.append(len(message.calls))
                yield message

        async for result in self._stream(counted(), context):
            yield result


async def serve(addr: str) -> tuple[grpc.aio.Server, Scripted]:
    servicer = Scripted()
    server, _ = await start_server(
        addr, lambda s: auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, s), ["faregate.auth.v1.AuthService"]
    )
    return server, servicer


@dataclass
class Wired:
    addr: str
    server: grpc.aio.Server
    servicer: Scripted
    calls: CallStream[pb.AuthenticateRequest, pb.AuthenticateResponse]

    async def restart(self) -> None:
        self.server, self.servicer = await serve(self.addr)


@pytest.fixture(params=[2, 1], ids=["2 lanes", "1 lane"])
async def wired(request: pytest.FixtureRequest) -> AsyncIterator[Wired]:
    addr = f"127.0.0.1:{processes.free_port()}"
    server, servicer = await serve(addr)
    channel = insecure_channel(addr)
    stub = auth_pb2_grpc.AuthServiceStub(channel)
    replicas = [Replica(channel, stub.AuthenticateStream) for _ in range(request.param)]
    w = Wired(addr, server, servicer, CallStream(replicas, pb.AuthenticateResponse))
    try:
        yield w
    finally:
        await w.calls.close()
        await channel.close()
        await w.server.stop(None)


async def test_each_caller_gets_its_own_answer_whatever_the_order(wired: Wired) -> None:
    # later calls finish first: answers come back out of order on the same streams
    keys = [f"wait:{(40 - i) % 13}:{i}" for i in range(40)]
    replies = await asyncio.gather(*(wired.calls(pb.AuthenticateRequest(api_key=k), 5) for k in keys))
    assert [r.key_id for r in replies] == [str(i) for i in range(40)]


async def test_calls_queued_together_travel_in_one_message_and_are_answered_each(wired: Wired) -> None:
    keys = [f"batch{i}" for i in range(200)]
    replies = await asyncio.gather(*(wired.calls(pb.AuthenticateRequest(api_key=k), 5) for k in keys))
    assert [r.key_id for r in replies] == keys
    assert sum(wired.servicer.messages) == 200
    assert len(wired.servicer.messages) < 20  # queued while a message was written: sent together


async def test_errors_arrive_as_the_error_the_servicer_raised(wired: Wired) -> None:
    with pytest.raises(RateLimited) as limited:
        await wired.calls(pb.AuthenticateRequest(api_key="limit"), 5)
    assert limited.value.status == 429
    assert limited.value.code == "rpm_exceeded"
    assert limited.value.retry_after == 7
    assert "1 requests per minute" in limited.value.message
    with pytest.raises(InsufficientBalance) as short:
        await wired.calls(pb.AuthenticateRequest(api_key="funds"), 5)
    assert short.value.status == 402
    with pytest.raises(FaregateError) as crashed:
        await wired.calls(pb.AuthenticateRequest(api_key="crash"), 5)
    assert crashed.value.status == 500
    assert "a bug" not in crashed.value.message
    # a failed call does not break the stream for the next one
    assert (await wired.calls(pb.AuthenticateRequest(api_key="fine"), 5)).key_id == "fine"


async def test_a_call_past_its_deadline_is_a_retryable_503_and_others_go_on(wired: Wired) -> None:
    with pytest.raises(ServiceUnavailable) as late:
        await wired.calls(pb.AuthenticateRequest(api_key="hold"), 0.2)
    assert late.value.status == 503
    assert late.value.retry_after == 1
    wired.servicer.release.set()  # its answer now arrives for a caller that left: dropped
    assert (await wired.calls(pb.AuthenticateRequest(api_key="after"), 5)).key_id == "after"


async def test_server_gone_fails_calls_in_flight_then_a_new_stream_finds_it_again(wired: Wired) -> None:
    waiting = asyncio.create_task(wired.calls(pb.AuthenticateRequest(api_key="hold"), 30))
    await wired.servicer.started.wait()
    await wired.server.stop(None)  # no grace: the stream breaks under the waiting call
    with pytest.raises(ServiceUnavailable):
        await waiting
    await wired.restart()
    for _attempt in range(50):  # the channel reconnects within its backoff (≤ 1 s)
        try:
            reply = await wired.calls(pb.AuthenticateRequest(api_key="back"), 5)
            break
        except ServiceUnavailable:
            await asyncio.sleep(0.1)
    else:
        pytest.fail("the call stream never came back after the server restarted")
    assert reply.key_id == "back"


async def test_closing_answers_the_calls_taken_in_and_ends_the_streams(wired: Wired) -> None:
    waiting = asyncio.create_task(wired.calls(pb.AuthenticateRequest(api_key="hold"), 30))
    await wired.servicer.started.wait()
    closing = asyncio.create_task(wired.servicer.calls.close())
    await asyncio.sleep(0.05)
    assert not closing.done()  # it waits for the call in flight
    wired.servicer.release.set()
    assert (await waiting).key_id == "held"
    await closing
    # a stopping server takes no new calls: with no other replica, that is a 503
    with pytest.raises(ServiceUnavailable):
        await wired.calls(pb.AuthenticateRequest(api_key="late"), 5)


async def test_a_stopping_replica_sends_new_calls_to_the_other() -> None:
    addrs = [f"127.0.0.1:{processes.free_port()}" for _ in range(2)]
    servers = [await serve(a) for a in addrs]
    channels = [insecure_channel(a) for a in addrs]
    calls = CallStream(
        [Replica(ch, auth_pb2_grpc.AuthServiceStub(ch).AuthenticateStream) for ch in channels],
        pb.AuthenticateResponse,
    )
    try:
        for i in range(4):  # a lane open on each replica
            assert (await calls(pb.AuthenticateRequest(api_key=f"warm{i}"), 5)).key_id == f"warm{i}"
        await servers[0][1].calls.close()  # the first replica is stopping (its gRPC server still up)
        replies = await asyncio.gather(*(calls(pb.AuthenticateRequest(api_key=f"k{i}"), 5) for i in range(10)))
        assert [r.key_id for r in replies] == [f"k{i}" for i in range(10)]
    finally:
        await calls.close()
        for ch in channels:
            await ch.close()
        for server, _ in servers:
            await server.stop(None)
