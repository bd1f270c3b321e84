"""Unary calls carried on long-lived bidirectional gRPC streams (ADR 9).

A unary grpc.aio call costs ~270–500 µs of CPU, client and server together; a message on a
stream that is already open costs a fraction of that. The edge's calls on every request
(auth's ``Authenticate``, billing's ``Reserve``, the router's ``Complete`` for an answer not
streamed) are therefore also served as ``…Stream(stream Calls) returns (stream Results)``:
each call carries the unary method's request, serialized, and a ``call_id``; its result
carries the same id and either the serialized response or a ``CallError`` holding the
status and Faregate metadata a unary call would have ended with, so the caller rebuilds the
very same FaregateError. Each side writes one message at a time, and what queued meanwhile
goes in the next message together: under load one write (and one read on the other side)
serves many calls.

A server-streaming method travels the same way (ADR 10): each response it yields is a
result marked ``more``, and a last result (empty, or an error) ends the call. Chunks of many
streamed calls share a message, which is where a relayed chunk's cost goes. Each streamed
call has its own window: the server sends at most ``WINDOW`` results its caller has not read,
and the caller grants more (``credit``) as it reads, or stops the call (``cancel``).

Server side, :class:`CallServer` turns a servicer's unary or server-streaming method into
the stream handler: every call runs as its own task, so a slow call never holds up the
others. Client side,
:class:`CallStream` keeps one *lane* (stream) open per replica, each on its own channel,
and spreads calls across them, skipping a replica whose channel is failing. A lane that
ends or breaks fails its calls in flight as ``UNAVAILABLE`` would (503, try again) and is
reopened by the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message

from faregate.errors import FaregateError, Status, error_of, status_of
from faregate.pb.rpc.v1 import calls_pb2

log = logging.getLogger(__name__)

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def call_error(status: Status) -> calls_pb2.CallError:
    """A Status as a streamed call's result carries it (the same as a unary call's)."""
    return calls_pb2.CallError(code=status.code.value[0], message=status.message, detail=status.detail)


def error_from_call(error: calls_pb2.CallError) -> FaregateError:
    code = _CODES.get(error.code, grpc.StatusCode.UNKNOWN)
    return error_of(Status(code, error.message, error.detail if error.HasField("detail") else None))


def _failed(call_id: int, exc: Exception) -> calls_pb2.Result:
    """The result of a call that raised: its FaregateError, or (a bug, logged) a bare INTERNAL."""
    return calls_pb2.Result(call_id=call_id, error=call_error(status_of(exc, "a streamed call")))


_END = object()  # a stream's calls are all answered and its caller stopped sending
_CLOSE = object()  # the server is stopping
_DONE_WRITING = object()  # a draining lane's last message: half-close the stream
# Results with call_id 0 are signals: the first one on every stream (no error) says the
# server took the stream in; one with an error says it is stopping: send no more here.
SIGNAL_ID = 0
NOT_STARTED = "fg-not-started"  # metadata of a call a stopping server refused unstarted
MAX_BATCH = 256  # calls or results in one stream message
WINDOW = 16  # results of one streamed call the server may send before its caller reads them


def _not_started() -> calls_pb2.CallError:
    return calls_pb2.CallError(
        code=grpc.StatusCode.UNAVAILABLE.value[0], message="the service is stopping", metadata={NOT_STARTED: "1"}
    )


class CallServer:
    """Serves unary methods over streams.

    ``close()`` (before the gRPC server stops) sends every open stream the stop signal: the
    caller sends no more calls there, calls already running are answered, calls that arrive
    meanwhile are refused unstarted (the caller sends them to another replica), and each
    stream ends when its caller half-closes it. The server never ends a stream while its
    caller may still be writing: gRPC would fail those writes as INTERNAL, with no way to
    tell whether the calls ran.
    """

    def __init__(self) -> None:
        self._outboxes: set[asyncio.Queue[Any]] = set()
        self._all_closed = asyncio.Event()
        self._closed = False

    def handler(
        self,
        unary: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Message]],
        request_type: type[Message],
    ) -> Callable[[AsyncIterator[calls_pb2.Calls], grpc.aio.ServicerContext], AsyncIterator[calls_pb2.Results]]:
        """The stream-stream method serving ``unary``, whose request is a ``request_type``."""
        result = calls_pb2.Result

        async def one(call: calls_pb2.Call, context: grpc.aio.ServicerContext, out: _Out) -> None:
            try:
                response = await unary(request_type.FromString(call.request), context)
                answer = result(call_id=call.call_id, response=response.SerializeToString())
            except Exception as exc:
                answer = _failed(call.call_id, exc)
            out.put(answer)

        return self._serve(one)

    def streaming_handler(
        self,
        method: Callable[[Any, grpc.aio.ServicerContext], AsyncGenerator[Message, None]],
        request_type: type[Message],
    ) -> Callable[[AsyncIterator[calls_pb2.Calls], grpc.aio.ServicerContext], AsyncIterator[calls_pb2.Results]]:
        """The stream-stream method serving the server-streaming ``method`` (streamed calls)."""
        result = calls_pb2.Result

        async def one(call: calls_pb2.Call, context: grpc.aio.ServicerContext, out: _Out) -> None:
            window = out.window(call.call_id)
            call_id = call.call_id
            try:
                async with contextlib.aclosing(method(request_type.FromString(call.request), context)) as responses:
                    first = True
                    async for response in responses:
                        if window.left <= 0:
                            await window.refilled()
                        window.left -= 1
                        out.put(result(call_id=call_id, response=response.SerializeToString(), more=True))
                        if first:
                            first = False
                            if len(out.windows) == 1:  # alone: the first token goes out before the rest
                                await asyncio.sleep(0)
                answer = result(call_id=call_id)
            except Exception as exc:
                answer = _failed(call_id, exc)
            finally:
                out.windows.pop(call_id, None)
            out.put(answer)

        return self._serve(one)

    def _serve(
        self, one: Callable[[calls_pb2.Call, grpc.aio.ServicerContext, _Out], Coroutine[Any, Any, None]]
    ) -> Callable[[AsyncIterator[calls_pb2.Calls], grpc.aio.ServicerContext], AsyncIterator[calls_pb2.Results]]:
        result = calls_pb2.Result
        outboxes = self._outboxes
        all_closed = self._all_closed

        async def serve(
            batches: AsyncIterator[calls_pb2.Calls], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[calls_pb2.Results]:
            out = _Out()
            outbox = out.queue
            running: dict[int, asyncio.Task[None]] = {}
            stopping = self._closed

            def finished(call_id: int, task: asyncio.Task[None]) -> None:
                if running.get(call_id) is task:
                    del running[call_id]
                if not running and reader.done():
                    outbox.put_nowait(_END)

            async def read() -> None:
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                    async for batch in batches:
                        for call in batch.calls:
                            if call.cancel:  # a streamed call whose caller went away
                                if (task := running.get(call.call_id)) is not None:
                                    task.cancel()
                            elif call.credit:  # a streamed call's caller read some results
                                out.credit(call.call_id, call.credit)
                            elif stopping:
                                outbox.put_nowait(result(call_id=call.call_id, error=_not_started()))
                            else:
                                task = asyncio.create_task(one(call, context, out))
                                running[call.call_id] = task
                                task.add_done_callback(functools.partial(finished, call.call_id))
                if not running:
                    outbox.put_nowait(_END)

            outbox.put_nowait(result(call_id=SIGNAL_ID))  # ready
            if stopping:
                outbox.put_nowait(_CLOSE)
            reader = asyncio.create_task(read())
            outboxes.add(outbox)
            all_closed.clear()
            try:
                ended = False
                while not ended:
                    # one message for every result that queued while the last one was written
                    items = [await outbox.get()]
                    if len(running) > 1:  # let the other calls woken in this round of the loop answer first
                        await asyncio.sleep(0)
                    while not outbox.empty() and len(items) < MAX_BATCH:
                        items.append(outbox.get_nowait())
                    answers = []
                    for item in items:
                        if item is _END:
                            ended = True
                        elif item is _CLOSE:
                            stopping = True
                            answers.append(result(call_id=SIGNAL_ID, error=_not_started()))
                        else:
                            answers.append(item)
                    if answers:
                        yield calls_pb2.Results(results=answers)
            finally:
                reader.cancel()
                for task in running.values():
                    task.cancel()
                outboxes.discard(outbox)
                if not outboxes:
                    all_closed.set()

        return serve

    async def close(self, timeout: float = 10.0) -> None:
        """Signal every stream and wait (up to ``timeout``) for their callers to close them."""
        self._closed = True
        if not self._outboxes:
            return
        for outbox in self._outboxes:
            outbox.put_nowait(_CLOSE)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_closed.wait(), timeout)


class _Window:
    """How many more results a streamed call may send before its caller reads some."""

    __slots__ = ("_waiter", "left")

    def __init__(self, size: int) -> None:
        self.left = size
        self._waiter: asyncio.Future[None] | None = None

    async def refilled(self) -> None:
        while self.left <= 0:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def give(self, n: int) -> None:
        self.left += n
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _Out:
    """A stream's outgoing side on the server: the results queued, and each streamed call's window."""

    __slots__ = ("queue", "windows")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.windows: dict[int, _Window] = {}

    def put(self, result: calls_pb2.Result) -> None:
        self.queue.put_nowait(result)

    def window(self, call_id: int) -> _Window:
        window = self.windows[call_id] = _Window(WINDOW)
        return window

    def credit(self, call_id: int, n: int) -> None:
        window = self.windows.get(call_id)
        if window is not None:
            window.give(n)


class _Lane:
    """One open stream, the calls waiting on it, and the tasks that write and read it.

    After the server's stop signal the lane takes no new calls, sends the calls the server
    refused unstarted to ``elsewhere``, and half-closes once its calls are answered. A lane
    that fails before the server's ready signal (the replica is down) never delivered a call:
    those go ``elsewhere`` too. Any other failure fails the calls waiting on it.
    """

    def __init__(
        self,
        open_stream: Callable[[], Any],
        response_type: type[Message],
        elsewhere: Callable[[list[_Waiting]], None],
        on_stop: Callable[[], None],
    ) -> None:
        self._response_type = response_type
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        self.pending: dict[int, _Waiting] = {}
        self.alive = True  # takes new calls
        self._elsewhere = elsewhere
        self._on_stop = on_stop
        self._draining = False
        self._ready = False
        self.call = open_stream()
        self.writer = asyncio.create_task(self._write())
        self.reader = asyncio.create_task(self._read())

    def send(self, waiting: _Waiting) -> None:
        self.pending[waiting.call_id] = waiting
        if waiting.stream is not None:
            waiting.stream.lane = self
        self.outbox.put_nowait(waiting.message)

    def control(self, message: calls_pb2.Call, forget: bool = False) -> None:
        """A streamed call's credit or cancel; ``forget``: drop the call (it will not be read)."""
        if forget:
            self.pending.pop(message.call_id, None)
            if self._draining and not self.pending:
                self.outbox.put_nowait(_DONE_WRITING)
        if self.alive or self.pending:
            self.outbox.put_nowait(message)

    async def _write(self) -> None:
        """One message for every call that queued while the last one was being written."""
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            done = False
            while not done:
                calls = [await self.outbox.get()]
                await asyncio.sleep(0)  # let the requests woken in this round of the loop queue theirs first
                while not self.outbox.empty() and len(calls) < MAX_BATCH:
                    calls.append(self.outbox.get_nowait())
                if any(c is _DONE_WRITING for c in calls):
                    done = True
                    calls = [c for c in calls if c is not _DONE_WRITING]
                if calls:
                    await self.call.write(calls_pb2.Calls(calls=calls))
            await self.call.done_writing()

    def _drain(self) -> None:
        if not self._draining:
            self._draining = True
            self.alive = False
            self._on_stop()
        if not self.pending:
            self.outbox.put_nowait(_DONE_WRITING)

    async def _read(self) -> None:
        failure: FaregateError | None = None
        try:
            async for batch in self.call:
                for result in batch.results:
                    self._answer(result)
        except grpc.aio.AioRpcError as exc:
            # the stream itself broke (a servicer's errors arrive as results): the peer went
            # away or restarted, whatever status the core reports (a killed peer often shows
            # as INTERNAL): retryable, as a unary call to a stopped peer would be
            log.debug("call stream ended: %s %s", exc.code(), exc.details())
            failure = error_of(Status(grpc.StatusCode.UNAVAILABLE, ""))
        except asyncio.CancelledError:
            pass
        finally:
            self.alive = False
            self.writer.cancel()
            left = [w for w in self.pending.values() if not w.done()]
            self.pending.clear()
            if failure is not None and not self._ready:  # the replica is down: nothing was delivered
                self._on_stop()
                self._elsewhere(left)
            else:
                if failure is None:
                    failure = error_of(Status(grpc.StatusCode.UNAVAILABLE, ""))
                for waiting in left:
                    waiting.fail(failure)

    def _answer(self, result: Any) -> None:
        if result.call_id == SIGNAL_ID:
            if result.HasField("error"):
                self._drain()
            else:
                self._ready = True
            return
        if result.more:  # a streamed call's response: the call goes on
            waiting = self.pending.get(result.call_id)
            if waiting is not None and waiting.stream is not None:
                waiting.stream.push(result.response)
            return
        waiting = self.pending.pop(result.call_id, None)
        if waiting is not None and not waiting.done():
            if not result.HasField("error"):
                if waiting.stream is not None:
                    waiting.stream.end(None)
                elif waiting.future is not None:
                    waiting.future.set_result(self._response_type.FromString(result.response))
            elif NOT_STARTED in result.error.metadata:
                self._elsewhere([waiting])
            else:
                waiting.fail(error_from_call(result.error))
        if self._draining and not self.pending:
            self.outbox.put_nowait(_DONE_WRITING)

    async def close(self) -> None:
        self.alive = False
        self.call.cancel()
        for task in (self.writer, self.reader):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@dataclass
