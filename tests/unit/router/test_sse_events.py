"""Reading an upstream's SSE stream (providers/client.py, UpstreamClient.events) from a real
HTTP server that sends scripted bytes, split wherever the script says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from services.router.providers.client import UpstreamClient, make_session
from tests.fakes import http


@pytest.fixture
async def sse() -> AsyncIterator[tuple[str, list[list[bytes]]]]:
    """A server answering POST /sse with the pieces in ``script`` (each written and flushed
    on its own, a pause between them); the test fills ``script`` before calling."""
    script: list[list[bytes]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for piece in script.pop(0):
            await resp.write(piece)
            await asyncio.sleep(0.02)
        return resp

    app = web.Application()
    app.router.add_post("/sse", handler)
    runner, base_url = await http.start(app)
    yield f"{base_url}/sse", script
    await runner.cleanup()


async def events(url: str, script: list[list[bytes]], pieces: list[bytes]) -> list[list[bytes]]:
    script.append(pieces)
    session = make_session(4, 2.0, 10.0)
    try:
        client = UpstreamClient("fake", session, {})
        resp = await client.post(url, {})
        return [batch async for batch in client.events(resp)]
    finally:
        await session.close()


async def test_events_split_anywhere_come_out_whole_and_in_order(sse) -> None:
    url, script = sse
    wire = b'data: {"a":1}\n\ndata: {"b":2}\n\n: keep-alive\n\nevent: x\ndata: {"c":3}\n\ndata: [DONE]\n\n'
    pieces = [wire[i : i + 5] for i in range(0, len(wire), 5)]  # cut mid-field, mid-separator
    batches = await events(url, script, pieces)
    assert [d for b in batches for d in b] == [b'{"a":1}', b'{"b":2}', b'{"c":3}', b"[DONE]"]


async def test_what_arrives_in_one_read_is_one_batch(sse) -> None:
    url, script = sse
    burst = b"".join(b"data: %d\n\n" % i for i in range(20))
    batches = await events(url, script, [burst, b"data: late\n\n"])
    assert batches == [[b"%d" % i for i in range(20)], [b"late"]]


async def test_crlf_line_ends_multiline_data_and_a_missing_last_blank_line(sse) -> None:
    url, script = sse
    pieces = [b"data: one\r", b"\n\r\ndata: two\r\ndata: lines\r\n\r\n", b"data: last"]
    batches = await events(url, script, pieces)
    assert [d for b in batches for d in b] == [b"one", b"two\nlines", b"last"]
