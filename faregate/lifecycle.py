"""Process lifecycle: run a service's ``serve()`` on uvloop until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import sys
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


def raise_open_files_limit() -> int:
    """Lift the soft limit on open files to the hard one: every running stream holds two or
    three sockets, and the usual soft limit of 1,024 would cap a gateway at a few hundred."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
    return soft


def import_nats_without_websockets() -> None:
    """Import nats-py with its optional websocket transport left out.

    nats-py imports aiohttp at import time, if it can, for ``ws://`` servers. auth, billing
    and the edge reach NATS over plain TCP and have no other use for aiohttp at start (billing
    imports it for Stripe, on first use), so it would cost each of them ~9 MB for nothing
    (docs/adr/0002-hot-path.md, memory). aiohttp is hidden only while nats-py is imported and
    stays importable afterwards; ``events.connect`` refuses ``ws://`` URLs in every service."""
    if "nats" in sys.modules or "aiohttp" in sys.modules:
        return
    sys.modules["aiohttp"] = None  # type: ignore[assignment]  # makes `import aiohttp` raise ImportError
    try:
        import nats  # noqa: F401
    finally:
        del sys.modules["aiohttp"]


def run(main: Coroutine[Any, Any, None]) -> None:
    raise_open_files_limit()
    uvloop.run(main)
