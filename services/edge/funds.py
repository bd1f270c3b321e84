"""Funds at the edge: the hot path's one billing call, made alongside auth's.

Before the upstream call a live request needs two answers: auth's (who is this, within
limits?) and billing's (can the wallet cover this request's worst case?). Both go out in one
round: the edge remembers which account each live key belongs to (a keyed hash of the key →
account id, learnt from earlier Authenticate replies), so it can send ``Reserve`` at the same
time as ``Authenticate``. On a miss (the key's first request here) Reserve follows auth.

The hold is the request's worst case: the prompt estimate plus ``max_tokens`` (or the rest
of the context window), times ``n``, at the model's prices; embeddings hold their input only.
Prices come from the router's catalog (``ListModels``), refreshed every
``FAREGATE_CATALOG_REFRESH_SECONDS`` and whenever NATS subject ``faregate.catalog.changed``
says so; an unknown model id holds at the dearest prices. Guests, test keys and free models
place no hold and make no billing call.

If auth refuses, the hold is cancelled (``ReleaseHold``, off the client's path), and so it is
when the router fails before answering; once the router answered, the request's UsageRecord
carries the hold id and billing releases it when it applies the record. If billing cannot
be reached, the request goes on without a hold when ``FAREGATE_FUNDS_FAIL_OPEN`` (the
default: the ledger still bills it when billing is back), or is refused with 503. Either way
the request id (which is also the hold id) still travels with the request, so a hold that
billing placed before it failed to answer is released with the usage, not left to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
import nats
import orjson
from starlette.requests import Request

from faregate.errors import FaregateError, InsufficientBalance, ServiceUnavailable
from faregate.grpc import error_from_rpc
from faregate.money import token_cost, usd_to_micros
from faregate.pb.auth.v1 import auth_pb2
from faregate.pb.billing.v1 import billing_pb2, billing_pb2_grpc
from faregate.pb.router.v1 import router_pb2, router_pb2_grpc
from faregate.tokens import estimate_messages, estimate_text

log = logging.getLogger(__name__)

CATALOG_CHANGED = "faregate.catalog.changed"
TEST_KEY_PREFIX = "gw_test_"
RESERVE_TIMEOUT_S = 2.0
MAX_ACCOUNTS = 100_000
UNKNOWN_MODEL_REFRESH_S = 5.0
WARN_EVERY_S = 10.0
MAX_HOLD_MICROS = 100_000 * 1_000_000  # billing's ceiling for one hold


@dataclass(frozen=True)
class Price:
    prompt: int  # micro-USD per 1M tokens
    completion: int
    context_length: int

    @property
    def free(self) -> bool:
        return not (self.prompt or self.completion)


class Hold:
    """A request's funds hold: nothing, a placed hold, or a refusal kept until ``check``."""

    __slots__ = ("_funds", "account_id", "id", "refusal")

    def __init__(
        self, hold_id: str = "", account_id: str = "", funds: Funds | None = None, refusal: FaregateError | None = None
    ) -> None:
        self.id = hold_id
        self.account_id = account_id
        self.refusal = refusal
        self._funds = funds

    def check(self) -> None:
        """Raise the refusal (402, or 503 when billing is down and the edge fails closed)."""
        if self.refusal is not None:
            raise self.refusal

    def release(self) -> None:
        """Cancel the hold: its request ends without the router having answered (idempotent)."""
        if self.id and self._funds is not None:
            self._funds.cancel(self.id, self.account_id)
        self.id = ""


NO_HOLD = Hold()


