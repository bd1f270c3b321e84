"""The gateway core: one inference path for every entry point.

Every way in (the REST routes, and MCP, the console's playground and other API dialects as
further adapters) runs the same path through one :class:`Gateway`::

    async with gateway.admit(credentials, body, request_id=rid) as admission:
        answer = await admission.complete()      # the whole answer, or
        relay = await admission.stream()         # an answer relayed as it comes

admission → funds hold → slot → route → relay → meter. ``admit`` runs one admission round
(auth, and billing for a priced live request, together when the key's account is known;
ADR 2), or admits locally from this edge's grants (ADR 11). Leaving the ``async with``
releases the slot and, unless the router took the request (then its usage record settles
the hold in billing), the funds hold: in every outcome — refused, client gone, upstream
failed before or after the first byte, or an exception.

The gateway is built from typed clients of auth, billing and router (the ports below;
services/edge/clients.py in production, fakes in unit tests). Grants, the key → account
cache and worst-case pricing sit behind it; their long-lived work is in ``components``, run
by the edge's supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from faregate.errors import FaregateError, PayloadTooLarge, RateLimited, Reason
from services.edge import requests
from services.edge.callers import (
    AdmissionAsk,
    Admitted,
    Caller,
    Credentials,
    FundsGrant,
    GrantReturn,
    GrantSpend,
    ModelPrice,
    SlotRelease,
)
from services.edge.grants import AdmissionGrants, FundsGrants, Grants
from services.edge.pricing import PriceBook
from services.edge.slots import Flusher, SlotReleases

log = logging.getLogger(__name__)

# -- the ports: what the gateway needs of auth, billing and router ---------------------------


@dataclass(frozen=True, slots=True)
class RouteCall:
    request_id: str
    caller: Caller
    body: bytes  # the client's JSON, relayed as bytes (the router parses it)
    entry: str = ""  # the way in when not the REST API ("mcp"), recorded with the usage


@dataclass(frozen=True, slots=True)
class Opened:
    """A streamed call's first result: whether the answer streams, and its first payloads
    (the whole JSON answer when it does not)."""

    stream: bool
    payloads: list[bytes]


class Auth(Protocol):
    async def authenticate(self, ask: AdmissionAsk) -> Admitted: ...
    async def release(self, slots: Sequence[SlotRelease], returned: Sequence[GrantReturn]) -> None: ...
    async def renew(self, slot: SlotRelease) -> None: ...


class Billing(Protocol):
    async def reserve(self, account_id: str, request_id: str, amount: int, grant_wanted: int) -> FundsGrant | None: ...
    async def release_hold(self, request_id: str) -> None: ...
    async def settle_grants(self, spent: Sequence[GrantSpend], ended: Sequence[str]) -> None: ...


class ChunkStream(Protocol):
    async def open(self) -> Opened: ...
    async def read(self) -> list[bytes] | None: ...  # None: the end
    def close(self) -> None: ...


class Router(Protocol):
    async def complete(self, call: RouteCall) -> bytes: ...
    def stream(self, call: RouteCall) -> ChunkStream: ...
    async def embeddings(self, call: RouteCall) -> bytes: ...
    async def prices(self) -> list[ModelPrice]: ...


class Endpoint(enum.Enum):
    CHAT = "chat.completions"
    EMBEDDINGS = "embeddings"


def key_digest(key: str) -> bytes:
    """What the edge keeps of a presented key (its account, its grants): never the key."""
    return hashlib.sha256(key.encode()).digest()


# Refused for a window this edge holds granted admissions of: they were counted before the
# request reached auth, so it spends one of them (ADR 11).
_GRANTED_WINDOWS = (Reason.RPM_EXCEEDED, Reason.DAILY_REQUESTS_EXCEEDED)
_MAX_ACCOUNTS = 100_000


class Gateway:
    def __init__(
        self,
        auth: Auth,
        billing: Billing,
        router: Router,
        *,
        max_body_bytes: int,
        release_delay: float = 0.02,
        clock: Callable[[], float] | None = None,
        **flusher: Any,  # sleep / backoff of the flushers (tests)
    ) -> None:
        self._auth, self._billing, self._router = auth, billing, router
        self._max_body_bytes = max_body_bytes
        self.prices = PriceBook(router.prices)
        self._accounts: dict[bytes, str] = {}  # a live key's digest → its account (never changes)
        self.releases = SlotReleases(auth, release_delay, **flusher)
        clocked = {"clock": clock} if clock else {}
        self.grants = Grants(AdmissionGrants(self.releases, **clocked), FundsGrants(billing, **clocked, **flusher))
        self._holds: list[str] = []  # request ids whose holds billing must drop
        self._hold_releases: Flusher[list[str]] = Flusher(
            "hold releases", release_delay, self._take_holds, self._release_holds, **flusher
        )

    def components(self) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
        """The gateway's long-lived work, by name, for the edge's supervisor."""
        return {
            "prices": self.prices.follow,
            "grant-sweep": self.grants.sweep,
            "slot-releases": self.releases.flusher.run,
            "grant-spends": self.grants.funds.flusher.run,
            "hold-releases": self._hold_releases.run,
        }

    def admit(
        self,
        credentials: Credentials,
        body: bytes,
        *,
        request_id: str,
        endpoint: Endpoint = Endpoint.CHAT,
        entry: str = "",
    ) -> Admission:
        """The admission of one request, entered with ``async with``; ``entry`` names the way
        in when it is not the REST API (the usage record says so)."""
        return Admission(self, credentials, body, request_id, endpoint, entry)

    def key_changed(self, key_id: str) -> None:
        """A key was revoked or its limits or routing changed: its grants end at once."""
        self.grants.admissions.forget(key_id)

    async def close(self) -> bool:
        """Give everything back (after the components have stopped): grants end, and their
        returns, the slot releases, funds-grant spends and hold releases are delivered.
        False if something could not be delivered in time (logged)."""
        delivered = await self.grants.close()
        delivered &= await self.releases.close()
        return await self._hold_releases.close() and delivered

    # -- one admission round --------------------------------------------------------------

    async def _admit(self, credentials: Credentials, request_id: str, amount: int) -> tuple[Caller, Slot, Hold]:
        """auth's admission and, for a live key on a priced model, billing's hold. Grants first
        (ADR 11): what this edge holds of the key's limits and the account's funds admits the
        request without a call. What is missing is asked for in one round when the key's
        account is known (auth and billing together), one after the other otherwise. Whatever
        one side granted is given back when the other refuses."""
        grants = self.grants
        digest = key_digest(credentials.key)
        local = grants.admissions.take(digest) if credentials.key else None
        account = local[0].account_id if local else (self._accounts.get(digest) if amount else None)
        hold = NO_HOLD
        if amount and account and grants.funds.take(account, request_id, amount):
            hold = Hold(self, request_id, granted=True)
        reserve = bool(amount) and hold is NO_HOLD  # billing must still hold for it

        if local is None and reserve and account is not None:  # both calls, in one round
            results: tuple[Any, Any] = await asyncio.gather(
                self._authenticate(digest, credentials, request_id),
                self._reserve(account, request_id, amount),
                return_exceptions=True,
            )
            got, held = results
            if isinstance(got, BaseException):
                if not isinstance(held, BaseException):
                    Hold(self, request_id).release()
                raise got
            slot = Slot(self, digest, got.caller, got.slot_id)
            if isinstance(held, BaseException):
                slot.release()
                raise held
            return got.caller, slot, Hold(self, request_id)

        if local is not None:
            caller, slot = local[0], Slot(self, digest, local[0], local[1])
        else:
            try:
                admitted = await self._authenticate(digest, credentials, request_id)
            except BaseException:
                hold.release()
                raise
            caller = admitted.caller
            slot = Slot(self, digest, caller, admitted.slot_id)
            if reserve and caller.billable:
                if len(self._accounts) > _MAX_ACCOUNTS:
                    self._accounts.clear()
                self._accounts[digest] = caller.account_id
            else:
                reserve = False  # not billed after all (a test key, the guest)
        if reserve:
            try:
                await self._reserve(caller.account_id, request_id, amount)
            except BaseException:
                slot.release()
                raise
            hold = Hold(self, request_id)
        return caller, slot, hold

    async def _authenticate(self, digest: bytes, credentials: Credentials, request_id: str) -> Admitted:
        """Authenticate, carrying what this edge gives back (slot releases, grant returns)
        and asking for a grant for the key's next requests."""
        grants = self.grants.admissions
        ask = AdmissionAsk(
            credentials, request_id, released=self.releases.take(), returned=self.releases.take_returns()
        )
        asking = grants.ask(digest, ask) if credentials.key else False
        try:
            admitted = await self._auth.authenticate(ask)
        except RateLimited as refused:
            if asking:
                grants.answered(digest)
            if refused.reason not in _GRANTED_WINDOWS:
                raise
            await grants.pending(digest)
            granted = grants.take(digest)
            if granted is None:
                raise
            return Admitted(granted[0], granted[1])
        except BaseException:
            if asking:
                grants.answered(digest)
            self.releases.give_back(ask.released, ask.returned)  # auth applies each once
            raise
        grants.started(digest)
        grants.install(digest, admitted)
        if asking:
            grants.answered(digest)
        return admitted

    async def _reserve(self, account_id: str, request_id: str, amount: int) -> None:
        funds = self.grants.funds
        wanted = funds.wanted(account_id)  # one grant asked for per account at a time
        try:
            funds.install(account_id, await self._billing.reserve(account_id, request_id, amount, wanted))
        finally:
            if wanted:
                funds.answered(account_id)

    def _drop_hold(self, request_id: str) -> None:
        self._holds.append(request_id)
        self._hold_releases.schedule()

    def _take_holds(self) -> list[str] | None:
        taken, self._holds = self._holds, []
        return taken or None

    async def _release_holds(self, request_ids: list[str]) -> None:
        # dropping a hold twice is harmless: a batch that failed in part is sent again whole
        failed = [
            r
            for r in await asyncio.gather(*(self._billing.release_hold(r) for r in request_ids), return_exceptions=True)
            if isinstance(r, BaseException)
        ]
        if failed:
            raise failed[0]


