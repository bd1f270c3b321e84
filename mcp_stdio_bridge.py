#!/usr/bin/env python3
"""Bridge a stdio-only MCP client to Faregate's MCP endpoint.

    python mcp_stdio_bridge.py https://HOST/v1/mcp          # key from FAREGATE_API_KEY
    python mcp_stdio_bridge.py https://HOST/v1/mcp --key gw_live_…
    faregate mcp-bridge https://HOST/v1/mcp                 # the same, installed

Messages read on stdin go to the endpoint over Streamable HTTP and its answers come back on
stdout. Faregate's endpoint is stateless, so a server that restarts (or another replica
answering) is invisible here; a message that fails to reach it is answered with a JSON-RPC
error and the next one tries again. Needs only the standard library and the ``mcp`` SDK.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from typing import Any

import anyio
import httpx2
from mcp.client.streamable_http import streamable_http_client
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage


async def _relay(source: Any, sink: Any, *, on_end: Any = None) -> None:
    """Forward every message from ``source`` to ``sink``; a failure on the way is told on stderr."""
    async for message in source:
        if isinstance(message, SessionMessage):
            await sink.send(message)
        else:
            print(f"faregate mcp bridge: {message}", file=sys.stderr)
    if on_end is not None:
        on_end()


async def bridge(url: str, key: str | None) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=900)) as http,
        stdio_server() as (local_read, local_write),
    ):
        while True:  # one connection of the transport; opened again if it breaks
            try:
                async with (
                    streamable_http_client(url, http_client=http, terminate_on_close=False) as streams,
                    anyio.create_task_group() as tasks,
                ):
                    # stdin closed: the client is gone, and so is the bridge
                    tasks.start_soon(partial(_relay, local_read, streams[1], on_end=tasks.cancel_scope.cancel))
                    tasks.start_soon(_relay, streams[0], local_write)
                return
            except (httpx2.HTTPError, OSError) as exc:
                print(f"faregate mcp bridge: {url} unreachable ({exc}); retrying", file=sys.stderr)
                await anyio.sleep(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mcp_stdio_bridge.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the MCP endpoint, e.g. https://HOST/v1/mcp")
    parser.add_argument("--key", help="the API key (default: $FAREGATE_API_KEY; none: the guest sandbox)")
    args = parser.parse_args(argv)
    anyio.run(bridge, args.url, args.key or os.environ.get("FAREGATE_API_KEY"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
