"""The MCP endpoint's own checks, in process: the guest cap and paths with or without a slash.
The gateway comes with fake clients (tests/unit/edge/fakes.py); tests/e2e/test_mcp.py runs it
against the real services."""

from __future__ import annotations

import asyncio

import httpx
import uvicorn

from faregate import processes
from services.edge.mcp import GUEST_CONCURRENCY, McpEndpoint
from tests.unit.edge.fakes import gateway
from tests.waiting import settled

ACCEPT = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


async def endpoint() -> McpEndpoint:
    gw, *_ = await gateway()
    return McpEndpoint(gw, None, lambda: "req_1", allowed_origins=[], client_ip=lambda request: "10.0.0.1")  # type: ignore[arg-type]


async def test_guests_get_at_most_their_concurrent_calls_then_a_429() -> None:
    mcp = await endpoint()
    async with mcp.running(), httpx.AsyncClient(transport=httpx.ASGITransport(app=mcp), base_url="http://edge") as c:
        for path in ("/v1/mcp", "/v1/mcp/"):
            assert (await c.post(path, json=LIST, headers=ACCEPT)).status_code == 200
        for _ in range(GUEST_CONCURRENCY):  # every guest slot busy
            await mcp._guests.acquire()
        refused = await c.post("/v1/mcp", json=LIST, headers=ACCEPT)
        mcp._guests.release()
        again = await c.post("/v1/mcp", json=LIST, headers=ACCEPT)
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limited"
    assert refused.headers["retry-after"] == "1"
    assert again.status_code == 200


async def test_the_sse_message_endpoint_is_announced_under_a_proxys_prefix() -> None:
    """Behind a proxy that strips /gw, the client must post its messages to /gw/v1/mcp/messages/."""
    gw, *_ = await gateway()
    mcp = McpEndpoint(
        gw,
        None,  # type: ignore[arg-type]
        lambda: "req_1",
        allowed_origins=[],
        client_ip=lambda request: "10.0.0.1",
        forwarded_prefix=lambda request: "/gw",
    )
    port = processes.free_port()
    server = uvicorn.Server(uvicorn.Config(mcp, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    try:
        async with mcp.running():
            await settled(lambda: server.started, rounds=100_000)
            async with (
                httpx.AsyncClient(timeout=10) as client,
                client.stream("GET", f"http://127.0.0.1:{port}/v1/mcp/sse/") as events,
            ):
                lines = events.aiter_lines()
                first = [await anext(lines) for _ in range(2)]
    finally:
        server.should_exit = True
        await serving
    assert first[0] == "event: endpoint"
    assert first[1].startswith("data: /gw/v1/mcp/messages/?session_id=")