class Funds:
    def __init__(
        self,
        billing: billing_pb2_grpc.BillingServiceStub,
        router: router_pb2_grpc.RouterServiceStub,
        *,
        fail_open: bool = True,
        refresh_seconds: float = 60.0,
        clock: Any = time.monotonic,
    ) -> None:
        self._billing = billing
        self._router = router
        self._fail_open = fail_open
        self._refresh_s = refresh_seconds
        self._clock = clock
        self._salt = secrets.token_bytes(16)  # the account cache's keys are keyed hashes, never keys
        self._accounts: dict[bytes, str] = {}
        self._prices: dict[str, Price] = {}
        self._dearest: Price | None = None
        self._loaded = False
        self._load_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._last_refresh_ask = 0.0
        self._last_warning = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._nc: Any = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, nats_url: str | None) -> None:
        self._spawn(self._refresh_forever())
        if nats_url:
            self._spawn(self._follow_catalog(nats_url))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the hot path ------------------------------------------------------------------

    async def admit(
        self, api_key: str, raw: bytes, request_id: str, authenticate: Awaitable[auth_pb2.AuthenticateResponse]
    ) -> tuple[auth_pb2.AuthenticateResponse, Hold]:
        """Auth's admission and the request's hold, in one round when the key is known here."""
        try:
            amount = min(await self.worst_case(api_key, raw), MAX_HOLD_MICROS)
        except BaseException:
            if isinstance(authenticate, Coroutine):
                authenticate.close()  # never started: nothing to undo
            raise
        if not amount:
            return await authenticate, NO_HOLD
        digest = hashlib.blake2b(api_key.encode(), key=self._salt, digest_size=16).digest()
        account = self._accounts.get(digest)
        if account is None:
            admitted = await authenticate
            if not admitted.billable:
                return admitted, NO_HOLD
            self._remember(digest, admitted.account_id)
            return admitted, await self._settle(
                self._reserve(admitted.account_id, request_id, amount), admitted.account_id, request_id
            )
        pending = self._reserve(account, request_id, amount)
        try:
            admitted = await authenticate
        except BaseException:
            self._spawn(self._undo(pending, account))
            raise
        hold = await self._settle(pending, account, request_id)
        if admitted.account_id != account or not admitted.billable:  # the cache was wrong: redo, in order
            if hold.id:
                await self._release(hold.id, account)  # before the same id is reserved for the right account
            self._accounts.pop(digest, None)
            if not admitted.billable:
                return admitted, NO_HOLD
            self._remember(digest, admitted.account_id)
            hold = await self._settle(
                self._reserve(admitted.account_id, request_id, amount), admitted.account_id, request_id
            )
        return admitted, hold

    async def worst_case(self, api_key: str, raw: bytes) -> int:
        """The most this request can cost, in micro-USD; 0 when it places no hold."""
        if not api_key or api_key.startswith(TEST_KEY_PREFIX):
            return 0
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return 0  # the router answers 400
        if not isinstance(body, dict):
            return 0
        price = await self._price(body.get("model"))
        if price is None or price.free:
            return 0
        if "messages" in body:
            messages = body.get("messages")
            prompt = estimate_messages(messages if isinstance(messages, list) else [])
        else:
            given = body.get("input")
            prompt = sum(estimate_text(str(x)) for x in (given if isinstance(given, list) else [given or ""]))
            return token_cost(prompt, 0, price.prompt, price.completion)
        room = max(price.context_length - prompt, 0)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        out = min(limit, room) if isinstance(limit, int) and limit > 0 else room
        n = body.get("n")
        choices = n if isinstance(n, int) and 1 <= n <= 128 else 1
        return token_cost(prompt, out * choices, price.prompt, price.completion)

    def cancel(self, hold_id: str, account_id: str) -> None:
        self._spawn(self._release(hold_id, account_id))

    def _reserve(self, account_id: str, request_id: str, amount: int) -> Any:
        """Send Reserve now (grpc.aio starts the call at once); await it later."""
        return self._billing.Reserve(
            billing_pb2.ReserveRequest(account_id=account_id, request_id=request_id, amount_micros=amount),
            timeout=RESERVE_TIMEOUT_S,
        )

    async def _settle(self, pending: Any, account_id: str, request_id: str) -> Hold:
        try:
            reply = await pending
        except grpc.aio.AioRpcError as exc:
            err = error_from_rpc(exc)
            if isinstance(err, InsufficientBalance):
                return Hold(refusal=err)
            return self._billing_down(err, account_id, request_id)
        except asyncio.CancelledError:
            self._spawn(self._undo(pending, account_id))
            raise
        return Hold(reply.hold_id, account_id, self)

    def _billing_down(self, err: FaregateError, account_id: str, request_id: str) -> Hold:
        now = self._clock()
        if now - self._last_warning > WARN_EVERY_S:
            self._last_warning = now
            log.warning(
                "billing cannot place funds holds (%s); %s",
                err.message,
                "admitting live requests without a hold" if self._fail_open else "refusing live requests",
            )
        if self._fail_open:
            # Billing may have placed the hold and lost the answer (a crash, a timeout): its id is
            # the request id, so carry it anyway and billing releases it when the usage arrives.
            return Hold(request_id, account_id, self)
        return Hold(
            request_id,
            account_id,
            self,
            refusal=ServiceUnavailable("billing is unavailable, try again shortly", retry_after=1),
        )

    async def _undo(self, pending: Any, account_id: str) -> None:
        """The request ended before its hold was known: cancel the hold once it exists."""
        try:
            reply = await pending
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            return
        await self._release(reply.hold_id, account_id)

    async def _release(self, hold_id: str, account_id: str) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._billing.ReleaseHold(
                billing_pb2.ReleaseHoldRequest(hold_id=hold_id, account_id=account_id), timeout=5
            )

    def _remember(self, digest: bytes, account_id: str) -> None:
        if len(self._accounts) >= MAX_ACCOUNTS:
            for old in list(self._accounts)[: MAX_ACCOUNTS // 2]:  # oldest first
                del self._accounts[old]
        self._accounts[digest] = account_id

    # -- prices ------------------------------------------------------------------------

    async def _price(self, model: object) -> Price | None:
        if not self._loaded:
            async with self._load_lock:
                if not self._loaded:
                    with contextlib.suppress(FaregateError, grpc.aio.AioRpcError):
                        await self.refresh()
        price = self._prices.get(model) if isinstance(model, str) else None
        if price is None:
            now = self._clock()
            if now - self._last_refresh_ask > UNKNOWN_MODEL_REFRESH_S:  # perhaps a model added since
                self._last_refresh_ask = now
                self._changed.set()
            return self._dearest
        return price

    async def refresh(self) -> None:
        reply = await self._router.ListModels(router_pb2.ListModelsRequest(), timeout=5)
        prices = {
            m.id: Price(usd_to_micros(m.pricing.prompt), usd_to_micros(m.pricing.completion), m.context_length)
            for m in reply.models
        }
        self._prices = prices
        self._dearest = (
            Price(
                max(p.prompt for p in prices.values()),
                max(p.completion for p in prices.values()),
                max(p.context_length for p in prices.values()),
            )
            if prices
            else None
        )
        self._loaded = True

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except grpc.aio.AioRpcError as exc:
                log.warning("cannot load the catalog's prices from the router (%s); retrying", exc.code().name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=self._refresh_s if self._loaded else 1.0)
            self._changed.clear()

    async def _follow_catalog(self, url: str) -> None:
        while self._nc is None:
            try:
                self._nc = await nats.connect(url, name="faregate-edge", max_reconnect_attempts=-1)
            except Exception as exc:
                log.warning("edge cannot reach NATS for catalog changes (%s); retrying", exc)
                await asyncio.sleep(2.0)

        async def changed(_msg: Any) -> None:
            self._changed.set()

        await self._nc.subscribe(CATALOG_CHANGED, cb=changed)


def funds(request: Request) -> Funds:
    """The app's Funds (built in the lifespan)."""
    found: Funds = request.state.funds
    return found
