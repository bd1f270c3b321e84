"""POST /v1/chat/completions: the hot path.

One admission round (auth, and billing for a priced live request), then one router call;
the body is relayed as bytes (the router parses it), and the answer is relayed as bytes:
whole for JSON (a message on the router's call stream, ADR 9), chunk by chunk for SSE (a
streamed call on the router's chat lane, ADR 10). Served as bare
ASGI in front of the FastAPI app (services/edge/app.py, ``HotPath``): no middleware stack,
no dependency solving, no body model.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from faregate.callstream import StreamedCall
from faregate.errors import FaregateError, PayloadTooLarge, UpstreamError
from faregate.pb.auth.v1 import auth_pb2
from faregate.pb.billing.v1 import billing_pb2
from faregate.pb.router.v1 import router_pb2
from services.edge.clients import COMPLETION_TIMEOUT_S, UNARY_TIMEOUT_S, unary
from services.edge.context import EdgeContext, bearer, edge, new_request_id

_DONE = b"data: [DONE]\n\n"


def rate_limit_headers(reply: auth_pb2.AuthenticateResponse, request_id: str) -> dict[str, str]:
    headers = {"X-Request-Id": request_id}
    if reply.HasField("rate_limit"):
        rl = reply.rate_limit
        headers["X-RateLimit-Limit"] = str(rl.limit)
        headers["X-RateLimit-Remaining"] = str(rl.remaining)
        headers["X-RateLimit-Reset"] = str(rl.reset_at)
    return headers


async def _admitted(
    request: Request,
) -> tuple[EdgeContext, str, bytes, bool, auth_pb2.AuthenticateResponse, bool, Slot]:
    """What every inference route does first: size check, admission, funds hold, slot.

    The body is parsed once here (the router parses it again: it is relayed as bytes) for
    the worst-case cost and to tell whether the client asked for a stream; a body that does
    not parse is the router's to refuse."""
    ctx = edge(request)
    request.state.request_id = request_id = new_request_id()
    raw = await request.body()
    if len(raw) > ctx.settings.max_body_bytes:
        raise PayloadTooLarge(f"request body is over {ctx.settings.max_body_bytes} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    streamed = not isinstance(body, dict) or body.get("stream") not in (None, False)
    key = bearer(request)
    amount = ctx.funds.worst_case(body, len(raw)) if key.startswith("gw_live_") else 0
    admitted, hold = await admit(ctx, key, ctx.client_ip(request), request_id, amount)
    return ctx, request_id, raw, streamed, admitted, hold, Slot(ctx, admitted)


async def chat_completions(request: Request) -> Response:
    ctx, request_id, raw, streamed, admitted, hold, slot = await _admitted(request)
    try:
        if not streamed:
            return await _complete(ctx, request_id, admitted, raw, slot)
        return await _answer(ctx, request_id, admitted, raw, slot)
    except BaseException:
        slot.release()
        if hold:  # no answer, so no usage record will release it
            ctx.spawn(_release_hold(ctx, request_id))
        raise


async def admit(
    ctx: EdgeContext, key: str, client_ip: str, request_id: str, amount: int
) -> tuple[auth_pb2.AuthenticateResponse, bool]:
    """Auth's admission and, for a live key on a priced model, billing's hold: in the same
    round when the key's account is known from an earlier request, one after the other
    otherwise. Whatever one side granted is given back when the other refuses."""
    authenticate = _authenticate(
        ctx, auth_pb2.AuthenticateRequest(api_key=key, client_ip=client_ip, request_id=request_id)
    )
    account = ctx.funds.account_of(key) if amount else None
    if account is None:
        admitted = await authenticate
        if not (amount and admitted.billable):
            return admitted, False
        ctx.funds.remember(key, admitted.account_id)
        try:
            await _reserve(ctx, admitted.account_id, request_id, amount)
        except BaseException:
            Slot(ctx, admitted).release()
            raise
        return admitted, True
    results: tuple[Any, Any] = await asyncio.gather(
        authenticate, _reserve(ctx, account, request_id, amount), return_exceptions=True
    )
    got, held = results
    if isinstance(got, BaseException):
        if not isinstance(held, BaseException):
            ctx.spawn(_release_hold(ctx, request_id))
        raise got
    if isinstance(held, BaseException):
        Slot(ctx, got).release()
        raise held
    return got, True


async def _authenticate(ctx: EdgeContext, request: auth_pb2.AuthenticateRequest) -> auth_pb2.AuthenticateResponse:
    """Authenticate, carrying the slot releases gathered since the last call."""
    released = ctx.releases.take()
    request.released.extend(released)
    try:
        return await ctx.clients.authenticate(request, UNARY_TIMEOUT_S)
    except BaseException:
        ctx.releases.give_back(released)
        raise


async def _reserve(ctx: EdgeContext, account_id: str, request_id: str, amount: int) -> None:
    await ctx.clients.reserve(
        billing_pb2.ReserveRequest(account_id=account_id, request_id=request_id, amount_micros=amount), UNARY_TIMEOUT_S
    )


async def _release_hold(ctx: EdgeContext, request_id: str) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError):
        await ctx.clients.billing.ReleaseHold(billing_pb2.ReleaseHoldRequest(request_id=request_id), timeout=5)