class Admission:
    """One admitted request, from ``async with gateway.admit(…)`` to its end."""

    __slots__ = (
        "_body",
        "_credentials",
        "_endpoint",
        "_entry",
        "_gateway",
        "_hold",
        "_metered",
        "_slot",
        "_stream",
        "caller",
        "request_id",
        "streamed",
    )

    def __init__(
        self,
        gateway: Gateway,
        credentials: Credentials,
        body: bytes,
        request_id: str,
        endpoint: Endpoint,
        entry: str = "",
    ) -> None:
        self._gateway = gateway
        self._entry = entry
        self._credentials = credentials
        self._body = body
        self._endpoint = endpoint
        self.request_id = request_id
        self.streamed = False  # the client asked for a stream
        self._stream: ChunkStream | None = None
        self._metered = False  # the router took it: its usage record settles the hold

    async def __aenter__(self) -> Admission:
        gateway, raw = self._gateway, self._body
        if len(raw) > gateway._max_body_bytes:
            raise PayloadTooLarge(f"request body is over {gateway._max_body_bytes} bytes")
        # Parsed and checked once, here (services/edge/requests.py): a malformed body is a 400
        # before it costs an admission or reaches the router; the worst-case cost and the
        # stream flag come from it.
        body = requests.parse(raw, embeddings=self._endpoint is Endpoint.EMBEDDINGS)
        self.streamed = bool(body.get("stream"))
        amount = gateway.prices.worst_case(body, len(raw)) if self._credentials.live else 0
        self.caller, self._slot, self._hold = await gateway._admit(self._credentials, self.request_id, amount)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._stream is not None:
            self._stream.close()  # a client that went away stops the upstream call too
        self._slot.release()
        if not self._metered:
            self._hold.release()  # no answer, so no usage record will settle it

    def _call(self) -> RouteCall:
        return RouteCall(self.request_id, self.caller, self._body, self._entry)

    async def complete(self) -> bytes:
        """The whole answer (JSON bytes): a chat completion not streamed, or embeddings."""
        router = self._gateway._router
        call = self._call()
        answer = await (router.embeddings(call) if self._endpoint is Endpoint.EMBEDDINGS else router.complete(call))
        self._metered = True
        self._slot.release()
        return answer

    async def stream(self) -> Relay:
        """A chat completion relayed as it comes (a streamed call on the router's chat lane,
        ADR 10). Failures before the first byte raise here; after it, from the relay."""
        self._stream = stream = self._gateway._router.stream(self._call())
        opened = await stream.open()
        self._metered = True
        if not opened.stream:
            self._slot.release()
        else:
            self._slot.keep_alive()
        return Relay(stream, opened)


