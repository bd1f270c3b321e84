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
from collections.abc import AsyncGenerator
from typing import Any

import grpc
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from faregate.callstream import StreamedCall
from faregate.errors import FaregateError, PayloadTooLarge, RateLimited, Reason, UpstreamError
from faregate.pb.auth.v1 import auth_pb2
from faregate.pb.billing.v1 import billing_pb2
from faregate.pb.router.v1 import router_pb2
from services.edge.clients import COMPLETION_TIMEOUT_S, UNARY_TIMEOUT_S, unary
from services.edge.context import EdgeContext, bearer, edge, new_request_id
from services.edge.funds import key_digest

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
) -> tuple[EdgeContext, str, bytes, bool, auth_pb2.AuthenticateResponse, Hold, Slot]:
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
    admitted, slot, hold = await admit(ctx, key, ctx.client_ip(request), request_id, amount)
    return ctx, request_id, raw, streamed, admitted, hold, slot


async def chat_completions(request: Request) -> Response:
    ctx, request_id, raw, streamed, admitted, hold, slot = await _admitted(request)
    try:
        if not streamed:
            return await _complete(ctx, request_id, admitted, raw, slot)
        return await _answer(ctx, request_id, admitted, raw, slot)
    except BaseException:
        slot.release()
        hold.release()  # no answer, so no usage record will release it
        raise


class Hold:
    """A request's funds hold, to give back if it ends without an answer: a spend of this
    edge's funds grant that billing has not heard of yet goes back to the grant; a hold in
    billing is dropped there."""

    def __init__(self, ctx: EdgeContext | None = None, request_id: str = "", granted: bool = False) -> None:
        self._ctx, self._request_id, self._granted = ctx, request_id, granted

    def release(self) -> None:
        ctx = self._ctx
        if ctx is None:
            return
        self._ctx = None
        if not (self._granted and ctx.grants.funds.release(self._request_id)):
            ctx.spawn(_release_hold(ctx, self._request_id))


NO_HOLD = Hold()


async def admit(
    ctx: EdgeContext, key: str, client_ip: str, request_id: str, amount: int
) -> tuple[auth_pb2.AuthenticateResponse, Slot, Hold]:
    """Auth's admission and, for a live key on a priced model, billing's hold. Grants first
    (ADR 11): what this edge holds of the key's limits and the account's funds admits the
    request without a call. What is missing is asked for in one round when the key's
    account is known (auth and billing together), one after the other otherwise. Whatever
    one side granted is given back when the other refuses."""
    grants = ctx.grants
    digest = key_digest(key)
    local = grants.admissions.take(digest) if key else None
    account = local[0].account_id if local else (ctx.funds.account_of(digest) if amount else None)
    hold = NO_HOLD
    if amount and account and grants.funds.take(account, request_id, amount):
        hold = Hold(ctx, request_id, granted=True)
    reserve = bool(amount) and hold is NO_HOLD  # billing must still hold for it

    if local is None and reserve and account is not None:  # both calls, in one round
        results: tuple[Any, Any] = await asyncio.gather(
            _authenticate(ctx, digest, key, client_ip, request_id),
            _reserve(ctx, account, request_id, amount),
            return_exceptions=True,
        )
        got, held = results
        if isinstance(got, BaseException):
            if not isinstance(held, BaseException):
                Hold(ctx, request_id).release()
            raise got
        slot = Slot(ctx, digest, got, got.slot_id)
        if isinstance(held, BaseException):
            slot.release()
            raise held
        return got, slot, Hold(ctx, request_id)

    if local is not None:
        admitted, slot = local[0], Slot(ctx, digest, local[0], local[1])
    else:
        try:
            admitted = await _authenticate(ctx, digest, key, client_ip, request_id)
        except BaseException:
            hold.release()
            raise
        slot = Slot(ctx, digest, admitted, admitted.slot_id)
        if reserve and admitted.billable:
            ctx.funds.remember(digest, admitted.account_id)
        else:
            reserve = False  # not billed after all (a test key, the guest)
    if reserve:
        try:
            await _reserve(ctx, admitted.account_id, request_id, amount)
        except BaseException:
            slot.release()
            raise
        hold = Hold(ctx, request_id)
    return admitted, slot, hold