class _Waiting:
    """A call sent and not yet answered: a unary call's future, or a streamed call's results."""

    call_id: int
    message: Any
    future: asyncio.Future[Any] | None
    resent: bool = False
    stream: StreamedCall[Any] | None = None

    def done(self) -> bool:
        if self.stream is not None:
            return self.stream.ended
        assert self.future is not None
        return self.future.done()

    def fail(self, error: FaregateError) -> None:
        if self.stream is not None:
            self.stream.end(error)
        elif self.future is not None and not self.future.done():
            self.future.set_exception(error)


class StreamedCall(Generic[Resp]):
    """The responses of one streamed call, read in order: ``await read()`` until it returns
    None (the end); the call's error, if it failed, is raised by the read that reaches it.
    ``close()`` stops a call not read to its end (the server cancels it)."""

    def __init__(self, call_id: int, response_type: type[Resp]) -> None:
        self.call_id = call_id
        self._response_type = response_type
        self._items: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: FaregateError | None = None
        self._read = 0  # results read since the last credit
        self.ended = False  # the last result arrived (or the lane failed)
        self._closed = False
        self.lane: _Lane | None = None

    # the lane's side
    def push(self, data: bytes) -> None:
        self._items.append(data)
        self._wake()

    def end(self, error: FaregateError | None) -> None:
        if not self.ended:
            self.ended, self._error = True, error
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # the reader's side
    async def read(self, timeout: float | None = None) -> Resp | None:
        """The next response, None at the end; ``timeout`` bounds the wait (then a 503)."""
        while not self._items:
            if self.ended:
                if self._error is not None:
                    raise self._error
                return None
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            expiry = loop.call_later(timeout, _expire, waiter) if timeout is not None else None
            try:
                await waiter
            finally:
                self._waiter = None
                if expiry is not None:
                    expiry.cancel()
        data = self._items.popleft()
        self._read += 1
        if self._read >= WINDOW // 2 and not self.ended and self.lane is not None:
            self.lane.control(calls_pb2.Call(call_id=self.call_id, credit=self._read))
            self._read = 0
        return self._response_type.FromString(data)

    def close(self) -> None:
        """Stop the call if it has not ended (idempotent)."""
        if not self._closed:
            self._closed = True
            if not self.ended and self.lane is not None:
                self.ended = True
                self.lane.control(calls_pb2.Call(call_id=self.call_id, cancel=True), forget=True)
                self._wake()  # a read waiting for the next result returns the end


