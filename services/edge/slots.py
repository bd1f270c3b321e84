"""Concurrency slots on the edge's side: releases gathered and sent with the next admission.

A request's slot (taken by auth's ``Authenticate``) is given back when the request ends. The
edge does not make a call for that: it keeps the release and sends it inside its next
``Authenticate`` (``released``), which auth applies before deciding; when no request comes
within ``delay``, one ``ReleaseMany`` carries everything gathered. Under load that takes a
unary round trip off every request (ADR 7).

The unspent admissions of ended grants (ADR 11) travel the same way (``returned``): inside
the next ``Authenticate``, or the ``ReleaseMany`` when none comes in time, and at the latest
when the edge stops. A release or return that cannot be delivered is retried until auth has
it (both are idempotent there: a slot is released once, a grant refunded once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Generic, Protocol, TypeVar

from services.edge.callers import GrantReturn, SlotRelease

log = logging.getLogger(__name__)

T = TypeVar("T")


class Flusher(Generic[T]):
    """Sends what was gathered, ``delay`` after the first thing since the last send, off the
    request path, one batch at a time: ``collect`` takes the batch (falsy when there is
    nothing), ``send`` delivers it or raises, and a batch that failed is sent again (with
    backoff) until it is delivered. ``run`` is the flusher's supervised component; ``close``
    delivers what is left, within ``timeout``. Slot releases and funds-grant spends
    (grants.py) both go this way."""

    def __init__(
        self,
        name: str,
        delay: float,
        collect: Callable[[], T | None],
        send: Callable[[T], Coroutine[Any, Any, None]],
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        backoff: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self.name = name
        self._delay = delay
        self._collect = collect
        self._send = send
        self._sleep = sleep
        self._backoff = backoff
        self._wake = asyncio.Event()
        self._undelivered: list[T] = []  # taken and not yet delivered, oldest first

    def schedule(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._sleep(self._delay)
            await self._deliver(self._retry_forever)

    async def _deliver(self, attempt: Callable[[T], Awaitable[None]]) -> None:
        if batch := self._collect():
            self._undelivered.append(batch)
        while self._undelivered:
            await attempt(self._undelivered[0])
            self._undelivered.pop(0)

    async def _retry_forever(self, batch: T) -> None:
        delay, failures = self._backoff[0], 0
        while True:
            try:
                await self._send(batch)
                if failures:
                    log.info("%s delivered after %d failed tries", self.name, failures)
                return
            except Exception as exc:
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("%s not delivered (%s); retrying until it is", self.name, exc)
                await self._sleep(delay)
                delay = min(delay * 2, self._backoff[1])

    async def close(self, timeout: float = 5.0) -> bool:
        """Deliver everything gathered (and anything a stopped ``run`` left), trying until
        ``timeout``. False, logged as an error, if something could still not be delivered."""
        try:
            await asyncio.wait_for(self._deliver(self._retry_forever), timeout)
        except TimeoutError:
            log.error("%s: %d batches could not be delivered before stopping", self.name, len(self._undelivered))
            return False
        return True


class AuthReleases(Protocol):
    async def release(self, slots: Sequence[SlotRelease], returned: Sequence[GrantReturn]) -> None: ...


Batch = tuple[list[SlotRelease], list[GrantReturn]]


class SlotReleases:
    def __init__(self, auth: AuthReleases, delay: float = 0.02, **flusher: Any) -> None:
        self._auth = auth
        self._pending: list[SlotRelease] = []
        self._returned: list[GrantReturn] = []
        self.flusher: Flusher[Batch] = Flusher("slot releases", delay, self._batch, self._send, **flusher)

    def add(self, release: SlotRelease) -> None:
        self._pending.append(release)
        self.flusher.schedule()

    def add_return(self, returned: GrantReturn) -> None:
        self._returned.append(returned)
        self.flusher.schedule()

    def take(self) -> list[SlotRelease]:
        """The releases gathered, for the next Authenticate to carry."""
        taken, self._pending = self._pending, []
        return taken

    def take_returns(self) -> list[GrantReturn]:
        """The returns gathered, for the next Authenticate to carry."""
        taken, self._returned = self._returned, []
        return taken

    def give_back(self, releases: list[SlotRelease], returns: list[GrantReturn]) -> None:
        """The call that carried them failed: send them again (auth applies each once)."""
        self._pending.extend(releases)
        self._returned.extend(returns)
        if releases or returns:
            self.flusher.schedule()

    def _batch(self) -> Batch | None:
        if not self._pending and not self._returned:
            return None
        return self.take(), self.take_returns()

    async def _send(self, batch: Batch) -> None:
        await self._auth.release(*batch)

    async def close(self) -> bool:
        return await self.flusher.close()
