"""Concurrency slots on the edge's side: releases gathered and sent with the next admission.

A request's slot (taken by auth's ``Authenticate``) is given back when the request ends. The
edge does not make a call for that: it keeps the release and sends it inside its next
``Authenticate`` (``released``), which auth applies before deciding; when no request comes
within ``delay``, one ``ReleaseMany`` carries everything gathered. Under load that takes a
unary round trip off every request (ADR 7). Slots are leases, so a release lost with a
crashed edge costs nothing but the lease.

The unspent admissions of ended grants (ADR 11) travel the same way (``returned``): inside
the next ``Authenticate``, or the ``ReleaseMany`` when none comes in time, and at the latest
when the edge stops. Unlike a release, a return is sent once only: auth may have applied it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

import grpc

from faregate.pb.auth.v1 import auth_pb2, auth_pb2_grpc

T = TypeVar("T")


class Flusher(Generic[T]):
    """Sends what was gathered, ``delay`` after the first thing since the last send, off the
    request path: ``collect`` takes the batch (falsy when there is nothing), ``send`` sends
    it in a task of its own. ``close`` sends what is left and waits (up to 5 s) for the
    sends under way. Slot releases and funds-grant spends (grants.py) both go this way."""

    def __init__(
        self, delay: float, collect: Callable[[], T | None], send: Callable[[T], Coroutine[Any, Any, None]]
    ) -> None:
        self._delay = delay
        self._collect = collect
        self._send = send
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def schedule(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay, self.flush)

    def flush(self) -> None:
        self._timer = None
        if batch := self._collect():
            task = asyncio.create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.flush()
        if self._sending:
            await asyncio.wait(self._sending, timeout=5)


class SlotReleases:
    def __init__(self, auth: auth_pb2_grpc.AuthServiceStub, delay: float = 0.02) -> None:
        self._auth = auth
        self._pending: list[auth_pb2.ReleaseRequest] = []
        self._returned: list[auth_pb2.GrantReturn] = []
        self._flusher = Flusher(delay, self._batch, self._send)

    def add(self, release: auth_pb2.ReleaseRequest) -> None:
        self._pending.append(release)
        self._flusher.schedule()

    def add_return(self, returned: auth_pb2.GrantReturn) -> None:
        self._returned.append(returned)
        self._flusher.schedule()

    def take(self) -> list[auth_pb2.ReleaseRequest]:
        """The releases gathered, for the next Authenticate to carry."""
        taken, self._pending = self._pending, []
        return taken

    def take_returns(self) -> list[auth_pb2.GrantReturn]:
        """The returns gathered, for the next Authenticate to carry (never given back)."""
        taken, self._returned = self._returned, []
        return taken

    def give_back(self, taken: list[auth_pb2.ReleaseRequest]) -> None:
        """The call that carried them failed: send them again (releasing twice is harmless)."""
        for release in taken:
            self.add(release)

    def _batch(self) -> auth_pb2.ReleaseBatch | None:
        if not self._pending and not self._returned:
            return None
        return auth_pb2.ReleaseBatch(slots=self.take(), returned=self.take_returns())

    async def _send(self, batch: auth_pb2.ReleaseBatch) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._auth.ReleaseMany(batch, timeout=5)

    async def close(self) -> None:
        await self._flusher.close()
