"""A scripted aiohttp app on a free loopback port, for tests that need an HTTP peer of their own."""

from __future__ import annotations

from aiohttp import web


async def start(app: web.Application) -> tuple[web.AppRunner, str]:
    """The app, started on 127.0.0.1 at a port the OS picks: its runner (clean it up) and base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"
