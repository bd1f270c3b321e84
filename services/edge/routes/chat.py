"""POST /v1/chat/completions and /v1/embeddings: the REST adapters over the gateway core.

They translate HTTP to one gateway admission and back (services/edge/gateway.py): the body
is handed over as bytes, the answer comes back as bytes, whole for JSON and as batches of
payloads for SSE. Served as bare ASGI in front of the FastAPI app (services/edge/app.py,
``HotPath``): no middleware stack, no dependency solving, no body model.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from faregate.errors import FaregateError
from services.edge.callers import Caller
from services.edge.context import edge, new_request_id
from services.edge.gateway import Endpoint, Relay

log = logging.getLogger(__name__)

_DONE = b"data: [DONE]\n\n"
_JSON = "application/json"


def rate_limit_headers(caller: Caller, request_id: str) -> dict[str, str]:
    headers = {"X-Request-Id": request_id}
    if (rl := caller.rate_limit) is not None:
        headers["X-RateLimit-Limit"] = str(rl.limit)
        headers["X-RateLimit-Remaining"] = str(rl.remaining)
        headers["X-RateLimit-Reset"] = str(rl.reset_at)
    return headers


async def chat_completions(request: Request, send: Send) -> None:
    ctx = edge(request)
    request.state.request_id = request_id = new_request_id()
    body = await ctx.read_body(request)
    async with ctx.gateway.admit(ctx.credentials(request), body, request_id=request_id) as admission:
        headers = rate_limit_headers(admission.caller, request_id)
        if not admission.streamed:
            answer = await admission.complete()
            await Response(answer, media_type=_JSON, headers=headers)(request.scope, request.receive, send)
            return
        relay = await admission.stream()
        if not relay.streamed:
            await Response(relay.body, media_type=_JSON, headers=headers)(request.scope, request.receive, send)
            return
        headers["Cache-Control"] = "no-cache"
        headers["X-Accel-Buffering"] = "no"
        await EventStream(relay, headers)(request.scope, request.receive, send)


async def embeddings(request: Request, send: Send) -> None:
    """The same admission and funds check, one router call, metered on input tokens."""
    ctx = edge(request)
    request.state.request_id = request_id = new_request_id()
    body = await ctx.read_body(request)
    gateway = ctx.gateway
    async with gateway.admit(ctx.credentials(request), body, request_id=request_id, endpoint=Endpoint.EMBEDDINGS) as a:
        answer = await a.complete()
        headers = rate_limit_headers(a.caller, request_id)
    await Response(answer, media_type=_JSON, headers=headers)(request.scope, request.receive, send)


class EventStream(Response):
    """The SSE answer, written to the ASGI server directly: one ``send`` per relayed batch,
    and one task that waits for the client to go away and then closes the relay (which ends
    it and stops the upstream). A failure after the first byte becomes an error event."""

    media_type = "text/event-stream"

    def __init__(self, relay: Relay, headers: dict[str, str]) -> None:
        self._relay = relay
        self._request_id = headers.get("X-Request-Id")
        self.status_code = 200
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        watcher = asyncio.create_task(self._watch(receive))
        try:
            try:
                async for batch in self._relay:
                    # what arrived together goes out in one write (ADR 8)
                    events = b"data: " + batch[0] + b"\n\n" if len(batch) == 1 else _events(batch)
                    await send({"type": "http.response.body", "body": events, "more_body": True})
                end = _DONE
            except FaregateError as failure:
                end = _error_event(failure)
            except Exception:  # a bug: the answer has started, so it ends with an error event
                log.exception("relaying %s failed", self._request_id)
                end = _error_event(FaregateError("internal error"))
            await send({"type": "http.response.body", "body": end, "more_body": False})
        finally:
            watcher.cancel()

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._relay.close()


def _events(payloads: list[bytes]) -> bytes:
    return b"".join([b"data: " + d + b"\n\n" for d in payloads])


def _error_event(failure: FaregateError) -> bytes:
    return b"data: " + orjson.dumps(failure.body()) + b"\n\n"
