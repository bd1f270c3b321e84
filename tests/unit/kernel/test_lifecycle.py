"""Process start-up: nats-py without its websocket transport, and the URLs that follow from it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from faregate import events

LEAN_IMPORT = """
import sys
from faregate.lifecycle import import_nats_without_websockets
import_nats_without_websockets()
import nats.aio.transport
assert "nats" in sys.modules
assert "aiohttp" not in sys.modules, "aiohttp was loaded with nats-py"
assert nats.aio.transport.aiohttp is None
import aiohttp  # still importable afterwards (billing's Stripe client needs it)
assert aiohttp.ClientSession
"""


def test_nats_is_imported_without_aiohttp_and_aiohttp_stays_importable() -> None:
    done = subprocess.run([sys.executable, "-c", LEAN_IMPORT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("url", ["ws://127.0.0.1:8080", "nats://127.0.0.1:4222, wss://nats.example:443"])
async def test_websocket_nats_urls_are_refused_with_a_clear_error(url: str) -> None:
    with pytest.raises(ValueError, match="websockets is not supported"):
        await events.connect(url, name="test", attempts=1)
