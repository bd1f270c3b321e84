"""Unary calls carried on long-lived bidirectional gRPC streams (ADR 9).

A unary grpc.aio call costs ~270–500 µs of CPU, client and server together; a message on a
stream that is already open costs a fraction of that. The edge makes two calls per request
(auth's ``Authenticate`` and billing's ``Reserve``), so both are also served as
``…Stream(stream Call) returns (stream Result)``: each message carries one call and a
``call_id``; the result carries the same id and either the response or a ``CallError``
holding the status and Faregate metadata a unary call would have ended with, so the caller
rebuilds the very same FaregateError.

Server side, :class:`CallServer` turns a servicer's unary method into the stream handler:
every call runs as its own task, so a slow call never holds up the others. Client side,
:class:`CallStream` keeps a few *lanes* (streams) open — at least one per replica the
channel balances over — and spreads calls across them. A lane that ends or breaks fails its
calls in flight as ``UNAVAILABLE`` would (503, try again) and is reopened by the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

import grpc

from faregate.errors import FaregateError, from_metadata
from faregate.pb.rpc.v1 import calls_pb2

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def call_error(exc: FaregateError) -> calls_pb2.CallError:
    return calls_pb2.CallError(code=exc.grpc_code.value[0], message=exc.message, metadata=dict(exc.metadata()))


def error_from_call(error: calls_pb2.CallError) -> FaregateError:
    return from_metadata(
        error.message, error.metadata.items(), fallback=_CODES.get(error.code, grpc.StatusCode.UNKNOWN)
    )


def _internal() -> calls_pb2.CallError:
    return calls_pb2.CallError(code=grpc.StatusCode.INTERNAL.value[0], message="internal error")


_END = object()  # a stream's calls are all answered and its caller stopped sending
_CLOSE = object()  # the server is stopping


class CallServer:
    """Serves unary methods over streams; ``close()`` ends every open stream (before the
    gRPC server stops, so its grace period is not spent waiting on streams that never end)."""

    def __init__(self) -> None:
        self._outboxes: set[asyncio.Queue[Any]] = set()
        self._all_closed = asyncio.Event()

    def handler(
        self,
        unary: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
        result: Callable[..., Any],
    ) -> Callable[[AsyncIterator[Any], grpc.aio.ServicerContext], AsyncIterator[Any]]:
        """The stream-stream method: ``result`` is the Result message class."""
        outboxes = self._outboxes
        all_closed = self._all_closed

        async def serve(calls: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            outbox: asyncio.Queue[Any] = asyncio.Queue()
            running: set[asyncio.Task[None]] = set()

            async def one(call: Any) -> None:
                try:
                    answer = result(call_id=call.call_id, response=await unary(call.request, context))
                except FaregateError as exc:
                    answer = result(call_id=call.call_id, error=call_error(exc))
                except Exception:
                    log.exception("unhandled error in a streamed call")
                    answer = result(call_id=call.call_id, error=_internal())
                outbox.put_nowait(answer)

            def finished(task: asyncio.Task[None]) -> None:
                running.discard(task)
                if not running and reader.done():
                    outbox.put_nowait(_END)

            async def read() -> None:
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                    async for call in calls:
                        task = asyncio.create_task(one(call))
                        running.add(task)
                        task.add_done_callback(finished)
                if not running:
                    outbox.put_nowait(_END)

            reader = asyncio.create_task(read())
            outboxes.add(outbox)
            all_closed.clear()
            try:
                while (item := await outbox.get()) is not _END:
                    if item is _CLOSE:  # answer what was taken in, then end the stream
                        reader.cancel()
                        if running:
                            await asyncio.wait(running, timeout=5)
                        while not outbox.empty():
                            if (item := outbox.get_nowait()) is not _END and item is not _CLOSE:
                                yield item
                        return
                    yield item
            finally:
                reader.cancel()
                for task in running:
                    task.cancel()
                outboxes.discard(outbox)
                if not outboxes:
                    all_closed.set()

        return serve

    async def close(self) -> None:
        if not self._outboxes:
            return
        for outbox in self._outboxes:
            outbox.put_nowait(_CLOSE)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_closed.wait(), 10)


class _Lane:
    """One open stream, the calls waiting on it, and the tasks that write and read it."""

    def __init__(self, open_stream: Callable[[], Any]) -> None:
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.alive = True
        self.call = open_stream()
        self.writer = asyncio.create_task(self._write())
        self.reader = asyncio.create_task(self._read())

    async def _write(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            while True:
                await self.call.write(await self.outbox.get())

    async def _read(self) -> None:
        failure: FaregateError | None = None
        try:
            async for result in self.call:
                future = self.pending.pop(result.call_id, None)
                if future is None or future.done():
                    continue  # its caller gave up (timeout or cancellation)
                if result.HasField("error"):
                    future.set_exception(error_from_call(result.error))
                else:
                    future.set_result(result.response)
        except grpc.aio.AioRpcError as exc:
            failure = from_metadata(exc.details() or "", exc.trailing_metadata() or (), fallback=exc.code())
        except asyncio.CancelledError:
            pass
        finally:
            self.alive = False
            self.writer.cancel()
            if failure is None or failure.http_status < 500:
                failure = from_metadata("", (), fallback=grpc.StatusCode.UNAVAILABLE)
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(failure)
            self.pending.clear()

    async def close(self) -> None:
        self.alive = False
        self.call.cancel()
        for task in (self.writer, self.reader):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class CallStream(Generic[Req, Resp]):
    """Client side: ``await stream(request, timeout)`` behaves like the unary call it replaces.

    ``open_stream`` is the stub's stream method (``stub.AuthenticateStream``), ``make_call``
    the Call message class. ``lanes`` streams are kept open and used in turn.
    """

    def __init__(
        self,
        open_stream: Callable[[], Any],
        make_call: Callable[..., Any],
        *,
        lanes: int = 2,
    ) -> None:
        self._open = open_stream
        self._make_call = make_call
        self._lanes: list[_Lane | None] = [None] * max(1, lanes)
        self._turn = itertools.cycle(range(len(self._lanes)))
        self._ids = itertools.count(1)

    def _lane(self) -> _Lane:
        i = next(self._turn)
        lane = self._lanes[i]
        if lane is None or not lane.alive:
            lane = self._lanes[i] = _Lane(self._open)
        return lane

    async def __call__(self, request: Req, timeout: float) -> Resp:
        lane = self._lane()
        call_id = next(self._ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Resp] = loop.create_future()
        lane.pending[call_id] = future
        lane.outbox.put_nowait(self._make_call(call_id=call_id, request=request))
        expiry = loop.call_later(timeout, _expire, future)
        try:
            return await future
        finally:
            expiry.cancel()
            lane.pending.pop(call_id, None)

    async def close(self) -> None:
        lanes = [lane for lane in self._lanes if lane is not None]
        self._lanes = [None] * len(self._lanes)
        for lane in lanes:
            await lane.close()


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(from_metadata("", (), fallback=grpc.StatusCode.DEADLINE_EXCEEDED))