async def embeddings(request: Request) -> Response:
    """POST /v1/embeddings: the same admission and funds check, one router call."""
    ctx, request_id, raw, _, admitted, hold, slot = await _admitted(request)
    try:
        answer = await unary(
            ctx.clients.router.Embeddings,
            router_pb2.CompletionRequest(request_id=request_id, caller=_caller(admitted), body=raw),
        )
    except BaseException:
        if hold:
            ctx.spawn(_release_hold(ctx, request_id))
        raise
    finally:
        slot.release()
    return Response(answer.data, media_type="application/json", headers=rate_limit_headers(admitted, request_id))


def _caller(admitted: auth_pb2.AuthenticateResponse) -> router_pb2.Caller:
    return router_pb2.Caller(
        account_id=admitted.account_id,
        key_id=admitted.key_id,
        billable=admitted.billable,
        test_mode=admitted.mode == auth_pb2.KEY_MODE_TEST,
        max_tokens_cap=admitted.max_tokens_cap,
        guest=admitted.guest,
        routing_mode=admitted.routing.mode,
        preferred_provider=admitted.routing.provider,
    )


async def _complete(
    ctx: EdgeContext, request_id: str, admitted: auth_pb2.AuthenticateResponse, raw: bytes, slot: Slot
) -> Response:
    """A completion the client did not ask to stream: one message on the router's call stream."""
    answer = await ctx.clients.complete(
        router_pb2.CompletionRequest(request_id=request_id, caller=_caller(admitted), body=raw), COMPLETION_TIMEOUT_S
    )
    slot.release()
    return Response(answer.data, media_type="application/json", headers=rate_limit_headers(admitted, request_id))


async def _answer(
    ctx: EdgeContext, request_id: str, admitted: auth_pb2.AuthenticateResponse, raw: bytes, slot: Slot
) -> Response:
    """A streamed completion: a streamed call on the router's chat lane (ADR 10)."""
    call = ctx.clients.chat.stream(
        router_pb2.CompletionRequest(request_id=request_id, caller=_caller(admitted), body=raw)
    )
    headers = rate_limit_headers(admitted, request_id)
    try:
        first = await call.read(COMPLETION_TIMEOUT_S)
        if first is None or not first.HasField("start"):
            raise UpstreamError("the router ended the call without an answer")
    except BaseException:
        call.close()
        raise
    if not first.start.stream:
        call.close()
        slot.release()
        return Response(first.data, media_type="application/json", headers=headers)
    headers["Cache-Control"] = "no-cache"
    headers["X-Accel-Buffering"] = "no"
    return StreamingResponse(relay(call, first, slot), media_type="text/event-stream", headers=headers)


async def relay(
    call: StreamedCall[router_pb2.CompletionChunk], first: router_pb2.CompletionChunk, slot: Slot
) -> AsyncIterator[bytes]:
    """SSE out of router chunks; a failure after the first byte becomes an error event."""
    slot.keep_alive()
    try:
        chunk: router_pb2.CompletionChunk | None = first
        while chunk is not None:
            if chunk.HasField("error"):
                err = chunk.error
                yield _error_event(err.type, err.message, err.code or None)
                return
            if chunk.more:  # what arrived together goes out in one write (ADR 8)
                yield b"".join([b"data: " + d + b"\n\n" for d in (chunk.data, *chunk.more)])
            else:
                yield b"data: " + chunk.data + b"\n\n"
            chunk = await call.read()
        yield _DONE
    except FaregateError as failure:
        yield _error_event(failure.error_type, failure.message, failure.code)
    finally:
        call.close()  # a client that went away stops the upstream call too
        slot.release()


class Slot:
    """The request's concurrency slot in auth: released once when the request ends (gathered
    and sent with the edge's next admission), and renewed while a stream runs so its lease
    does not lapse."""

    def __init__(self, ctx: EdgeContext, admitted: auth_pb2.AuthenticateResponse) -> None:
        self._ctx = ctx
        self._request = auth_pb2.ReleaseRequest(key_id=admitted.key_id, slot_id=admitted.slot_id)
        self._lease = admitted.slot_lease_seconds or 60
        self._renewer: asyncio.Task[None] | None = None
        self._held = bool(admitted.slot_id)

    def keep_alive(self) -> None:
        if self._held:
            self._renewer = asyncio.create_task(self._renew())

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._ctx.clients.auth.Renew(self._request, timeout=5)

    def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        if self._held:
            self._held = False
            self._ctx.releases.add(self._request)  # sent with the next admission (services/edge/slots.py)


def _error_event(type_: str, message: str, code: str | None) -> bytes:
    body = {"error": {"type": type_, "message": message, "code": code, "param": None}}
    return b"data: " + orjson.dumps(body) + b"\n\n"