class Relay:
    """An answer on its way: ``streamed`` False means ``body`` is the whole JSON answer;
    otherwise iterate it for batches of payloads (what arrived together, ADR 8). A failure
    after the first byte raises the FaregateError from the iteration."""

    __slots__ = ("_opened", "_stream", "body", "streamed")

    def __init__(self, stream: ChunkStream, opened: Opened) -> None:
        self._stream = stream
        self._opened = opened
        self.streamed = opened.stream
        self.body = opened.payloads[0] if not opened.stream and opened.payloads else b""

    async def __aiter__(self) -> AsyncIterator[list[bytes]]:
        yield self._opened.payloads
        while (batch := await self._stream.read()) is not None:
            yield batch

    def close(self) -> None:
        """The client went away: end the call (a pending read returns the end)."""
        self._stream.close()


class Hold:
    """A request's funds hold, to give back if it ends without an answer: a spend of this
    edge's funds grant that billing has not heard of yet goes back to the grant; a hold in
    billing is dropped there (retried until billing has it)."""

    __slots__ = ("_gateway", "_granted", "_request_id")

    def __init__(self, gateway: Gateway | None = None, request_id: str = "", granted: bool = False) -> None:
        self._gateway, self._request_id, self._granted = gateway, request_id, granted

    def release(self) -> None:
        gateway = self._gateway
        if gateway is None:
            return
        self._gateway = None
        if not (self._granted and gateway.grants.funds.release(self._request_id)):
            gateway._drop_hold(self._request_id)