STOPPING_AVOID_S = 2.0
_USABLE = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.CONNECTING)


@dataclass
class Replica:
    """Where lanes open: a channel to one replica and its stub's stream method."""

    channel: grpc.aio.Channel
    open_stream: Callable[[], Any]
    lane: _Lane | None = None
    stopping_until: float = 0.0  # stopping or down: no new lanes there for a while


class CallStream(Generic[Req, Resp]):
    """Client side: ``await stream(request, timeout)`` behaves like the unary call it replaces.

    One lane per replica (each on its own channel, so the lanes are spread evenly whatever
    order the replicas came up in), used in turn; a replica whose channel is failing is
    skipped while another can take the call. ``response_type`` is the unary method's
    response message.
    """

    def __init__(self, replicas: list[Replica], response_type: type[Resp]) -> None:
        if not replicas:
            raise ValueError("a call stream needs at least one replica")
        self._replicas = replicas
        self._response_type = response_type
        self._turn = itertools.cycle(range(len(replicas)))
        self._ids = itertools.count(1)

    def _lane(self, avoid: Replica | None = None) -> _Lane:
        first = next(self._turn)
        n = len(self._replicas)
        now = asyncio.get_running_loop().time()
        for k in range(n):
            replica = self._replicas[(first + k) % n]
            if n > 1 and (replica is avoid or replica.stopping_until > now):
                continue
            if replica.lane is not None and replica.lane.alive:
                return replica.lane
            if n == 1 or replica.channel.get_state(try_to_connect=True) in _USABLE:
                return self._open(replica)
        # every replica is failing: try one anyway (a 503 if it is still down)
        return self._open(next(r for r in self._replicas if r is not avoid or n == 1))

    def _open(self, replica: Replica) -> _Lane:
        def stopping() -> None:
            replica.stopping_until = asyncio.get_running_loop().time() + STOPPING_AVOID_S

        replica.lane = _Lane(
            replica.open_stream, self._response_type, lambda left: self._resend(left, replica), stopping
        )
        return replica.lane

    def _resend(self, left: list[_Waiting], stopping: Replica) -> None:
        """Calls a replica never started (stopping or down): once more, on another's lane."""
        for waiting in left:
            if waiting.resent:
                waiting.fail(error_of(Status(grpc.StatusCode.UNAVAILABLE, "")))
            else:
                waiting.resent = True
                self._lane(avoid=stopping).send(waiting)

    async def __call__(self, request: Req, timeout: float) -> Resp:
        call_id = next(self._ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Resp] = loop.create_future()
        call = calls_pb2.Call(call_id=call_id, request=request.SerializeToString())
        self._lane().send(_Waiting(call_id, call, future))
        expiry = loop.call_later(timeout, _expire, future)
        try:
            return await future
        finally:
            expiry.cancel()

    def stream(self, request: Req) -> StreamedCall[Resp]:
        """Start a streamed call (the server side is ``CallServer.streaming_handler``)."""
        call_id = next(self._ids)
        streamed: StreamedCall[Resp] = StreamedCall(call_id, self._response_type)
        call = calls_pb2.Call(call_id=call_id, request=request.SerializeToString())
        self._lane().send(_Waiting(call_id, call, None, stream=streamed))
        return streamed

    async def close(self) -> None:
        for replica in self._replicas:
            lane, replica.lane = replica.lane, None
            if lane is not None:
                await lane.close()


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(error_of(Status(grpc.StatusCode.DEADLINE_EXCEEDED, "")))
