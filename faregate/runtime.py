"""TEMPORARY stand-in for the supervised runtime (replaced by the runtime branch at merge)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


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


class Supervisor:
    def __init__(
        self,
        service: str,
        *,
        on_change: Callable[[bool], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        backoff: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self._service = service
        self._specs: list[tuple[str, Callable[[], Awaitable[None]], bool]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._sleep = sleep
        self._backoff = backoff

    def add(
        self,
        name: str,
        run: Callable[[], Awaitable[None]],
        *,
        required: bool = True,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self._specs.append((name, run, required))

    def start(self) -> None:
        for name, run, _ in self._specs:
            self._tasks.append(asyncio.create_task(self._keep(name, run), name=name))

    async def _keep(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        delay = self._backoff[0]
        while True:
            try:
                await run()
                return
            except Exception as exc:
                log.warning("%s: %s failed (%s); restarting", self._service, name, exc)
                await self._sleep(delay)
                delay = min(delay * 2, self._backoff[1])

    async def stop(self, timeout: float = 10.0) -> None:
        for task in reversed(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def health(self) -> list[ComponentHealth]:
        return [ComponentHealth(n, State.RUNNING, r, 0, None) for n, _, r in self._specs]

    @property
    def serving(self) -> bool:
        return True