NO_HOLD = Hold()


class Slot:
    """The request's concurrency slot in auth: released once when the request ends (back to
    this edge's grant while it lasts, otherwise gathered and sent with the edge's next
    admission), and renewed while a stream runs so its lease does not lapse."""

    __slots__ = ("_gateway", "_held", "_key", "_lease", "_release", "_renewer")

    def __init__(self, gateway: Gateway, key: bytes, caller: Caller, slot_id: str) -> None:
        self._gateway = gateway
        self._key: bytes | None = key
        self._release = SlotRelease(caller.key_id, slot_id)
        self._lease = caller.slot_lease_seconds
        self._renewer: asyncio.Task[None] | None = None
        self._held = bool(slot_id)

    def keep_alive(self) -> None:
        if self._held:
            self._renewer = asyncio.create_task(self._renew())

    async def _renew(self) -> None:
        # best effort: a lease that lapses only frees the slot early
        renew: Callable[[SlotRelease], Awaitable[None]] = self._gateway._auth.renew
        while True:
            await asyncio.sleep(self._lease / 3)
            with contextlib.suppress(FaregateError):
                await renew(self._release)

    def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        grants = self._gateway.grants.admissions
        if self._key is not None:
            grants.ended(self._key)
            self._key = None
        if self._held:
            self._held = False
            if not grants.release_slot(self._release.slot_id):
                self._gateway.releases.add(self._release)  # sent with the next admission (slots.py)
