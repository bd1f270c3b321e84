"""The service runtime: every long-lived task of a process is a named component under one
supervisor, which starts it, restarts it with backoff when it fails, reports its health and
stops it in a defined order (docs/adr/0012-service-runtime.md).

A component is a factory of a long-lived coroutine. When it raises, the failure is logged
with its reason (a traceback only for the first failure of a streak), the component is in
BACKOFF, and it runs again after an exponential backoff, reset once it has run healthily (as
long as the backoff's maximum). When it returns it is STOPPED and not restarted. ``ready``
lets a running component say it is not healthy (NATS disconnected, say). The supervisor is
``serving`` while every required component is RUNNING and ready; ``on_change`` hears each flip
(servers turn it into their gRPC health).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

Step = Callable[[], Awaitable[object]]


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ComponentHealth:
    name: str
    state: State
    required: bool
    restarts: int
    last_error: str | None


@dataclass
class _Component:
    name: str
    run: Callable[[], Awaitable[None]]
    required: bool
    ready: Callable[[], bool] | None
    state: State = State.STARTING
    restarts: int = 0
    last_error: str | None = None
    task: asyncio.Task[None] | None = None

    def up(self) -> bool:
        if self.state is not State.RUNNING:
            return False
        if self.ready is None:
            return True
        try:
            return bool(self.ready())
        except Exception:  # a readiness probe that fails says "not ready", nothing more
            return False


class Supervisor:
    def __init__(
        self,
        service: str,
        *,
        on_change: Callable[[bool], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        backoff: tuple[float, float] = (0.1, 5.0),
        clock: Callable[[], float] = time.monotonic,
        poll: float = 0.5,  # how often ``ready`` probes are read
    ) -> None:
        self.service = service
        self._listeners: list[Callable[[bool], None]] = [on_change] if on_change else []
        self._sleep = sleep
        self._backoff = backoff
        self._clock = clock
        self._poll = poll
        self._components: dict[str, _Component] = {}
        self._reported: bool | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._started = False
        self._stopping = False  # the process is shutting down: components going down is expected

    def add(
        self,
        name: str,
        run: Callable[[], Awaitable[None]],
        *,
        required: bool = True,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        if name in self._components:
            raise ValueError(f"{self.service}: component {name!r} added twice")
        component = _Component(name, run, required, ready)
        self._components[name] = component
        if self._started:
            self._launch(component)
        self.refresh()

    def watch(self, on_change: Callable[[bool], None]) -> None:
        """One more listener of ``serving`` flips (the gRPC health service is one)."""
        self._listeners.append(on_change)

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for component in self._components.values():
            self._launch(component)
        self._watcher = asyncio.create_task(self._watch(), name=f"{self.service}:readiness")
        self.refresh()

    def stopping(self) -> None:
        """The process has begun to stop: what goes down from now on is not a failure."""
        self._stopping = True

    async def stop(self, timeout: float = 10.0) -> None:
        """Cancel the components in reverse order of ``add``, each waited for in turn (a
        later one may use an earlier one: the health reporter the server it reports on)."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
        deadline = asyncio.get_running_loop().time() + timeout
        for component in reversed(list(self._components.values())):
            task = component.task
            if task is not None and not task.done():
                task.cancel()
                left = max(0.0, deadline - asyncio.get_running_loop().time())
                done, _ = await asyncio.wait({task}, timeout=left)
                if not done:
                    log.error("%s: component %s did not stop within %.0f s", self.service, component.name, timeout)
            component.state = State.STOPPED
        self._started = False
        self.refresh()

    def health(self) -> list[ComponentHealth]:
        return [
            ComponentHealth(
                c.name,
                State.RUNNING if c.up() else (State.BACKOFF if c.state is State.RUNNING else c.state),
                c.required,
                c.restarts,
                c.last_error,
            )
            for c in self._components.values()
        ]

    @property
    def serving(self) -> bool:
        return self._started and all(c.up() for c in self._components.values() if c.required)

    def refresh(self) -> None:
        """Tell the listeners if ``serving`` flipped (run on every state change and every
        ``poll`` seconds, for ``ready`` probes change without telling anyone)."""
        serving = self.serving
        if serving == self._reported:
            return
        was, self._reported = self._reported, serving
        if serving:
            log.info("%s: every required component is running", self.service)
        elif was and not self._stopping:  # not while starting (failures log themselves) or stopping
            down = [h.name for h in self.health() if h.required and h.state is not State.RUNNING]
            log.warning("%s: not serving; down: %s", self.service, ", ".join(down))
        for listener in self._listeners:
            try:
                listener(serving)
            except Exception:
                log.exception("%s: a health listener failed", self.service)

    def _launch(self, component: _Component) -> None:
        component.task = asyncio.create_task(self._supervise(component), name=f"{self.service}:{component.name}")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            self.refresh()

    async def _supervise(self, c: _Component) -> None:
        low, high = self._backoff
        delay = low
        streak = 0  # failures since the component last ran healthily
        while True:
            c.state = State.RUNNING
            self.refresh()
            began = self._clock()
            try:
                await c.run()
            except asyncio.CancelledError:
                c.state = State.STOPPED
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if self._clock() - began >= high:  # it ran healthily: a new streak
                    delay, streak = low, 0
                repeated = streak > 0 and reason == c.last_error
                streak += 1
                c.state, c.last_error = State.BACKOFF, reason
                self.refresh()
                if streak == 1:
                    log.error("%s: %s failed (%s); restarting", self.service, c.name, reason, exc_info=exc)
                elif not repeated:
                    log.warning("%s: %s failed again (%s); restarting", self.service, c.name, reason)
                else:
                    log.debug("%s: %s failed again (%s)", self.service, c.name, reason)
                await self._sleep(delay)
                delay = min(delay * 2, high)
                c.restarts += 1
                continue
            c.state = State.STOPPED
            self.refresh()
            log.info("%s: %s finished", self.service, c.name)
            return


class _Server(Protocol):
    async def stop(self, grace: float | None) -> None: ...


async def stop_in_order(
    supervisor: Supervisor,
    server: _Server | None,
    *,
    stop_admitting: Iterable[Step] = (),
    grace: float = 5.0,
    flush: Iterable[Step] = (),
    close: Iterable[Step] = (),
    timeout: float = 10.0,
) -> None:
    """The one stop order of every server: stop admitting (call streams close), finish the
    work in flight (the gRPC server's grace), flush (publishers), stop the components, close
    the connections. A step that fails is logged and the next ones still run, so a broken
    connection never keeps the others open."""
    supervisor.stopping()
    steps: list[Step] = [*stop_admitting]
    if server is not None:
        steps.append(lambda: server.stop(grace))
    steps += [*flush, lambda: supervisor.stop(timeout), *close]
    for step in steps:
        try:
            await step()
        except Exception:
            log.exception("%s: a stop step failed", supervisor.service)


async def run_until_stopped(
    supervisor: Supervisor,
    server: _Server | None,
    stopped: Callable[[], Awaitable[None]],
    *,
    stop_admitting: Iterable[Step] = (),
    grace: float = 5.0,
    flush: Iterable[Step] = (),
    close: Iterable[Step] = (),
) -> None:
    """Wait for ``stopped`` (SIGTERM / SIGINT), then :func:`stop_in_order`."""
    try:
        await stopped()
    finally:
        await stop_in_order(supervisor, server, stop_admitting=stop_admitting, grace=grace, flush=flush, close=close)
