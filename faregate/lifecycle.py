"""Process lifecycle: run a service's ``serve()`` on uvloop until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any

import uvloop


async def wait_for_shutdown() -> None:
    """Return when the process is asked to stop (SIGTERM / SIGINT)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def run(main: Coroutine[Any, Any, None]) -> None:
    uvloop.run(main)