async def _authenticate(
    ctx: EdgeContext, digest: bytes, key: str, client_ip: str, request_id: str
) -> auth_pb2.AuthenticateResponse:
    """Authenticate, carrying the slot releases gathered since the last call and asking for
    a grant for the key's next requests."""
    grants = ctx.grants.admissions
    request = auth_pb2.AuthenticateRequest(api_key=key, client_ip=client_ip, request_id=request_id)
    asking = grants.ask(digest, request) if key else False
    released = ctx.releases.take()
    request.released.extend(released)
    try:
        reply = await ctx.clients.authenticate(request, UNARY_TIMEOUT_S)
    except RateLimited as refused:
        if asking:
            grants.answered(digest)
        if refused.reason not in _GRANTED_WINDOWS:
            raise
        # Refused for a window this edge holds (or is being sent) granted admissions of:
        # they were counted before this request reached auth, so it spends one of them.
        await grants.pending(digest)
        granted = grants.take(digest)
        if granted is None:
            raise
        reply = auth_pb2.AuthenticateResponse()
        reply.CopyFrom(granted[0])
        reply.slot_id = granted[1]
        return reply
    except BaseException:
        if asking:
            grants.answered(digest)
        # Releasing twice is harmless; returned admissions are not sent again (auth may
        # have applied them: giving back twice would admit more than the limit).
        ctx.releases.give_back(released)
        raise
    grants.started(digest)
    grants.install(digest, reply)
    if asking:
        grants.answered(digest)
    return reply


_GRANTED_WINDOWS = (Reason.RPM_EXCEEDED, Reason.DAILY_REQUESTS_EXCEEDED)


async def _reserve(ctx: EdgeContext, account_id: str, request_id: str, amount: int) -> None:
    funds = ctx.grants.funds
    reply = await ctx.clients.reserve(
        billing_pb2.ReserveRequest(
            account_id=account_id, request_id=request_id, amount_micros=amount, grant_micros=funds.wanted(account_id)
        ),
        UNARY_TIMEOUT_S,
    )
    funds.install(account_id, reply)


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
        hold.release()
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
    return EventStream(call, relay(call, first, slot), headers)


class EventStream(Response):
    """The SSE answer, written to the ASGI server directly: one ``send`` per relayed batch,
    and one task that waits for the client to go away and then closes the call (which ends
    the relay and stops the upstream). Starlette's StreamingResponse ran the same loop in
    an anyio task group with a second task, per stream."""

    media_type = "text/event-stream"

    def __init__(
        self,
        call: StreamedCall[router_pb2.CompletionChunk],
        events: AsyncGenerator[bytes, None],
        headers: dict[str, str],
    ) -> None:
        self._call = call
        self._events = events
        self.status_code = 200
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        watcher = asyncio.create_task(self._watch(receive))
        try:
            async for events in self._events:
                await send({"type": "http.response.body", "body": events, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            await self._events.aclose()

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._call.close()


async def relay(
    call: StreamedCall[router_pb2.CompletionChunk], first: router_pb2.CompletionChunk, slot: Slot
) -> AsyncGenerator[bytes, None]:
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
        yield _error_event(failure.type, failure.message, failure.code)
    finally:
        call.close()  # a client that went away stops the upstream call too
        slot.release()


class Slot:
    """The request's concurrency slot in auth: released once when the request ends (back to
    this edge's grant while it lasts, otherwise gathered and sent with the edge's next
    admission), and renewed while a stream runs so its lease does not lapse."""

    def __init__(self, ctx: EdgeContext, key: bytes, admitted: auth_pb2.AuthenticateResponse, slot_id: str) -> None:
        self._ctx = ctx
        self._key: bytes | None = key
        self._request = auth_pb2.ReleaseRequest(key_id=admitted.key_id, slot_id=slot_id)
        self._lease = admitted.slot_lease_seconds or 60
        self._renewer: asyncio.Task[None] | None = None
        self._held = bool(slot_id)

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
        grants = self._ctx.grants.admissions
        if self._key is not None:
            grants.ended(self._key)
            self._key = None
        if self._held:
            self._held = False
            if not grants.release_slot(self._request.slot_id):
                self._ctx.releases.add(self._request)  # sent with the next admission (services/edge/slots.py)


def _error_event(type_: str, message: str, code: str | None) -> bytes:
    body = {"error": {"type": type_, "message": message, "code": code, "param": None}}
    return b"data: " + orjson.dumps(body) + b"\n\n"
